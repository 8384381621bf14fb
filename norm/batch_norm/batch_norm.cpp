#include "norm/batch_norm/batch_norm.h"

#include <array>

#include "framework/simd.h"
#include "norm/group_norm/group_norm.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/batch_norm/batch_norm_cuda.h"
#endif

namespace normlab {

// ---- Channel-norm kernels (shared with GroupNorm) ----

template <class T>
void channel_norm_apply(T* y, const T* x, const T* gamma, const T* beta, const double* mean, const double* rstd,
                        int64_t N, int64_t C, int64_t S, ChannelStatMap map) {
  parallel_for(0, N * C, row_grain(S), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t n = i / C, c = i % C, k = map(n, c);
      const double mu = mean[k], rs = rstd[k];
      const double g = gamma ? double(to_math(gamma[c])) : 1.0, b = beta ? double(to_math(beta[c])) : 0.0;
      const T* xi = x + i * S;
      T* yi = y + i * S;
      for (int64_t s = 0; s < S; ++s) yi[s] = to_storage<T>((double(to_math(xi[s])) - mu) * rs * g + b);
    }
  });
}

// xhat = (x - mean_k) * rstd_k,  dxhat = dy * gamma_c,  k = map(n, c)
// per row (n, c):  row_dy = sum_s dy,  row_dy_xhat = sum_s dy * xhat
// dbeta_c = sum_n row_dy,  dgamma_c = sum_n row_dy_xhat                      (sum_rows: deterministic)
// per statistic k, over the `count` values it normalizes:
//   mean_dxhat = sum_{(n,c) in k} gamma_c * row_dy / count
//   mean_dxhat_xhat = sum_{(n,c) in k} gamma_c * row_dy_xhat / count
// batch statistics: dx = rstd_k * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
// fixed statistics: dx = rstd_k * dxhat   (mean and rstd do not depend on x)
template <class T>
void channel_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                           const math_t<T>* mean, const math_t<T>* rstd, int64_t N, int64_t C, int64_t S,
                           ChannelStatMap map, bool fixed_stats) {
  const int64_t rows = N * C;
  const bool shared = map.per_sample == 0;  // one statistic spans every sample (BatchNorm)
  const bool dx_sums = dx && !fixed_stats;
  const bool col_sums = dgamma || dbeta || (dx_sums && shared);
  std::vector<double> row_dy, row_dy_xhat;
  if (col_sums || dx_sums) {
    row_dy.resize(size_t(rows));
    row_dy_xhat.resize(size_t(rows));
    parallel_for(0, rows, row_grain(S), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t k = map(i / C, i % C);
        const double mu = double(mean[k]), rs = double(rstd[k]);
        const T* xi = x + i * S;
        const T* dyi = dy + i * S;
        double sum_dy = 0, sum_dy_xhat = 0;
        for (int64_t s = 0; s < S; ++s) {
          sum_dy += double(to_math(dyi[s]));
          sum_dy_xhat += double(to_math(dyi[s])) * (double(to_math(xi[s])) - mu) * rs;
        }
        row_dy[size_t(i)] = sum_dy;
        row_dy_xhat[size_t(i)] = sum_dy_xhat;
      }
    });
  }
  // col[0..C): dgamma, col[C..2C): dbeta
  std::vector<double> col;
  if (col_sums) {
    col = sum_rows(N, 2 * C, [&](int64_t n, double* a) {
      for (int64_t c = 0; c < C; ++c) {
        a[c] += row_dy_xhat[size_t(n * C + c)];
        a[C + c] += row_dy[size_t(n * C + c)];
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      if (dgamma) dgamma[c] = to_storage<T>(col[size_t(c)]);
      if (dbeta) dbeta[c] = to_storage<T>(col[size_t(C + c)]);
    }
  }
  if (!dx) return;
  // Per statistic: sum of dxhat and of dxhat * xhat, gathered in a fixed order.
  std::vector<double> sum_dxhat, sum_dxhat_xhat;
  if (dx_sums) {
    const int64_t stats = shared ? (C + map.channels_per_stat - 1) / map.channels_per_stat : N * map.per_sample;
    sum_dxhat.assign(size_t(stats), 0.0);
    sum_dxhat_xhat.assign(size_t(stats), 0.0);
    const int64_t src_rows = shared ? 1 : N;  // shared: the column sums, already over every sample
    const double* src_dy = shared ? col.data() + C : row_dy.data();
    const double* src_dy_xhat = shared ? col.data() : row_dy_xhat.data();
    for (int64_t n = 0; n < src_rows; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t k = map(n, c);
        const double g = gamma ? double(to_math(gamma[c])) : 1.0;
        sum_dxhat[size_t(k)] += g * src_dy[n * C + c];
        sum_dxhat_xhat[size_t(k)] += g * src_dy_xhat[n * C + c];
      }
  }
  const double count = double(map.count(N, S));
  parallel_for(0, rows, row_grain(S), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const int64_t c = i % C, k = map(i / C, c);
      const double mu = double(mean[k]), rs = double(rstd[k]);
      const double g = gamma ? double(to_math(gamma[c])) : 1.0;
      const double mean_dxhat = dx_sums ? sum_dxhat[size_t(k)] / count : 0.0;
      const double mean_dxhat_xhat = dx_sums ? sum_dxhat_xhat[size_t(k)] / count : 0.0;
      const T* xi = x + i * S;
      const T* dyi = dy + i * S;
      T* dxi = dx + i * S;
      for (int64_t s = 0; s < S; ++s) {
        const double xhat = (double(to_math(xi[s])) - mu) * rs;
        const double dxhat = double(to_math(dyi[s])) * g;
        dxi[s] = to_storage<T>(rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
      }
    }
  });
}

