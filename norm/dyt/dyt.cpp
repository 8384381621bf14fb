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

namespace {
// dt/du = 1 - tanh(u)^2 given t = tanh(u). In f32, where t is near +-1, 1 - t^2 cancels (and is 0
// once t rounds to 1); there it is 4 / (e + 2 + 1/e) with e = e^{2|u|}, which does not.
template <class T>
inline T tanh_slope(T u, T t) {
  if constexpr (std::is_same_v<T, float>) {
    const float e = exp_f32(2.0f * std::fabs(u));
    return std::fabs(u) < 0.625f ? 1.0f - t * t : 4.0f / (e + 2.0f + 1.0f / e);
  } else {
    return T(1) - t * t;
  }
}
}  // namespace

// Scalar math: dyt_forward above, in T with fast_tanh (framework/fast_math.h): a plain loop the
// compiler vectorizes. S is the storage type of the rows and parameters, T = math_t<S> that of the
// math (layer_norm_rows.h): a bf16 or f16 value widens to f32 as it loads, y is rounded once as it is stored.
template <class S>
void dyt_forward_cpu(S* y, const S* x, double alpha, const S* gamma, const S* beta, int64_t M, int64_t N,
                     bool identity) {
  using T = math_t<S>;
  const T a = T(alpha);
  const std::vector<T> gv = as_values<T>(gamma, N, 1.0), bv = as_values<T>(beta, N, 0.0);
  const T* g = gv.data();
  const T* b = bv.data();
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const S* xi = x + i * N;
      S* yi = y + i * N;
      if (identity)
        for (int64_t j = 0; j < N; ++j) yi[j] = S(g[j] * (a * T(xi[j])) + b[j]);
      else
        for (int64_t j = 0; j < N; ++j) yi[j] = S(g[j] * fast_tanh(a * T(xi[j])) + b[j]);
    }
  });
}

// Scalar math: dyt_backward above, in T. One pass over the rows: dx, and into the block's
// partials (sum_rows: T partials per block, added in double in block order) dy * t, dy and
// du * x per feature (dalpha is the sum of the last over the features): elementwise loops the
// compiler vectorizes. S and T as in dyt_forward_cpu.
template <class S>
void dyt_backward_cpu(S* dx, S* dalpha, S* dgamma, S* dbeta, const S* dy, const S* x, double alpha, const S* gamma,
                      int64_t M, int64_t N, bool identity) {
  using T = math_t<S>;
  const T a = T(alpha);
  const std::vector<T> gv = as_values<T>(gamma, N, 1.0);
  // The row loop for each combination of the flags, so that each one is a straight loop that
  // vectorizes (no branch or possible aliasing inside).
  auto row = [&](int64_t i, T* __restrict acc, auto want_dx, auto want_acc, auto ident) {
    const S* __restrict xi = x + i * N;
    const S* __restrict dyi = dy + i * N;
    const T* __restrict g = gv.data();
    S* __restrict dxi = want_dx ? dx + i * N : nullptr;
    for (int64_t j = 0; j < N; ++j) {
      const T xj = T(xi[j]), dyj = T(dyi[j]);
      const T u = a * xj;
      T t, du;
      if constexpr (decltype(ident)::value) {
        t = u;
        du = dyj * g[j];
      } else {
        t = fast_tanh(u);
        du = dyj * g[j] * tanh_slope(u, t);
      }
      if constexpr (decltype(want_dx)::value) dxi[j] = S(du * a);
      if constexpr (decltype(want_acc)::value) {
        acc[j] += dyj * t;
        acc[N + j] += dyj;
        acc[2 * N + j] += du * xj;
      }
    }
  };
  auto run = [&](auto want_dx, auto want_acc, int64_t i, T* acc) {
    if (identity)
      row(i, acc, want_dx, want_acc, std::true_type{});
    else
      row(i, acc, want_dx, want_acc, std::false_type{});
  };
  if (!dalpha && !dgamma && !dbeta) {
    if (dx)
      parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) run(std::true_type{}, std::false_type{}, i, nullptr);
      });
    return;
  }
  // [0, N): dgamma, [N, 2N): dbeta, [2N, 3N): dalpha per feature
  const std::vector<double> acc = sum_rows<T>(M, 3 * N, [&](int64_t i, T* a_row) {
    if (dx)
      run(std::true_type{}, std::true_type{}, i, a_row);
    else
      run(std::false_type{}, std::true_type{}, i, a_row);
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
