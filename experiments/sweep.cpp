#include "experiments/sweep.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "experiments/presets.h"
#include "experiments/results_file.h"
#include "experiments/sweep_jobs.h"
#include "framework/file_lock.h"
#include "framework/parallel.h"

namespace normlab {

namespace fs = std::filesystem;

// ---- Defining an experiment ----

Axis axis(const std::string& key, const std::vector<std::string>& values) {
  Axis a{key, {}};
  for (const std::string& v : values) a.values.push_back({v, {}});
  return a;
}

namespace {

// Names and labels become HDF5 group names and the separators of the results file.
void check_token(const std::string& s, const std::string& what) {
  NL_CHECK(!s.empty(), what, " is empty");
  NL_CHECK(s.find_first_of(",=|/") == std::string::npos, what, " '", s, "' contains one of , = | /");
}

bool valid_experiment_name(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
  });
}

std::vector<ExperimentFactory>& user_factories() {
  static std::vector<ExperimentFactory> factories;
  return factories;
}

}  // namespace

// ---- The registry ----

bool register_experiment(ExperimentFactory factory) {
  NL_CHECK(factory, "register_experiment: the factory is null");
  user_factories().push_back(factory);
  return true;
}

std::vector<Experiment> registered_experiments() {
  std::vector<Experiment> all = builtin_presets();
  for (ExperimentFactory f : user_factories()) all.push_back(f());
  std::set<std::string> seen;
  for (const Experiment& e : all) {
    NL_CHECK(valid_experiment_name(e.name), "experiment name '", e.name,
             "' must be lower case letters, digits and '-'");
    NL_CHECK(seen.insert(e.name).second, "experiment '", e.name, "' is registered twice");
  }
  return all;
}

Experiment find_experiment(const std::string& name) {
  std::string names;
  for (Experiment& e : registered_experiments()) {
    if (e.name == name) return std::move(e);
    names += (names.empty() ? "" : ", ") + e.name;
  }
  NL_FAIL("unknown experiment '", name, "' (valid: ", names, ")");
}

// ---- Planning ----

namespace {

constexpr const char* kRunnerKeys[] = {"metrics_every", "delta_f_steps", "diverge_loss", "diverge_evals"};

bool is_runner_key(const std::string& key) {
  return std::find(std::begin(kRunnerKeys), std::end(kRunnerKeys), key) != std::end(kRunnerKeys);
}

double parse_real(const std::string& key, const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  NL_CHECK(!s.empty() && *end == '\0' && std::isfinite(v) && v >= 0, "bad value '", s, "' for ", key,
           " (expected a finite number >= 0)");
  return v;
}
int64_t parse_count(const std::string& key, const std::string& s) {
  int64_t v = 0;
  NL_CHECK(parse_integer(s, v) && v >= 0, "bad value '", s, "' for ", key, " (expected an integer >= 0)");
  return v;
}

void set_runner_value(Experiment& e, const std::string& key, const std::string& value) {
  if (key == "metrics_every") e.metrics.every = parse_count(key, value);
  else if (key == "delta_f_steps") e.metrics.delta_f_steps = parse_count(key, value);
  else if (key == "diverge_loss") e.divergence.loss_above = parse_real(key, value);
  else if (key == "diverge_evals") {
    const int64_t evals = parse_count(key, value);
    NL_CHECK(evals >= 1, "bad value '", value, "' for diverge_evals (expected an integer >= 1)");
    e.divergence.evals = evals;
  }
}

// An axis whose every value sets only `key` (or names it through the axis name).
bool is_simple_axis_over(const Axis& a, const std::string& key) {
  return std::all_of(a.values.begin(), a.values.end(), [&](const AxisValue& v) {
    return v.settings.empty() ? a.name == key : v.settings.size() == 1 && v.settings[0].key == key;
  });
}

// Rethrows `err` with `context` in front of its message ("run X: ...").
[[noreturn]] void rethrow_in(const std::string& context, const Error& err) {
  throw Error(context + ": " + err.what());
}

}  // namespace

