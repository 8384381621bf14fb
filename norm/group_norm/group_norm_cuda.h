// GroupNorm on the GPU: the CUDA kernels behind group_norm_forward / group_norm_backward for
// tensors on a CUDA device (f32, bf16 and f64; fp32 accumulation for f32 and bf16). Same
// semantics as group_norm.h; the saved mean and rstd [N, G] are fp32 for f32 and bf16 inputs
// (f64 for f64). The backward is the channel-norm backward of batch_norm_cuda.h.
#pragma once

#include "norm/group_norm/group_norm.h"

namespace normlab {

GroupNormStats group_norm_forward_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t G,
                                       double eps);
GroupNormGrads group_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                        const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta);

}  // namespace normlab
