// Helpers shared by the norm suites: the hard inputs every layer is checked on, and a
// gradcheck wrapper that prints each case's error (the figures quoted in the docs).
#pragma once

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "framework/tensor_ops.h"

namespace normlab::testing {

// The input kinds of the norm gradchecks (f64).
enum class Input {
  normal,         // N(0, 1)
  large_mean,     // 1e4 + N(0, 1): cancellation in the mean
  near_constant,  // 3 + 1e-3 N(0, 1): variance comparable to eps
  wide,           // uniform in [-10, 10]
};

inline const char* input_name(Input k) {
  switch (k) {
    case Input::normal: return "normal";
    case Input::large_mean: return "large-mean";
    case Input::near_constant: return "near-constant";
    case Input::wide: return "wide";
  }
  return "?";
}

inline Tensor make_input(const Shape& s, Input k, Generator& gen) {
  switch (k) {
    case Input::normal: return randn(s, gen, DType::f64);
    case Input::large_mean: return randn(s, gen, DType::f64, 1e4, 1.0);
    case Input::near_constant: return randn(s, gen, DType::f64, 3.0, 1e-3);
    case Input::wide: return uniform(s, gen, -10.0, 10.0, DType::f64);
  }
  return Tensor();
}

constexpr Input all_inputs[] = {Input::normal, Input::large_mean, Input::near_constant, Input::wide};

// A leaf that requires grad.
inline Variable leaf(Tensor t) { return Variable(std::move(t), true); }

// Gradcheck options for an input kind. Near-constant rows have a scale of ~sqrt(eps + 1e-6), so
// the step shrinks to 1e-6. At 1e4, rounding the mean (ulp 1.8e-12) puts noise of ~ulp * rstd /
// step into the numeric derivative, large for a row of 2 values with a small spread, while the
// truncation error grows as (step * rstd)^4: a step of 3e-4 keeps both below the tolerance.
inline GradcheckOptions hard_input_options(Input k) {
  GradcheckOptions opt;
  if (k == Input::near_constant) opt.eps = 1e-6;
  if (k == Input::large_mean) opt.eps = 3e-4;
  return opt;
}

// One gradcheck case of a norm: an f64 input of `shape` and `kind`, and per-feature gamma ~ N(1, 0.5)
// and beta ~ N(0, 1), all leaves.
struct HardCase {
  Shape shape;
  Input kind;
  Variable x, gamma, beta;
  std::string label() const { return to_string(shape) + " " + input_name(kind); }
};

// The row shapes every per-row norm is checked on: odd N, M = 1, N = 1, 3-D.
inline const std::vector<Shape> row_shapes{{4, 7}, {1, 5}, {3, 1}, {2, 3, 6}};

// Calls f(case) for every shape and every hard input kind; gamma and beta have the size of
// dim `feature_dim` (-1: the last dim, 1: the channel dim).
template <class F>
void for_each_hard_case(Generator& gen, const std::vector<Shape>& shapes, int64_t feature_dim, const F& f) {
  for (const Shape& s : shapes)
    for (Input k : all_inputs) {
      const int64_t features = s[size_t(wrap_dim(feature_dim, int64_t(s.size()), "for_each_hard_case"))];
      Variable x = leaf(make_input(s, k, gen));
      Variable gamma = leaf(randn({features}, gen, DType::f64, 1.0, 0.5));
      Variable beta = leaf(randn({features}, gen, DType::f64));
      f(HardCase{s, k, x, gamma, beta});
    }
}

// Runs gradcheck, prints "gradcheck <name>: max rel err E (abs E)" and checks it passed.
// Returns the worst relative error.
inline double expect_gradcheck(const std::string& name, const std::function<Variable(const std::vector<Variable>&)>& fn,
                               const std::vector<Variable>& inputs, GradcheckOptions opt = {}) {
  const GradcheckResult r = gradcheck(fn, inputs, opt);
  std::printf("gradcheck %-48s max rel err %.1e (abs %.1e)\n", name.c_str(), r.max_rel_error, r.max_abs_error);
  BOOST_CHECK_MESSAGE(r.ok, name << ": " << r.report());
  return r.max_rel_error;
}

// Largest |a - b| / max|b| over two tensors of the same shape (any float dtype).
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  const double scale = max_abs(b.to(DType::f64));
  const double diff = max_abs(sub(a.to(DType::f64), b.to(DType::f64)));
  return scale > 0 ? diff / scale : diff;
}

// max|a - b| / max(max|b|, floor): for results that cancel (dx of a 1-feature RMSNorm is
// rrms * dxhat * eps / (x^2 + eps)), the floor is the size of the terms that cancel.
inline double max_diff_scaled(const Tensor& a, const Tensor& b, double floor) {
  const double diff = max_abs(sub(a.to(DType::f64), b.to(DType::f64)));
  const double scale = std::max(max_abs(b.to(DType::f64)), floor);
  return scale > 0 ? diff / scale : diff;
}

// Shapes on which a fast kernel is compared with its reference: N below, at and past the lane
// count, with a tail, and M past one reduction block; N = 32 and 128 take the unrolled row loops.
inline const std::vector<Shape> kernel_shapes{{1, 1}, {3, 7}, {5, 33}, {64, 128}, {300, 17}, {2, 1000}, {37, 32}};

// Runs f(dtype, tolerance, shape, kind, x) over f32 and f64, kernel_shapes and the hard inputs. The
// f64 tolerance allows the summation order to move a mean of 1e4 by ~1e-12.
template <class F>
void for_each_kernel_case(const F& f) {
  Generator gen(77);
  for (DType dtype : {DType::f32, DType::f64})
    for (const Shape& s : kernel_shapes)
      for (Input k : all_inputs) f(dtype, dtype == DType::f32 ? 2e-6 : 1e-10, s, k, make_input(s, k, gen).to(dtype));
}

// The worst f32 error of a fast kernel against its reference per input kind, printed as
// "<name> fast vs reference, f32 worst rel err: normal E, large-mean E, ...".
struct WorstByKind {
  double err[4] = {};
  void add(Input k, double e) { err[int(k)] = std::max(err[int(k)], e); }
  void print(const char* name) const {
    std::printf("%s fast vs reference, f32 worst rel err:", name);
    for (Input k : all_inputs) std::printf(" %s %.1e", input_name(k), err[int(k)]);
    std::printf("\n");
  }
};

// One output of a fast kernel against the reference: t[0] reference, t[1] fast; floor is the size
// of the terms the output cancels (0: compared with its own size, see max_diff_scaled).
struct KernelOutput {
  const char* name;
  const Tensor* t;
  double floor = 0.0;
};

// Checks max_diff_scaled(fast, reference) <= tol for every output, naming the case (label) on
// failure, and adds the f32 errors to worst.
inline void check_fast_outputs(std::initializer_list<KernelOutput> outs, DType dtype, double tol,
                               const std::string& label, Input k, WorstByKind& worst) {
  for (const KernelOutput& o : outs) {
    const double err = max_diff_scaled(o.t[1], o.t[0], o.floor);
    if (dtype == DType::f32) worst.add(k, err);
    BOOST_CHECK_MESSAGE(err <= tol, o.name << " " << dtype_name(dtype) << " " << label << " " << input_name(k)
                                           << ": fast vs reference " << err);
  }
}

}  // namespace normlab::testing
