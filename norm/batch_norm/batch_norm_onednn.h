// BatchNorm in training mode through oneDNN 2.6 (dnnl::batch_normalization_forward / _backward,
// f32): a parity peer of batch_norm_forward (training) / batch_norm_backward. oneDNN saves the
// biased batch VARIANCE per channel, not rstd: rstd = 1 / sqrt(variance + eps). It keeps no
// running statistics.
#pragma once

#include "norm/batch_norm/batch_norm.h"
#include "norm/layer_norm/layer_norm_onednn.h"

namespace normlab {

// x [N, C] or [N, C, L] f32 (more than one value per channel); gamma and beta [C] may be
// undefined. mean and variance are [C].
NormStatsOnednn batch_norm_forward_onednn(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps);
// prop_kind::backward: dx, and dgamma / dbeta when gamma / beta are defined (oneDNN reads beta
// although dx does not depend on it), from the batch mean and variance the forward saved.
BatchNormGrads batch_norm_backward_onednn(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& mean, const Tensor& variance, double eps);

}  // namespace normlab
