#include "norm/layer_norm/layer_norm.h"

#include "framework/simd.h"
#include "norm/layer_norm/layer_norm_rows.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/layer_norm/layer_norm_cuda.h"
#endif

namespace normlab {

template <class T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t M, int64_t N,
                        double eps) {
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* xi = x + i * N;
      // Two passes (mean, then the centered sum of squares): exact for rows with a large mean.
      double sum = 0;
      for (int64_t j = 0; j < N; ++j) sum += double(xi[j]);
      const double mu = sum / double(N);
      double ss = 0;
      for (int64_t j = 0; j < N; ++j) {
        const double c = double(xi[j]) - mu;
        ss += c * c;
      }
      const double rs = 1.0 / std::sqrt(ss / double(N) + eps);
      mean[i] = T(mu);
      rstd[i] = T(rs);
      T* yi = y + i * N;
      for (int64_t j = 0; j < N; ++j) {
        const double xhat = (double(xi[j]) - mu) * rs;
        yi[j] = T(xhat * (gamma ? double(gamma[j]) : 1.0) + (beta ? double(beta[j]) : 0.0));
      }
    }
  });
}

// xhat = (x - mean) * rstd,  dxhat = dy * gamma
// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// dgamma = sum_rows(dy * xhat),  dbeta = sum_rows(dy)
template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                         const T* rstd, int64_t M, int64_t N) {
  if (dx) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* xi = x + i * N;
        const T* dyi = dy + i * N;
        const double mu = double(mean[i]), rs = double(rstd[i]);
        double sum_dxhat = 0, sum_dxhat_xhat = 0;
        for (int64_t j = 0; j < N; ++j) {
          const double xhat = (double(xi[j]) - mu) * rs;
          const double dxhat = double(dyi[j]) * (gamma ? double(gamma[j]) : 1.0);
          sum_dxhat += dxhat;
          sum_dxhat_xhat += dxhat * xhat;
        }
        const double mean_dxhat = sum_dxhat / double(N), mean_dxhat_xhat = sum_dxhat_xhat / double(N);
        T* dxi = dx + i * N;
        for (int64_t j = 0; j < N; ++j) {
          const double xhat = (double(xi[j]) - mu) * rs;
          const double dxhat = double(dyi[j]) * (gamma ? double(gamma[j]) : 1.0);
          dxi[j] = T(rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
        }
      }
    });
  }
  if (dgamma || dbeta) {
    // acc[0..N): dgamma, acc[N..2N): dbeta
    const std::vector<double> acc = sum_rows(M, 2 * N, [&](int64_t i, double* a) {
      const T* xi = x + i * N;
      const T* dyi = dy + i * N;
      const double mu = double(mean[i]), rs = double(rstd[i]);
      for (int64_t j = 0; j < N; ++j) {
        a[j] += double(dyi[j]) * (double(xi[j]) - mu) * rs;
        a[N + j] += double(dyi[j]);
      }
    });
    for (int64_t j = 0; j < N; ++j) {
      if (dgamma) dgamma[j] = T(acc[size_t(j)]);
      if (dbeta) dbeta[j] = T(acc[size_t(N + j)]);
    }
  }
}

// Scalar math: layer_norm_forward above, by layer_norm_rows (layer_norm_rows.h).
template <class T>
void layer_norm_forward_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                            int64_t M, int64_t N, double eps) {
  using A = math_t<T>;
  const std::vector<A> g = as_values<A>(gamma, N, 1.0), b = as_values<A>(beta, N, 0.0);
  const A* gp = g.data();
  const A* bp = b.data();
  layer_norm_rows(y, mean, rstd, x, M, N, eps, [&](int64_t) { return std::pair{gp, bp}; });
}

// Scalar math: layer_norm_backward above, by layer_norm_rows_backward (layer_norm_rows.h), its
// partials [0, N): dgamma, [N, 2N): dbeta.
template <class T>
void layer_norm_backward_cpu(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t M, int64_t N, const T* dx_add) {
  using A = math_t<T>;
  const std::vector<A> g = as_values<A>(gamma, N, 1.0);
  const A* gp = g.data();
  const std::vector<double> acc = layer_norm_rows_backward(dx, dy, x, mean, rstd, M, N, dx_add,
                                                           dgamma || dbeta ? 2 * N : 0,
                                                           [&](int64_t) { return std::pair{gp, int64_t(0)}; });
  if (acc.empty()) return;
  for (int64_t j = 0; j < N; ++j) {
    if (dgamma) dgamma[j] = to_storage<T>(acc[size_t(j)]);
    if (dbeta) dbeta[j] = to_storage<T>(acc[size_t(N + j)]);
  }
}

template void layer_norm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                        int64_t, double);
template void layer_norm_forward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         int64_t, int64_t, double);
template void layer_norm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                         const float*, const float*, int64_t, int64_t);
template void layer_norm_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                          const double*, const double*, int64_t, int64_t);
template void layer_norm_forward_cpu<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                            int64_t, double);
template void layer_norm_forward_cpu<double>(double*, double*, double*, const double*, const double*, const double*,
                                             int64_t, int64_t, double);
