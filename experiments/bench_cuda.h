// GPU bandwidth benchmark of the CUDA LayerNorm and RMSNorm kernels: forward and backward, f32
// and bf16, on shapes well past the GPU's L2, as achieved GB/s beside the same run's
// device-to-device copy bandwidth and cuDNN's LayerNorm time (when built with cuDNN).
#pragma once

namespace normlab {

// Prints the table with the GPU's name; without a GPU prints why and returns.
void run_cuda_bench();

}  // namespace normlab
