// The global L2 norm of the gradients, and clipping by it: each one pass over all gradients.
#include <cmath>
#include <unordered_set>
#include <vector>

#include "optim/flat_spans.h"
#include "optim/optim.h"

namespace normlab {

namespace {

// Elements per partial sum. Each parameter's gradient is cut into blocks of kNormBlock elements,
// each summed in order by one thread; a parameter's sum adds its blocks' partials in order, and
// the norm adds the parameters' sums in parameter order. The result does not depend on the
// thread count.
constexpr int64_t kNormBlock = 1 << 15;

// The gradients that are defined, as spans (ptr[0]); strided ones are copied into `copies`
// (contiguous, in parameter order).
FlatSpans gradient_spans(const std::vector<Variable>& params, const char* who, std::vector<Tensor>& copies) {
  FlatSpans spans;
  for (size_t i = 0; i < params.size(); ++i) {
    NL_CHECK(params[i].defined(), who, ": parameter ", i, " is undefined");
    Tensor g = params[i].grad();
    if (!g.defined()) continue;
    check_cpu(g, who);
    NL_CHECK(g.dtype() == DType::f32 || g.dtype() == DType::f64, who, ": gradient of parameter ", i, " has dtype ",
             dtype_name(g.dtype()), " (expected f32 or f64)");
    if (!g.is_contiguous()) g = copies.emplace_back(g.contiguous());
    spans.add({.ptr = {g.raw_data()}, .numel = g.numel(), .dtype = g.dtype()});
  }
  return spans;
}

// Scalar math: sum over spans k (in order) of sum over blocks (in order) of sum_i g_i^2 (in order).
double sum_of_squares(const FlatSpans& grads) {
  std::vector<double> partial(size_t(grads.num_blocks(kNormBlock)), 0.0);
  grads.for_each_block(kNormBlock, [&](const TensorSpan& s, int64_t block, int64_t i0, int64_t i1) {
    NL_DISPATCH_FLOATING(s.dtype, "grad_norm", [&] {
      const scalar_t* p = static_cast<const scalar_t*>(s.ptr[0]);
      double sum = 0;
      for (int64_t i = i0; i < i1; ++i) sum += double(p[i]) * double(p[i]);
      partial[size_t(block)] = sum;
    });
  });
  double total = 0;
  size_t b = 0;
  for (size_t k = 0; k < grads.size(); ++k) {
    double s = 0;
    for (int64_t j = 0; j * kNormBlock < grads[k].numel; ++j) s += partial[b++];
    total += s;
  }
  return total;
}

}  // namespace

double grad_norm(const std::vector<Variable>& params) {
  std::vector<Tensor> copies;
  return std::sqrt(sum_of_squares(gradient_spans(params, "grad_norm", copies)));
}

namespace {

// Multiplies every defined gradient by `factor` in place (strided ones are replaced by their
// scaled contiguous copies, as gradient_spans made them), each parameter once.
void scale_spans(const std::vector<Variable>& params, const FlatSpans& grads, std::vector<Tensor>& copies,
                 double factor, const char* who) {
  size_t c = 0;
  for (const Variable& p : params)
    if (p.grad().defined() && !p.grad().is_contiguous()) Variable(p).set_grad(copies[c++]);
  // A parameter listed twice is scaled once (and not by two threads at once).
  FlatSpans unique;
  std::unordered_set<const void*> seen(grads.size());
  for (size_t k = 0; k < grads.size(); ++k)
    if (seen.insert(grads[k].ptr[0]).second) unique.add(grads[k]);
  unique.for_each([&](const TensorSpan& s, int64_t i0, int64_t i1) {
    NL_DISPATCH_FLOATING(s.dtype, who, [&] {
      scalar_t* d = static_cast<scalar_t*>(s.ptr[0]);
      for (int64_t i = i0; i < i1; ++i) d[i] = scalar_t(double(d[i]) * factor);
    });
  });
}

}  // namespace

double clip_grad_norm(const std::vector<Variable>& params, double max_norm) {
  NL_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  std::vector<Tensor> copies;
  const FlatSpans grads = gradient_spans(params, "clip_grad_norm", copies);
  const double norm = std::sqrt(sum_of_squares(grads));
  if (!std::isfinite(norm) || norm <= max_norm) return norm;
  scale_spans(params, grads, copies, max_norm / norm, "clip_grad_norm");
  return norm;
}

void scale_grads(const std::vector<Variable>& params, double factor) {
  std::vector<Tensor> copies;
  const FlatSpans grads = gradient_spans(params, "scale_grads", copies);
  scale_spans(params, grads, copies, factor, "scale_grads");
}

}  // namespace normlab
