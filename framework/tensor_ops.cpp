#include "framework/tensor_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <limits>

#include "framework/cuda_ops.h"
#include "framework/elementwise.h"
#include "framework/fast_math.h"
#include "framework/parallel.h"

namespace normlab {

// Binary and scalar ops run on the inputs' device: a CUDA input goes to framework/cuda_ops.h.
namespace {
bool on_cuda(const Tensor& a, const Tensor& b) { return a.is_cuda() || b.is_cuda(); }
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  if (on_cuda(a, b)) return binary_cuda(a, b, BinaryOp::add, "add");
  return map_binary(a, b, "add", [](auto x, auto y) { return x + y; });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  if (on_cuda(a, b)) return binary_cuda(a, b, BinaryOp::sub, "sub");
  return map_binary(a, b, "sub", [](auto x, auto y) { return x - y; });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  if (on_cuda(a, b)) return binary_cuda(a, b, BinaryOp::mul, "mul");
  return map_binary(a, b, "mul", [](auto x, auto y) { return x * y; });
}
Tensor div(const Tensor& a, const Tensor& b) {
  if (on_cuda(a, b)) return binary_cuda(a, b, BinaryOp::div, "div");
  return map_binary(a, b, "div", [](auto x, auto y) { return x / y; });
}
Tensor neg(const Tensor& a) {
  if (a.is_cuda()) return scalar_cuda(a, -1.0, ScalarOp::mul, "neg");
  return map_unary(a, "neg", [](auto x) { return -x; });
}

Tensor add_scalar(const Tensor& a, double s) {
  if (a.is_cuda()) return scalar_cuda(a, s, ScalarOp::add, "add_scalar");
  return map_unary(a, "add_scalar", [s](auto x) { return x + decltype(x)(s); });
}
Tensor mul_scalar(const Tensor& a, double s) {
  if (a.is_cuda()) return scalar_cuda(a, s, ScalarOp::mul, "mul_scalar");
  return map_unary(a, "mul_scalar", [s](auto x) { return x * decltype(x)(s); });
}

void add_(Tensor& dst, const Tensor& src) {
  NL_CHECK(dst.shape() == src.shape(), "add_: shapes ", to_string(dst.shape()), " and ", to_string(src.shape()), " differ");
  NL_CHECK(dst.dtype() == src.dtype(), "add_: dtypes ", dtype_name(dst.dtype()), " and ", dtype_name(src.dtype()), " differ");
  NL_CHECK(dst.is_contiguous(), "add_: destination must be contiguous");
  if (on_cuda(dst, src)) {
    binary_inplace_cuda(dst, src, BinaryOp::add, "add_");
    return;
  }
  const Tensor s = src.contiguous();
  NL_DISPATCH_FLOATING(dst.dtype(), "add_", [&] {
    scalar_t* d = dst.data<scalar_t>();
    const scalar_t* p = s.data<scalar_t>();
    parallel_for(0, dst.numel(), kElementwiseGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) d[i] += p[i];
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Reductions

namespace {

struct ReduceDims {
  std::vector<bool> reduced;  // per input dim
  Shape out_shape;            // with or without the reduced dims
  int64_t outer = 1, inner = 1;
};

ReduceDims plan_reduce(const Tensor& x, std::vector<int64_t> dims, bool keepdim, const char* op) {
  ReduceDims r;
  const int64_t nd = x.dim();
  r.reduced.assign(nd, dims.empty());
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(d, nd, op);
    NL_CHECK(!r.reduced[w] || dims.empty(), op, ": dim ", d, " appears twice");
    r.reduced[w] = true;
  }
  for (int64_t d = 0; d < nd; ++d) {
    if (r.reduced[d]) {
      r.inner *= x.size(d);
      if (keepdim) r.out_shape.push_back(1);
    } else {
      r.outer *= x.size(d);
      r.out_shape.push_back(x.size(d));
    }
  }
  return r;
}

// Sums rows of `x` viewed as [outer, inner] (reduced dims last) or [inner, outer] (reduced
// dims first, summed column-wise). Accumulates in double; each output by one thread.
template <class T>
void sum_kernel(const Tensor& x, const ReduceDims& r, T* out, double scale) {
  const int64_t nd = x.dim();
  int64_t first_kept = nd;
  for (int64_t d = 0; d < nd; ++d)
    if (!r.reduced[d]) { first_kept = d; break; }
  bool leading = true;  // reduced dims form a prefix
  for (int64_t d = first_kept; d < nd; ++d) leading = leading && !r.reduced[d];
  if (leading && x.is_contiguous() && first_kept > 0) {
    const T* p = x.data<T>();
    const int64_t R = r.inner, C = r.outer;
    // Column blocks of >= 16 columns, about 16K values each.
    parallel_for(0, C, std::max<int64_t>(16, (int64_t(1) << 14) / std::max<int64_t>(R, 1)), [&](int64_t b, int64_t e) {
      std::vector<double> acc(size_t(e - b), 0.0);
      for (int64_t i = 0; i < R; ++i) {
        const T* row = p + i * C;
        for (int64_t c = b; c < e; ++c) acc[c - b] += double(row[c]);
      }
      for (int64_t c = b; c < e; ++c) out[c] = T(acc[c - b] * scale);
    });
    return;
  }
  std::vector<int64_t> perm;
  for (int64_t d = 0; d < nd; ++d) if (!r.reduced[d]) perm.push_back(d);
  for (int64_t d = 0; d < nd; ++d) if (r.reduced[d]) perm.push_back(d);
  const Tensor rows = x.permute(perm).contiguous();
  const T* p = rows.data<T>();
  const int64_t inner = r.inner;
  parallel_for(0, r.outer, std::max<int64_t>(1, 8192 / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const T* row = p + o * inner;
      double acc = 0;
      for (int64_t i = 0; i < inner; ++i) acc += double(row[i]);
      out[o] = T(acc * scale);
    }
  });
}

}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const ReduceDims r = plan_reduce(x, std::move(dims), keepdim, "sum");
  if (x.is_cuda()) return sum_cuda(x, r.reduced, r.out_shape, 1.0, "sum");
  Tensor out = empty(r.out_shape, x.dtype());
  NL_DISPATCH_FLOATING(x.dtype(), "sum", [&] { sum_kernel<scalar_t>(x, r, out.data<scalar_t>(), 1.0); });
  return out;
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const ReduceDims r = plan_reduce(x, std::move(dims), keepdim, "mean");
  NL_CHECK(r.inner > 0, "mean: reducing ", to_string(x.shape()), " over an empty set of elements");
  if (x.is_cuda()) return sum_cuda(x, r.reduced, r.out_shape, 1.0 / double(r.inner), "mean");
  Tensor out = empty(r.out_shape, x.dtype());
  NL_DISPATCH_FLOATING(x.dtype(), "mean", [&] { sum_kernel<scalar_t>(x, r, out.data<scalar_t>(), 1.0 / double(r.inner)); });
  return out;
}

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  dim = wrap_dim(dim, x.dim(), "max");
  check_cpu(x, "max");
  NL_CHECK(x.dim() == 0 || x.size(dim) > 0, "max: dim ", dim, " of shape ", to_string(x.shape()), " is empty");
  const ReduceDims r = plan_reduce(x, {dim}, keepdim, "max");
  Tensor values = empty(r.out_shape, x.dtype());
  Tensor indices = empty(r.out_shape, DType::i64);
  // Move `dim` last, keeping the other dims in order, so rows follow the output's order.
  std::vector<int64_t> perm;
  for (int64_t d = 0; d < x.dim(); ++d) if (d != dim) perm.push_back(d);
  perm.push_back(dim);
  const Tensor rows = x.dim() == 0 ? x.reshape({1}) : x.permute(perm).contiguous();
  NL_DISPATCH_FLOATING(x.dtype(), "max", [&] {
    const scalar_t* p = rows.data<scalar_t>();
    scalar_t* v = values.data<scalar_t>();
    int64_t* idx = indices.data<int64_t>();
    const int64_t inner = r.inner;
    parallel_for(0, r.outer, 64, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        const scalar_t* row = p + o * inner;
        int64_t best = 0;
        for (int64_t i = 1; i < inner; ++i)
          if (row[i] > row[best] || (std::isnan(row[i]) && !std::isnan(row[best]))) best = i;
        v[o] = row[best];
        idx[o] = best;
      }
    });
  });
  return {values, indices};
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  NL_CHECK(broadcast_shapes(shape, x.shape(), "sum_to") == x.shape(), "sum_to: shape ", to_string(shape),
           " does not broadcast to ", to_string(x.shape()));
  const int64_t lead = x.dim() - int64_t(shape.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && x.size(d) != 1)) dims.push_back(d);
  if (dims.empty()) return x.reshape(shape);
  return sum(x, dims, true).reshape(shape);
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dim

