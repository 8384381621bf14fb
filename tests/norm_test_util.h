// Helpers shared by the norm suites: the hard inputs every layer is checked on, and a
// gradcheck wrapper that prints each case's error (the figures quoted in the docs).
#pragma once

#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <string>

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

}  // namespace normlab::testing
