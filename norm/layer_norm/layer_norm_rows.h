// The fast LayerNorm forward over rows, shared by LayerNorm and GroupNorm (whose (sample, group)
// blocks are rows with per-row gamma and beta). Included by norm kernel sources only (built with
// -ffp-contract=off and -fno-math-errno; see CMakeLists.txt).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "framework/parallel.h"
#include "framework/simd.h"
#include "norm/common.h"

namespace normlab {

// Scalar math: layer_norm_forward (norm/layer_norm/layer_norm.cpp). The row stays in L1 for three
// passes, each with vector accumulators of T (simd::row_sums):
//   m = mean(x - x0)                      (x0 = the row's first value: x - x0 is exact near x0,
//                                          so a mean of 1e4 loses nothing)
//   c = (x - x0) - m,  dm = mean(c),  var = mean(c^2) - dm^2   (centred; dm corrects m's rounding)
//   y = (c - dm) * rstd * gamma + beta
// mean = x0 + m + dm is saved in T; y uses the split x0 + (m + dm), which keeps its precision.
// Rows go in groups of simd::kRowGroup, each pass over the whole group before the next: a short
// row's passes are a chain of dependent sums, and the group's chains overlap; the statistics
// (divides and a sqrt per row) go in one loop over the group's lanes that vectorizes. Each row's
// values are the same in any group (the same operations in the same order).
// params(i) returns {gamma, beta} of row i: N values each, never null.
template <class T, class Params>
void layer_norm_rows(T* y, T* mean, T* rstd, const T* x, int64_t M, int64_t N, double eps, const Params& params) {
  using V = simd::Vec<T>;
  constexpr int64_t G = simd::kRowGroup;
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) { simd::with_row_length(N, [&](auto N) {
    simd::for_row_groups(r0, r1, [&](int64_t i0, int64_t n) {
      // Per row k of the group (rows past n: zeros, never stored): x0, m, the centred sums, rstd, m + dm.
      T x0[G] = {}, m[G] = {}, s0[G] = {}, s1[G] = {}, rs[G], shift[G];
      double mu[G];
      for (int64_t k = 0; k < n; ++k) {
        const T* xi = x + (i0 + k) * N;
        x0[k] = xi[0];
        const V x0v = simd::splat(x0[k]);
        m[k] = simd::row_sums<T, 1>(N, [&](int64_t j, auto at, V* acc) { acc[0] += at(xi + j) - x0v; }).v[0];
      }
      for (int64_t k = 0; k < G; ++k) m[k] /= T(N);
      for (int64_t k = 0; k < n; ++k) {
        const T* xi = x + (i0 + k) * N;
        const V x0v = simd::splat(x0[k]), mv = simd::splat(m[k]);
        const auto s = simd::row_sums<T, 2>(N, [&](int64_t j, auto at, V* acc) {
          const V c = (at(xi + j) - x0v) - mv;
          acc[0] += c;
          acc[1] += c * c;
        });
        s0[k] = s.v[0];
        s1[k] = s.v[1];
      }
      for (int64_t k = 0; k < G; ++k) {
        const double dm = double(s0[k]) / double(N);
        const double var = std::max(0.0, double(s1[k]) / double(N) - dm * dm);
        rs[k] = T(1.0 / std::sqrt(var + eps));
        mu[k] = double(x0[k]) + double(m[k]) + dm;
        shift[k] = T(double(m[k]) + dm);
      }
      for (int64_t k = 0; k < n; ++k) {
        mean[i0 + k] = T(mu[k]);
        rstd[i0 + k] = rs[k];
        const auto [gp, bp] = params(i0 + k);
        const T* xi = x + (i0 + k) * N;
        T* yi = y + (i0 + k) * N;
        const V x0v = simd::splat(x0[k]), sv = simd::splat(shift[k]), rsv = simd::splat(rs[k]);
        simd::row_for<T>(N, [&](int64_t j, auto at) {
          at.store(yi + j, ((at(xi + j) - x0v) - sv) * rsv * at(gp + j) + at(bp + j));
        });
      }
    });
  }); });
}

}  // namespace normlab
