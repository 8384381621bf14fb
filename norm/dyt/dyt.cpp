#include "norm/dyt/dyt.h"

#include "framework/fast_math.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/dyt/dyt_cuda.h"
#endif

namespace normlab {

namespace {
// t = tanh(u) and dt/du = 1 - t^2; the identity ablation has t = u and dt/du = 1.
inline double squash(double u, bool identity) { return identity ? u : std::tanh(u); }
inline double squash_slope(double t, bool identity) { return identity ? 1.0 : 1.0 - t * t; }
}  // namespace

template <class T>
void dyt_forward(T* y, const T* x, double alpha, const T* gamma, const T* beta, int64_t M, int64_t N, bool identity) {
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* xi = x + i * N;
      T* yi = y + i * N;
      for (int64_t j = 0; j < N; ++j)
        yi[j] = T(double(gamma[j]) * squash(alpha * double(xi[j]), identity) + double(beta[j]));
    }
  });
}

// u = alpha * x,  t = tanh(u) (identity: t = u),  dt_du = 1 - t^2 (identity: 1)
// du = dy * gamma * dt_du
// dx = du * alpha,  dalpha = sum_rows(du * x),  dgamma = sum_rows(dy * t),  dbeta = sum_rows(dy)
// (So dalpha = sum(dx * x) / alpha: the DyT gradient-of-alpha identity the tests check.)
template <class T>
void dyt_backward(T* dx, T* dalpha, T* dgamma, T* dbeta, const T* dy, const T* x, double alpha, const T* gamma,
                  int64_t M, int64_t N, bool identity) {
  if (dx) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* xi = x + i * N;
        const T* dyi = dy + i * N;
        T* dxi = dx + i * N;
        for (int64_t j = 0; j < N; ++j) {
          const double t = squash(alpha * double(xi[j]), identity);
          const double du = double(dyi[j]) * double(gamma[j]) * squash_slope(t, identity);
          dxi[j] = T(du * alpha);
        }
      }
    });
  }
  if (dalpha || dgamma || dbeta) {
    // acc[0..N): dgamma, acc[N..2N): dbeta, acc[2N]: dalpha
    const std::vector<double> acc = sum_rows(M, 2 * N + 1, [&](int64_t i, double* a) {
      const T* xi = x + i * N;
      const T* dyi = dy + i * N;
      double row_dalpha = 0;
      for (int64_t j = 0; j < N; ++j) {
        const double t = squash(alpha * double(xi[j]), identity);
        const double du = double(dyi[j]) * double(gamma[j]) * squash_slope(t, identity);
        row_dalpha += du * double(xi[j]);
        a[j] += double(dyi[j]) * t;
        a[N + j] += double(dyi[j]);
      }
      a[2 * N] += row_dalpha;
    });
    for (int64_t j = 0; j < N; ++j) {
      if (dgamma) dgamma[j] = T(acc[size_t(j)]);
      if (dbeta) dbeta[j] = T(acc[size_t(N + j)]);
    }
    if (dalpha) dalpha[0] = T(acc[size_t(2 * N)]);
  }
}