namespace {

// Applies f(row of each input..., out_row, n) to every row of the inputs viewed as
// [rows, last dim]; every input has the first one's shape and dtype.
template <class F, class... Rest>
Tensor map_rows(const char* op, const F& f, const Tensor& x, const Rest&... rest) {
  NL_CHECK(x.dim() >= 1, op, ": expected at least 1 dim, got shape ", to_string(x.shape()));
  for (const Tensor& t : std::initializer_list<Tensor>{x, rest...}) {
    check_cpu(t, op);
    NL_CHECK(t.shape() == x.shape(), op, ": shapes ", to_string(x.shape()), " and ", to_string(t.shape()), " differ");
    NL_CHECK(t.dtype() == x.dtype(), op, ": dtypes ", dtype_name(x.dtype()), " and ", dtype_name(t.dtype()), " differ");
  }
  const std::array<Tensor, 1 + sizeof...(Rest)> in{x.contiguous(), rest.contiguous()...};
  Tensor out = empty(x.shape(), x.dtype());
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  NL_DISPATCH_FLOATING(x.dtype(), op, [&] {
    scalar_t* o = out.data<scalar_t>();
    parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        std::apply([&](const auto&... t) { f(t.template data<scalar_t>() + r * n..., o + r * n, n); }, in);
    });
  });
  return out;
}

}  // namespace

