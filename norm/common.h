// Shared plumbing of the norm layers: input checks, the (M rows x N features) view of a
// tensor, and the deterministic column reduction behind dgamma/dbeta and batch statistics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "autograd/module.h"
#include "framework/error.h"
#include "framework/parallel.h"
#include "framework/tensor.h"

namespace normlab {

// Base of every norm module, so that placements and models can hold any of them.
class NormLayer : public Module {
 public:
  virtual Variable forward(const Variable& x) = 0;

  // A residual add and this norm together: {h, forward(h)} for h = x + r. LayerNorm and RMSNorm
  // compute both in one node (add_layer_norm, add_rms_norm: one pass forward and one back);
  // other norms add, then normalize. keep_sum false: the caller uses the sum only through the
  // norm (post-norm), so the fused node leaves h out of the graph (its h carries the values
  // only); the unfused default returns h as it is either way.
  virtual std::pair<Variable, Variable> forward_add(const Variable& x, const Variable& r, bool keep_sum = true);
};

// Throws unless eps > 0 (and finite).
inline void check_eps(double eps, const char* who) {
  NL_CHECK(std::isfinite(eps) && eps > 0, who, ": eps must be a finite number > 0, got ", eps);
}

// Throws unless n >= 1.
inline void check_features(int64_t n, const char* who, const char* what = "the feature size") {
  NL_CHECK(n >= 1, who, ": ", what, " must be >= 1, got ", n);
}

// Checks that x is non-empty with last dim N, and returns the number of rows M = numel / N.
inline int64_t rows_of(const Tensor& x, int64_t N, const char* who) {
  NL_CHECK(x.defined(), who, ": the input is undefined");
  NL_CHECK(x.dim() >= 1 && x.size(-1) == N, who, ": expected the last dim of the input to be ", N, ", got shape ",
           to_string(x.shape()));
  NL_CHECK(x.numel() > 0, who, ": the input is empty (shape ", to_string(x.shape()), ")");
  return x.numel() / N;
}

// Throws unless t is a 1-D tensor of n elements with x's dtype (skipped when t is undefined).
inline void check_vector(const Tensor& t, int64_t n, DType dtype, const char* who, const char* name) {
  if (!t.defined()) return;
  NL_CHECK(t.dim() == 1 && t.size(0) == n, who, ": ", name, " must have shape [", n, "], got ",
           to_string(t.shape()));
  NL_CHECK(t.dtype() == dtype, who, ": ", name, " has dtype ", dtype_name(t.dtype()), " but the input has ",
           dtype_name(dtype));
}

// The dtype of the per-row statistics a norm saves for input dtype x: x's own, f32 for bf16 and
// f16 (math_t: low-precision rows are normalized in f32).
inline DType norm_stat_dtype(DType x) { return is_low_precision(x) ? DType::f32 : x; }

// Throws unless the saved statistic s has M elements (one per `per`) of norm_stat_dtype(x_dtype).
inline void check_stat(const Tensor& s, int64_t M, DType x_dtype, const char* who, const char* name,
                       const char* per = "row") {
  NL_CHECK(s.defined() && s.numel() == M, who, ": ", name, " must have one value per ", per, " (", M, ")");
  NL_CHECK(s.dtype() == norm_stat_dtype(x_dtype), who, ": ", name, " has dtype ", dtype_name(s.dtype()),
           ", expected ", dtype_name(norm_stat_dtype(x_dtype)), " for a ", dtype_name(x_dtype), " input");
}

// Calls f(T{}) with T the storage type of dtype, float, double, bf16 or f16, for the norm kernels
// that take low-precision storage (math_t: computed in f32); other dtypes throw naming the op.
template <class F>
void dispatch_norm_dtype(DType dtype, const char* who, const F& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16{});
    case DType::f16: return f(f16{});
    default: NL_FAIL(who, ": dtype ", dtype_name(dtype), " is not supported (expected f32, f64, bf16 or f16)");
  }
}

// t's data, or null for an undefined tensor (optional gamma, beta, or an unwanted gradient).
template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// x's shape without its last dim: the shape of per-row statistics.
inline Shape leading_shape(const Tensor& x) {
  Shape s = x.shape();
  s.pop_back();
  return s;
}

// Rows per block of a deterministic row reduction: fixed by M alone, never by the thread count.
inline int64_t reduction_block_rows(int64_t M) { return std::max<int64_t>(64, (M + 63) / 64); }