// Scalar math: dyt_forward above, in T. f32 (and bf16/f16 storage, widened as it loads and y
// rounded once as it is stored) in vectors of 16 (framework/simd.h) with tanh_rational_f32
// (framework/fast_math.h: no exp, one divide, within 4e-7 of tanh); f64 a plain loop on std::tanh.
template <class S>
void dyt_forward_cpu(S* y, const S* x, double alpha, const S* gamma, const S* beta, int64_t M, int64_t N,
                     bool identity) {
  using T = math_t<S>;
  const std::vector<T> gv = as_values<T>(gamma, N, 1.0), bv = as_values<T>(beta, N, 0.0);
  const T* g = gv.data();
  const T* b = bv.data();
  if constexpr (std::is_same_v<T, double>) {
    const T a = T(alpha);
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const S* xi = x + i * N;
        S* yi = y + i * N;
        for (int64_t j = 0; j < N; ++j) yi[j] = S(g[j] * (identity ? a * xi[j] : std::tanh(a * xi[j])) + b[j]);
      }
    });
  } else {
    using V = simd::Vec<float>;
    const V a = simd::splat(float(alpha));
    simd::with_row_length(N, [&](auto n) {
      parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) {
          const S* xi = x + i * N;
          S* yi = y + i * N;
          if (identity)
            simd::row_for<float>(n, [&](int64_t j, auto at) {
              at.store(yi + j, at(g + j) * (a * at(xi + j)) + at(b + j));
            });
          else
            simd::row_for<float>(n, [&](int64_t j, auto at) {
              at.store(yi + j, at(g + j) * tanh_rational_f32(a * at(xi + j)) + at(b + j));
            });
        }
      });
    });
  }
}

// Scalar math: dyt_backward above, in T. One pass over the rows: dx, and into the block's
// partials (sum_rows: T partials per block, added in double in block order) dy * t, dy and
// du * x per feature (dalpha is the sum of the last over the features). f32 (and bf16/f16
// storage) in vectors of 16 with tanh_with_slope_f32 (framework/fast_math.h): t and dt/du from one
// exp and one divide, dt/du accurate where t rounds to +-1; f64 on std::tanh and 1 - t^2.
template <class S>
void dyt_backward_cpu(S* dx, S* dalpha, S* dgamma, S* dbeta, const S* dy, const S* x, double alpha, const S* gamma,
                      int64_t M, int64_t N, bool identity) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const std::vector<T> gv = as_values<T>(gamma, N, 1.0);
  const T* g = gv.data();
  // t = tanh(u) (identity: u) and du = dy * gamma * dt/du for a vector of values.
  auto squash = [](V u, V dyg, V& du, auto ident) {
    if constexpr (decltype(ident)::value) {
      du = dyg;
      return u;
    } else if constexpr (std::is_same_v<T, float>) {
      V slope;
      const V t = tanh_with_slope_f32(u, slope);
      du = dyg * slope;
      return t;
    } else {
      V t{};
      for (int64_t l = 0; l < simd::lanes<T>; ++l) t[l] = std::tanh(u[l]);
      du = dyg * (T(1) - t * t);
      return t;
    }
  };
  const V a = simd::splat(T(alpha));
  // Row i for each combination of the flags, so that each is a straight loop with no branch:
  // dx when want_dx; into acc when want_acc: [0, N) dy * t, [N, 2N) dy, [2N, 3N) du * x per feature.
  // Everything the loop reads is in locals and the pointers are __restrict, so that its stores
  // (dx, acc) do not force reloads of alpha or the pointers each step.
  auto row = [&](int64_t i, T* __restrict acc, auto n, auto want_dx, auto want_acc, auto ident) {
    const S* __restrict xi = x + i * N;
    const S* __restrict dyi = dy + i * N;
    const T* __restrict gp = g;
    S* __restrict dxi = decltype(want_dx)::value ? dx + i * N : nullptr;
    T* __restrict acc_dy = decltype(want_acc)::value ? acc + N : nullptr;
    T* __restrict acc_dux = decltype(want_acc)::value ? acc + 2 * N : nullptr;
    const V av = a;
    simd::row_for<T>(n, [&](int64_t j, auto at) {
      const V xj = at(xi + j), dyj = at(dyi + j);
      V du;
      const V t = squash(av * xj, dyj * at(gp + j), du, ident);
      if constexpr (decltype(want_dx)::value) at.store(dxi + j, du * av);
      if constexpr (decltype(want_acc)::value) {
        at.store(acc + j, at(acc + j) + dyj * t);
        at.store(acc_dy + j, at(acc_dy + j) + dyj);
        at.store(acc_dux + j, at(acc_dux + j) + du * xj);
      }
    });
  };
  auto run = [&](int64_t i, T* acc, auto n, auto want_dx, auto want_acc) {
    if (identity)
      row(i, acc, n, want_dx, want_acc, std::true_type{});
    else
      row(i, acc, n, want_dx, want_acc, std::false_type{});
  };
  if (!dalpha && !dgamma && !dbeta) {
    if (dx)
      simd::with_row_length(N, [&](auto n) {
        parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
          for (int64_t i = r0; i < r1; ++i) run(i, nullptr, n, std::true_type{}, std::false_type{});
        });
      });
    return;
  }
  std::vector<double> acc;
  simd::with_row_length(N, [&](auto n) {
    acc = sum_rows<T>(M, 3 * N, [&](int64_t i, T* a_row) {
      if (dx)
        run(i, a_row, n, std::true_type{}, std::true_type{});
      else
        run(i, a_row, n, std::false_type{}, std::true_type{});
    });
  });
  double sum_dalpha = 0;
  for (int64_t j = 0; j < N; ++j) {
    if (dgamma) dgamma[j] = to_storage<S>(acc[size_t(j)]);
    if (dbeta) dbeta[j] = to_storage<S>(acc[size_t(N + j)]);
    sum_dalpha += acc[size_t(2 * N + j)];
  }
  if (dalpha) dalpha[0] = to_storage<S>(sum_dalpha);
}

