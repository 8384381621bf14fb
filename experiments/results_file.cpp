#include "experiments/results_file.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

namespace normlab {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "normlab-sweep";
constexpr const char* kRunFormat = "normlab-run";
constexpr const char* kSpecFormat = "normlab-run-spec";
constexpr int64_t kVersion = 1;

std::string read_string_or(const H5File& f, const std::string& object, const std::string& name,
                           const std::string& fallback = "") {
  return has_attribute(f, object, name) ? read_attribute_string(f, object, name) : fallback;
}

std::vector<std::string> axis_names(const std::vector<std::pair<std::string, std::string>>& labels) {
  std::vector<std::string> names;
  for (const auto& [axis, label] : labels) names.push_back(axis);
  return names;
}

void write_labels(H5File& f, const std::string& object, const std::vector<std::pair<std::string, std::string>>& labels) {
  write_attribute(f, object, "axes", join_list(axis_names(labels), ','));
  for (const auto& [axis, label] : labels) write_attribute(f, object, "label." + axis, label);
}
// The attribute `axes` and a label.<axis> for each of them; `where` names the object.
std::vector<std::pair<std::string, std::string>> read_labels(const H5File& f, const std::string& object,
                                                             const std::string& where) {
  std::vector<std::pair<std::string, std::string>> labels;
  NL_CHECK(has_attribute(f, object, "axes"), where, " has no attribute axes, expected its axis names separated by ','");
  for (const std::string& axis : split_list(read_attribute_string(f, object, "axes"), ',')) {
    NL_CHECK(has_attribute(f, object, "label." + axis), where, " has axis '", axis, "' but no attribute label.", axis,
             " (expected one label per axis in its attribute axes)");
    labels.emplace_back(axis, read_attribute_string(f, object, "label." + axis));
  }
  return labels;
}

// The group name plan() gives a run with these labels: "axis=label,..." ("run" without axes).
std::string run_name_of(const std::vector<std::pair<std::string, std::string>>& labels) {
  if (labels.empty()) return "run";
  std::string name;
  for (const auto& [axis, label] : labels) name += (name.empty() ? "" : ",") + axis + "=" + label;
  return name;
}

// Whether the object at `path` is a group (false for a dataset and for a missing object).
bool is_group(const H5File& f, const std::string& path) {
  if (!f.exists(path)) return false;
  const hid_t object = H5Oopen(f.id(), path.c_str(), H5P_DEFAULT);
  if (object < 0) return false;
  const bool group = H5Iget_type(object) == H5I_GROUP;
  H5Oclose(object);
  return group;
}

// Checks that a list attribute of the root holds distinct, non-empty items.
void check_distinct(const H5File& f, const std::string& attribute, const std::vector<std::string>& items, char sep) {
  for (size_t i = 0; i < items.size(); ++i)
    NL_CHECK(!items[i].empty() && std::find(items.begin(), items.begin() + i, items[i]) == items.begin() + i,
             f.path(), ": root attribute ", attribute, " is '", join_list(items, sep),
             "', expected distinct non-empty names separated by '", sep, "'");
}

// The runner's settings as attributes (of a run group, or of a worker's spec).
void write_settings(H5File& f, const std::string& object, const RunSettings& s) {
  write_attribute(f, object, "metrics_every", s.metrics.every);
  write_attribute(f, object, "delta_f_steps", s.metrics.delta_f_steps);
  write_attribute(f, object, "diverge_loss", s.divergence.loss_above);
  write_attribute(f, object, "diverge_evals", s.divergence.evals);
}
RunSettings read_settings(const H5File& f, const std::string& object) {
  RunSettings s;
  s.metrics.every = read_attribute_int(f, object, "metrics_every");
  s.metrics.delta_f_steps = read_attribute_int(f, object, "delta_f_steps");
  s.divergence.loss_above = read_attribute_double(f, object, "diverge_loss");
  s.divergence.evals = read_attribute_int(f, object, "diverge_evals");
  return s;
}

std::string format_real(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string map_columns_of(const Experiment& e) {
  if (!e.map_columns.empty()) return e.map_columns;
  for (const Axis& a : e.axes)
    if (a.name == "depth") return "depth";
  return e.axes.empty() ? "" : e.axes.back().name;
}

}  // namespace

// ---- Run files ----

namespace {

void write_run_group(H5File& f, const RunResult& r) {
  const std::string g = "/runs/" + r.name;
  write_config(f, g + "/config", r.config);
  write_labels(f, g, r.labels);
  write_attribute(f, g, "diverged", int64_t(r.diverged));
  write_attribute(f, g, "initial_loss", r.initial_loss);
  write_attribute(f, g, "final_loss", r.final_loss);
  write_attribute(f, g, "chance_loss", r.chance_loss);
  write_attribute(f, g, "seconds", r.seconds);
  write_attribute(f, g, "tokens_per_second", r.tokens_per_second);
  write_attribute(f, g, "vocab", r.config.model.vocab);
  write_settings(f, g, r.settings);
  write_history(f, g, r.history);
  write_metrics(f, g, r.metrics);
}

}  // namespace

void write_run_file(const std::string& path, const RunResult& run) {
  write_file_atomically(path, [&](H5File& f) {
    write_attribute(f, "/", "format", kRunFormat);
    write_attribute(f, "/", "version", kVersion);
    write_run_group(f, run);
  });
}

namespace {

// `path` opened for reading, checked to be a file of `format` and version kVersion; throws
// naming the file and what it holds instead. `what` names the kind of file ("results file").
H5File open_checked(const std::string& path, const std::string& format, const std::string& what) {
  NL_CHECK(fs::exists(path), "no ", what, " ", path);
  H5File f = [&] {
    try {
      return H5File(path, H5File::Mode::read);
    } catch (const Error& err) {
      NL_FAIL(path, " cannot be read as a ", what, ": ", err.what());
    }
  }();
  NL_CHECK(read_string_or(f, "/", "format") == format, path, " is not a normlab ", what, " (no format=", format,
           " attribute)");
  NL_CHECK(has_attribute(f, "/", "version"), path, " has no root attribute version, expected version=", kVersion);
  int64_t version = 0;
  try {
    version = read_attribute_int(f, "/", "version");
  } catch (const Error&) {
    NL_FAIL(path, ": root attribute version is not an integer, expected version=", kVersion);
  }
  NL_CHECK(version == kVersion, path, " is a ", what, " of version ", version, ", which this normlab cannot read",
           " (expected version=", kVersion, ")");
  return f;
}

// A run's group /runs/<name>, checked: its labels match its name, and its histories and
// metrics have the shapes its config and one another imply.
RunResult read_run_group(const H5File& f, const std::string& name) {
  const std::string g = "/runs/" + name;
  const std::string where = f.path() + ": run " + name;
  NL_CHECK(f.exists(g), f.path(), " has no run ", name);
  NL_CHECK(is_group(f, g), where, ": ", g, " is not a group, expected a run's group");
  RunResult r;
  r.name = name;
  r.labels = read_labels(f, g, where);
  NL_CHECK(run_name_of(r.labels) == name, where, " has the labels ", run_name_of(r.labels),
           ", expected the labels its group's name lists");
  r.config = read_config(f, g + "/config");
  const int64_t diverged = read_attribute_int(f, g, "diverged");
  r.diverged = diverged != 0;
  r.initial_loss = read_attribute_double(f, g, "initial_loss");
  r.final_loss = read_attribute_double(f, g, "final_loss");
  r.chance_loss = read_attribute_double(f, g, "chance_loss");
  r.seconds = read_attribute_double(f, g, "seconds");
  r.tokens_per_second = read_attribute_double(f, g, "tokens_per_second");
  r.config.model.vocab = read_attribute_int(f, g, "vocab");
  r.config.model.seq_len = r.config.data.seq_len;
  r.settings = read_settings(f, g);
  r.history = read_history(f, g);
  r.diverged_step = r.history.diverged_step;
  r.diverged_reason = r.history.diverged_reason;
  r.metrics = read_metrics(f, g, r.config.model.depth);

  const int64_t steps = int64_t(r.history.loss.size());
  NL_CHECK(diverged == (r.diverged_step > 0 ? 1 : 0), where, " has diverged=", diverged, " and diverged_step=",
           r.diverged_step, ", expected diverged=1 exactly when diverged_step > 0");
  NL_CHECK(steps <= r.config.steps, where, " has a history of ", steps, " steps, expected at most its config's steps=",
           r.config.steps);
  for (const auto& [dataset, probed] : {std::pair{"metric_step", &r.metrics.step},
                                        std::pair{"delta_f_step", &r.metrics.delta_f_step}})
    NL_CHECK(probed->empty() || probed->back() <= steps, where, ": ", dataset, " ends at step ", probed->back(),
             ", expected at most ", steps, " (the steps run)");
  return r;
}

}  // namespace

RunResult read_run(const std::string& path, const std::string& name) {
  const H5File f = open_checked(path, kRunFormat, "run file");
  return read_run_group(f, name);
}

SweepResults read_results(const std::string& path) {
  const H5File f = open_checked(path, kFormat, "results file");
  SweepResults s;
  s.path = path;
  s.experiment = read_attribute_string(f, "/", "experiment");
  s.description = read_string_or(f, "/", "description");
  s.map_columns = read_string_or(f, "/", "map_columns");
  NL_CHECK(has_attribute(f, "/", "axes"), path, " has no root attribute axes, expected the sweep's axis names",
           " separated by ','");
  s.axes = split_list(read_attribute_string(f, "/", "axes"), ',');
  check_distinct(f, "axes", s.axes, ',');
  for (const std::string& a : s.axes) {
    const std::string key = "axis_values." + a;
    const std::vector<std::string> labels = split_list(read_string_or(f, "/", key), '|');
    NL_CHECK(!labels.empty(), path, ": the root's axes list '", a, "' but its root attribute ", key,
             " is missing or empty, expected the axis's labels separated by '|'");
    check_distinct(f, key, labels, '|');
    s.axis_values[a] = labels;
  }
  NL_CHECK(!f.exists("/runs") || is_group(f, "/runs"), path, ": /runs is not a group, expected the group of the runs");
  for (const std::string& name : f.list("/runs")) {
    RunResult r = read_run_group(f, name);
    // A run may lack an axis the root lists (the header of a sweep that added one is written
    // before its first run), but each of its labels must be one the root lists.
    for (const auto& [axis, label] : r.labels) {
      const auto values = s.axis_values.find(axis);
      NL_CHECK(values != s.axis_values.end(), path, ": run ", name, " has axis '", axis,
               "', expected one of the root's axes '", join_list(s.axes, ','), "'");
      NL_CHECK(std::find(values->second.begin(), values->second.end(), label) != values->second.end(), path,
               ": run ", name, " has ", axis, "=", label, ", expected one of the labels of axis_values.", axis, " '",
               join_list(values->second, '|'), "'");
    }
    s.runs.push_back(std::move(r));
  }
  // In the experiment's order (the file lists runs by name).
  std::stable_sort(s.runs.begin(), s.runs.end(), [&](const RunResult& a, const RunResult& b) {
    return s.positions(a, s.axes) < s.positions(b, s.axes);
  });
  return s;
}

// ---- Worker specs ----

void write_spec_file(const std::string& path, const PlannedRun& run, const Experiment& e) {
  write_file_atomically(path, [&](H5File& f) {
    write_attribute(f, "/", "format", kSpecFormat);
    write_attribute(f, "/", "name", run.name);
    write_labels(f, "/", run.labels);
    write_config(f, "/config", run.config);
    write_settings(f, "/", settings_of(e));
  });
}

int run_worker(const std::string& spec, const std::string& result, int threads) {
  try {
    const H5File f(spec, H5File::Mode::read);
    NL_CHECK(read_string_or(f, "/", "format") == kSpecFormat, spec, " is not a run spec");
    PlannedRun run{read_attribute_string(f, "/", "name"), read_labels(f, "/", spec), read_config(f, "/config")};
    const RunSettings settings = read_settings(f, "/");
    Experiment e;
    e.metrics = settings.metrics;
    e.divergence = settings.divergence;
    run_one(run, e, result, threads);
    return 0;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "worker: %s\n", err.what());
    return 1;
  }
}

