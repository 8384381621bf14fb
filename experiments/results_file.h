// The results file of a sweep and the files its workers exchange (layout: README, "Results
// files"). Every change to a results file is atomic: the file is copied, the copy changed,
// synced and renamed over the original, so a reader or a crash sees the old file or the new
// one, never a half-written one.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "experiments/sweep.h"
#include "framework/file_lock.h"
#include "framework/hdf5.h"

namespace normlab {

// A file holding the group /runs/<run.name> of one finished run (a worker's output).
void write_run_file(const std::string& path, const RunResult& run);
// The run `name` of a run file, checked as read_results checks each run (its labels against
// its name, its histories and metrics against its config); throws normlab::Error naming the
// file, the run and what is wrong.
RunResult read_run(const std::string& path, const std::string& name);

// A worker's input: the run (its config, name and labels) and the experiment's metrics and
// divergence settings.
void write_spec_file(const std::string& path, const PlannedRun& run, const Experiment& e);
// `normlab __worker spec result threads`: runs the spec's run into `result`. Returns the
// process exit code.
int run_worker(const std::string& spec, const std::string& result, int threads);

// The first key (config or runner setting) on which a run measured with `stored` differs from
// one planned with `planned`, with both values; none when they are the same run. Keys that
// change no number (ConfigField::performance_only) do not count.
struct RunDifference {
  std::string key, stored, planned;
};
std::optional<RunDifference> run_difference(const TrainConfig& stored, const RunSettings& stored_settings,
                                            const TrainConfig& planned, const RunSettings& planned_settings);

// The lock on `<path>.lock` that one writer of a results file holds (a sweep, a merge);
// throws SweepInputError naming the holder's pid, then `advice`, when another process holds it.
FileLock lock_results_file(const std::string& path, const std::string& advice);

class ResultsFile {
 public:
  // Checks that `path` is a results file of experiment e.name that read_results accepts (or
  // does not exist yet) and that its folder is writable; throws SweepInputError naming the
  // problem (read_results's message for a file it refuses), before anything is written.
  ResultsFile(std::string path, const Experiment& e);
  // Whether the file holds this run; throws SweepInputError when it holds a run of the
  // same name with another config (naming the first differing key).
  bool has_run(const PlannedRun& run) const;
  // Writes the root attributes (format, experiment, axes and their labels, merged with the
  // labels of runs already there), creating the file when missing.
  void write_header();
  // Adds the run as /runs/<run.name>.
  void commit(const RunResult& run);
  // Adds the runs in one change, one copy of the file for all of them; with_header: writes
  // the header (write_header) in the same change.
  void commit(const std::vector<const RunResult*>& runs, bool with_header = false);
  const std::string& path() const { return path_; }

 private:
  template <class Change>
  void change(Change change);
  void write_header_in(H5File& f) const;

  std::string path_;
  const Experiment& e_;
};

// `normlab merge`: adds to the results file `out` (created when missing; else a results file
// of the same experiment) every run of the results files `inputs` (the shards of a sweep), in
// one atomic change, and lists every run's labels in its root attributes. A run found in
// several files with the same config is taken once. Throws SweepInputError, before writing
// anything, when an input cannot be read (read_results's message), the files hold different
// experiments, `out` is also an input, a file is being written by a sweep, or two files hold a
// run of the same name with different configs (naming both files, the run and the first
// differing key).
struct MergeSummary {
  size_t added = 0;       // runs written to `out`
  size_t present = 0;     // runs `out` held already
  size_t duplicates = 0;  // runs found again in a later input (same config), taken once
};
MergeSummary merge_results(const std::string& out, const std::vector<std::string>& inputs);

}  // namespace normlab