void apply_override(Experiment& e, const std::string& raw_key, const std::string& value) {
  std::string key = raw_key;
  std::replace(key.begin(), key.end(), '-', '_');
  if (is_runner_key(key)) return set_runner_value(e, key, value);
  std::vector<std::string> values = split_list(value, ',');
  if (values.empty()) values.push_back("");  // an empty value is checked like any other
  TrainConfig scratch = e.base;
  for (const std::string& v : values) set_config_value(scratch, key, v);  // names an unknown key or a bad value
  // The axis this key names or is the only setting of.
  auto simple = std::find_if(e.axes.begin(), e.axes.end(),
                             [&](const Axis& a) { return a.name == key || is_simple_axis_over(a, key); });
  if (values.size() > 1 || simple != e.axes.end()) {
    if (simple == e.axes.end()) {
      e.axes.push_back(axis(key, values));
      return;
    }
    // Keep the listed values; a value the axis already has keeps its settings.
    Axis a{simple->name, {}};
    for (const std::string& v : values) {
      auto same = std::find_if(simple->values.begin(), simple->values.end(),
                               [&](const AxisValue& x) { return x.label == v; });
      if (same != simple->values.end()) a.values.push_back(*same);
      else a.values.push_back({v, a.name == key ? std::vector<Setting>{} : std::vector<Setting>{{key, v}}});
    }
    *simple = std::move(a);
    return;
  }
  e.overrides.push_back({key, value});
}

std::vector<PlannedRun> plan(const Experiment& e) {
  for (const Axis& a : e.axes) {
    check_token(a.name, "axis name");
    NL_CHECK(!a.values.empty(), "axis ", a.name, " has no values");
    for (const AxisValue& v : a.values) check_token(v.label, "label of axis " + a.name);
  }
  std::vector<PlannedRun> runs;
  std::set<std::string> names;
  std::vector<size_t> index(e.axes.size(), 0);
  while (true) {
    PlannedRun run{"", {}, e.base};
    for (size_t i = 0; i < e.axes.size(); ++i) {
      const Axis& a = e.axes[i];
      const AxisValue& v = a.values[index[i]];
      run.labels.emplace_back(a.name, v.label);
      run.name += (i ? "," : "") + a.name + "=" + v.label;
      try {
        if (v.settings.empty()) set_config_value(run.config, a.name, v.label);
        for (const Setting& s : v.settings) set_config_value(run.config, s.key, s.value);
      } catch (const Error& err) {
        rethrow_in("axis " + a.name + " value " + v.label, err);
      }
    }
    for (const Setting& s : e.overrides) set_config_value(run.config, s.key, s.value);
    if (e.axes.empty()) run.name = "run";
    if (!e.keep || e.keep(run.config)) {
      try {
        check(run.config);
        const auto data = make_dataset(run.config.data);
        run.config.model.vocab = data->vocab_size();
        run.config.model.seq_len = run.config.data.seq_len;
      } catch (const Error& err) {
        rethrow_in("run " + run.name, err);
      }
      NL_CHECK(names.insert(run.name).second, "two runs are named ", run.name, " (an axis repeats a label)");
      runs.push_back(std::move(run));
    }
    // The next combination, the last axis fastest.
    size_t i = e.axes.size();
    while (i > 0 && ++index[i - 1] == e.axes[i - 1].values.size()) index[--i] = 0;
    if (i == 0) break;
  }
  NL_CHECK(!runs.empty(), "experiment ", e.name, " has no runs (its keep filter leaves out every combination)");
  return runs;
}

std::vector<PlannedRun> shard_runs(std::vector<PlannedRun> runs, int shard, int shards) {
  if (shards == 0) return runs;
  NL_CHECK(shards > 0 && shard >= 0 && shard < shards, "shard ", shard, "/", shards, " is not one of 0/", shards,
           " to ", shards - 1, "/", shards);
  std::vector<PlannedRun> part;
  for (size_t i = size_t(shard); i < runs.size(); i += size_t(shards)) part.push_back(std::move(runs[i]));
  NL_CHECK(!part.empty(), "shard ", shard, "/", shards, " has no runs: the sweep has ", runs.size(), " run",
           runs.size() == 1 ? "" : "s", " (use at most ", runs.size(), " shards)");
  return part;
}

std::string results_path(const Experiment& e, const SweepOptions& options) {
  if (!options.out.empty()) return options.out;
  if (options.shards == 0) return "results/" + e.name + ".h5";
  return "results/" + e.name + ".shard-" + std::to_string(options.shard) + "-of-" + std::to_string(options.shards) +
         ".h5";
}

// ---- One run ----

