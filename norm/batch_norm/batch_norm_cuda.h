// BatchNorm (train with the running-statistics update, and eval) and the channel-norm backward
// it shares with GroupNorm, on the GPU: the CUDA kernels behind batch_norm_forward,
// batch_norm_backward and channel_norm_backward for tensors on a CUDA device (f32, bf16 and f64;
// fp32 accumulation for f32 and bf16). Same semantics as batch_norm.h; the saved mean and rstd
// are fp32 for f32 and bf16 inputs (f64 for f64); the running statistics keep x's dtype.
#pragma once

#include "norm/batch_norm/batch_norm.h"

namespace normlab {

BatchNormStats batch_norm_forward_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                       const Tensor& running_mean, const Tensor& running_var, bool training,
                                       double momentum, double eps);
BatchNormGrads batch_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                        const Tensor& rstd, bool training, bool want_dx, bool want_dgamma,
                                        bool want_dbeta);
// The backward of y = (x - mean[k]) * rstd[k] * gamma[c] + beta[c] over x [N, C, *] with the
// statistics k = map(n, c) of the batch (fixed_stats = false) or fixed ones (true).
NormGrads channel_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                     const Tensor& rstd, ChannelStatMap map, bool fixed_stats, bool want_dx,
                                     bool want_dgamma, bool want_dbeta, const char* who);
// y = (x - mean[k]) * rstd[k] * gamma[c] + beta[c] on the GPU, x [N, C, *] contiguous; mean and
// rstd hold map's statistics in stat dtype (fp32, f64 for f64). Used by GroupNorm's forward.
Tensor channel_norm_apply_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                               const Tensor& rstd, ChannelStatMap map);

}  // namespace normlab
