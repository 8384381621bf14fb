// DyT: forward against the formula (tanh and the identity ablation), gradcheck of x, alpha,
// gamma, beta on hard inputs and shapes (N = 1, odd N, M = 1, 3-D), the DyT gradient-of-alpha
// identity, deterministic dalpha, the node, the module, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <vector>

#include "framework/fast_math.h"
#include "framework/parallel.h"
#include "norm/dyt/dyt.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

BOOST_AUTO_TEST_SUITE(dyt_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula) {
  Generator gen(1);
  const Tensor x = randn({3, 7}, gen, DType::f64, 0.5, 2.0);
  const Tensor alpha = full({1}, 0.7, DType::f64);
  const Tensor gamma = randn({7}, gen, DType::f64), beta = randn({7}, gen, DType::f64);
  const Tensor y = dyt_forward(x, alpha, gamma, beta);
  const Tensor y_id = dyt_forward(x, alpha, gamma, beta, /*identity=*/true);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 7; ++j) {
      BOOST_CHECK_CLOSE(y.at({i, j}), gamma.at({j}) * std::tanh(0.7 * x.at({i, j})) + beta.at({j}), 1e-12);
      BOOST_CHECK_CLOSE(y_id.at({i, j}), gamma.at({j}) * 0.7 * x.at({i, j}) + beta.at({j}), 1e-12);
    }
}

