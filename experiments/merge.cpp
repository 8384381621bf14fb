// `normlab merge`: the results files of a sweep's shards joined into one (README, "Several
// machines").
#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "experiments/results_file.h"

namespace normlab {

namespace fs = std::filesystem;

namespace {

constexpr const char* kWait = "wait for it to finish, then merge";

// Whether two paths name the same file (the second may not exist yet).
bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

// Adds the items of `from` that `to` lacks, keeping the order of both.
void add_missing(std::vector<std::string>& to, const std::vector<std::string>& from) {
  for (const std::string& item : from)
    if (std::find(to.begin(), to.end(), item) == to.end()) to.push_back(item);
}

// The experiment a merged file's header describes: the inputs' axes and labels, in order of
// first appearance. Its axis values set nothing; only write_header reads them.
Experiment experiment_of(const std::vector<SweepResults>& inputs) {
  Experiment e{.name = inputs.front().experiment, .description = inputs.front().description};
  e.map_columns = inputs.front().map_columns;
  std::vector<std::string> axes;
  std::map<std::string, std::vector<std::string>> labels;
  for (const SweepResults& in : inputs) {
    add_missing(axes, in.axes);
    for (const auto& [axis, values] : in.axis_values) add_missing(labels[axis], values);
  }
  for (const std::string& a : axes) {
    Axis axis{a, {}};
    for (const std::string& label : labels[a]) axis.values.push_back({label});
    e.axes.push_back(std::move(axis));
  }
  return e;
}

}  // namespace

MergeSummary merge_results(const std::string& out, const std::vector<std::string>& inputs) {
  NL_CHECK(!inputs.empty(), "merge needs at least one results file to read");
  // No sweep may write a file while it is merged: its runs could be missed or lost. An input
  // whose folder is read-only cannot be written by a sweep either.
  std::vector<FileLock> locks;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string& path = inputs[i];
    if (same_file(path, out)) throw SweepInputError(path + " is both the output and an input; merge into a new file");
    if (std::any_of(inputs.begin(), inputs.begin() + i, [&](const std::string& p) { return same_file(p, path); }))
      continue;  // locked already
    try {
      locks.push_back(lock_results_file(path, kWait));
    } catch (const SweepInputError&) {
      throw;
    } catch (const Error&) {
    }
  }
  std::vector<SweepResults> in;
  // Every file, `out` included, holds the first input's experiment.
  auto check_experiment = [&](const std::string& path, const SweepResults& r) {
    if (r.experiment != in.front().experiment)
      throw SweepInputError(path + " holds results of experiment '" + r.experiment + "', but " + inputs.front() +
                            " holds '" + in.front().experiment + "'; merge one experiment at a time");
  };
  for (const std::string& path : inputs) {
    try {
      in.push_back(read_results(path));
    } catch (const Error& err) {
      throw SweepInputError(err.what());
    }
    check_experiment(path, in.back());
  }
  const Experiment e = experiment_of(in);
  // `out`'s runs, read under its lock.
  std::optional<SweepResults> existing;
  const bool out_exists = fs::exists(out);
  if (out_exists) {
    locks.push_back(lock_results_file(out, kWait));
    try {
      existing = read_results(out);
    } catch (const Error& err) {
      throw SweepInputError(err.what());
    }
    check_experiment(out, *existing);
  }
  ResultsFile file(out, e);  // checks that `out` can be written, and makes its folder
  if (!out_exists) {
    locks.push_back(lock_results_file(out, kWait));
    if (fs::exists(out)) throw SweepInputError(out + " was created by another process meanwhile; merge again");
  }

  // Each run name once, with the file it came from; `out`'s own runs first.
  struct Source {
    const RunResult* run;
    const std::string* path;
  };
  std::map<std::string, Source> runs;
  if (existing)
    for (const RunResult& r : existing->runs) runs.emplace(r.name, Source{&r, &out});
  MergeSummary summary{.present = runs.size()};
  std::vector<const RunResult*> added;
  for (size_t i = 0; i < in.size(); ++i) {
    for (const RunResult& r : in[i].runs) {
      const auto [it, inserted] = runs.emplace(r.name, Source{&r, &inputs[i]});
      if (inserted) {
        added.push_back(&r);
        continue;
      }
      const RunResult& first = *it->second.run;
      if (const auto d = run_difference(first.config, first.settings, r.config, r.settings))
        throw SweepInputError(*it->second.path + " and " + inputs[i] + " hold run " + r.name +
                              " with different configs: " + d->key + "=" + d->stored + " and " + d->key + "=" +
                              d->planned);
      if (it->second.path != &out) ++summary.duplicates;
    }
  }
  file.commit(added, /*with_header=*/true);
  summary.added = added.size();
  return summary;
}

}  // namespace normlab
