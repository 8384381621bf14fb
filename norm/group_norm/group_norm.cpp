#include "norm/group_norm/group_norm.h"

#include "norm/layer_norm/layer_norm_rows.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/group_norm/group_norm_cuda.h"
#endif

namespace normlab {

namespace {
// Group g of sample n normalizes rows n * C + g * C/G .. + C/G of S values: k = n * G + g.
ChannelStatMap per_group(int64_t C, int64_t G) { return ChannelStatMap{G, C / G}; }
}  // namespace

// Each (sample, group) is a contiguous block of C/G * S values, normalized by one thread in two
// passes (mean, then the centered sum of squares): deterministic and exact for a large mean.
template <class T>
void group_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N, int64_t C,
                        int64_t S, int64_t G, double eps) {
  const int64_t K = C / G * S;  // values per group
  std::vector<double> mu(size_t(N * G)), rs(size_t(N * G));
  parallel_for(0, N * G, row_grain(K), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const T* xk = x + k * K;
      double sum = 0, ss = 0;
      for (int64_t j = 0; j < K; ++j) sum += double(xk[j]);
      const double m = sum / double(K);
      for (int64_t j = 0; j < K; ++j) ss += (double(xk[j]) - m) * (double(xk[j]) - m);
      mu[size_t(k)] = m;
      rs[size_t(k)] = 1.0 / std::sqrt(ss / double(K) + eps);
      mean[k] = T(m);
      rstd[k] = T(rs[size_t(k)]);
    }
  });
  channel_norm_apply(y, x, gamma, beta, mu.data(), rs.data(), N, C, S, per_group(C, G));
}

namespace {
// gamma and beta spread over one sample's C * S values (gamma_c repeated S times) in A, so that
// each (sample, group) is a row of K = C/G * S values with its own gamma and beta, starting at
// (k % G) * K for row k = n * G + g. T may be bf16 or f16 (widened).
template <class A, class T>
std::pair<std::vector<A>, std::vector<A>> spread_over_positions(const T* gamma, const T* beta, int64_t C, int64_t S) {
  const std::vector<A> gc = as_values<A>(gamma, C, 1.0), bc = as_values<A>(beta, C, 0.0);
  std::vector<A> g(size_t(C * S)), b(size_t(C * S));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t s = 0; s < S; ++s) {
      g[size_t(c * S + s)] = gc[size_t(c)];
      b[size_t(c * S + s)] = bc[size_t(c)];
    }
  return {std::move(g), std::move(b)};
}
}  // namespace

// Scalar math: group_norm_forward above. Each (sample, group) is a row of K = C/G * S values that
// layer_norm_rows normalizes, with gamma and beta spread over the row (spread_over_positions). S
// is the storage type (float, double, bf16 or f16), math_t<S> that of the math and statistics.
template <class T>
void group_norm_forward_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                            int64_t N, int64_t C, int64_t S, int64_t G, double eps) {
  using A = math_t<T>;
  const int64_t K = C / G * S;
  const auto [g, b] = spread_over_positions<A>(gamma, beta, C, S);
  const A* gp = g.data();
  const A* bp = b.data();
  layer_norm_rows(y, mean, rstd, x, N * G, K, eps, [&](int64_t k) {
    const int64_t off = (k % G) * K;
    return std::pair{gp + off, bp + off};
  });
}

// Statistics per (n, g) over its count = C/G * S values (see channel_norm_backward):
// xhat = (x - mean_ng) * rstd_ng,  dxhat = dy * gamma_c
// dx = rstd_ng * (dxhat - mean_ng(dxhat) - xhat * mean_ng(dxhat * xhat))
// dgamma_c = sum_{n,s} dy * xhat,  dbeta_c = sum_{n,s} dy
template <class T>
void group_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                         const T* rstd, int64_t N, int64_t C, int64_t S, int64_t G) {
  channel_norm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, N, C, S, per_group(C, G), false);
}

// Scalar math: group_norm_backward above. Each (sample, group) a row of K = C/G * S values for
// layer_norm_rows_backward, with gamma spread over the row; the dgamma/dbeta terms go to partials
// of one sample's C * S positions ([0, CS): dy * xhat, [CS, 2 CS): dy; row k at (k % G) * K),
// then each channel sums its S positions in double.
template <class T>
void group_norm_backward_cpu(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t N, int64_t C, int64_t S,
                             int64_t G) {
  using A = math_t<T>;
  const int64_t K = C / G * S, CS = C * S;
  const std::vector<A> g = spread_over_positions<A>(gamma, static_cast<const T*>(nullptr), C, S).first;
  const A* gp = g.data();
  const std::vector<double> acc =
      layer_norm_rows_backward(dx, dy, x, mean, rstd, N * G, K, static_cast<const T*>(nullptr),
                               dgamma || dbeta ? 2 * CS : 0, [&](int64_t k) {
                                 const int64_t off = (k % G) * K;
                                 return std::pair{gp + off, off};
                               });
  if (acc.empty()) return;
  for (int64_t c = 0; c < C; ++c) {
    double sum_dy_xhat = 0, sum_dy = 0;
    for (int64_t s = 0; s < S; ++s) {
      sum_dy_xhat += acc[size_t(c * S + s)];
      sum_dy += acc[size_t(CS + c * S + s)];
    }
    if (dgamma) dgamma[c] = to_storage<T>(sum_dy_xhat);
    if (dbeta) dbeta[c] = to_storage<T>(sum_dy);
  }
}