// ---- BatchNorm kernels ----

namespace {
constexpr ChannelStatMap per_channel{0, 1};

// Channel c's batch statistics of a training step: the saved mean and rstd (in math_t<T>), and the
// running ones (when not null) moved towards mu and the unbiased variance var * count / (count - 1).
template <class T>
void update_statistics(math_t<T>* mean, math_t<T>* rstd, T* running_mean, T* running_var, int64_t c, double mu,
                       double rs, double var, double count, double momentum) {
  mean[c] = math_t<T>(mu);
  rstd[c] = math_t<T>(rs);
  if (running_mean)
    running_mean[c] = to_storage<T>((1 - momentum) * double(to_math(running_mean[c])) + momentum * mu);
  if (running_var)
    running_var[c] =
        to_storage<T>((1 - momentum) * double(to_math(running_var[c])) + momentum * var * count / (count - 1));
}
}  // namespace

// Two passes over the batch (mean, then the centered sum of squares), each a deterministic
// sum_rows over the N*C rows of L values: exact for channels with a large mean.
template <class T>
void batch_norm_forward_train(T* y, math_t<T>* mean, math_t<T>* rstd, T* running_mean, T* running_var, const T* x,
                              const T* gamma, const T* beta, int64_t N, int64_t C, int64_t L, double eps,
                              double momentum) {
  const double count = double(N * L);  // >= 2 (checked by the Tensor level)
  const std::vector<double> sum = sum_rows(N * C, C, [&](int64_t i, double* a) {
    const T* xi = x + i * L;
    double s = 0;
    for (int64_t l = 0; l < L; ++l) s += double(to_math(xi[l]));
    a[i % C] += s;
  });
  std::vector<double> mu(static_cast<size_t>(C)), rs(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) mu[size_t(c)] = sum[size_t(c)] / count;
  const std::vector<double> ss = sum_rows(N * C, C, [&](int64_t i, double* a) {
    const T* xi = x + i * L;
    const double m = mu[size_t(i % C)];
    double s = 0;
    for (int64_t l = 0; l < L; ++l) s += (double(to_math(xi[l])) - m) * (double(to_math(xi[l])) - m);
    a[i % C] += s;
  });
  for (int64_t c = 0; c < C; ++c) {
    const double var = ss[size_t(c)] / count;
    rs[size_t(c)] = 1.0 / std::sqrt(var + eps);
    update_statistics(mean, rstd, running_mean, running_var, c, mu[size_t(c)], rs[size_t(c)], var, count, momentum);
  }
  channel_norm_apply(y, x, gamma, beta, mu.data(), rs.data(), N, C, L, per_channel);
}

namespace {
// The statistics of eval mode: mu = running_mean and rs = 1 / sqrt(running_var + eps) in double,
// also written to mean and rstd for the backward.
template <class T>
void eval_statistics(std::vector<double>& mu, std::vector<double>& rs, math_t<T>* mean, math_t<T>* rstd,
                     const T* running_mean, const T* running_var, int64_t C, double eps) {
  mu.resize(size_t(C));
  rs.resize(size_t(C));
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = to_math(running_mean[c]);
    mu[size_t(c)] = double(mean[c]);
    rs[size_t(c)] = 1.0 / std::sqrt(double(to_math(running_var[c])) + eps);
    rstd[c] = math_t<T>(rs[size_t(c)]);
  }
}
}  // namespace

// Also writes the statistics it used (mean = running_mean, rstd = 1 / sqrt(running_var + eps))
// for the backward.
template <class T>
void batch_norm_forward_eval(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                             const T* running_mean, const T* running_var, int64_t N, int64_t C, int64_t L,
                             double eps) {
  std::vector<double> mu, rs;
  eval_statistics(mu, rs, mean, rstd, running_mean, running_var, C, eps);
  channel_norm_apply(y, x, gamma, beta, mu.data(), rs.data(), N, C, L, per_channel);
}

// Statistics per channel over its count = N*L values (see channel_norm_backward):
// xhat = (x - mean) * rstd,  dxhat = dy * gamma
// training: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))   (means over the N*L values)
// eval:     dx = rstd * dxhat                                                 (running statistics are constants)
// dgamma = sum_{n,l} dy * xhat,  dbeta = sum_{n,l} dy
template <class T>
void batch_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const math_t<T>* mean,
                         const math_t<T>* rstd, int64_t N, int64_t C, int64_t L, bool training) {
  channel_norm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, N, C, L, per_channel, !training);
}

// ---- Fast BatchNorm kernels for (N, C): each row holds one value of every channel, so the
// kernels run down the rows with C-wide vectors (framework/simd.h), never a row per value. ----

