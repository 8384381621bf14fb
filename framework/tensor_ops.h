// Eager, non-differentiable math on Tensors (f32 and f64): the kernels behind autograd's ops.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "framework/tensor.h"

namespace normlab {

// Elementwise with broadcasting.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& a, double s);
Tensor mul_scalar(const Tensor& a, double s);
Tensor neg(const Tensor& a);

// dst += src in place (same shape; dst contiguous). The engine's gradient accumulation.
void add_(Tensor& dst, const Tensor& src);

// Reductions. `dims` empty means every dim. Each output element is reduced by one thread
// in a fixed order, so results do not depend on the thread count.
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Max over one dim: values and i64 indices of the first maximum.
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
// Sums a broadcast result back to `shape` (the inverse of broadcasting, for gradients).
Tensor sum_to(const Tensor& x, const Shape& shape);

// Softmax over the last dim, and the backward passes given the forward output y.
Tensor softmax_lastdim(const Tensor& x);
Tensor log_softmax_lastdim(const Tensor& x);
Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y);      // y * (dy - sum(dy * y))
Tensor log_softmax_lastdim_backward(const Tensor& dy, const Tensor& y);  // dy - exp(y) * sum(dy)

// log(sum_i exp(x_i)) over one row of n values, in double and shifted by the row's maximum so
// it cannot overflow; -inf for a row that is empty or all -inf. (Softmax normalizer, log Z.)
template <class T>
double log_sum_exp(const T* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, double(x[i]));
  if (m == -std::numeric_limits<double>::infinity()) return m;
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
  return m + std::log(s);
}

// Concatenation along a dim; all other dims must match.
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);

// Largest |x| (for tests and diagnostics).
double max_abs(const Tensor& x);
// True when every element is finite.
bool all_finite(const Tensor& x);

}  // namespace normlab