template void layer_norm_backward_cpu<float>(float*, float*, float*, const float*, const float*, const float*,
                                             const float*, const float*, int64_t, int64_t, const float*);
template void layer_norm_backward_cpu<double>(double*, double*, double*, const double*, const double*,
                                              const double*, const double*, const double*, int64_t, int64_t,
                                              const double*);
#define NL_INSTANTIATE_LOW_PRECISION(T)                                                                               \
  template void layer_norm_forward_cpu<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t,         \
                                          double);                                                                    \
  template void layer_norm_backward_cpu<T>(T*, T*, T*, const T*, const T*, const T*, const float*, const float*,      \
                                           int64_t, int64_t, const T*);
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_LOW_PRECISION)
#undef NL_INSTANTIATE_LOW_PRECISION

LayerNormStats layer_norm_forward(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in, double eps) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.defined() && x_in.device().type == DeviceType::cuda)
    return layer_norm_forward_cuda(x_in, gamma_in, beta_in, eps);
#endif
  check_eps(eps, "layer_norm");
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "layer_norm: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "layer_norm");
  check_vector(gamma_in, N, x_in.dtype(), "layer_norm", "gamma");
  check_vector(beta_in, N, x_in.dtype(), "layer_norm", "beta");
  const Tensor x = x_in.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  const Tensor beta = beta_in.defined() ? beta_in.contiguous() : Tensor();
  const DType sd = norm_stat_dtype(x.dtype());
  LayerNormStats out{empty(x.shape(), x.dtype()), empty(leading_shape(x), sd), empty(leading_shape(x), sd)};
  dispatch_norm_dtype(x.dtype(), "layer_norm", [&]<class scalar_t>(scalar_t) {
    using S = math_t<scalar_t>;
    layer_norm_forward_cpu<scalar_t>(out.y.data<scalar_t>(), out.mean.data<S>(), out.rstd.data<S>(),
                                     x.data<scalar_t>(), ptr_or_null<scalar_t>(gamma), ptr_or_null<scalar_t>(beta), M,
                                     N, eps);
  });
  return out;
}

LayerNormGrads layer_norm_backward(const Tensor& dy_in, const Tensor& x, const Tensor& gamma_in, const Tensor& mean,
                                   const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta) {
#ifdef NORMLAB_WITH_CUDA
  if (x.defined() && x.device().type == DeviceType::cuda)
    return layer_norm_backward_cuda(dy_in, x, gamma_in, mean, rstd, want_dx, want_dgamma, want_dbeta);
#endif
  const int64_t N = x.size(-1);
  const int64_t M = x.numel() / N;
  NL_CHECK(dy_in.shape() == x.shape(), "layer_norm_backward: dy has shape ", to_string(dy_in.shape()),
           " but x has ", to_string(x.shape()));
  check_stat(mean, M, x.dtype(), "layer_norm_backward", "mean");
  check_stat(rstd, M, x.dtype(), "layer_norm_backward", "rstd");
  const Tensor dy = dy_in.contiguous(), xc = x.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  LayerNormGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype());
  if (want_dgamma) g.dgamma = empty({N}, x.dtype());
  if (want_dbeta) g.dbeta = empty({N}, x.dtype());
  dispatch_norm_dtype(x.dtype(), "layer_norm_backward", [&]<class scalar_t>(scalar_t) {
    using S = math_t<scalar_t>;
    layer_norm_backward_cpu<scalar_t>(ptr_or_null<scalar_t>(g.dx), ptr_or_null<scalar_t>(g.dgamma),
                                      ptr_or_null<scalar_t>(g.dbeta), dy.data<scalar_t>(), xc.data<scalar_t>(),
                                      ptr_or_null<scalar_t>(gamma), mean.contiguous().data<S>(),
                                      rstd.contiguous().data<S>(), M, N);
  });
  return g;
}

NormGrads LayerNormNode::grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const {
  return layer_norm_backward(dy, x, gamma, mean, rstd, want_dx, want_dgamma, want_dbeta);
}

Variable layer_norm(const Variable& x, const Variable& gamma, const Variable& beta, double eps) {
  LayerNormStats s = layer_norm_forward(x.data(), data_or_undefined(gamma), data_or_undefined(beta), eps);
  return affine_norm_output(x, gamma, beta, s.y, [&] {
    return std::make_shared<LayerNormNode>(x.data(), data_or_undefined(gamma), s.mean, s.rstd, beta.defined());
  });
}

LayerNorm::LayerNorm(int64_t N_, double eps_, bool elementwise_affine, bool with_bias, DType dtype)
    : N(N_), eps(eps_) {
  check_features(N, "LayerNorm");
  check_eps(eps, "LayerNorm");
  if (elementwise_affine) {
    weight = register_parameter("weight", ones({N}, dtype));
    if (with_bias) bias = register_parameter("bias", zeros({N}, dtype));
  }
}

Variable LayerNorm::forward(const Variable& x) {
  rows_of(x.data(), N, "LayerNorm");
  return layer_norm(x, weight, bias, eps);
}

}  // namespace normlab