template void group_norm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                        int64_t, int64_t, int64_t, double);
template void group_norm_forward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         int64_t, int64_t, int64_t, int64_t, double);
template void group_norm_forward_cpu<float>(float*, float*, float*, const float*, const float*, const float*,
                                            int64_t, int64_t, int64_t, int64_t, double);
template void group_norm_forward_cpu<double>(double*, double*, double*, const double*, const double*,
                                             const double*, int64_t, int64_t, int64_t, int64_t, double);
template void group_norm_backward_cpu<float>(float*, float*, float*, const float*, const float*, const float*,
                                             const float*, const float*, int64_t, int64_t, int64_t, int64_t);
template void group_norm_backward_cpu<double>(double*, double*, double*, const double*, const double*,
                                              const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                              int64_t);
#define NL_INSTANTIATE_LOW_PRECISION(T)                                                                               \
  template void group_norm_forward_cpu<T>(T*, float*, float*, const T*, const T*, const T*, int64_t, int64_t,         \
                                          int64_t, int64_t, double);                                                  \
  template void group_norm_backward_cpu<T>(T*, T*, T*, const T*, const T*, const T*, const float*, const float*,      \
                                           int64_t, int64_t, int64_t, int64_t);
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_LOW_PRECISION)
#undef NL_INSTANTIATE_LOW_PRECISION
template void group_norm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                         const float*, const float*, int64_t, int64_t, int64_t, int64_t);
template void group_norm_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                          const double*, const double*, int64_t, int64_t, int64_t, int64_t);

void check_groups(int64_t G, int64_t C, const char* who) {
  check_features(C, who, "the number of channels C");
  check_features(G, who, "the number of groups G");
  NL_CHECK(C % G == 0, who, ": the number of groups G = ", G, " must divide the number of channels C = ", C);
}

int64_t group_norm_check_input(const Tensor& x, int64_t C, const char* who) {
  NL_CHECK(x.defined(), who, ": the input is undefined");
  NL_CHECK(x.dim() >= 2 && x.size(1) == C, who, ": expected an input of shape [N, ", C, ", *], got shape ",
           to_string(x.shape()));
  NL_CHECK(x.numel() > 0, who, ": the input is empty (shape ", to_string(x.shape()), ")");
  return x.numel() / (x.size(0) * C);
}

GroupNormStats group_norm_forward(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in, int64_t G,
                                  double eps) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.device().type == DeviceType::cuda)
    return group_norm_forward_cuda(x_in, gamma_in, beta_in, G, eps);
#endif
  check_eps(eps, "group_norm");
  NL_CHECK(x_in.defined() && x_in.dim() >= 2, "group_norm: expected an input of shape [N, C, *], got ",
           x_in.defined() ? to_string(x_in.shape()) : std::string("an undefined tensor"));
  const int64_t N = x_in.size(0), C = x_in.size(1);
  check_groups(G, C, "group_norm");
  const int64_t S = group_norm_check_input(x_in, C, "group_norm");
  check_vector(gamma_in, C, x_in.dtype(), "group_norm", "gamma");
  check_vector(beta_in, C, x_in.dtype(), "group_norm", "beta");
  const Tensor x = x_in.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  const Tensor beta = beta_in.defined() ? beta_in.contiguous() : Tensor();
  const DType sd = norm_stat_dtype(x.dtype());
  GroupNormStats out{empty(x.shape(), x.dtype()), empty({N, G}, sd), empty({N, G}, sd)};
  dispatch_norm_dtype(x.dtype(), "group_norm", [&]<class scalar_t>(scalar_t) {
    using A = math_t<scalar_t>;
    group_norm_forward_cpu<scalar_t>(out.y.data<scalar_t>(), out.mean.data<A>(), out.rstd.data<A>(),
                                     x.data<scalar_t>(), ptr_or_null<scalar_t>(gamma), ptr_or_null<scalar_t>(beta), N,
                                     C, S, G, eps);
  });
  return out;
}

GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                   const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta) {
#ifdef NORMLAB_WITH_CUDA
  if (x.device().type == DeviceType::cuda)
    return group_norm_backward_cuda(dy, x, gamma, mean, rstd, want_dx, want_dgamma, want_dbeta);
#endif
  return channel_norm_backward(dy, x, gamma, mean, rstd, per_group(x.size(1), mean.size(1)), false, want_dx,
                               want_dgamma, want_dbeta, "group_norm_backward");
}

NormGrads GroupNormNode::grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const {
  return group_norm_backward(dy, x, gamma, mean, rstd, want_dx, want_dgamma, want_dbeta);
}

Variable group_norm(const Variable& x, const Variable& gamma, const Variable& beta, int64_t G, double eps) {
  GroupNormStats s = group_norm_forward(x.data(), data_or_undefined(gamma), data_or_undefined(beta), G, eps);
  return affine_norm_output(x, gamma, beta, s.y, [&] {
    return std::make_shared<GroupNormNode>(x.data(), data_or_undefined(gamma), s.mean, s.rstd, beta.defined());
  });
}

GroupNorm::GroupNorm(int64_t G_, int64_t C_, double eps_, bool affine, DType dtype) : G(G_), C(C_), eps(eps_) {
  check_groups(G, C, "GroupNorm");
  check_eps(eps, "GroupNorm");
  if (affine) {
    weight = register_parameter("weight", ones({C}, dtype));
    bias = register_parameter("bias", zeros({C}, dtype));
  }
}

Variable GroupNorm::forward(const Variable& x) {
  group_norm_check_input(x.data(), C, "GroupNorm");
  return group_norm(x, weight, bias, G, eps);
}

}  // namespace normlab