template void dyt_forward<float>(float*, const float*, double, const float*, const float*, int64_t, int64_t, bool);
template void dyt_forward<double>(double*, const double*, double, const double*, const double*, int64_t, int64_t,
                                  bool);
template void dyt_backward<float>(float*, float*, float*, float*, const float*, const float*, double, const float*,
                                  int64_t, int64_t, bool);
template void dyt_backward<double>(double*, double*, double*, double*, const double*, const double*, double,
                                   const double*, int64_t, int64_t, bool);
template void dyt_forward_cpu<float>(float*, const float*, double, const float*, const float*, int64_t, int64_t,
                                     bool);
template void dyt_forward_cpu<double>(double*, const double*, double, const double*, const double*, int64_t, int64_t,
                                      bool);
template void dyt_backward_cpu<float>(float*, float*, float*, float*, const float*, const float*, double,
                                      const float*, int64_t, int64_t, bool);
template void dyt_backward_cpu<double>(double*, double*, double*, double*, const double*, const double*, double,
                                       const double*, int64_t, int64_t, bool);
#define NL_INSTANTIATE_LOW_PRECISION(T)                                                                               \
  template void dyt_forward_cpu<T>(T*, const T*, double, const T*, const T*, int64_t, int64_t, bool);                 \
  template void dyt_backward_cpu<T>(T*, T*, T*, T*, const T*, const T*, double, const T*, int64_t, int64_t, bool);
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_LOW_PRECISION)
#undef NL_INSTANTIATE_LOW_PRECISION

namespace {
// Checks alpha ([1], x's dtype, finite) and returns its value.
double alpha_value(const Tensor& alpha, DType dtype, const char* who) {
  NL_CHECK(alpha.defined(), who, ": alpha is undefined");
  check_vector(alpha, 1, dtype, who, "alpha");
  const double a = alpha.item();
  NL_CHECK(std::isfinite(a), who, ": alpha must be finite, got ", a);
  return a;
}
}  // namespace

Tensor dyt_forward(const Tensor& x_in, const Tensor& alpha, const Tensor& gamma_in, const Tensor& beta_in,
                   bool identity) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.device().type == DeviceType::cuda)
    return dyt_forward_cuda(x_in, alpha, gamma_in, beta_in, identity);
