// Stability experiments: a base training config, the axes swept over it, the metrics each
// run records, and what the published claim says next to what the sweep measured. All of
// it is C++ (designated initializers); presets are functions registered by name, and a
// user's own experiment is one .cpp file (CMake: normlab_add_experiment(name file.cpp)).
//
//   Experiment quick() {
//     return {.name = "quick", .description = "LayerNorm and RMSNorm x pre/post/deepnorm x depth",
//             .base = {.model = {.d_model = 32}, .steps = 300},
//             .axes = {axis("norm", {"layer", "rms"}), axis("depth", {"6", "24"})}};
//   }
//   NORMLAB_REGISTER_EXPERIMENT(quick);
//
// A sweep writes one HDF5 results file (layout: README, "Results files"). Each run is
// committed atomically (the file is copied, the run added, the copy renamed over the
// original), so killing a sweep at any moment loses at most the runs in progress; running
// the same command again skips the runs the file already holds.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "experiments/config.h"
#include "experiments/metrics.h"
#include "experiments/train.h"

namespace normlab {

// ---- Defining an experiment ----

struct Setting {
  std::string key, value;  // a config key (config_fields()) and its value
};
struct AxisValue {
  std::string label = "";              // how results name it ("post", "0.001", "post+warmup")
  std::vector<Setting> settings = {};  // what it sets; empty: {axis name = label}
};
struct Axis {
  std::string name;  // a config key, or any name when every value lists its settings
  std::vector<AxisValue> values;
};
// An axis over one config key: axis("depth", {"6", "12", "24"}).
Axis axis(const std::string& key, const std::vector<std::string>& values);

// A run diverged when its loss or gradient is non-finite (the Trainer), or when its eval
// loss stays above `loss_above` for `evals` evaluations in a row.
struct DivergenceRule {
  double loss_above = 0.0;  // 0: 1.5 x the task's chance loss
  int64_t evals = 3;
};

struct RunResult;
struct SweepResults;

// A published claim next to this sweep's measurement of it.
struct Verdict {
  std::string source;    // "Xiong et al. 2020"
  std::string claim;     // what the paper reports
  std::string measured;  // what this sweep measured, with the numbers
  std::string verdict;   // "agrees", "partly", "disagrees" or "inconclusive"
};

struct Experiment {
  std::string name = "";         // the registered name: lower case, digits and '-'
  std::string description = "";  // one line, for `normlab list`
  TrainConfig base = {};
  std::vector<Axis> axes = {};   // the sweep is their product, first axis outermost
  std::vector<Setting> overrides = {};  // set in every run after the axes (`--set key=value`)
  // Leaves out combinations (for example the 1000-layer Post-LN run); null keeps all.
  std::function<bool(const TrainConfig&)> keep = nullptr;
  MetricsConfig metrics = {};
  DivergenceRule divergence = {};
  // The stability map's columns: an axis name; "": "depth" when swept, else the last axis.
  std::string map_columns = "";
  // The published claims and this sweep's verdicts on them, from the results file.
  std::function<std::vector<Verdict>(const SweepResults&)> verdicts = nullptr;
};

// ---- The registry ----

using ExperimentFactory = Experiment (*)();
// Registers an experiment under factory().name; throws on a duplicate or malformed name.
bool register_experiment(ExperimentFactory factory);
// The built-in presets and every registered experiment, in registration order.
std::vector<Experiment> registered_experiments();
// The experiment of that name; throws naming it (and listing the valid ones) when unknown.
Experiment find_experiment(const std::string& name);

#define NORMLAB_REGISTER_EXPERIMENT(factory) \
  [[maybe_unused]] static const bool normlab_registered_##factory = ::normlab::register_experiment(factory)

// ---- Planning and running a sweep ----

struct PlannedRun {
  std::string name;  // its group in the results file: "norm=layer,placement=post,depth=24"
  std::vector<std::pair<std::string, std::string>> labels;  // axis name -> value label
  TrainConfig config;
};

// Overrides from the command line (`--set key=value`): a config key or a runner key
// (metrics_every, delta_f_steps, diverge_loss, diverge_evals). A comma-separated value
// ("depth=6,12") makes that key an axis; a single value sets it in every run and collapses
// an axis over that key alone.
void apply_override(Experiment& e, const std::string& key, const std::string& value);
// The sweep's runs, each config checked and its task opened (so a missing text file is
// found here). Throws normlab::Error naming the run and the bad value.
std::vector<PlannedRun> plan(const Experiment& e);

struct SweepOptions {
  std::string out;          // the results file; "": results/<name>.h5 (results/<name>.shard-I-of-N.h5)
  // Runs only the planned runs whose index in plan() order is shard mod shards (a machine's
  // part of a sweep; `normlab merge` joins the parts); shards 0: every run.
  int shard = 0, shards = 0;
  int jobs = 0;             // runs at once, one process each; 0: the default (see README);
                            // under mpirun, rank 0's own runs (README, "MPI")
  bool plots = true;        // run experiments/plot.py ($NORMLAB_PLOT) afterwards when python3 can
  bool quiet = false;       // no per-run lines and no progress line
  std::string executable;   // the program to start workers from; "": /proc/self/exe
};

// Checks the plan and the results file before any training: a file that is not a normlab
// results file, or holds a run of the same name with another config, or an output that
// cannot be written, or one another sweep is writing, throws a SweepInputError naming it
// (the CLI exits with 2).
struct SweepInputError : Error {
  using Error::Error;
};
// Runs every planned run the results file does not hold yet, prints a line per run, then
// the summary (report()) and, with options.plots, runs plot.py (as a program, not through a
// shell). On a terminal, a progress line on stderr shows the running runs' steps and ETAs.
//
// While it runs it holds a lock on `<out>.lock` (FileLock), so a second sweep on the same
// results file throws SweepInputError naming the first one's pid before it touches anything.
// Workers use the folder `<out>.work`, removed at the end unless a failed run's log is there.
//
// Returns 0 when every run was committed and the plots were made (or skipped for want of
// python3 with its packages); else the number of runs that failed (crashed or threw, each
// reported with its log, and a last line on stderr naming them), plus 1 when plot.py failed.
int run_sweep(const Experiment& e, const SweepOptions& options);

// The planned runs of one shard: those whose index is shard mod shards (all when shards is 0).
std::vector<PlannedRun> shard_runs(std::vector<PlannedRun> runs, int shard, int shards);
// The results file a sweep writes: options.out, else results/<name>.h5, or
// results/<name>.shard-I-of-N.h5 for a shard.
std::string results_path(const Experiment& e, const SweepOptions& options);

// One run, in this process: trains it with its metrics and writes its group `run.name`
// into a new file at `path`. Used by the workers of run_sweep: when a file `<path>.progress`
// exists (the sweep creates it), the run overwrites it with "step steps" after each step.
void run_one(const PlannedRun& run, const Experiment& e, const std::string& path, int threads);

// ---- Results ----

// The runner's settings a run was measured with.
struct RunSettings {
  MetricsConfig metrics = {};
  DivergenceRule divergence = {};
};
inline RunSettings settings_of(const Experiment& e) { return {e.metrics, e.divergence}; }

struct RunResult {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  TrainConfig config;
  RunSettings settings;
  bool diverged = false;
  int64_t diverged_step = 0;  // 0: none
  std::string diverged_reason;
  double initial_loss = 0;  // eval loss at the init
  double final_loss = 0;    // the last eval loss (NaN when the run diverged)
  double chance_loss = 0;
  double seconds = 0, tokens_per_second = 0;
  TrainHistory history;
  RunMetrics metrics;