Tensor softmax_lastdim(const Tensor& x) {
  return map_rows("softmax", [](const auto* in, auto* out, int64_t n) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(in)>>;
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) m = std::max(m, in[i]);
    if (m == -std::numeric_limits<T>::infinity()) m = 0;  // fully masked row
    double s = 0;
    for (int64_t i = 0; i < n; ++i) out[i] = fast_exp(in[i] - m);
    for (int64_t i = 0; i < n; ++i) s += double(out[i]);
    const T inv = T(1.0 / s);
    for (int64_t i = 0; i < n; ++i) out[i] *= inv;
  }, x);
}

Tensor log_softmax_lastdim(const Tensor& x) {
  return map_rows("log_softmax", [](const auto* in, auto* out, int64_t n) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(in)>>;
    const T lse = T(log_sum_exp(in, n));
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] - lse;
  }, x);
}

Tensor softmax_lastdim_backward(const Tensor& dy, const Tensor& y) {
  return map_rows("softmax_backward", [](const auto* g, const auto* yy, auto* dx, int64_t n) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(g)>>;
    double dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += double(g[i]) * double(yy[i]);
    for (int64_t i = 0; i < n; ++i) dx[i] = yy[i] * (g[i] - T(dot));
  }, dy, y);
}

Tensor log_softmax_lastdim_backward(const Tensor& dy, const Tensor& y) {
  return map_rows("log_softmax_backward", [](const auto* g, const auto* yy, auto* dx, int64_t n) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(g)>>;
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(g[i]);
    for (int64_t i = 0; i < n; ++i) dx[i] = g[i] - fast_exp(yy[i]) * T(s);
  }, dy, y);
}

// ---------------------------------------------------------------------------------------------

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  NL_CHECK(!xs.empty(), "cat: no tensors given");
  const Tensor& first = xs[0];
  dim = wrap_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (const Tensor& x : xs) {
    NL_CHECK(x.dtype() == first.dtype(), "cat: dtypes ", dtype_name(first.dtype()), " and ", dtype_name(x.dtype()), " differ");
    same_device(first, x, "cat");
    bool ok = x.dim() == first.dim();
    for (int64_t d = 0; ok && d < x.dim(); ++d) ok = d == dim || x.size(d) == first.size(d);
    NL_CHECK(ok, "cat: shapes ", to_string(first.shape()), " and ", to_string(x.shape()),
             " differ outside dim ", dim);
    shape[dim] += x.size(dim);
  }
  Tensor out = empty(shape, first.dtype(), first.device());
  int64_t at = 0;
  for (const Tensor& x : xs) {
    out.narrow(dim, at, x.size(dim)).copy_from(x);
    at += x.size(dim);
  }
  return out;
}

double max_abs(const Tensor& x) {
  const Tensor c = x.to(Device::cpu()).contiguous();
  return NL_DISPATCH_FLOATING(c.dtype(), "max_abs", [&] {
    const scalar_t* p = c.data<scalar_t>();
    double m = 0;
    for (int64_t i = 0; i < c.numel(); ++i) m = std::max(m, double(std::abs(p[i])));
    return m;
  });
}

bool all_finite(const Tensor& x) {
  const Tensor c = x.to(Device::cpu()).contiguous();
  return NL_DISPATCH_FLOATING(c.dtype(), "all_finite", [&] {
    const scalar_t* p = c.data<scalar_t>();
    bool finite = true;
    for (int64_t i = 0; i < c.numel(); ++i) finite &= std::isfinite(p[i]);
    return finite;
  });
}

}  // namespace normlab