// ---- The results file ----

FileLock lock_results_file(const std::string& path, const std::string& advice) {
  FileLock lock;
  if (const pid_t owner = lock.try_lock(path + ".lock")) {
    const std::string who = owner > 0 ? "pid " + std::to_string(owner) : "pid unknown";
    throw SweepInputError(path + " is in use by another sweep (" + who + "); " + advice);
  }
  return lock;
}

ResultsFile::ResultsFile(std::string path, const Experiment& e) : path_(std::move(path)), e_(e) {
  const fs::path p(path_);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir) || ::access(dir.c_str(), W_OK) != 0)
    throw SweepInputError("cannot write results to " + path_ + ": folder " + dir.string() + " is not writable" +
                          (ec ? " (" + ec.message() + ")" : ""));
  if (!fs::exists(p)) return;
  if (fs::is_directory(p)) throw SweepInputError("cannot write results to " + path_ + ": it is a folder");
  if (::access(p.c_str(), R_OK | W_OK) != 0) throw SweepInputError("cannot write results to " + path_ + ": not writable");
  // The whole file, with the reader of `normlab report`: a file it refuses is left as it is.
  try {
    const SweepResults existing = read_results(path_);
    if (existing.experiment != e.name)
      throw SweepInputError(path_ + " holds results of experiment '" + existing.experiment + "', not '" + e.name +
                            "'; choose another --out");
  } catch (const SweepInputError&) {
    throw;
  } catch (const Error& err) {
    throw SweepInputError(err.what());
  }
}