namespace {

// Per channel: Welford's running mean and M2 of d = x - x0 (x0: the block's first row, so d is
// exact and a mean of 1e4 costs no precision) over the rows of each fixed block, in vectors of T
// (one update per row: delta = d - mean, mean += delta / n, M2 += delta * (d - mean)); then the
// blocks merged in block order in double (Chan et al.): one pass over x, and the same result for
// any thread count.
template <class S>
void column_mean_var(std::vector<double>& mean, std::vector<double>& var, const S* x, int64_t N, int64_t C) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const int64_t rows = reduction_block_rows(N), blocks = (N + rows - 1) / rows;
  std::vector<T> partial(size_t(blocks * 2 * C), T(0));  // per block: mean of d [0, C), M2 [C, 2C)
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* m = partial.data() + b * 2 * C;
      T* m2 = m + C;
      const S* x0 = x + b * rows * C;
      for (int64_t i = b * rows + 1, n = 2, e = std::min(N, (b + 1) * rows); i < e; ++i, ++n) {
        const V inv_n = simd::splat(T(1.0 / double(n)));
        const S* xi = x + i * C;
        simd::row_for<T>(C, [&](int64_t j, auto at) {
          const V d = at(xi + j) - at(x0 + j), mj = at(m + j), delta = d - mj, mean_new = mj + delta * inv_n;
          at.store(m + j, mean_new);
          at.store(m2 + j, at(m2 + j) + delta * (d - mean_new));
        });
      }
    }
  });
  mean.assign(size_t(C), 0.0);
  std::vector<double> m2(size_t(C), 0.0);
  double n = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const double nb = double(std::min(N, (b + 1) * rows) - b * rows), total = n + nb;
    const T* pm = partial.data() + b * 2 * C;
    const S* x0 = x + b * rows * C;
    for (int64_t c = 0; c < C; ++c) {
      const double delta = (double(to_math(x0[c])) + double(pm[c])) - mean[size_t(c)];
      mean[size_t(c)] += delta * nb / total;
      m2[size_t(c)] += double(pm[C + c]) + delta * delta * n * nb / total;
    }
    n = total;
  }
  var.resize(size_t(C));
  for (int64_t c = 0; c < C; ++c) var[size_t(c)] = m2[size_t(c)] / n;
}

// Per channel, y = ((x - hi) - lo) * scale + b: the mean split into two T (hi + lo) keeps y exact
// for a mean of 1e4 in f32; scale = rstd * gamma.
template <class T>
struct ChannelAffine {
  std::vector<T> hi, lo, scale, b;
};
template <class S>
ChannelAffine<math_t<S>> channel_affine(const S* gamma, const S* beta, const std::vector<double>& mean,
                                        const std::vector<double>& rstd, int64_t C) {
  using T = math_t<S>;
  ChannelAffine<T> a{std::vector<T>(size_t(C)), std::vector<T>(size_t(C)), std::vector<T>(size_t(C)),
                     as_values<T>(beta, C, 0.0)};
  for (int64_t c = 0; c < C; ++c) {
    a.hi[size_t(c)] = T(mean[size_t(c)]);
    a.lo[size_t(c)] = T(mean[size_t(c)] - double(a.hi[size_t(c)]));
    a.scale[size_t(c)] = T(rstd[size_t(c)] * (gamma ? double(to_math(gamma[c])) : 1.0));
  }
  return a;
}

// y = ((x - mean_hi) - mean_lo) * rstd * gamma + beta (channel_affine), down the rows.
template <class S>
void column_apply(S* y, const S* x, const S* gamma, const S* beta, const std::vector<double>& mean,
                  const std::vector<double>& rstd, int64_t N, int64_t C) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const ChannelAffine<T> a = channel_affine(gamma, beta, mean, rstd, C);
  parallel_for(0, N, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const S* xi = x + i * C;
      S* yi = y + i * C;
      simd::row_for<T>(C, [&](int64_t j, auto at) {
        const V c = (at(xi + j) - at(a.hi.data() + j)) - at(a.lo.data() + j);
        at.store(yi + j, c * at(a.scale.data() + j) + at(a.b.data() + j));
      });
    }
  });
}

}  // namespace

// ---- Fast BatchNorm kernels for (N, C, L), L > 1: sample n is a slab of C*L values, channel c
// its L values at [c*L, (c+1)*L). The slabs are cut into fixed blocks of rows (samples); each
// pass runs over a block's values channel by channel in vectors of math_t, in one of two ways:
// - short L (< kSlabRowL): down the block's slabs with accumulators per position of the slab
//   (C*L wide, as the (N, C) kernels run down their rows), each channel's L positions added in
//   double at the end of the block; per-channel parameters spread over the positions once;
// - long L: along each (n, c) row of L values (simd::row_sums), parameters splatted.
// Both give sums that depend only on N, C, L and the values, never on the thread count. ----

