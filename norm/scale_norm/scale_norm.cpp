#include "norm/scale_norm/scale_norm.h"

#include "framework/simd.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/scale_norm/scale_norm_cuda.h"
#endif

namespace normlab {

template <class T>
void scale_norm_forward(T* y, T* norm, const T* x, const T* g, int64_t M, int64_t N, double eps) {
  const double gain = g ? double(g[0]) : 1.0;
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* xi = x + i * N;
      double ss = 0;
      for (int64_t j = 0; j < N; ++j) ss += double(xi[j]) * double(xi[j]);
      norm[i] = T(std::sqrt(ss));
      // The clamp reads the saved norm, so forward and backward always take the same branch.
      const double d = std::max(double(norm[i]), eps);
      T* yi = y + i * N;
      for (int64_t j = 0; j < N; ++j) yi[j] = T(gain * double(xi[j]) / d);
    }
  });
}

// d = max(norm, eps),  xhat = x / d,  y = g * xhat
// norm >= eps: d = ||x||, d d / dx_k = xhat_k, hence dx = (g / d) * (dy - xhat * sum(dy * xhat))
// norm <  eps: d = eps is constant,            hence dx = (g / d) * dy
// dg = sum over every row and feature of dy * xhat
template <class T>
void scale_norm_backward(T* dx, T* dg, const T* dy, const T* x, const T* g, const T* norm, int64_t M, int64_t N,
                         double eps) {
  const double gain = g ? double(g[0]) : 1.0;
  if (dx) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* xi = x + i * N;
        const T* dyi = dy + i * N;
        const bool clamped = double(norm[i]) < eps;
        const double d = clamped ? eps : double(norm[i]);
        double sum_dy_xhat = 0;
        if (!clamped)
          for (int64_t j = 0; j < N; ++j) sum_dy_xhat += double(dyi[j]) * double(xi[j]) / d;
        T* dxi = dx + i * N;
        for (int64_t j = 0; j < N; ++j) {
          const double xhat = double(xi[j]) / d;
          dxi[j] = T(gain / d * (double(dyi[j]) - xhat * sum_dy_xhat));
        }
      }
    });
  }
  if (dg) {
    const std::vector<double> acc = sum_rows(M, 1, [&](int64_t i, double* a) {
      const T* xi = x + i * N;
      const T* dyi = dy + i * N;
      const double d = std::max(double(norm[i]), eps);
      for (int64_t j = 0; j < N; ++j) a[0] += double(dyi[j]) * double(xi[j]) / d;
    });
    dg[0] = T(acc[0]);
  }
}

// Scalar math: scale_norm_forward above; the sum of squares in vector accumulators of T
// (simd::row_sums), then y = x * (g / d) from the row, still in L1. S is the storage type of the
// rows and g, T = math_t<S> that of the math (layer_norm_rows.h).
template <class S>
void scale_norm_forward_cpu(S* y, math_t<S>* norm, const S* x, const S* g, int64_t M, int64_t N, double eps) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const double gain = g ? double(to_math(g[0])) : 1.0;
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const S* xi = x + i * N;
      const T ss = simd::row_sum_squares(N, xi);
      norm[i] = T(std::sqrt(double(ss)));
      const V scale = simd::splat(T(gain / std::max(double(norm[i]), eps)));
      S* yi = y + i * N;
      simd::row_for<T>(N, [&](int64_t j, auto at) { at.store(yi + j, at(xi + j) * scale); });
    }
  });
}

// Scalar math: scale_norm_backward above. Per row: sum(dy * x) (vector accumulators of T), then
// dx = (g / d) * (dy - xhat * sum(dy * xhat)); the row's sum(dy * xhat) also goes into the
// block's dg partial (sum_rows: deterministic). S and T as in scale_norm_forward_cpu.
template <class S>
void scale_norm_backward_cpu(S* dx, S* dg, const S* dy, const S* x, const S* g, const math_t<S>* norm, int64_t M,
                             int64_t N, double eps) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const double gain = g ? double(to_math(g[0])) : 1.0;
  auto row = [&](int64_t i, T* acc) {
    const S* xi = x + i * N;
    const S* dyi = dy + i * N;
    const bool clamped = double(norm[i]) < eps;
    const double d = clamped ? eps : double(norm[i]);
    const double sum_dy_x = simd::row_sums<T, 1>(N, [&](int64_t j, auto at, V* sums) {
                              sums[0] += at(dyi + j) * at(xi + j);
                            }).v[0];
    if (acc) acc[0] += T(sum_dy_x / d);
    if (!dx) return;
    const V inv_d = simd::splat(T(1.0 / d)), scale = simd::splat(T(gain / d));
    const V sum_dy_xhat = simd::splat(T(clamped ? 0.0 : sum_dy_x / d));
    S* dxi = dx + i * N;
    simd::row_for<T>(N, [&](int64_t j, auto at) {
      at.store(dxi + j, scale * (at(dyi + j) - at(xi + j) * inv_d * sum_dy_xhat));
    });
  };
  if (!dg) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) row(i, nullptr);
    });
    return;
  }
  dg[0] = to_storage<S>(sum_rows<T>(M, 1, row)[0]);
}

