#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "framework/tensor_ops.h"

namespace normlab {

std::string GradcheckResult::report() const {
  std::ostringstream os;
  os << (ok ? "gradcheck passed" : "gradcheck FAILED") << ": " << checked << " derivatives, max abs error "
     << max_abs_error << ", max rel error " << max_rel_error;
  if (input >= 0)
    os << "; worst at input " << input << (probe ? " probe " : " element ") << index << ": analytic " << analytic
       << ", numeric " << numeric;
  return os.str();
}

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Variable>& inputs, double eps, double atol, double rtol) {
  GradcheckOptions o;
  o.eps = eps, o.atol = atol, o.rtol = rtol;
  return gradcheck(fn, inputs, o);
}

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Variable>& inputs, const GradcheckOptions& o) {
  NL_CHECK(o.eps > 0, "gradcheck: eps must be > 0, got ", o.eps);
  NL_CHECK(o.stencil == 2 || o.stencil == 4, "gradcheck: stencil must be 2 or 4 points, got ", o.stencil);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Variable& v = inputs[i];
    NL_CHECK(v.defined() && v.is_leaf(), "gradcheck: input ", i, " must be a leaf variable");
    NL_CHECK(!v.requires_grad() || v.dtype() == DType::f64, "gradcheck: input ", i, " has dtype ",
             dtype_name(v.dtype()), "; finite differences need f64");
    NL_CHECK(!v.requires_grad() || v.data().is_contiguous(), "gradcheck: input ", i, " must be contiguous");
  }
  Generator gen(o.seed);

  // Analytic gradients of L = sum(out * r).
  for (const Variable& v : inputs) const_cast<Variable&>(v).zero_grad();
  const Variable out = fn(inputs);
  NL_CHECK(out.dtype() == DType::f64, "gradcheck: fn returned dtype ", dtype_name(out.dtype()), ", expected f64");
  const Tensor r = randn(out.shape(), gen, DType::f64);
  out.backward(r);
  std::vector<Tensor> analytic;
  for (const Variable& v : inputs)
    analytic.push_back(v.requires_grad() ? (v.grad().defined() ? v.grad().contiguous() : zeros(v.shape(), DType::f64)) : Tensor());

  NoGradGuard no_grad;
  auto loss = [&] {
    const Tensor y = fn(inputs).data();
    NL_CHECK(y.shape() == r.shape(), "gradcheck: fn output shape changed from ", to_string(r.shape()), " to ",
             to_string(y.shape()));
    return sum(mul(y, r)).item();
  };

  // dL/dt at t = 0 of t -> loss_at(t), by central differences.
  auto central_difference = [&](const auto& loss_at) {
    const double h = o.eps;
    const double d1 = loss_at(h) - loss_at(-h);
    if (o.stencil == 2) return d1 / (2 * h);
    const double d2 = loss_at(2 * h) - loss_at(-2 * h);
    return (8 * d1 - d2) / (12 * h);
  };

  GradcheckResult res;
  // Records one comparison; NaN errors stick as the worst.
  auto compare = [&](int input, int64_t index, bool probe, double a, double n) {
    const double abs_err = std::abs(a - n);
    const double rel_err = abs_err / std::max({std::abs(a), std::abs(n), o.rel_floor});
    res.checked++;
    if (!(abs_err <= o.atol + o.rtol * std::abs(n))) res.ok = false;
    if (std::isnan(res.max_rel_error)) return;
    res.max_abs_error = std::isnan(abs_err) ? abs_err : std::max(res.max_abs_error, abs_err);
    if (res.input < 0 || !(rel_err <= res.max_rel_error)) {
      res.max_rel_error = rel_err;
      res.input = input, res.index = index, res.probe = probe, res.analytic = a, res.numeric = n;
    }
  };

  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].requires_grad()) continue;
    Tensor x = inputs[i].data();
    double* xp = x.data<double>();
    const double* gp = analytic[i].data<double>();
    const int64_t numel = x.numel();
    if (numel <= o.max_full_elements) {
      for (int64_t j = 0; j < numel; ++j) {
        const double saved = xp[j];
        const double numeric = central_difference([&](double h) {
          xp[j] = saved + h;
          return loss();
        });
        xp[j] = saved;
        compare(int(i), j, false, gp[j], numeric);
      }
    } else {
      const Tensor saved = x.clone();
      const double* sp = saved.data<double>();
      for (int p = 0; p < o.probes; ++p) {
        const Tensor dir = randn(x.shape(), gen, DType::f64);
        const double* dp = dir.data<double>();
        double a = 0;
        for (int64_t j = 0; j < numel; ++j) a += gp[j] * dp[j];
        const double numeric = central_difference([&](double h) {
          for (int64_t j = 0; j < numel; ++j) xp[j] = sp[j] + h * dp[j];
          return loss();
        });
        x.copy_from(saved);
        compare(int(i), p, true, a, numeric);
      }
    }
  }
  return res;
}

}  // namespace normlab