std::optional<RunDifference> run_difference(const TrainConfig& stored, const RunSettings& stored_settings,
                                            const TrainConfig& planned, const RunSettings& planned_settings) {
  for (const ConfigField& field : config_fields())
    if (!field.performance_only && field.get(stored) != field.get(planned))
      return RunDifference{field.key, field.get(stored), field.get(planned)};
  const RunSettings& a = stored_settings;
  const RunSettings& b = planned_settings;
  const std::pair<const char*, std::pair<std::string, std::string>> settings[] = {
      {"metrics_every", {std::to_string(a.metrics.every), std::to_string(b.metrics.every)}},
      {"delta_f_steps", {std::to_string(a.metrics.delta_f_steps), std::to_string(b.metrics.delta_f_steps)}},
      {"diverge_loss", {format_real(a.divergence.loss_above), format_real(b.divergence.loss_above)}},
      {"diverge_evals", {std::to_string(a.divergence.evals), std::to_string(b.divergence.evals)}},
  };
  for (const auto& [key, values] : settings)
    if (values.first != values.second) return RunDifference{key, values.first, values.second};
  return std::nullopt;
}

bool ResultsFile::has_run(const PlannedRun& run) const {
  if (!fs::exists(path_)) return false;
  const H5File f(path_, H5File::Mode::read);
  const std::string g = "/runs/" + run.name;
  if (!f.exists(g)) return false;
  // Only the config and the settings: the run's histories and metrics are not needed here.
  const TrainConfig stored = read_config(f, g + "/config");
  if (const auto d = run_difference(stored, read_settings(f, g), run.config, settings_of(e_)))
    throw SweepInputError(path_ + " holds run " + run.name + " with " + d->key + "=" + d->stored +
                          ", but this sweep has " + d->key + "=" + d->planned +
                          "; choose another --out (or remove the file to start over)");
  return true;
}

