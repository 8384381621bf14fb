#include "norm/layer_norm/layer_norm_cuda.h"

#include "norm/layer_norm/row_norm_cuda.cuh"

namespace normlab {

using namespace cuda_norm;

// Scalar math: layer_norm_forward (layer_norm.cpp); the kernels are row_norm_fwd_kernel and
// row_norm_fwd_stream_kernel (row_norm_cuda.cuh).
template <class T>
void layer_norm_forward_cuda(T* y, cuda_stat_t<T>* mean, cuda_stat_t<T>* rstd, T* h, const T* x, const T* r,
                             const T* gamma, const T* beta, int64_t M, int64_t N, double eps) {
  row_norm_forward_ptr<T, false>(y, mean, rstd, h, x, r, gamma, beta, M, N, eps, false);
}

// xhat = (x - mean) * rstd,  dxhat = dy * gamma
// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) (+ dh)
// dgamma = sum_rows(dy * xhat),  dbeta = sum_rows(dy)
// Scalar math: layer_norm_backward (layer_norm.cpp); the kernels are row_norm_bwd_kernel (dx
// and the partials in one pass), or row_norm_bwd_dx_stream_kernel + column_partials_kernel,
// then sum_partials.
template <class T>
void layer_norm_backward_cuda(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                              const cuda_stat_t<T>* mean, const cuda_stat_t<T>* rstd, const T* dh, int64_t M,
                              int64_t N) {
  row_norm_backward_ptr<T, false>(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, dh, M, N, false);
}

#define NL_LAYER_NORM_CUDA_INSTANTIATE(T)                                                                   \
  template void layer_norm_forward_cuda<T>(T*, cuda_stat_t<T>*, cuda_stat_t<T>*, T*, const T*, const T*,     \
                                           const T*, const T*, int64_t, int64_t, double);                    \
  template void layer_norm_backward_cuda<T>(T*, T*, T*, const T*, const T*, const T*, const cuda_stat_t<T>*, \
                                            const cuda_stat_t<T>*, const T*, int64_t, int64_t);
NL_LAYER_NORM_CUDA_INSTANTIATE(float)
NL_LAYER_NORM_CUDA_INSTANTIATE(double)
NL_LAYER_NORM_CUDA_INSTANTIATE(bf16)
#undef NL_LAYER_NORM_CUDA_INSTANTIATE

LayerNormStats layer_norm_forward_cuda(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in,
                                       double eps) {
  const char* who = "layer_norm_forward_cuda";
  check_eps(eps, who);
  const int64_t M = check_rows_cuda(x_in, who);
  const int64_t N = x_in.size(-1);
  check_param_cuda(gamma_in, N, x_in.dtype(), who, "gamma");
  check_param_cuda(beta_in, N, x_in.dtype(), who, "beta");
  const Tensor x = dense(x_in), gamma = dense(gamma_in), beta = dense(beta_in);
  const Device dev = x.device();
  const DType sd = stat_dtype(x.dtype());
  LayerNormStats out{empty(x.shape(), x.dtype(), dev), empty(leading_shape(x), sd, dev),
                     empty(leading_shape(x), sd, dev)};
  NL_CUDA_DISPATCH(x.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    layer_norm_forward_cuda<scalar_t>(out.y.data<scalar_t>(), out.mean.data<S>(), out.rstd.data<S>(), nullptr,
                                      x.data<scalar_t>(), nullptr, ptr_or_null_cuda<scalar_t>(gamma),
                                      ptr_or_null_cuda<scalar_t>(beta), M, N, eps);
  });
  return out;
}

LayerNormGrads layer_norm_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma_in,
                                        const Tensor& mean_in, const Tensor& rstd_in, bool want_dx, bool want_dgamma,
                                        bool want_dbeta) {
  const char* who = "layer_norm_backward_cuda";
  const int64_t M = check_rows_cuda(x_in, who);
  const int64_t N = x_in.size(-1);
  check_like_cuda(dy_in, x_in, who, "dy");
  check_param_cuda(gamma_in, N, x_in.dtype(), who, "gamma");
  check_stat_cuda(mean_in, M, x_in.dtype(), who, "mean");
  check_stat_cuda(rstd_in, M, x_in.dtype(), who, "rstd");
  const Tensor x = dense(x_in), dy = dense(dy_in), gamma = dense(gamma_in), mean = dense(mean_in),
               rstd = dense(rstd_in);
  const Device dev = x.device();
  LayerNormGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype(), dev);
  if (want_dgamma) g.dgamma = empty({N}, x.dtype(), dev);
  if (want_dbeta) g.dbeta = empty({N}, x.dtype(), dev);
  NL_CUDA_DISPATCH(x.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    layer_norm_backward_cuda<scalar_t>(ptr_or_null_cuda<scalar_t>(g.dx), ptr_or_null_cuda<scalar_t>(g.dgamma),
                                       ptr_or_null_cuda<scalar_t>(g.dbeta), dy.data<scalar_t>(), x.data<scalar_t>(),
                                       ptr_or_null_cuda<scalar_t>(gamma), mean.data<S>(), rstd.data<S>(), nullptr, M,
                                       N);
  });
  return g;
}

}  // namespace normlab
