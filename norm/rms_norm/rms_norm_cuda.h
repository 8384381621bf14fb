// RMSNorm on CUDA: the kernels of rms_norm.h for device tensors (f32, bf16 and f64 I/O; fp32
// math and fp32 rrms for f32/bf16, f64 for f64). Built when NORMLAB_WITH_CUDA is defined;
// rms_norm_forward/backward call these for CUDA tensors.
#pragma once

#include "norm/layer_norm/layer_norm_cuda.h"  // cuda_stat_t
#include "norm/rms_norm/rms_norm.h"

namespace normlab {

// ---- Pointer level (device pointers; T is float, double or bf16) ----
// With r given, h = x + r (rounded to T) is written and normalized (the fused residual add);
// otherwise h and r are null. gamma may be null; with unit_offset the scale is 1 + gamma.
template <class T>
void rms_norm_forward_cuda(T* y, cuda_stat_t<T>* rrms, T* h, const T* x, const T* r, const T* gamma, int64_t M,
                           int64_t N, double eps, bool unit_offset);
// dx and dgamma may be null (not wanted); dh (may be null) is added to dx. Deterministic.
template <class T>
void rms_norm_backward_cuda(T* dx, T* dgamma, const T* dy, const T* x, const T* gamma, const cuda_stat_t<T>* rrms,
                            const T* dh, int64_t M, int64_t N, bool unit_offset);

// ---- Tensor level: as rms_norm_forward/backward; every tensor on CUDA. rrms is f32 for f32
// and bf16 inputs, f64 for f64. ----
RMSNormStats rms_norm_forward_cuda(const Tensor& x, const Tensor& gamma, double eps, bool unit_offset);
RMSNormGrads rms_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& rrms,
                                    bool unit_offset, bool want_dx, bool want_dgamma);

}  // namespace normlab