namespace {

constexpr int64_t kSlabRowL = 64;

// Samples per block: about 16K values (64 KiB of f32, so that the block is still in L2 when the
// statistics' second pass reads it again) and at most ~1024 blocks; fixed by N and C*L alone.
inline int64_t slab_block_rows(int64_t N, int64_t CL) {
  return std::max<int64_t>({1, 16384 / CL, (N + 1023) / 1024});
}

// The per-channel values a pass needs (P of them), each a pointer to C values of T, read as
// vectors over a channel's values by par(k) inside the pass's term.
template <class T, int P>
using ChannelParams = std::array<const T*, P>;

// The slab positions' copies of prm for short L: spread[k * C*L + c*L + l] = prm[k][c].
template <class T, int P>
void spread_params(std::vector<T>& spread, const ChannelParams<T, P>& prm, int64_t C, int64_t L) {
  spread.resize(size_t(P * C * L));
  for (int k = 0; k < P; ++k)
    for (int64_t c = 0; c < C; ++c) std::fill_n(spread.data() + k * C * L + c * L, L, prm[size_t(k)][c]);
}

// K sums per channel over the samples [i0, i1): out[k * C + c] += the sum of the terms of channel
// c's values, in double. term(off, at, par, acc) adds the K vector terms of the values at offset
// off (from the start of x) into acc[0..K); par(k) is parameter k of their channel. `spread` is
// spread_params' for short L (rebuilt here when `respread`), unused for long L; `scratch` is the
// caller's (one per thread). Short L with down_samples: one vector of positions at a time down the
// block's samples (the statistics, over one tensor); without: sample by sample (the backward: its
// two tensors' strided reads are more than the prefetcher follows).
template <class T, int K, int P, class F>
void slab_block_sums(int64_t i0, int64_t i1, int64_t C, int64_t L, const ChannelParams<T, P>& prm,
                     std::vector<T>& spread, bool respread, std::vector<T>& scratch, bool down_samples, double* out,
                     const F& term) {
  using V = simd::Vec<T>;
  const int64_t CL = C * L;
  if (L >= kSlabRowL) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t c = 0; c < C; ++c) {
        V p[P > 0 ? P : 1];
        for (int k = 0; k < P; ++k) p[k] = simd::splat(prm[size_t(k)][c]);
        const int64_t base = i * CL + c * L;
        const simd::Sums<T, K> s = simd::row_sums<T, K>(L, [&](int64_t j, auto at, V* acc) {
          term(base + j, at, [&](int k) { return p[k]; }, acc);
        });
        for (int k = 0; k < K; ++k) out[k * C + c] += double(s.v[k]);
      }
    return;
  }
  if (respread && P > 0) spread_params<T, P>(spread, prm, C, L);
  scratch.resize(size_t(K * CL));
  T* acc = scratch.data();
  const T* sp = spread.data();
  if (!down_samples) {
    // Sample by sample, in memory order, into accumulators in memory (C*L wide, in L1).
    std::fill(scratch.begin(), scratch.end(), T(0));
    for (int64_t i = i0; i < i1; ++i)
      simd::row_for<T>(CL, [&](int64_t j, auto at) {
        V a[K];
        for (int k = 0; k < K; ++k) a[k] = at(acc + k * CL + j);
        term(i * CL + j, at, [&](int k) { return at(sp + k * CL + j); }, a);
        for (int k = 0; k < K; ++k) at.store(acc + k * CL + j, a[k]);
      });
  } else {
    // One vector of positions at a time down the block's samples, its sums in registers (two
    // accumulators, even and odd samples, hide the add latency): fewer loads and stores, but
    // strided reads, which the prefetcher follows for one tensor and not for two.
    simd::row_for<T>(CL, [&](int64_t j, auto at) {
      V a[2][K] = {};
      V p[P > 0 ? P : 1];
      for (int k = 0; k < P; ++k) p[k] = at(sp + k * CL + j);
      const auto par = [&](int k) { return p[k]; };
      int64_t i = i0;
      for (; i + 2 <= i1; i += 2) {
        term(i * CL + j, at, par, a[0]);
        term((i + 1) * CL + j, at, par, a[1]);
      }
      if (i < i1) term(i * CL + j, at, par, a[0]);
      for (int k = 0; k < K; ++k) at.store(acc + k * CL + j, a[0][k] + a[1][k]);
    });
  }
  for (int k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t l = 0; l < L; ++l) s += double(acc[k * CL + c * L + l]);
      out[k * C + c] += s;
    }
}

// An elementwise pass over every value: f(off, at, par) for each vector of values (par as in
// slab_block_sums), in parallel over the samples.
template <class T, int P, class F>
void slab_map(int64_t N, int64_t C, int64_t L, const ChannelParams<T, P>& prm, const F& f) {
  using V = simd::Vec<T>;
  const int64_t CL = C * L;
  if (L >= kSlabRowL) {
    parallel_for(0, N * C, row_grain(L), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t c = r % C;
        V p[P];
        for (int k = 0; k < P; ++k) p[k] = simd::splat(prm[size_t(k)][c]);
        simd::row_for<T>(L, [&](int64_t j, auto at) { f(r * L + j, at, [&](int k) { return p[k]; }); });
      }
    });
    return;
  }
  std::vector<T> spread;
  spread_params<T, P>(spread, prm, C, L);
  const T* sp = spread.data();
  parallel_for(0, N, row_grain(CL), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      simd::row_for<T>(CL, [&](int64_t j, auto at) { f(i * CL + j, at, [&](int k) { return at(sp + k * CL + j); }); });
  });
}

