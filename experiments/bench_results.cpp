// `normlab bench results F.h5`: what writing a results file costs as it grows (each commit
// copies the whole file, syncs it and renames it over the original) and what a merge costs.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "experiments/bench.h"
#include "experiments/results_file.h"

namespace normlab {

namespace fs = std::filesystem;

namespace {

double seconds_of(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
  std::printf("\ncommit (copy + add the run + sync + rename), by the runs in the file after it\n");
  std::printf("%-12s %14s %14s %16s\n", "runs", "ms / commit", "file MiB", "of a run's time");
  double window = 0;
  int first = 1;
  for (int k = 1; k <= n; ++k) {
    window += seconds_of([&] { grown.commit(runs[size_t(k - 1)]); });
    if ((k & (k - 1)) == 0 || k == n) {  // windows ending at powers of two, and at the last run
      const double ms = 1e3 * window / double(k - first + 1);
      std::printf("%-12s %14.2f %14.2f %15.2f%%\n", (std::to_string(first) + "-" + std::to_string(k)).c_str(), ms,
                  double(fs::file_size(grown.path())) / (1 << 20), run_seconds > 0 ? 0.1 * ms / run_seconds : 0.0);
      window = 0;
      first = k + 1;
    }
  }

  // The same runs as 4 shard files, merged into a new file and into one holding shard 0.
  std::vector<std::string> shards;
  for (int s = 0; s < 4; ++s) {
    std::vector<const RunResult*> part;
    for (size_t k = size_t(s); k < runs.size(); k += 4) part.push_back(&runs[k]);
    shards.push_back((dir / ("shard" + std::to_string(s) + ".h5")).string());
    ResultsFile shard(shards.back(), e);
    shard.write_header();
    shard.commit(part);
  }
  const std::string merged = (dir / "merged.h5").string();
  const double t_new = seconds_of([&] { merge_results(merged, shards); });
  fs::copy_file(shards[0], dir / "existing.h5");
  const double t_existing = seconds_of([&] {
    merge_results((dir / "existing.h5").string(), {shards.begin() + 1, shards.end()});
  });
  const size_t added = runs.size() - (runs.size() + 3) / 4;
  std::printf("\nmerge of 4 shards (normlab merge; one commit for all the runs)\n");
  std::printf("into a new file          %8.1f ms, %6.2f ms a run (%d runs)\n", 1e3 * t_new, 1e3 * t_new / n, n);
  std::printf("into a file with shard 0 %8.1f ms, %6.2f ms a run added (%zu runs)\n", 1e3 * t_existing,
              1e3 * t_existing / double(added), added);
  fs::remove_all(dir);
}

}  // namespace normlab
