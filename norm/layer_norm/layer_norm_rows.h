// The fast LayerNorm forward and backward over rows, shared by LayerNorm and GroupNorm (whose (sample, group)
// blocks are rows with per-row gamma and beta). Included by norm kernel sources only (built with
// -ffp-contract=off and -fno-math-errno; see CMakeLists.txt).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "framework/parallel.h"
#include "framework/simd.h"
#include "norm/common.h"

namespace normlab {

// A per-thread buffer of at least n values of T, kept between calls.
template <class T>
T* thread_scratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < size_t(n)) buf.resize(size_t(n));
  return buf.data();
}

// Scalar math: layer_norm_forward (norm/layer_norm/layer_norm.cpp). S is the storage type of x and
// y, T = math_t<S> the type of the math, the statistics and gamma/beta (a bf16 or f16 row widens
// to f32 as it loads, so each value is what the f32 kernel gives on the widened row, rounded once
// to S as it is stored). The row stays in L1 for three passes, each with vector accumulators of T
// (simd::row_sums):
//   m = mean(x - x0)                      (x0 = the row's first value: x - x0 is exact near x0,
//                                          so a mean of 1e4 loses nothing)
//   c = (x - x0) - m,  dm = mean(c),  var = mean(c^2) - dm^2   (centred; dm corrects m's rounding)
//   y = (c - dm) * rstd * gamma + beta
// mean = x0 + m + dm is saved in T; y uses the split x0 + (m + dm), which keeps its precision.
// Rows go in groups (simd::group_rows: up to 8 rows within 8 KiB), each pass over the whole group
// before the next: a short row's passes are a chain of dependent sums, and the group's chains
// overlap; the statistics (divides and a sqrt per row) go in one loop over the group's lanes that
// vectorizes. Each row's
// values are the same in any group (the same operations in the same order).
// params(i) returns {gamma, beta} of row i: N values each, never null.
// A bf16 or f16 group widens once, in the first pass, into f32 rows (a per-thread buffer of one
// group, in L1) that the other two passes read: the same values as widening in each pass.
template <class S, class Params>
void layer_norm_rows(S* y, math_t<S>* mean, math_t<S>* rstd, const S* x, int64_t M, int64_t N, double eps,
                     const Params& params) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  constexpr int64_t G = simd::kRowGroup;
  constexpr bool kWiden = !std::is_same_v<S, T>;
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) { simd::with_row_length(N, [&](auto N) {
    const int64_t rows = simd::group_rows<T>(N);
    [[maybe_unused]] T* wide = nullptr;
    if constexpr (kWiden) wide = thread_scratch<T>(rows * N);
    simd::for_row_groups(r0, r1, rows, [&](int64_t i0, int64_t n) {
      // Row k of the group as the last two passes read it: x's row, or its widened copy.
      auto row = [&](int64_t k) {
        if constexpr (kWiden) return static_cast<const T*>(wide + k * N);
        else return x + (i0 + k) * N;
      };
      // Per row k of the group (rows past n: zeros, never stored): x0, m, the centred sums, rstd, m + dm.
      T x0[G] = {}, m[G] = {}, s0[G] = {}, s1[G] = {}, rs[G], shift[G];
      double mu[G];
      for (int64_t k = 0; k < n; ++k) {
        const S* xi = x + (i0 + k) * N;
        [[maybe_unused]] T* const wk = kWiden ? wide + k * N : nullptr;
        x0[k] = T(xi[0]);
        const V x0v = simd::splat(x0[k]);
        m[k] = simd::row_sums<T, 1>(N, [&](int64_t j, auto at, V* acc) {
                 const V v = at(xi + j);
                 if constexpr (kWiden) at.store(wk + j, v);
                 acc[0] += v - x0v;
               }).v[0];
      }
      for (int64_t k = 0; k < G; ++k) m[k] /= T(N);
      for (int64_t k = 0; k < n; ++k) {
        const auto xi = row(k);
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
        const auto xi = row(k);
        S* yi = y + (i0 + k) * N;
        const V x0v = simd::splat(x0[k]), sv = simd::splat(shift[k]), rsv = simd::splat(rs[k]);
        simd::row_for<T>(N, [&](int64_t j, auto at) {
          at.store(yi + j, ((at(xi + j) - x0v) - sv) * rsv * at(gp + j) + at(bp + j));
        });
      }
    });
  }); });
}

