// The global L2 norm of the gradients, and clipping by it.
#include <algorithm>
#include <cmath>
#include <vector>

#include "framework/parallel.h"
#include "optim/optim.h"

namespace normlab {

namespace {

// Elements per partial sum. Blocks are fixed, each summed in order by one thread, and the
// partials added in block order: the result does not depend on the thread count.
constexpr int64_t kNormBlock = 1 << 15;

double sum_of_squares(const Tensor& g_in) {
  check_cpu(g_in, "grad_norm");
  const Tensor g = g_in.contiguous();
  const int64_t n = g.numel();
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(size_t(blocks), 0.0);
  NL_DISPATCH_FLOATING(g.dtype(), "grad_norm", [&] {
    const scalar_t* p = g.data<scalar_t>();
    parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double s = 0;
        for (int64_t i = b * kNormBlock, e = std::min(n, i + kNormBlock); i < e; ++i) s += double(p[i]) * double(p[i]);
        partial[size_t(b)] = s;
      }
    });
  });
  double s = 0;
  for (double x : partial) s += x;
  return s;
}

}  // namespace

double grad_norm(const std::vector<Variable>& params) {
  double total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    NL_CHECK(params[i].defined(), "grad_norm: parameter ", i, " is undefined");
    const Tensor& g = params[i].grad();
    if (g.defined()) total += sum_of_squares(g);
  }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Variable>& params, double max_norm) {
  NL_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  const double norm = grad_norm(params);
  if (!std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / norm;
  for (Variable p : params) {
    if (!p.grad().defined()) continue;
    Tensor g = p.grad().is_contiguous() ? p.grad() : p.grad().contiguous();
    NL_DISPATCH_FLOATING(g.dtype(), "clip_grad_norm", [&] {
      scalar_t* d = g.data<scalar_t>();
      parallel_for(0, g.numel(), 1 << 14, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) d[i] = scalar_t(double(d[i]) * scale);
      });
    });
    p.set_grad(g);
  }
  return norm;
}

}  // namespace normlab
