// Micro-benchmarks of the foundation: matmul backends side by side, the primitive cache, the
// autograd engine's per-node overhead, and copy bandwidth.
#pragma once

namespace normlab {

void run_foundation_bench();

}  // namespace normlab