// Sums per-row contributions into `width` accumulators, deterministically: the rows are cut
// into fixed blocks, each block accumulates into its own partial buffer of Acc (in parallel),
// and the partials are added in block order, in double. `block(i0, i1, acc)` adds the terms of
// rows [i0, i1) into acc[0..width). The result is the same for any thread count.
template <class Acc = double, class F>
std::vector<double> sum_blocks(int64_t M, int64_t width, const F& block) {
  const int64_t rows = reduction_block_rows(M);
  const int64_t blocks = (M + rows - 1) / rows;
  std::vector<Acc> partial(size_t(blocks * width), Acc(0));
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) block(b * rows, std::min(M, (b + 1) * rows), partial.data() + b * width);
  });
  std::vector<double> total(size_t(width), 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t j = 0; j < width; ++j) total[size_t(j)] += double(partial[size_t(b * width + j)]);
  return total;
}

// sum_blocks with one call per row: `row(i, acc)` adds row i's terms into acc[0..width).
template <class Acc = double, class F>
std::vector<double> sum_rows(int64_t M, int64_t width, const F& row) {
  return sum_blocks<Acc>(M, width, [&](int64_t i0, int64_t i1, Acc* acc) {
    for (int64_t i = i0; i < i1; ++i) row(i, acc);
  });
}

// Sum of term(j) for j in [0, n), in double, over kLanes interleaved lanes added in a fixed
// order. A plain running sum cannot be vectorized under strict IEEE order; the lanes can, and
// the result still depends only on the values (never on threads or the machine's vector width).
constexpr int kLanes = 8;
template <class F>
inline double lane_sum(int64_t n, const F& term) {
  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(j + l);
  double tail = 0;
  for (; j < n; ++j) tail += term(j);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// The N values of an optional per-feature parameter in A, offset + p[j] (`fill` when p is null),
// so the hot loops of the fast kernels have no branches. T may be bf16 or f16 (widened first).
template <class A = double, class T>
std::vector<A> as_values(const T* p, int64_t N, double fill, double offset = 0.0) {
  std::vector<A> out(size_t(N), static_cast<A>(fill));
  if (p)
    for (int64_t j = 0; j < N; ++j) out[size_t(j)] = A(offset + double(to_math(p[j])));
  return out;
}

// Rows per parallel_for chunk for per-row kernels of N features (about 16K elements a chunk).
inline int64_t row_grain(int64_t N) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)); }

// ---- Autograd plumbing ----

// v's data, or an undefined Tensor for an undefined Variable (an optional parameter).
inline Tensor data_or_undefined(const Variable& v) { return v.defined() ? v.data() : Tensor(); }

// The defined ones of `vars`, in order: the graph inputs of a layer whose parameters are optional.
inline std::vector<Variable> defined_inputs(std::initializer_list<Variable> vars) {
  std::vector<Variable> out;
  for (const Variable& v : vars)
    if (v.defined()) out.push_back(v);
  return out;
}

// `outputs` as Variables. When a graph is recorded (grad mode on and some input requires grad)
// they get the node make_node() builds as their grad_fn, over `inputs`; otherwise no node is built.
template <class MakeNode>
std::vector<Variable> record(std::vector<Variable> inputs, std::vector<Tensor> outputs, const MakeNode& make_node) {
  if (!any_requires_grad(inputs)) {
    std::vector<Variable> out;
    for (Tensor& t : outputs) out.emplace_back(std::move(t));
    return out;
  }
  return make_outputs(make_node(), std::move(inputs), std::move(outputs));
}

// Gradients of a norm with inputs (x, gamma?, beta?); undefined where not wanted.
struct NormGrads {
  Tensor dx, dgamma, dbeta;
};

// The node of a norm with inputs (x, gamma?, beta?) and saved statistics mean and rstd: its
// backward maps dy to (dx, dgamma?, dbeta?) through grads(). Subclasses name themselves and
// hold what else their backward needs.
class AffineNormNode : public Node {
 public:
  AffineNormNode(std::string name, Tensor x, Tensor gamma, Tensor mean, Tensor rstd, bool has_beta)
      : Node(std::move(name)), x(std::move(x)), gamma(std::move(gamma)), mean(std::move(mean)),
        rstd(std::move(rstd)), has_beta(has_beta) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor x, gamma, mean, rstd;  // gamma undefined without affine
  bool has_beta;

 protected:
  virtual NormGrads grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const = 0;
};

// y as a Variable; when a graph is recorded, with the node make_node() returns as its grad_fn
// over the inputs (x, gamma?, beta?).
template <class MakeNode>
Variable affine_norm_output(const Variable& x, const Variable& gamma, const Variable& beta, Tensor y,
                            const MakeNode& make_node) {
  return record(defined_inputs({x, gamma, beta}), {std::move(y)}, make_node)[0];
}

}  // namespace normlab