void run_one(const PlannedRun& run, const Experiment& e, const std::string& path, int threads) {
  if (threads > 0) set_num_threads(threads);
  const auto start = std::chrono::steady_clock::now();
  ProgressReporter progress(path);
  Trainer trainer(run.config);
  RunResult r;
  r.name = run.name;
  r.labels = run.labels;
  r.initial_loss = trainer.evaluate();
  r.chance_loss = trainer.data().chance_loss();
  const double threshold = e.divergence.loss_above > 0 ? e.divergence.loss_above : 1.5 * r.chance_loss;
  MetricsRecorder metrics(trainer, e.metrics);
  size_t evals_seen = 0;
  int64_t streak = 0;
  trainer.run(0, false, [&](Trainer& t) {
    metrics.after_step(t);
    const TrainHistory& h = t.history();
    for (; evals_seen < h.eval_loss.size(); ++evals_seen) {
      const double loss = h.eval_loss[evals_seen];
      streak = std::isfinite(loss) && loss <= threshold ? 0 : streak + 1;
      if (streak >= e.divergence.evals) {
        char reason[96];
        std::snprintf(reason, sizeof reason, "eval loss above %.4g for %lld evals", threshold,
                      (long long)e.divergence.evals);
        t.mark_diverged(reason);
      }
    }
    progress.report({t.step(), t.config().steps});
  });
  if (!trainer.diverged()) metrics.probe(trainer);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.tokens_per_second = trainer.tokens_per_second();
  r.config = trainer.config();
  r.settings = settings_of(e);
  r.history = trainer.history();
  r.diverged = trainer.diverged();
  r.diverged_step = r.history.diverged_step;
  r.diverged_reason = r.history.diverged_reason;
  r.final_loss = r.diverged || r.history.eval_loss.empty() ? NAN : r.history.eval_loss.back();
  r.metrics = metrics.metrics();
  write_run_file(path, r);
}

// ---- The sweep ----

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string format_loss(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

// A finished run's line: "eval 0.0123" or "diverged at step 120 (non-finite loss)".
std::string outcome(const RunResult& r) {
  if (r.diverged) return "diverged at step " + std::to_string(r.diverged_step) + " (" + r.diverged_reason + ")";
  return "eval " + format_loss(r.final_loss);
}

std::string tail_of(const std::string& path, size_t max_chars) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > max_chars ? "..." + text.substr(text.size() - max_chars) : text;
}

// "norm=layer,placement=post,depth=24" -> "norm=layer,...,depth=24".
std::string short_run_name(const std::string& name) {
  const size_t first = name.find(','), last = name.rfind(',');
  return first == last ? name : name.substr(0, first) + ",..." + name.substr(last);
}

int terminal_columns() {
  winsize size{};
  return ::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0 ? size.ws_col : 80;
}