// Per channel over the N*L values: mean and the biased variance, in double. Per block, two passes
// while the block is in cache: m0 = the block's sum / count in T; then around m0 (split into
// m0_hi + m0_lo in T, so that x - m0 is exact for a mean of 1e4 in f32) the sums of d = x - m0 and
// of d^2, giving the block's mean m0 + sum d / n and M2 = sum d^2 - (sum d)^2 / n (the corrected
// two-pass algorithm: the second pass repairs the first's rounding). Then the blocks merged in
// block order in double (Chan et al.).
template <class S>
void slab_mean_var(std::vector<double>& mean, std::vector<double>& var, const S* x, int64_t N, int64_t C,
                   int64_t L) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const int64_t rows = slab_block_rows(N, C * L), blocks = (N + rows - 1) / rows;
  std::vector<double> part(size_t(blocks * 2 * C));  // per block: mean [0, C), M2 [C, 2C)
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> spread, scratch, hi(static_cast<size_t>(C)), lo(static_cast<size_t>(C));
    std::vector<double> s1(static_cast<size_t>(C)), s2(static_cast<size_t>(2 * C));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * rows, i1 = std::min(N, i0 + rows);
      const double n = double((i1 - i0) * L);
      std::fill(s1.begin(), s1.end(), 0.0);
      slab_block_sums<T, 1, 0>(i0, i1, C, L, {}, spread, false, scratch, true, s1.data(),
                               [&](int64_t off, auto at, auto, V* acc) { acc[0] += at(x + off); });
      for (int64_t c = 0; c < C; ++c) {
        hi[size_t(c)] = T(s1[size_t(c)] / n);
        lo[size_t(c)] = T(s1[size_t(c)] / n - double(hi[size_t(c)]));
      }
      std::fill(s2.begin(), s2.end(), 0.0);
      slab_block_sums<T, 2, 2>(i0, i1, C, L, {hi.data(), lo.data()}, spread, true, scratch, true, s2.data(),
                               [&](int64_t off, auto at, auto par, V* acc) {
                                 const V d = (at(x + off) - par(0)) - par(1);
                                 acc[0] += d;
                                 acc[1] += d * d;
                               });
      double* pm = part.data() + b * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        const double sd = s2[size_t(c)], m0 = double(hi[size_t(c)]) + double(lo[size_t(c)]);
        pm[c] = m0 + sd / n;
        pm[C + c] = std::max(0.0, s2[size_t(C + c)] - sd * sd / n);
      }
    }
  });
  mean.assign(size_t(C), 0.0);
  std::vector<double> m2(size_t(C), 0.0);
  double n = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const double nb = double((std::min(N, (b + 1) * rows) - b * rows) * L), total = n + nb;
    const double* pm = part.data() + b * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      const double delta = pm[c] - mean[size_t(c)];
      mean[size_t(c)] += delta * nb / total;
      m2[size_t(c)] += pm[C + c] + delta * delta * n * nb / total;
    }
    n = total;
  }
  var.resize(size_t(C));
  for (int64_t c = 0; c < C; ++c) var[size_t(c)] = m2[size_t(c)] / n;
}

// y = ((x - mean_hi) - mean_lo) * (rstd * gamma) + beta, as column_apply.
template <class S>
void slab_apply(S* y, const S* x, const S* gamma, const S* beta, const std::vector<double>& mean,
                const std::vector<double>& rstd, int64_t N, int64_t C, int64_t L) {
  using T = math_t<S>;
  const ChannelAffine<T> a = channel_affine(gamma, beta, mean, rstd, C);
  slab_map<T, 4>(N, C, L, {a.hi.data(), a.lo.data(), a.scale.data(), a.b.data()}, [&](int64_t off, auto at, auto par) {
    at.store(y + off, ((at(x + off) - par(0)) - par(1)) * par(2) + par(3));
  });
}

// The backward for (N, C, L), as batch_norm_backward_cpu's for (N, C): pass 1 the per-channel sums
// of dy * xhat and dy (per block, added in double in block order), pass 2 dx.
template <class S>
void slab_backward(S* dx, S* dgamma, S* dbeta, const S* dy, const S* x, const S* gamma, const math_t<S>* mean,
                   const math_t<S>* rstd, int64_t N, int64_t C, int64_t L, bool training) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const bool dx_sums = dx && training;
  std::vector<double> col(size_t(2 * C), 0.0);  // [0, C): sum dy * xhat, [C, 2C): sum dy
  if (dgamma || dbeta || dx_sums) {
    const int64_t rows = slab_block_rows(N, C * L), blocks = (N + rows - 1) / rows;
    std::vector<double> part(size_t(blocks * 2 * C), 0.0);
    parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<T> spread, scratch;
      for (int64_t b = b0; b < b1; ++b)
        slab_block_sums<T, 2, 2>(b * rows, std::min(N, (b + 1) * rows), C, L, {mean, rstd}, spread, b == b0,
                                 scratch, false, part.data() + b * 2 * C,
                                 [&](int64_t off, auto at, auto par, V* acc) {
                                   const V d = at(dy + off), xhat = (at(x + off) - par(0)) * par(1);
                                   acc[0] += d * xhat;
                                   acc[1] += d;
                                 });
    });
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t j = 0; j < 2 * C; ++j) col[size_t(j)] += part[size_t(b * 2 * C + j)];
    for (int64_t c = 0; c < C; ++c) {
      if (dgamma) dgamma[c] = to_storage<S>(col[size_t(c)]);
      if (dbeta) dbeta[c] = to_storage<S>(col[size_t(C + c)]);
    }
  }
  if (!dx) return;
  // dx = rstd * (dy * gamma - mean_dxhat - xhat * mean_dxhat_xhat), the means zero in eval.
  const std::vector<T> g = as_values<T>(gamma, C, 1.0);
  std::vector<T> mean_dxhat(size_t(C), T(0)), mean_dxhat_xhat(size_t(C), T(0));
  const double count = double(N * L);
  if (dx_sums)
    for (int64_t c = 0; c < C; ++c) {
      mean_dxhat[size_t(c)] = T(double(g[size_t(c)]) * col[size_t(C + c)] / count);
      mean_dxhat_xhat[size_t(c)] = T(double(g[size_t(c)]) * col[size_t(c)] / count);
    }
  slab_map<T, 5>(N, C, L, {mean, rstd, g.data(), mean_dxhat.data(), mean_dxhat_xhat.data()},
                 [&](int64_t off, auto at, auto par) {
                   const V rs = par(1), xhat = (at(x + off) - par(0)) * rs;
                   at.store(dx + off, rs * (at(dy + off) * par(2) - par(3) - xhat * par(4)));
                 });
}

}  // namespace