BOOST_AUTO_TEST_CASE(gradcheck_every_parameter_on_hard_inputs) {
  Generator gen(3);
  double worst = 0;
  for_each_hard_case(gen, row_shapes, -1, [&](const HardCase& c) {
    for (double a0 : {0.5, -1.3}) {
      auto alpha = leaf(full({1}, a0, DType::f64));
      for (bool identity : {false, true}) {
        // The identity form is linear in each input, so central differences have no
        // truncation error: a large step keeps roundoff of the ~1e5 loss (large-mean x) small.
        GradcheckOptions opt;
        if (identity) opt.eps = 0.1;
        worst = std::max(worst, expect_gradcheck("dyt " + c.label() + " alpha=" + std::to_string(a0) +
                                                     (identity ? " identity" : ""),
                                                 [identity](const std::vector<Variable>& v) {
                                                   return dyt(v[0], v[1], v[2], v[3], identity);
                                                 },
                                                 {c.x, alpha, c.gamma, c.beta}, opt));
      }
    }
  });
  std::printf("dyt worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(gradient_of_alpha_is_sum_of_dx_times_x_over_alpha) {
  // d/dalpha tanh(alpha x) = x / alpha * d/dx tanh(alpha x), so dL/dalpha = sum(dL/dx * x) / alpha.
  Generator gen(4);
  for (double a0 : {0.5, 0.05, -2.0}) {
    for (bool identity : {false, true}) {
      auto x = leaf(randn({5, 3, 11}, gen, DType::f64, 0.3, 1.5));
      auto alpha = leaf(full({1}, a0, DType::f64));
      auto gamma = leaf(randn({11}, gen, DType::f64));
      auto beta = leaf(randn({11}, gen, DType::f64));
      Variable y = dyt(x, alpha, gamma, beta, identity);
      y.backward(randn(y.shape(), gen, DType::f64));
      const double via_dx = sum(mul(x.grad(), x.data())).item() / a0;
      BOOST_CHECK_CLOSE(alpha.grad().item(), via_dx, 1e-9);
    }
  }
}

BOOST_AUTO_TEST_CASE(parameter_gradients_do_not_depend_on_the_thread_count) {
  Generator gen(5);
  const Tensor x = randn({3000, 33}, gen), dy = randn({3000, 33}, gen);
  const Tensor alpha = full({1}, 0.5), gamma = randn({33}, gen);
  const int saved = num_threads();
  set_num_threads(1);
  const DyTGrads one = dyt_backward(dy, x, alpha, gamma, false, true, true, true, true);
  set_num_threads(std::max(2, saved));
  const DyTGrads many = dyt_backward(dy, x, alpha, gamma, false, true, true, true, true);
  set_num_threads(saved);
  BOOST_CHECK_EQUAL(one.dalpha.item(), many.dalpha.item());
  BOOST_CHECK(one.dgamma.to_vector<float>() == many.dgamma.to_vector<float>());
  BOOST_CHECK(one.dbeta.to_vector<float>() == many.dbeta.to_vector<float>());
  BOOST_CHECK(one.dx.to_vector<float>() == many.dx.to_vector<float>());
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference) {
  WorstByKind worst_f32;
  for_each_kernel_case([&](DType dtype, double tol, const Shape& s, Input k, const Tensor& x) {
    const int64_t M = s[0], N = s[1];
    Generator gen(28);
    const Tensor gamma = randn({N}, gen, dtype, 1.0, 0.5), beta = randn({N}, gen, dtype), dy = randn(s, gen, dtype);
    for (bool identity : {false, true}) {
      const double alpha = 0.7;
      Tensor y[2], dx[2], dalpha[2], dgamma[2], dbeta[2];
      for (int v = 0; v < 2; ++v)
        y[v] = empty(s, dtype), dx[v] = empty(s, dtype), dalpha[v] = empty({1}, dtype),
        dgamma[v] = empty({N}, dtype), dbeta[v] = empty({N}, dtype);
      NL_DISPATCH_FLOATING(dtype, "test", [&] {
        using T = scalar_t;
        for (int v = 0; v < 2; ++v) {
          (v == 0 ? dyt_forward<T> : dyt_forward_cpu<T>)(y[v].data<T>(), x.data<T>(), alpha, gamma.data<T>(),
                                                         beta.data<T>(), M, N, identity);
          (v == 0 ? dyt_backward<T> : dyt_backward_cpu<T>)(dx[v].data<T>(), dalpha[v].data<T>(), dgamma[v].data<T>(),
                                                           dbeta[v].data<T>(), dy.data<T>(), x.data<T>(), alpha,
                                                           gamma.data<T>(), M, N, identity);
        }
      });
      // dalpha sums du * x over every element: compared to the size of those terms.
      const double dalpha_floor = max_abs(dy) * max_abs(gamma) * max_abs(x) * std::abs(alpha) * double(M * N);
      check_fast_outputs({{"y", y}, {"dx", dx}, {"dalpha", dalpha, dalpha_floor}, {"dgamma", dgamma},
                          {"dbeta", dbeta}},
                         dtype, tol, to_string(s) + (identity ? " identity" : ""), k, worst_f32);
    }
  });
  worst_f32.print("dyt");
}

BOOST_AUTO_TEST_CASE(f32_tanh_against_std_tanh) {
  // A grid of step 2^-17 over [-12, 12] (past the clamp at 7.9 and the saturation of f32 at ~9) and
  // small x down to 1e-9, in vectors of 16 as the kernels run them, against tanh and 1 - tanh^2 in double:
  // tanh_rational_f32 (the forward's) within 4e-7 absolute and relative; tanh_with_slope_f32 (the
  // backward's) within 3e-7 relative for t and 1e-6 relative for the slope (which keeps its
  // precision where t rounds to 1: 4 e / (1 + e)^2).
  double worst_rational = 0, worst_t = 0, worst_slope = 0;
  std::vector<float> xs;
  for (int64_t k = -12 * (1 << 17); k <= 12 * (1 << 17); ++k) xs.push_back(std::ldexp(float(k), -17));
  for (int64_t k = 1; k < (1 << 20); k += 7) xs.push_back(std::ldexp(float(k), -30));  // below 1e-3, relative
  xs.resize(xs.size() / 16 * 16);
  for (size_t k = 0; k < xs.size(); k += 16) {
    const simd::Vec<float> v = simd::load(xs.data() + k);
    simd::Vec<float> slope_v;
    const simd::Vec<float> r_v = tanh_rational_f32(v), t_v = tanh_with_slope_f32(v, slope_v);
    for (int l = 0; l < 16; ++l) {
      const float x = xs[k + size_t(l)], r = r_v[l], t = t_v[l], slope = slope_v[l];
      const double ref = std::tanh(double(x)), ref_slope = 1.0 / (std::cosh(double(x)) * std::cosh(double(x)));
      const double scale = std::max(std::abs(ref), 1e-300);
      worst_rational = std::max(worst_rational, std::abs(double(r) - ref) / scale);
      worst_t = std::max(worst_t, std::abs(double(t) - ref) / scale);
      if (ref_slope > 1e-30) worst_slope = std::max(worst_slope, std::abs(double(slope) - ref_slope) / ref_slope);
    }
  }
  std::printf("f32 tanh over %zu points in [-12, 12]: tanh_rational_f32 worst rel err %.2e, tanh_with_slope_f32 "
              "t %.2e, slope %.2e\n",
              xs.size(), worst_rational, worst_t, worst_slope);
  BOOST_CHECK_LE(worst_rational, 4e-7);
  BOOST_CHECK_LE(worst_t, 3e-7);
  BOOST_CHECK_LE(worst_slope, 1e-6);
  // Edges: 0, tiny, saturation, infinities, NaN.
  float slope = 0;
  BOOST_CHECK_EQUAL(tanh_rational_f32(0.0f), 0.0f);
  BOOST_CHECK_EQUAL(tanh_rational_f32(1e-20f), 1e-20f);
  BOOST_CHECK_EQUAL(tanh_rational_f32(100.0f), 1.0f);
  BOOST_CHECK_EQUAL(tanh_rational_f32(-INFINITY), -1.0f);
  BOOST_CHECK(std::isnan(tanh_rational_f32(NAN)));
  BOOST_CHECK_EQUAL(tanh_with_slope_f32(1e-20f, slope), 1e-20f);
  BOOST_CHECK_EQUAL(slope, 1.0f);
  BOOST_CHECK_EQUAL(tanh_with_slope_f32(-100.0f, slope), -1.0f);
  BOOST_CHECK_EQUAL(slope, 0.0f);
  BOOST_CHECK(std::isnan(tanh_with_slope_f32(NAN, slope)) && std::isnan(slope));
}

BOOST_AUTO_TEST_CASE(module_parameters_node_and_f32) {
  Generator gen(6);
  DyT m(6, 0.5, false, DType::f64);
  const auto params = m.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 3u);
  BOOST_CHECK_EQUAL(params[0].first, "alpha");
  BOOST_CHECK_EQUAL(params[1].first, "weight");
  BOOST_CHECK_EQUAL(params[2].first, "bias");
  BOOST_CHECK(m.alpha.shape() == (Shape{1}));
  BOOST_CHECK_EQUAL(m.alpha.item(), 0.5);
  BOOST_CHECK_EQUAL(DyT(4).alpha.item(), 0.5);
  auto x = leaf(randn({2, 3, 6}, gen, DType::f64));
  Variable y = m.forward(x);
  auto* node = dynamic_cast<DyTNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "dyt");
  // At init (gamma = 1, beta = 0) DyT is tanh(0.5 x).
  BOOST_CHECK_CLOSE(y.data().at({1, 2, 3}), std::tanh(0.5 * x.data().at({1, 2, 3})), 1e-12);
  y.backward(ones(y.shape(), DType::f64));
  BOOST_CHECK(m.alpha.grad().defined() && m.weight.grad().defined() && m.bias.grad().defined());
  BOOST_CHECK(node->released());
  BOOST_CHECK(!node->x.defined());
  // f32 agrees with f64.
  DyT m32(6, 0.5, true);
  const Tensor y32 = m32.forward(Variable(x.data().to(DType::f32))).data();
  BOOST_CHECK_LT(max_rel_diff(y32, dyt_forward(x.data(), full({1}, 0.5, DType::f64), ones({6}, DType::f64),
                                               zeros({6}, DType::f64), true)),
                 1e-6);
  NoGradGuard guard;
  BOOST_CHECK(m.forward(x).grad_fn() == nullptr);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(7);
  DyT m(4);
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({2, 5}, gen))); }),
                       "last dim of the input to be 4, got shape [2, 5]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(empty({0, 4}))); }), "empty"));
  BOOST_CHECK(contains(error_of([] { DyT(0); }), "feature size must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([] { DyT(4, std::nan("")); }), "alpha0 must be finite, got nan"));
  BOOST_CHECK(contains(error_of([&] { dyt_forward(randn({2, 4}, gen), full({2}, 0.5), ones({4}), zeros({4})); }),
                       "alpha must have shape [1], got [2]"));
  BOOST_CHECK(contains(error_of([&] { dyt_forward(randn({2, 4}, gen), full({1}, 0.5), ones({3}), zeros({4})); }),
                       "gamma must have shape [4], got [3]"));
  BOOST_CHECK(contains(
      error_of([&] { dyt_forward(randn({2, 4}, gen), full({1}, 0.5), ones({4}), zeros({4}, DType::f64)); }),
      "beta has dtype f64 but the input has f32"));
  BOOST_CHECK(contains(error_of([&] { dyt_forward(randn({2, 4}, gen), full({1}, INFINITY), ones({4}), zeros({4})); }),
                       "alpha must be finite, got inf"));
}

BOOST_AUTO_TEST_SUITE_END()
