#include "norm/rms_norm/rms_norm_cuda.h"

#include "norm/layer_norm/row_norm_cuda.cuh"

namespace normlab {

using namespace cuda_norm;

// Scalar math: rms_norm_forward (rms_norm.cpp); the kernels are row_norm_fwd_kernel and
// row_norm_fwd_stream_kernel with kRms (row_norm_cuda.cuh).
template <class T>
void rms_norm_forward_cuda(T* y, cuda_stat_t<T>* rrms, T* h, const T* x, const T* r, const T* gamma, int64_t M,
                           int64_t N, double eps, bool unit_offset) {
  row_norm_forward_ptr<T, true>(y, nullptr, rrms, h, x, r, gamma, nullptr, M, N, eps, unit_offset);
}

// xhat = x * rrms,  g = gamma (or 1 + gamma with unit_offset),  dxhat = dy * g
// dx = rrms * (dxhat - xhat * mean(dxhat * xhat)) (+ dh)
// dgamma = sum_rows(dy * xhat)   (the same with unit_offset)
// Scalar math: rms_norm_backward (rms_norm.cpp); the kernels are row_norm_bwd_kernel with kRms
// (dx and the dgamma partials in one pass), or row_norm_bwd_dx_stream_kernel +
// column_partials_kernel, then sum_partials.
template <class T>
void rms_norm_backward_cuda(T* dx, T* dgamma, const T* dy, const T* x, const T* gamma, const cuda_stat_t<T>* rrms,
                            const T* dh, int64_t M, int64_t N, bool unit_offset) {
  row_norm_backward_ptr<T, true>(dx, dgamma, nullptr, dy, x, gamma, nullptr, rrms, dh, M, N, unit_offset);
}

#define NL_RMS_NORM_CUDA_INSTANTIATE(T)                                                                        \
  template void rms_norm_forward_cuda<T>(T*, cuda_stat_t<T>*, T*, const T*, const T*, const T*, int64_t, int64_t, \
                                         double, bool);                                                        \
  template void rms_norm_backward_cuda<T>(T*, T*, const T*, const T*, const T*, const cuda_stat_t<T>*, const T*, \
                                          int64_t, int64_t, bool);
NL_RMS_NORM_CUDA_INSTANTIATE(float)
NL_RMS_NORM_CUDA_INSTANTIATE(double)
NL_RMS_NORM_CUDA_INSTANTIATE(bf16)
#undef NL_RMS_NORM_CUDA_INSTANTIATE

RMSNormStats rms_norm_forward_cuda(const Tensor& x_in, const Tensor& gamma_in, double eps, bool unit_offset) {
  const char* who = "rms_norm_forward_cuda";
  check_eps(eps, who);
  const int64_t M = check_rows_cuda(x_in, who);
  const int64_t N = x_in.size(-1);
  check_param_cuda(gamma_in, N, x_in.dtype(), who, "gamma");
  const Tensor x = dense(x_in), gamma = dense(gamma_in);
  const Device dev = x.device();
  RMSNormStats out{empty(x.shape(), x.dtype(), dev), empty(leading_shape(x), stat_dtype(x.dtype()), dev)};
  NL_CUDA_DISPATCH(x.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    rms_norm_forward_cuda<scalar_t>(out.y.data<scalar_t>(), out.rrms.data<S>(), nullptr, x.data<scalar_t>(), nullptr,
                                    ptr_or_null_cuda<scalar_t>(gamma), M, N, eps, unit_offset);
  });
  return out;
}

RMSNormGrads rms_norm_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma_in,
                                    const Tensor& rrms_in, bool unit_offset, bool want_dx, bool want_dgamma) {
  const char* who = "rms_norm_backward_cuda";
  const int64_t M = check_rows_cuda(x_in, who);
  const int64_t N = x_in.size(-1);
  check_like_cuda(dy_in, x_in, who, "dy");
  check_param_cuda(gamma_in, N, x_in.dtype(), who, "gamma");
  check_stat_cuda(rrms_in, M, x_in.dtype(), who, "rrms");
  const Tensor x = dense(x_in), dy = dense(dy_in), gamma = dense(gamma_in), rrms = dense(rrms_in);
  const Device dev = x.device();
  RMSNormGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype(), dev);
  if (want_dgamma) g.dgamma = empty({N}, x.dtype(), dev);
  NL_CUDA_DISPATCH(x.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    rms_norm_backward_cuda<scalar_t>(ptr_or_null_cuda<scalar_t>(g.dx), ptr_or_null_cuda<scalar_t>(g.dgamma),
                                     dy.data<scalar_t>(), x.data<scalar_t>(), ptr_or_null_cuda<scalar_t>(gamma),
                                     rrms.data<S>(), nullptr, M, N, unit_offset);
  });
  return g;
}

}  // namespace normlab
