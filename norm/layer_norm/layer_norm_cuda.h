// LayerNorm on CUDA: the kernels of layer_norm.h for device tensors (f32, bf16 and f64 I/O;
// fp32 math and fp32 statistics for f32/bf16, f64 for f64). Built when NORMLAB_WITH_CUDA is
// defined; layer_norm_forward/backward call these for CUDA tensors.
#pragma once

#include <type_traits>

#include "norm/layer_norm/layer_norm.h"

namespace normlab {

// Statistics type of the CUDA kernels on element type T: double for double, float otherwise.
template <class T> using cuda_stat_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ---- Pointer level (device pointers; T is float, double or bf16) ----
// With r given, h = x + r (rounded to T) is written and normalized (the fused residual add);
// otherwise h and r are null. gamma and beta may be null.
template <class T>
void layer_norm_forward_cuda(T* y, cuda_stat_t<T>* mean, cuda_stat_t<T>* rstd, T* h, const T* x, const T* r,
                             const T* gamma, const T* beta, int64_t M, int64_t N, double eps);
// dx, dgamma, dbeta may each be null (not wanted); gamma may be null; dh (may be null) is
// added to dx. Deterministic: dgamma/dbeta from per-block partials summed in order.
template <class T>
void layer_norm_backward_cuda(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                              const cuda_stat_t<T>* mean, const cuda_stat_t<T>* rstd, const T* dh, int64_t M,
                              int64_t N);

// ---- Tensor level: as layer_norm_forward/backward; every tensor on CUDA. mean and rstd are
// f32 for f32 and bf16 inputs, f64 for f64. ----
LayerNormStats layer_norm_forward_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps);
LayerNormGrads layer_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                        const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta);

}  // namespace normlab
