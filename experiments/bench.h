// Micro-benchmarks of the foundation: matmul backends side by side, the primitive cache, the
// autograd engine's per-node overhead, copy bandwidth, and a transformer training step of the
// given depth built from the ops; the toy transformer's training throughput.
#pragma once

#include <string>

namespace normlab {

void run_foundation_bench(int depth = 48);

// The norm kernels alone (run_foundation_bench's norm table): GB/s of every norm's forward and
// backward, a copy of the same bytes with the same threads and oneDNN's primitives, per shape.
void run_norm_bench();

// Training throughput of the toy transformer: depth 48 (d_model 32, 2 heads, seq 64, batch 8,
// AdamW) in tokens/s with its forward / backward / update split and its first step; then the
// first and a later training step of the same model at depth 1000 with recompute off and on,
// and at depth 1000 with d_model 128 with recompute on, each with its peak tensor memory.
void run_train_bench();

// The cost of writing a results file: `runs` copies of the runs of the results file `source`
// committed one at a time (ms per commit as the file grows, next to a run's training time),
// then the same runs as 4 shard files merged (ms per run).
void run_results_bench(const std::string& source, int runs);

}  // namespace normlab