// Scalar math: batch_norm_forward_train above. (N, C): the statistics in one pass
// (column_mean_var), then y (column_apply); (N, C, L): slab_mean_var, then slab_apply.
template <class T>
void batch_norm_forward_train_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, T* running_mean, T* running_var,
                                  const T* x, const T* gamma, const T* beta, int64_t N, int64_t C, int64_t L,
                                  double eps, double momentum) {
  const double count = double(N * L);
  std::vector<double> mu, var;
  if (L == 1)
    column_mean_var(mu, var, x, N, C);
  else
    slab_mean_var(mu, var, x, N, C, L);
  std::vector<double> rs(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    rs[size_t(c)] = 1.0 / std::sqrt(var[size_t(c)] + eps);
    update_statistics(mean, rstd, running_mean, running_var, c, mu[size_t(c)], rs[size_t(c)], var[size_t(c)], count,
                      momentum);
  }
  if (L == 1)
    column_apply(y, x, gamma, beta, mu, rs, N, C);
  else
    slab_apply(y, x, gamma, beta, mu, rs, N, C, L);
}

// Scalar math: batch_norm_forward_eval above (column_apply for (N, C), slab_apply for (N, C, L)).
template <class T>
void batch_norm_forward_eval_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                                 const T* running_mean, const T* running_var, int64_t N, int64_t C, int64_t L,
                                 double eps) {
  std::vector<double> mu, rs;
  eval_statistics(mu, rs, mean, rstd, running_mean, running_var, C, eps);
  if (L == 1)
    column_apply(y, x, gamma, beta, mu, rs, N, C);
  else
    slab_apply(y, x, gamma, beta, mu, rs, N, C, L);
}

// Scalar math: batch_norm_backward above; for (N, C, L) slab_backward, for (N, C) this. Pass 1
// down the rows: per channel, sum dy and dy * xhat in C-wide vector partials per block of rows
// (sum_rows: added in double in block order); pass 2: dx, row by row.
template <class S>
void batch_norm_backward_cpu(S* dx, S* dgamma, S* dbeta, const S* dy, const S* x, const S* gamma,
                             const math_t<S>* mean, const math_t<S>* rstd, int64_t N, int64_t C, int64_t L,
                             bool training) {
  if (L != 1) return slab_backward(dx, dgamma, dbeta, dy, x, gamma, mean, rstd, N, C, L, training);
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const bool dx_sums = dx && training;
  std::vector<double> col;  // [0, C): sum dy * xhat, [C, 2C): sum dy
  if (dgamma || dbeta || dx_sums) {
    col = sum_rows<T>(N, 2 * C, [&](int64_t i, T* acc) {
      const S* xi = x + i * C;
      const S* dyi = dy + i * C;
      simd::row_for<T>(C, [&](int64_t j, auto at) {
        const V d = at(dyi + j), xhat = (at(xi + j) - at(mean + j)) * at(rstd + j);
        at.store(acc + j, at(acc + j) + d * xhat);
        at.store(acc + C + j, at(acc + C + j) + d);
      });
    });
    for (int64_t c = 0; c < C; ++c) {
      if (dgamma) dgamma[c] = to_storage<S>(col[size_t(c)]);
      if (dbeta) dbeta[c] = to_storage<S>(col[size_t(C + c)]);
    }
  }
  if (!dx) return;
  // dx = rstd * (dy * gamma - mean_dxhat - xhat * mean_dxhat_xhat), the means zero in eval.
  const std::vector<T> g = as_values<T>(gamma, C, 1.0);
  std::vector<T> mean_dxhat(static_cast<size_t>(C), T(0)), mean_dxhat_xhat(static_cast<size_t>(C), T(0));
  if (dx_sums)
    for (int64_t c = 0; c < C; ++c) {
      mean_dxhat[size_t(c)] = T(double(g[size_t(c)]) * col[size_t(C + c)] / double(N));
      mean_dxhat_xhat[size_t(c)] = T(double(g[size_t(c)]) * col[size_t(c)] / double(N));
    }
  parallel_for(0, N, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const S* xi = x + i * C;
      const S* dyi = dy + i * C;
      S* dxi = dx + i * C;
      simd::row_for<T>(C, [&](int64_t j, auto at) {
        const V rs = at(rstd + j), xhat = (at(xi + j) - at(mean + j)) * rs;
        at.store(dxi + j, rs * (at(dyi + j) * at(g.data() + j) - at(mean_dxhat.data() + j) -
                                xhat * at(mean_dxhat_xhat.data() + j)));
      });
    }
  });
}

