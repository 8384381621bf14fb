// ScaleNorm on the GPU: the CUDA kernels behind scale_norm_forward / scale_norm_backward for
// tensors on a CUDA device (f32, bf16 and f64; fp32 accumulation for f32 and bf16). Same
// semantics as scale_norm.h; the saved norm is fp32 for f32 and bf16 inputs (f64 for f64).
#pragma once

#include "norm/scale_norm/scale_norm.h"

namespace normlab {

ScaleNormStats scale_norm_forward_cuda(const Tensor& x, const Tensor& g, double eps);
ScaleNormGrads scale_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& norm,
                                        double eps, bool want_dx, bool want_dg);

}  // namespace normlab
