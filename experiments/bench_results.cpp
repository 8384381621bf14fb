// `normlab bench results F.h5`: what writing a results file costs as it grows (each commit
// copies the whole file, syncs it and renames it over the original) and what a merge costs.
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <tuple>

#include "experiments/bench.h"
#include "experiments/results_file.h"

namespace normlab {

namespace fs = std::filesystem;

namespace {

// Seconds of wall time and of this process's CPU time: on a loaded machine the wall time
// grows with the other processes' load, the CPU time does not (a sync's wait is in neither).
struct Cost {
  double wall = 0, cpu = 0;
  Cost& operator+=(const Cost& c) {
    wall += c.wall, cpu += c.cpu;
    return *this;
  }
};

double cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

Cost cost_of(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  const double cpu = cpu_seconds();
  f();
  return {std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), cpu_seconds() - cpu};
}

// `n` runs made from the source's runs, each copy told apart by a label of the axis "copy".
std::vector<RunResult> copies_of(const SweepResults& source, int n) {
  std::vector<RunResult> runs;
  for (int k = 0; k < n; ++k) {
    RunResult r = source.runs[size_t(k) % source.runs.size()];
    const std::string copy = std::to_string(size_t(k) / source.runs.size());
    r.name = (r.labels.empty() ? "" : r.name + ",") + "copy=" + copy;
    r.labels.emplace_back("copy", copy);
    runs.push_back(std::move(r));
  }
  return runs;
}

// The experiment whose header lists the copies' labels.
Experiment experiment_of(const SweepResults& source, const std::vector<RunResult>& runs) {
  Experiment e{.name = source.experiment, .description = source.description, .map_columns = source.map_columns};
  for (const std::string& a : source.axes) {
    Axis axis{a, {}};
    for (const std::string& label : source.axis_values.at(a)) axis.values.push_back({label});
    e.axes.push_back(std::move(axis));
  }
  Axis copy{"copy", {}};
  for (const RunResult& r : runs)
    if (copy.values.empty() || copy.values.back().label != r.label("copy")) copy.values.push_back({r.label("copy")});
  e.axes.push_back(std::move(copy));
  return e;
}

}  // namespace

void run_results_bench(const std::string& source_path, int n) {
  const SweepResults source = read_results(source_path);
  NL_CHECK(!source.runs.empty(), source_path, " holds no runs to copy");
  const std::vector<RunResult> runs = copies_of(source, n);
  const Experiment e = experiment_of(source, runs);
  double run_seconds = 0;
  for (const RunResult& r : source.runs) run_seconds += r.seconds;
  run_seconds /= double(source.runs.size());

  // Beside the source: the disk results are written to.
  const fs::path dir = fs::path(source_path).string() + ".bench-" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::printf("results file writes: %d runs copied from %s (%zu runs, mean training time %.2f s a run), in %s\n", n,
              source_path.c_str(), source.runs.size(), run_seconds, dir.c_str());

  // One run committed at a time, as a sweep does.
  ResultsFile grown((dir / "grown.h5").string(), e);
  grown.write_header();
  std::printf("\ncommit (copy + add the run + sync + rename), mean over the commits that filled the file from\n"
              "runs a to b; wall time and CPU time per commit, the wall time against a run's training time\n");
  std::printf("%-12s %10s %10s %10s %16s\n", "runs", "wall ms", "CPU ms", "file MiB", "of a run's time");
  Cost window;
  int first = 1;
  for (int k = 1; k <= n; ++k) {
    window += cost_of([&] { grown.commit(runs[size_t(k - 1)]); });
    if ((k & (k - 1)) == 0 || k == n) {  // windows ending at powers of two, and at the last run
      const double commits = double(k - first + 1);
      const double ms = 1e3 * window.wall / commits;
      std::printf("%-12s %10.2f %10.2f %10.2f %15.2f%%\n", (std::to_string(first) + "-" + std::to_string(k)).c_str(),
                  ms, 1e3 * window.cpu / commits, double(fs::file_size(grown.path())) / (1 << 20),
                  run_seconds > 0 ? 0.1 * ms / run_seconds : 0.0);
      window = {};
      first = k + 1;
    }
  }

  // The same runs as 4 shard files, merged into a new file and into one holding shard 0.
  std::vector<std::string> shards;
  for (int s = 0; s < 4; ++s) {
    std::vector<const RunResult*> part;
    for (size_t k = size_t(s); k < runs.size(); k += 4) part.push_back(&runs[k]);
    shards.push_back((dir / ("shard" + std::to_string(s) + ".h5")).string());
    ResultsFile(shards.back(), e).commit(part, /*with_header=*/true);
  }
  const std::string merged = (dir / "merged.h5").string();
  const Cost into_new = cost_of([&] { merge_results(merged, shards); });
  fs::copy_file(shards[0], dir / "existing.h5");
  const Cost into_existing = cost_of([&] {
    merge_results((dir / "existing.h5").string(), {shards.begin() + 1, shards.end()});
  });
  const size_t added = runs.size() - (runs.size() + 3) / 4;
  std::printf("\nmerge of 4 shards (normlab merge: read and check every file, one commit for all the runs)\n");
  std::printf("%-26s %6s %10s %10s %14s %14s\n", "", "runs", "wall ms", "CPU ms", "wall ms a run", "CPU ms a run");
  for (const auto& [what, cost, count] : {std::tuple{"into a new file", into_new, size_t(n)},
                                          std::tuple{"into a file with shard 0", into_existing, added}})
    std::printf("%-26s %6zu %10.1f %10.1f %14.2f %14.2f\n", what, count, 1e3 * cost.wall, 1e3 * cost.cpu,
                1e3 * cost.wall / double(count), 1e3 * cost.cpu / double(count));
  fs::remove_all(dir);
}

}  // namespace normlab
