// Fused residual-add + LayerNorm / RMSNorm on CUDA: the Tensor-level functions of
// fused_add_norm.h for device tensors, on the LayerNorm and RMSNorm kernels' residual forms
// (h = x + r is written and normalized in one pass; backward adds dh to the norm's dx in the
// same pass). f32, bf16 and f64; statistics f32 for f32/bf16, f64 for f64.
#pragma once

#include "norm/fused_add_norm/fused_add_norm.h"

namespace normlab {

AddLayerNormStats add_layer_norm_forward_cuda(const Tensor& x, const Tensor& r, const Tensor& gamma,
                                              const Tensor& beta, double eps);
AddLayerNormGrads add_layer_norm_backward_cuda(const Tensor& dh, const Tensor& dy, const Tensor& h,
                                               const Tensor& gamma, const Tensor& mean, const Tensor& rstd,
                                               bool want_dh_total, bool want_dgamma, bool want_dbeta);
AddRMSNormStats add_rms_norm_forward_cuda(const Tensor& x, const Tensor& r, const Tensor& gamma, double eps,
                                          bool unit_offset);
AddRMSNormGrads add_rms_norm_backward_cuda(const Tensor& dh, const Tensor& dy, const Tensor& h, const Tensor& gamma,
                                           const Tensor& rrms, bool unit_offset, bool want_dh_total,
                                           bool want_dgamma);

}  // namespace normlab
