// Micro-benchmarks of the foundation: matmul backends side by side, the primitive cache, the
// autograd engine's per-node overhead, copy bandwidth, and a transformer training step of the
// given depth built from the ops.
#pragma once

namespace normlab {

void run_foundation_bench(int depth = 48);

}  // namespace normlab