#define NL_INSTANTIATE_BATCH_NORM(T)                                                                              \
  template void channel_norm_apply<T>(T*, const T*, const T*, const T*, const double*, const double*, int64_t,     \
                                      int64_t, int64_t, ChannelStatMap);                                           \
  template void channel_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const math_t<T>*,              \
                                         const math_t<T>*, int64_t, int64_t, int64_t, ChannelStatMap, bool);       \
  template void batch_norm_forward_train<T>(T*, math_t<T>*, math_t<T>*, T*, T*, const T*, const T*, const T*,      \
                                            int64_t, int64_t, int64_t, double, double);                            \
  template void batch_norm_forward_eval<T>(T*, math_t<T>*, math_t<T>*, const T*, const T*, const T*, const T*,     \
                                           const T*, int64_t, int64_t, int64_t, double);                           \
  template void batch_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const math_t<T>*,                \
                                       const math_t<T>*, int64_t, int64_t, int64_t, bool);                         \
  template void batch_norm_forward_train_cpu<T>(T*, math_t<T>*, math_t<T>*, T*, T*, const T*, const T*, const T*,  \
                                                int64_t, int64_t, int64_t, double, double);                        \
  template void batch_norm_forward_eval_cpu<T>(T*, math_t<T>*, math_t<T>*, const T*, const T*, const T*, const T*, \
                                               const T*, int64_t, int64_t, int64_t, double);                       \
  template void batch_norm_backward_cpu<T>(T*, T*, T*, const T*, const T*, const T*, const math_t<T>*,            \
                                           const math_t<T>*, int64_t, int64_t, int64_t, bool);
NL_INSTANTIATE_BATCH_NORM(float)
NL_INSTANTIATE_BATCH_NORM(double)
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_BATCH_NORM)
#undef NL_INSTANTIATE_BATCH_NORM

// ---- Tensor level ----

namespace {
void check_momentum(double momentum, const char* who) {
  NL_CHECK(std::isfinite(momentum) && momentum >= 0 && momentum <= 1, who, ": momentum must be in [0, 1], got ",
           momentum);
}

// A running statistic: updated in place, so it must be a contiguous [C] tensor of x's dtype.
void check_running(const Tensor& t, int64_t C, DType dtype, const char* name) {
  check_vector(t, C, dtype, "batch_norm", name);
  NL_CHECK(!t.defined() || t.is_contiguous(), "batch_norm: ", name, " must be contiguous (it is updated in place)");
}
}  // namespace

int64_t batch_norm_check_input(const Tensor& x, int64_t C, bool training, const char* who) {
  NL_CHECK(x.defined(), who, ": the input is undefined");
  NL_CHECK((x.dim() == 2 || x.dim() == 3) && x.size(1) == C, who, ": expected an input of shape [N, ", C,
           "] or [N, ", C, ", L], got shape ", to_string(x.shape()));
  NL_CHECK(x.numel() > 0, who, ": the input is empty (shape ", to_string(x.shape()), ")");
  const int64_t L = x.dim() == 3 ? x.size(2) : 1;
  NL_CHECK(!training || x.size(0) * L > 1, who, ": training needs more than one value per channel to compute ",
           "a batch variance, got shape ", to_string(x.shape()));
  return L;
}

BatchNormStats batch_norm_forward(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in,
                                  const Tensor& running_mean, const Tensor& running_var, bool training,
                                  double momentum, double eps) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.device().type == DeviceType::cuda)
    return batch_norm_forward_cuda(x_in, gamma_in, beta_in, running_mean, running_var, training, momentum, eps);
#endif
  check_eps(eps, "batch_norm");
  check_momentum(momentum, "batch_norm");
  NL_CHECK(x_in.defined() && x_in.dim() >= 2, "batch_norm: expected an input of shape [N, C] or [N, C, L], got ",
           x_in.defined() ? to_string(x_in.shape()) : std::string("an undefined tensor"));
  const int64_t C = x_in.size(1);
  const int64_t L = batch_norm_check_input(x_in, C, training, "batch_norm");
  const int64_t N = x_in.size(0);
  const DType dtype = x_in.dtype();
  check_vector(gamma_in, C, dtype, "batch_norm", "gamma");
  check_vector(beta_in, C, dtype, "batch_norm", "beta");
  check_running(running_mean, C, dtype, "running_mean");
  check_running(running_var, C, dtype, "running_var");
  NL_CHECK(training || (running_mean.defined() && running_var.defined()),
           "batch_norm: eval mode needs running_mean and running_var");
  NL_CHECK(running_mean.defined() == running_var.defined(),
           "batch_norm: running_mean and running_var must be both defined or both undefined");
  const Tensor x = x_in.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  const Tensor beta = beta_in.defined() ? beta_in.contiguous() : Tensor();
  const DType sd = norm_stat_dtype(dtype);
  BatchNormStats out{empty(x.shape(), dtype), empty({C}, sd), empty({C}, sd)};
  dispatch_norm_dtype(dtype, "batch_norm", [&]<class scalar_t>(scalar_t) {
    using A = math_t<scalar_t>;
    if (training)
      batch_norm_forward_train_cpu<scalar_t>(out.y.data<scalar_t>(), out.mean.data<A>(), out.rstd.data<A>(),
                                             ptr_or_null<scalar_t>(running_mean), ptr_or_null<scalar_t>(running_var),
                                             x.data<scalar_t>(), ptr_or_null<scalar_t>(gamma),
                                             ptr_or_null<scalar_t>(beta), N, C, L, eps, momentum);
    else
      batch_norm_forward_eval_cpu<scalar_t>(out.y.data<scalar_t>(), out.mean.data<A>(), out.rstd.data<A>(),
                                            x.data<scalar_t>(), ptr_or_null<scalar_t>(gamma),
                                            ptr_or_null<scalar_t>(beta), running_mean.data<scalar_t>(),
                                            running_var.data<scalar_t>(), N, C, L, eps);
  });
  return out;
}