#endif
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "dyt: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "dyt");
  const double a = alpha_value(alpha, x_in.dtype(), "dyt");
  NL_CHECK(gamma_in.defined() && beta_in.defined(), "dyt: gamma and beta are required");
  check_vector(gamma_in, N, x_in.dtype(), "dyt", "gamma");
  check_vector(beta_in, N, x_in.dtype(), "dyt", "beta");
  const Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  Tensor y = empty(x.shape(), x.dtype());
  dispatch_norm_dtype(x.dtype(), "dyt", [&]<class scalar_t>(scalar_t) {
    dyt_forward_cpu<scalar_t>(y.data<scalar_t>(), x.data<scalar_t>(), a, gamma.data<scalar_t>(),
                              beta.data<scalar_t>(), M, N, identity);
  });
  return y;
}

DyTGrads dyt_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& alpha, const Tensor& gamma_in,
                      bool identity, bool want_dx, bool want_dalpha, bool want_dgamma, bool want_dbeta) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.device().type == DeviceType::cuda)
    return dyt_backward_cuda(dy_in, x_in, alpha, gamma_in, identity, want_dx, want_dalpha, want_dgamma, want_dbeta);
#endif
  const int64_t N = x_in.size(-1);
  const int64_t M = x_in.numel() / N;
  NL_CHECK(dy_in.shape() == x_in.shape(), "dyt_backward: dy has shape ", to_string(dy_in.shape()), " but x has ",
           to_string(x_in.shape()));
  const double a = alpha_value(alpha, x_in.dtype(), "dyt_backward");
  const Tensor dy = dy_in.contiguous(), x = x_in.contiguous(), gamma = gamma_in.contiguous();
  DyTGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype());
  if (want_dalpha) g.dalpha = empty({1}, x.dtype());
  if (want_dgamma) g.dgamma = empty({N}, x.dtype());
  if (want_dbeta) g.dbeta = empty({N}, x.dtype());
  dispatch_norm_dtype(x.dtype(), "dyt_backward", [&]<class scalar_t>(scalar_t) {
    dyt_backward_cpu<scalar_t>(ptr_or_null<scalar_t>(g.dx), ptr_or_null<scalar_t>(g.dalpha),
                               ptr_or_null<scalar_t>(g.dgamma), ptr_or_null<scalar_t>(g.dbeta), dy.data<scalar_t>(),
                               x.data<scalar_t>(), a, gamma.data<scalar_t>(), M, N, identity);
  });
  return g;
}

std::vector<Tensor> DyTNode::backward(const std::vector<Tensor>& grad_outputs) {
  DyTGrads g = dyt_backward(grad_outputs[0], x, alpha, gamma, identity, needs_input_grad(0), needs_input_grad(1),
                            needs_input_grad(2), needs_input_grad(3));
  return {g.dx, g.dalpha, g.dgamma, g.dbeta};
}

void DyTNode::release() {
  x = alpha = gamma = Tensor();
  Node::release();
}

Variable dyt(const Variable& x, const Variable& alpha, const Variable& gamma, const Variable& beta, bool identity) {
  NL_CHECK(x.defined() && alpha.defined() && gamma.defined() && beta.defined(),
           "dyt: x, alpha, gamma and beta are all required");
  Tensor y = dyt_forward(x.data(), alpha.data(), gamma.data(), beta.data(), identity);
  return record({x, alpha, gamma, beta}, {y}, [&] {
    return std::make_shared<DyTNode>(x.data(), alpha.data(), gamma.data(), identity);
  })[0];
}

DyT::DyT(int64_t N_, double alpha0, bool identity_, DType dtype) : N(N_), identity(identity_) {
  check_features(N, "DyT");
  NL_CHECK(std::isfinite(alpha0), "DyT: alpha0 must be finite, got ", alpha0);
  alpha = register_parameter("alpha", full({1}, alpha0, dtype));
  weight = register_parameter("weight", ones({N}, dtype));
  bias = register_parameter("bias", zeros({N}, dtype));
}

Variable DyT::forward(const Variable& x) {
  rows_of(x.data(), N, "DyT");
  return dyt(x, alpha, weight, bias, identity);
}

}  // namespace normlab