// The line on a terminal (stderr) that shows the running runs' steps and ETAs: redrawn at most
// five times a second, erased before any other line prints and when it goes away.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled) {}
  ~ProgressLine() { erase(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  bool due() const { return enabled_ && Clock::now() - drawn_ >= std::chrono::milliseconds(200); }
  // Draws `text`, which must fit the terminal's width (a wrapped line cannot be erased).
  void draw(const std::string& text) {
    drawn_ = Clock::now();
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  void erase() {
    if (!shown_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    shown_ = false;
  }

 private:
  bool enabled_;
  bool shown_ = false;
  Clock::time_point drawn_{};
};

// What the progress line shows: each running run's step and ETA, and the sweep's ETA.
struct SweepStatus {
  size_t done = 0, total = 0, queued = 0;  // runs finished, to do in all, not started yet
  int jobs = 1;                            // runs at once
  double finished_seconds = 0;             // the wall time of the finished runs, summed
};

// "2 running: norm=layer,placement=pre,depth=24 step 120/300 (ETA 0:41) | ...; 5/18 done, sweep
// ETA 3:10", at most `width` characters: when it is wider, the runs' names are shortened
// ("norm=layer,...,depth=24"), then the last runs left out ("+1 more"); the end stays.
std::string progress_text(const std::vector<const Job*>& running, const std::vector<PlannedRun>& runs,
                          const SweepStatus& status, size_t width) {
  // A run's expected length: the finished runs' mean, else the running runs' projected mean.
  double run_seconds = status.done > 0 ? status.finished_seconds / double(status.done) : 0;
  double projected = 0;
  size_t measured = 0;
  std::vector<std::pair<double, double>> elapsed_and_eta;  // per running run; eta < 0: unknown
  std::vector<std::string> names, short_names, steps;
  for (const Job* job : running) {
    const Progress p = read_progress(job->result);
    const double elapsed = seconds_since(job->start);
    const double eta = p.step > 0 ? elapsed * double(p.steps - p.step) / double(p.step) : -1;
    if (eta >= 0) projected += elapsed + eta, ++measured;
    elapsed_and_eta.emplace_back(elapsed, eta);
    names.push_back(runs[job->run].name);
    short_names.push_back(short_run_name(names.back()));
    steps.push_back(p.step > 0 ? " step " + std::to_string(p.step) + "/" + std::to_string(p.steps) + " (ETA " +
                                     format_duration(eta) + ")"
                               : " starting");
  }
  if (run_seconds == 0 && measured > 0) run_seconds = projected / double(measured);
  std::string end = "; " + std::to_string(status.done) + "/" + std::to_string(status.total) + " done";
  if (run_seconds > 0) {
    // The runs left, spread over the jobs; at least the longest running one.
    double longest = 0, left = double(status.queued) * run_seconds;
    for (const auto& [elapsed, eta] : elapsed_and_eta) {
      const double run_left = eta >= 0 ? eta : std::max(0.0, run_seconds - elapsed);
      longest = std::max(longest, run_left);
      left += run_left;
    }
    end += ", sweep ETA " + format_duration(std::max(longest, left / status.jobs));
  }
  // The line with the first `shown` runs.
  auto line = [&](const std::vector<std::string>& run_names, size_t shown) {
    std::string text = std::to_string(running.size()) + " running: ";
    for (size_t i = 0; i < shown; ++i) text += (i ? " | " : "") + run_names[i] + steps[i];
    if (shown < run_names.size()) text += (shown ? " | +" : "+") + std::to_string(run_names.size() - shown) + " more";
    return text + end;
  };
  std::string text = line(names, names.size());
  for (size_t shown = names.size(); text.size() > width; --shown) {
    text = line(short_names, shown);
    if (shown == 0) break;
  }
  return text.substr(0, width);
}

// A command-line argument that is a path: one starting with '-' would read as an option.
std::string path_argument(const std::string& path) { return path.starts_with("-") ? "./" + path : path; }

// Runs `argv` (argv[0] found on the PATH) with this process's stdout and waits for it; its
// stderr is collected in `err`. Returns the wait status, or -1 when it could not start. No
// shell is involved, so the arguments reach the program as they are.
int run_program(const std::vector<std::string>& argv, std::string& err) {
  int pipe_fds[2];
  NL_CHECK(::pipe2(pipe_fds, O_CLOEXEC) == 0, "cannot create a pipe: ", std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  pid_t pid = 0;
  const int spawned = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (spawned == 0) {
    char buf[4096];
    for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) != 0;) {
      if (n > 0) err.append(buf, size_t(n));
      else if (errno != EINTR) break;
    }
  }
  ::close(pipe_fds[0]);
  if (spawned != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return status;
}

// The plot.py to run: $NORMLAB_PLOT; else the installed one, when this program is an installed
// normlab (<prefix>/bin/normlab finds <prefix>/share/normlab/plot.py); else the one beside the
// sources this program was built from.
std::string plot_script() {
  if (const char* env = std::getenv("NORMLAB_PLOT")) return env;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed = (exe.parent_path() / NORMLAB_PLOT_FROM_PROGRAM).lexically_normal();
    if (fs::is_regular_file(installed, ec)) return installed.string();
  }
  return NORMLAB_SOURCE_DIR "/experiments/plot.py";
}

// Runs plot.py (plot_script()) on the results file. Returns false when plot.py failed; prints
// why when it skips the plots (no script, or no python3 with numpy, h5py and matplotlib) and
// returns true.
bool make_plots(const std::string& results) {
  const std::string script = plot_script();
  if (!fs::exists(script)) {
    std::printf("plots: skipped (no %s; set NORMLAB_PLOT to plot.py)\n", script.c_str());
    return true;
  }
  // The first python3 on the PATH may lack the packages (a virtual environment; plot.py exits
  // with 3): then the system's is tried, and only its complaint is shown.
  const std::vector<std::string> pythons = {"python3", "/usr/bin/python3"};
  for (const std::string& python : pythons) {
    std::string err;
    const int status = run_program({python, path_argument(script), path_argument(results)}, err);
    const int code = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    const bool lacks_packages = status < 0 || code == 3 || code == 127;
    if (!lacks_packages || python == pythons.back()) std::fputs(err.c_str(), stderr);
    if (status == 0) return true;
    if (!lacks_packages) {
      std::fflush(stdout);
      std::fprintf(stderr, "plots: %s failed (%s)\n", fs::path(script).filename().c_str(),
                   describe_exit(status).c_str());
      return false;
    }
  }
  std::printf("plots: skipped (python3 with h5py and matplotlib not found)\n");
  return true;
}

}  // namespace

namespace {

// Commits the run files of the work folder (workers' outputs that a stopped sweep had not
// committed: killed between a worker's end and its commit, or a commit that failed on a full
// disk) whose run is still to do with the same config, and takes them off `todo`. A damaged
// or foreign file there is skipped: its run is run again. Returns how many were committed.
size_t recover_finished_runs(const std::string& work, ResultsFile& file, const std::vector<PlannedRun>& runs,
                             const Experiment& e, std::vector<size_t>& todo) {
  std::error_code ec;
  if (!fs::is_directory(work, ec)) return 0;
  std::vector<fs::path> files;
  for (const fs::directory_entry& entry : fs::directory_iterator(work, ec)) {
    const std::string name = entry.path().filename().string();
    // Worker outputs are "<index>.h5"; specs are "<index>.spec.h5", partial writes end in .tmp.
    if (name.size() > 3 && name.ends_with(".h5") &&
        std::all_of(name.begin(), name.end() - 3, [](char ch) { return ch >= '0' && ch <= '9'; }))
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  size_t recovered = 0;
  for (const fs::path& path : files) {
    for (auto it = todo.begin(); it != todo.end(); ++it) {
      const PlannedRun& planned = runs[*it];
      RunResult r;
      try {
        const H5File f(path.string(), H5File::Mode::read);
        if (!f.exists("/runs/" + planned.name)) continue;
        r = read_run(path.string(), planned.name);
      } catch (const Error&) {
        break;  // not a readable run file: skipped
      }
      if (run_difference(r.config, r.settings, planned.config, settings_of(e))) break;
      file.commit(r);
      todo.erase(it);
      ++recovered;
      break;
    }
  }
  return recovered;
}

// A run's work in multiply-adds of its training steps' products (linear layers and causal
// attention, forward and backward): what orders the runs, so that the longest start first and
// the last ones to finish are short (longest-processing-time scheduling).
double run_cost(const TrainConfig& c) {
  const ModelConfig& m = c.model;
  const double d = double(m.d_model), T = double(c.data.seq_len);
  const double ffn_matrices = m.activation == Activation::swiglu ? 3 : 2;
  const double per_token_block = 4 * d * d + ffn_matrices * double(m.ffn_mult) * d * d + T * d;
  const double per_token = double(m.depth) * per_token_block + d * double(m.vocab);
  return 3.0 * per_token * T * double(c.batch) * double(c.steps) * (m.recompute ? 4.0 / 3.0 : 1.0);
}

}  // namespace

int run_sweep(const Experiment& e, const SweepOptions& options) {
  const auto start = Clock::now();
  std::vector<PlannedRun> runs;
  try {
    runs = shard_runs(plan(e), options.shard, options.shards);
  } catch (const Error& err) {
    throw SweepInputError(err.what());
  }
  const std::string out = results_path(e, options);
  ResultsFile file(out, e);  // checks the file and the path; throws SweepInputError
  // One sweep at a time per results file: two would share the work folder and the copy each
  // commit makes. The lock is held until run_sweep returns.
  const FileLock lock = lock_results_file(out, "wait for it to finish or choose another --out");
  std::vector<size_t> todo;
  for (size_t i = 0; i < runs.size(); ++i)
    if (!file.has_run(runs[i])) todo.push_back(i);  // throws SweepInputError on another config
  file.write_header();
  // Worker files; a sweep that stopped may have left some behind. Its finished runs are
  // committed now rather than run again.
  const std::string work = out + ".work";
  const size_t recovered = recover_finished_runs(work, file, runs, e, todo);
  std::stable_sort(todo.begin(), todo.end(),
                   [&](size_t a, size_t b) { return run_cost(runs[a].config) > run_cost(runs[b].config); });
  if (recovered > 0)
    std::printf("%s: committed %zu finished run%s left in %s by a sweep that stopped\n", e.name.c_str(), recovered,
                recovered == 1 ? "" : "s", work.c_str());

  // Worker processes here, or under mpirun also the other ranks (README, "MPI").
  const std::string exe = options.executable.empty() ? fs::read_symlink("/proc/self/exe").string() : options.executable;
  std::unique_ptr<JobRunner> runner;
  if (mpi_ranks() > 1) {
    runner = make_mpi_runner(exe, options.jobs);
  } else {
    const int cores = std::max(1, num_threads());
    const int jobs =
        std::max(1, std::min<int>(options.jobs > 0 ? options.jobs : cores, int(std::max<size_t>(todo.size(), 1))));
    runner = std::make_unique<LocalWorkers>(exe, jobs, std::max(1, cores / jobs));
  }
  std::printf("%s: %zu runs, %zu already in %s; %s\n", e.name.c_str(), runs.size(), runs.size() - todo.size(),
              out.c_str(), runner->describe().c_str());
  std::fflush(stdout);

  std::error_code ec;
  fs::remove_all(work, ec);
  fs::create_directories(work);
  ProgressLine progress_line(!options.quiet && ::isatty(STDERR_FILENO));
  SweepStatus status{.total = todo.size(), .queued = todo.size(), .jobs = runner->slots()};
  std::vector<std::string> failed_logs;
  size_t next = 0;

  // Commits a finished worker's run, or reports it failed with its log.
  auto finish = [&](const Job& job, int wait_status) {
    progress_line.erase();
    ++status.done;
    const double seconds = seconds_since(job.start);
    status.finished_seconds += seconds;
    const PlannedRun& run = runs[job.run];
    if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0 && fs::exists(job.result)) {
      const RunResult r = read_run(job.result, run.name);
      file.commit(r);
      if (!options.quiet)
        std::printf("[%zu/%zu] %-44s %s  (%.1f s)\n", status.done, status.total, run.name.c_str(), outcome(r).c_str(),
                    seconds);
      fs::remove(job.log);
    } else {
      failed_logs.push_back(job.log);
      std::printf("[%zu/%zu] %-44s FAILED (%s); its log %s:\n%s\n", status.done, status.total, run.name.c_str(),
                  describe_exit(wait_status).c_str(), job.log.c_str(), tail_of(job.log, 2000).c_str());
    }
    fs::remove(job.result, ec);
    fs::remove(progress_path(job.result), ec);
    fs::remove(job.spec, ec);
    std::fflush(stdout);
  };

  while (next < todo.size() || !runner->running().empty()) {
    while (next < todo.size() && runner->has_room()) {
      const size_t i = todo[next++];
      --status.queued;
      const std::string stem = work + "/" + std::to_string(i);
      Job job{i, stem + ".spec.h5", stem + ".h5", stem + ".log", Clock::now()};
      write_spec_file(job.spec, runs[i], e);
      std::ofstream(progress_path(job.result));  // the worker reports its steps into it
      runner->start(job);
    }
    // Polls the jobs, so that the progress line moves while they run.
    const std::vector<FinishedJob> finished = runner->poll();
    for (const FinishedJob& f : finished) {
      if (!f.lost) {
        finish(f.job, f.wait_status);
        continue;
      }
      // Its rank stopped answering: the run goes back to the queue.
      progress_line.erase();
      std::printf("%-50s handed out again: %s\n", runs[f.job.run].name.c_str(), f.lost_reason.c_str());
      std::fflush(stdout);
      todo.push_back(f.job.run);
      ++status.queued;
    }
    if (!finished.empty()) continue;
    if (progress_line.due())
      progress_line.draw(progress_text(runner->running(), runs, status, size_t(terminal_columns() - 1)));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  progress_line.erase();
  runner.reset();  // other MPI ranks are let go before the report and plots
  fs::remove(work, ec);  // kept when a failed run's log is there
  std::printf("\n%s: %zu runs in %.1f s\n\n", e.name.c_str(), status.total, seconds_since(start));
  report(read_results(out), &e, stdout);
  const bool plots_failed = options.plots && !make_plots(out);
  if (!failed_logs.empty()) {
    std::string logs;
    for (const std::string& log : failed_logs) logs += (logs.empty() ? "" : ", ") + fs::path(log).filename().string();
    std::fflush(stdout);
    std::fprintf(stderr, "%zu of %zu runs failed; their logs are in %s/: %s\n", failed_logs.size(), status.total,
                 work.c_str(), logs.c_str());
  }
  return int(failed_logs.size()) + (plots_failed ? 1 : 0);
}

}  // namespace normlab
