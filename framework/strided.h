// Strided N-d iteration shared by copies and elementwise kernels.
//
// for_each_strided<K>(shape, {strides of K operands}, grain, f) calls
//   f(std::array<int64_t, K> offsets, int64_t n, std::array<int64_t, K> inner_strides)
// once per innermost run of n elements (offsets in elements), after merging dims that are
// contiguous for every operand. Runs are split over threads in contiguous chunks.
#pragma once

#include <array>
#include <cstdint>

#include "framework/parallel.h"
#include "framework/tensor.h"

namespace normlab {

template <size_t K, class F>
void for_each_strided(const Shape& shape, const std::array<Shape, K>& strides, int64_t grain, const F& f) {
  const int64_t nd = int64_t(shape.size());
  if (shape_numel(shape) == 0) return;
  // Coalesce: keep dims of size > 1, merge neighbours contiguous for every operand.
  Shape sz;
  std::array<Shape, K> st;
  for (int64_t d = 0; d < nd; ++d) {
    if (shape[d] == 1) continue;
    bool merge = !sz.empty();
    for (size_t k = 0; k < K && merge; ++k) merge = st[k].back() == strides[k][d] * shape[d];
    if (merge) {
      sz.back() *= shape[d];
      for (size_t k = 0; k < K; ++k) st[k].back() = strides[k][d];
    } else {
      sz.push_back(shape[d]);
      for (size_t k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
    }
  }
  if (sz.empty()) {
    sz.push_back(1);
    for (size_t k = 0; k < K; ++k) st[k].push_back(1);
  }
  const int64_t rank = int64_t(sz.size());
  const int64_t inner = sz.back();
  std::array<int64_t, K> inner_st;
  for (size_t k = 0; k < K; ++k) inner_st[k] = st[k].back();
  int64_t outer = 1;
  for (int64_t d = 0; d + 1 < rank; ++d) outer *= sz[d];
  const int64_t outer_grain = std::max<int64_t>(1, grain / std::max<int64_t>(inner, 1));
  parallel_for(0, outer, outer_grain, [&](int64_t b, int64_t e) {
    // Unravel b into an index over the outer dims, then step it like an odometer.
    Shape idx(std::max<int64_t>(rank - 1, 0), 0);
    std::array<int64_t, K> off{};
    int64_t rem = b;
    for (int64_t d = rank - 2; d >= 0; --d) {
      idx[d] = rem % sz[d];
      rem /= sz[d];
      for (size_t k = 0; k < K; ++k) off[k] += idx[d] * st[k][d];
    }
    for (int64_t o = b; o < e; ++o) {
      f(off, inner, inner_st);
      for (int64_t d = rank - 2; d >= 0; --d) {
        for (size_t k = 0; k < K; ++k) off[k] += st[k][d];
        if (++idx[d] < sz[d]) break;
        for (size_t k = 0; k < K; ++k) off[k] -= st[k][d] * sz[d];
        idx[d] = 0;
      }
    }
  });
}

}  // namespace normlab