  // The label of an axis; "" when the run has no such axis.
  std::string label(const std::string& axis) const;
};

struct SweepResults {
  std::string path, experiment;
  std::string map_columns;                           // the stability map's column axis
  std::vector<std::string> axes;                     // in the experiment's order
  std::map<std::string, std::vector<std::string>> axis_values;  // labels in the experiment's order
  std::vector<RunResult> runs;
  std::string description = "";  // the experiment's one line

  // Runs whose labels match every (axis, label) pair.
  std::vector<const RunResult*> select(const std::vector<std::pair<std::string, std::string>>& match) const;
  // The one run that matches; null when none does.
  const RunResult* find(const std::vector<std::pair<std::string, std::string>>& match) const;
  // Where a label sits in its axis's order (labels the file does not list come last).
  int position(const std::string& axis, const std::string& label) const;
  // The run's positions on `axes`, in order: sorts runs as the experiment lists them.
  std::vector<int> positions(const RunResult& r, const std::vector<std::string>& axes) const;
};

// Reads a results file, checking it (README, "Results files"): its format and version, the
// root's axes and labels, each run's labels against its name and the root's, and each run's
// histories and metrics against its config and one another. Throws normlab::Error naming
// the file, the run or attribute, and what was expected and found.
SweepResults read_results(const std::string& path);

// Wortsman et al. 2023: mean over the LRs of min(final loss, initial loss) - the best final
// loss over the LRs; a diverged run counts as its initial loss.
double lr_sensitivity(const std::vector<const RunResult*>& runs_over_lr);

// Prints the stability map (rows: the other axes; columns: map_columns; cells: the final
// eval loss, or "div@<step>"), LR sensitivity per config when lr is an axis, and the
// verdicts when `e` is given.
void report(const SweepResults& results, const Experiment* e, std::FILE* out);

}  // namespace normlab