// Scalar math: layer_norm_backward (norm/layer_norm/layer_norm.cpp). One pass over the rows: per
// row, the sums of dxhat and dxhat * xhat (vector accumulators of T) and, in the same pass, the
// dy * xhat and dy terms into the block's partials (sum_blocks: T partials per block of rows,
// added in double in block order: deterministic); then dx from the row, still in L1, plus dx_add
// when given (add_layer_norm's dh). dx may be null. S and T as in layer_norm_rows: dx, dy, x and
// dx_add in S, the rest in T. params(i) returns {gamma of row i (N values, never null), the offset
// of row i's terms}: dy * xhat goes to [off, off + N) of the acc_width partials, dy to
// [acc_width / 2 + off, ...). Returns the acc_width sums (none for acc_width 0).
template <class S, class Params>
std::vector<double> layer_norm_rows_backward(S* dx, const S* dy, const S* x, const math_t<S>* mean,
                                             const math_t<S>* rstd, int64_t M, int64_t N, const S* dx_add,
                                             int64_t acc_width, const Params& params) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  // has_acc (a std::bool_constant): whether acc takes the row's dgamma/dbeta terms; N: the row length,
  // a constant for the short rows (simd::with_row_length).
  auto row = [&](int64_t i, T* acc, auto has_acc, auto N) {
    const S* xi = x + i * N;
    const S* dyi = dy + i * N;
    const auto [gp, off] = params(i);
    const V mu = simd::splat(mean[i]), rs = simd::splat(rstd[i]);
    T* const acc_dgamma = decltype(has_acc)::value ? acc + off : nullptr;
    T* const acc_dbeta = decltype(has_acc)::value ? acc + acc_width / 2 + off : nullptr;
    if (!dx) {
      if constexpr (decltype(has_acc)::value)
        simd::row_for<T>(N, [&](int64_t j, auto at) {
          const V d = at(dyi + j);
          at.store(acc_dgamma + j, at(acc_dgamma + j) + d * ((at(xi + j) - mu) * rs));
          at.store(acc_dbeta + j, at(acc_dbeta + j) + d);
        });
      return;
    }
    const auto s = simd::row_sums<T, 2>(N, [&](int64_t j, auto at, V* sums) {
      const V d = at(dyi + j), xhat = (at(xi + j) - mu) * rs, dxhat = d * at(gp + j);
      sums[0] += dxhat;
      sums[1] += dxhat * xhat;
      if constexpr (decltype(has_acc)::value) {
        at.store(acc_dgamma + j, at(acc_dgamma + j) + d * xhat);
        at.store(acc_dbeta + j, at(acc_dbeta + j) + d);
      }
    });
    const V mean_dxhat = simd::splat(T(double(s.v[0]) / double(N)));
    const V mean_dxhat_xhat = simd::splat(T(double(s.v[1]) / double(N)));
    S* dxi = dx + i * N;
    const S* addi = dx_add ? dx_add + i * N : nullptr;
    auto dx_of = [&](int64_t j, auto at) {
      const V xhat = (at(xi + j) - mu) * rs, dxhat = at(dyi + j) * at(gp + j);
      return rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    };
    if (addi)
      simd::row_for<T>(N, [&](int64_t j, auto at) { at.store(dxi + j, dx_of(j, at) + at(addi + j)); });
    else
      simd::row_for<T>(N, [&](int64_t j, auto at) { at.store(dxi + j, dx_of(j, at)); });
  };
  if (acc_width == 0) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      simd::with_row_length(N, [&](auto n) {
        for (int64_t i = r0; i < r1; ++i) row(i, nullptr, std::false_type{}, n);
      });
    });
    return {};
  }
  return sum_blocks<T>(M, acc_width, [&](int64_t i0, int64_t i1, T* a) {
    simd::with_row_length(N, [&](auto n) {
      for (int64_t i = i0; i < i1; ++i) row(i, a, std::true_type{}, n);
    });
  });
}

}  // namespace normlab