template void scale_norm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, double);
template void scale_norm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t, double);
template void scale_norm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                         int64_t, int64_t, double);
template void scale_norm_backward<double>(double*, double*, const double*, const double*, const double*,
                                          const double*, int64_t, int64_t, double);
template void scale_norm_forward_cpu<float>(float*, float*, const float*, const float*, int64_t, int64_t, double);
template void scale_norm_forward_cpu<double>(double*, double*, const double*, const double*, int64_t, int64_t,
                                             double);
template void scale_norm_backward_cpu<float>(float*, float*, const float*, const float*, const float*, const float*,
                                             int64_t, int64_t, double);
template void scale_norm_backward_cpu<double>(double*, double*, const double*, const double*, const double*,
                                              const double*, int64_t, int64_t, double);
#define NL_INSTANTIATE_LOW_PRECISION(T)                                                                               \
  template void scale_norm_forward_cpu<T>(T*, float*, const T*, const T*, int64_t, int64_t, double);                  \
  template void scale_norm_backward_cpu<T>(T*, T*, const T*, const T*, const T*, const float*, int64_t, int64_t,      \
                                           double);
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_LOW_PRECISION)
#undef NL_INSTANTIATE_LOW_PRECISION

ScaleNormStats scale_norm_forward(const Tensor& x_in, const Tensor& g_in, double eps) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.device().type == DeviceType::cuda)
    return scale_norm_forward_cuda(x_in, g_in, eps);
#endif
  check_eps(eps, "scale_norm");
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "scale_norm: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "scale_norm");
  check_vector(g_in, 1, x_in.dtype(), "scale_norm", "g");
  const Tensor x = x_in.contiguous();
  ScaleNormStats out{empty(x.shape(), x.dtype()), empty(leading_shape(x), norm_stat_dtype(x.dtype()))};
  dispatch_norm_dtype(x.dtype(), "scale_norm", [&]<class scalar_t>(scalar_t) {
    scale_norm_forward_cpu<scalar_t>(out.y.data<scalar_t>(), out.norm.data<math_t<scalar_t>>(), x.data<scalar_t>(),
                                     ptr_or_null<scalar_t>(g_in), M, N, eps);
  });
  return out;
}

ScaleNormGrads scale_norm_backward(const Tensor& dy_in, const Tensor& x, const Tensor& g, const Tensor& norm,
                                   double eps, bool want_dx, bool want_dg) {
#ifdef NORMLAB_WITH_CUDA
  if (x.device().type == DeviceType::cuda)
    return scale_norm_backward_cuda(dy_in, x, g, norm, eps, want_dx, want_dg);
#endif
  const int64_t N = x.size(-1);
  const int64_t M = x.numel() / N;
  NL_CHECK(dy_in.shape() == x.shape(), "scale_norm_backward: dy has shape ", to_string(dy_in.shape()),
           " but x has ", to_string(x.shape()));
  check_stat(norm, M, x.dtype(), "scale_norm_backward", "norm");
  const Tensor dy = dy_in.contiguous(), xc = x.contiguous();
  ScaleNormGrads grads;
  if (want_dx) grads.dx = empty(x.shape(), x.dtype());
  if (want_dg) grads.dg = empty({1}, x.dtype());
  dispatch_norm_dtype(x.dtype(), "scale_norm_backward", [&]<class scalar_t>(scalar_t) {
    scale_norm_backward_cpu<scalar_t>(ptr_or_null<scalar_t>(grads.dx), ptr_or_null<scalar_t>(grads.dg),
                                      dy.data<scalar_t>(), xc.data<scalar_t>(), ptr_or_null<scalar_t>(g),
                                      norm.contiguous().data<math_t<scalar_t>>(), M, N, eps);
  });
  return grads;
}

std::vector<Tensor> ScaleNormNode::backward(const std::vector<Tensor>& grad_outputs) {
  const bool has_g = g.defined();
  ScaleNormGrads grads =
      scale_norm_backward(grad_outputs[0], x, g, norm, eps, needs_input_grad(0), has_g && needs_input_grad(1));
  std::vector<Tensor> out{grads.dx};
  if (has_g) out.push_back(grads.dg);
  return out;
}

void ScaleNormNode::release() {
  x = g = norm = Tensor();
  Node::release();
}

Variable scale_norm(const Variable& x, const Variable& g, double eps) {
  ScaleNormStats s = scale_norm_forward(x.data(), data_or_undefined(g), eps);
  return record(defined_inputs({x, g}), {s.y}, [&] {
    return std::make_shared<ScaleNormNode>(x.data(), data_or_undefined(g), s.norm, eps);
  })[0];
}

ScaleNorm::ScaleNorm(int64_t N_, double eps_, DType dtype) : N(N_), eps(eps_) {
  check_features(N, "ScaleNorm");
  check_eps(eps, "ScaleNorm");
  g = register_parameter("g", full({1}, std::sqrt(double(N)), dtype));
}

Variable ScaleNorm::forward(const Variable& x) {
  rows_of(x.data(), N, "ScaleNorm");
  return scale_norm(x, g, eps);
}

}  // namespace normlab