NormGrads channel_norm_backward(const Tensor& dy_in, const Tensor& x, const Tensor& gamma_in, const Tensor& mean,
                                const Tensor& rstd, ChannelStatMap map, bool fixed_stats, bool want_dx,
                                bool want_dgamma, bool want_dbeta, const char* who) {
#ifdef NORMLAB_WITH_CUDA
  if (x.device().type == DeviceType::cuda)
    return channel_norm_backward_cuda(dy_in, x, gamma_in, mean, rstd, map, fixed_stats, want_dx, want_dgamma,
                                      want_dbeta, who);
#endif
  NL_CHECK(dy_in.shape() == x.shape(), who, ": dy has shape ", to_string(dy_in.shape()), " but x has ",
           to_string(x.shape()));
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const Tensor dy = dy_in.contiguous(), xc = x.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  // One statistic per channel (BatchNorm) or per (sample, group) (GroupNorm), in f32 for bf16 and f16.
  const int64_t stats = map.per_sample == 0 ? C / map.channels_per_stat : N * map.per_sample;
  const char* per = map.per_sample == 0 ? "channel" : "(sample, group)";
  check_stat(mean, stats, x.dtype(), who, "mean", per);
  check_stat(rstd, stats, x.dtype(), who, "rstd", per);
  const Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  NormGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype());
  if (want_dgamma) g.dgamma = empty({C}, x.dtype());
  if (want_dbeta) g.dbeta = empty({C}, x.dtype());
  // BatchNorm (statistics per channel): its fast kernels (batch_norm_backward_cpu); GroupNorm
  // (statistics per sample and group): its row kernels (group_norm_backward_cpu).
  const bool per_channel_stats = map.per_sample == 0 && map.channels_per_stat == 1;
  const bool groups = map.per_sample > 0 && !fixed_stats;
  dispatch_norm_dtype(x.dtype(), who, [&]<class scalar_t>(scalar_t) {
    scalar_t* dx = ptr_or_null<scalar_t>(g.dx);
    scalar_t* dgamma = ptr_or_null<scalar_t>(g.dgamma);
    scalar_t* dbeta = ptr_or_null<scalar_t>(g.dbeta);
    const scalar_t* gp = ptr_or_null<scalar_t>(gamma);
    const math_t<scalar_t>* mp = mean_c.data<math_t<scalar_t>>();
    const math_t<scalar_t>* rp = rstd_c.data<math_t<scalar_t>>();
    if (per_channel_stats)
      batch_norm_backward_cpu(dx, dgamma, dbeta, dy.data<scalar_t>(), xc.data<scalar_t>(), gp, mp, rp, N, C, S,
                              !fixed_stats);
    else if (groups)
      group_norm_backward_cpu(dx, dgamma, dbeta, dy.data<scalar_t>(), xc.data<scalar_t>(), gp, mp, rp, N, C, S,
                              map.per_sample);
    else
      channel_norm_backward(dx, dgamma, dbeta, dy.data<scalar_t>(), xc.data<scalar_t>(), gp, mp, rp, N, C, S, map,
                            fixed_stats);
  });
  return g;
}

BatchNormGrads batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                   const Tensor& rstd, bool training, bool want_dx, bool want_dgamma,
                                   bool want_dbeta) {
  return channel_norm_backward(dy, x, gamma, mean, rstd, per_channel, !training, want_dx, want_dgamma, want_dbeta,
                               "batch_norm_backward");
}

// ---- Autograd ----

NormGrads BatchNormNode::grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const {
  return batch_norm_backward(dy, x, gamma, mean, rstd, training, want_dx, want_dgamma, want_dbeta);
}

Variable batch_norm(const Variable& x, const Variable& gamma, const Variable& beta, const Tensor& running_mean,
                    const Tensor& running_var, bool training, double momentum, double eps) {
  BatchNormStats s = batch_norm_forward(x.data(), data_or_undefined(gamma), data_or_undefined(beta), running_mean,
                                        running_var, training, momentum, eps);
  return affine_norm_output(x, gamma, beta, s.y, [&] {
    return std::make_shared<BatchNormNode>(x.data(), data_or_undefined(gamma), s.mean, s.rstd, training,
                                           beta.defined());
  });
}

// ---- Module ----

BatchNorm::BatchNorm(int64_t C_, double eps_, double momentum_, bool affine, DType dtype)
    : C(C_), eps(eps_), momentum(momentum_) {
  check_features(C, "BatchNorm", "the number of channels C");
  check_eps(eps, "BatchNorm");
  check_momentum(momentum, "BatchNorm");
  if (affine) {
    weight = register_parameter("weight", ones({C}, dtype));
    bias = register_parameter("bias", zeros({C}, dtype));
  }
  register_buffer("running_mean", zeros({C}, dtype));
  register_buffer("running_var", ones({C}, dtype));
}

Variable BatchNorm::forward(const Variable& x) {
  batch_norm_check_input(x.data(), C, training(), "BatchNorm");
  return batch_norm(x, weight, bias, running_mean(), running_var(), training(), momentum, eps);
}

}  // namespace normlab