template <class Change>
void ResultsFile::change(Change change) {
  update_file_atomically(path_, change);
}

void ResultsFile::write_header_in(H5File& f) const {
  write_attribute(f, "/", "format", kFormat);
  write_attribute(f, "/", "version", kVersion);
  write_attribute(f, "/", "experiment", e_.name);
  write_attribute(f, "/", "description", e_.description);
  write_attribute(f, "/", "map_columns", map_columns_of(e_));
  std::vector<std::string> axes = split_list(read_string_or(f, "/", "axes"), ',');
  for (const Axis& a : e_.axes)
    if (std::find(axes.begin(), axes.end(), a.name) == axes.end()) axes.push_back(a.name);
  write_attribute(f, "/", "axes", join_list(axes, ','));
  for (const Axis& a : e_.axes) {
    const std::string key = "axis_values." + a.name;
    std::vector<std::string> labels = split_list(read_string_or(f, "/", key), '|');
    for (const AxisValue& v : a.values)
      if (std::find(labels.begin(), labels.end(), v.label) == labels.end()) labels.push_back(v.label);
    write_attribute(f, "/", key, join_list(labels, '|'));
  }
}

void ResultsFile::write_header() {
  change([&](H5File& f) { write_header_in(f); });
}

void ResultsFile::commit(const RunResult& run) { commit(std::vector<const RunResult*>{&run}); }

void ResultsFile::commit(const std::vector<const RunResult*>& runs, bool with_header) {
  change([&](H5File& f) {
    if (with_header) write_header_in(f);
    for (const RunResult* run : runs) {
      f.remove("/runs/" + run->name);
      write_run_group(f, *run);
    }
  });
}

}  // namespace normlab
