// DyT on the GPU: the CUDA kernels behind dyt_forward / dyt_backward for tensors on a CUDA
// device (f32, bf16 and f64; fp32 accumulation for f32 and bf16). Same semantics as the CPU
// Tensor-level functions in dyt.h; alpha stays on the device (read by the kernels).
#pragma once

#include "norm/dyt/dyt.h"

namespace normlab {

Tensor dyt_forward_cuda(const Tensor& x, const Tensor& alpha, const Tensor& gamma, const Tensor& beta, bool identity);
DyTGrads dyt_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& alpha, const Tensor& gamma, bool identity,
                           bool want_dx, bool want_dalpha, bool want_dgamma, bool want_dbeta);

}  // namespace normlab
