// WeightNorm: w = g v / ||v|| against the formula, w = v at init (and the layer equals the
// Linear it wraps), dv orthogonal to v, gradcheck of g, v, b and x on hard inputs and shapes,
// the node, parameter names, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "autograd/ops.h"
#include "norm/weight_norm/weight_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

BOOST_AUTO_TEST_SUITE(weight_norm_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula) {
  Generator gen(1);
  const Tensor g = randn({3}, gen, DType::f64), v = randn({3, 7}, gen, DType::f64, 0.5, 2.0);
  const WeightNormStats s = weight_norm_forward(g, v);
  for (int64_t i = 0; i < 3; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < 7; ++j) ss += v.at({i, j}) * v.at({i, j});
    BOOST_CHECK_CLOSE(s.rnorm.at({i}), 1 / std::sqrt(ss), 1e-12);
    for (int64_t j = 0; j < 7; ++j) BOOST_CHECK_CLOSE(s.w.at({i, j}), g.at({i}) * v.at({i, j}) / std::sqrt(ss), 1e-12);
  }
}

BOOST_AUTO_TEST_CASE(starts_as_the_linear_layer_it_wraps) {
  Generator gen(2);
  Linear lin(5, 3, true, gen, DType::f64);
  WeightNorm wn(lin);
  BOOST_CHECK_LT(max_rel_diff(wn.weight().data(), lin.weight.data()), 1e-15);
  const Variable x(randn({2, 4, 5}, gen, DType::f64));
  BOOST_CHECK_LT(max_rel_diff(wn.forward(x).data(), lin.forward(x).data()), 1e-14);
  BOOST_CHECK(wn.v.data().storage() != lin.weight.data().storage());  // a copy
  WeightNorm fresh(6, 2, false, gen);
  BOOST_CHECK(!fresh.bias.defined());
  BOOST_CHECK_LT(max_rel_diff(fresh.weight().data(), fresh.v.data()), 1e-6);
}

BOOST_AUTO_TEST_CASE(dv_is_orthogonal_to_v_and_dg_is_dw_along_v) {
  // w does not change when a row of v is scaled, so each row of dv is orthogonal to v.
  Generator gen(3);
  auto g = leaf(randn({4}, gen, DType::f64)), v = leaf(randn({4, 9}, gen, DType::f64));
  Variable w = weight_norm(g, v);
  const Tensor dw = randn({4, 9}, gen, DType::f64);
  w.backward(dw);
  const Tensor dot = sum(mul(v.grad(), v.data()), {1});
  BOOST_CHECK_LT(max_abs(dot), 1e-12);
  // dg = dw . v / ||v||
  const Tensor norms = sum(mul(v.data(), v.data()), {1});
  for (int64_t i = 0; i < 4; ++i) {
    double dwv = 0;
    for (int64_t j = 0; j < 9; ++j) dwv += dw.at({i, j}) * v.data().at({i, j});
    BOOST_CHECK_CLOSE(g.grad().at({i}), dwv / std::sqrt(norms.at({i})), 1e-10);
  }
}

BOOST_AUTO_TEST_CASE(gradcheck_g_v_bias_and_x) {
  Generator gen(4);
  double worst = 0;
  // (out, in) and x's shape: odd sizes, in = 1, out = 1, 3-D x.
  const std::pair<Shape, Shape> cases[] = {
      {{3, 5}, {2, 5}}, {{1, 1}, {3, 1}}, {{4, 1}, {2, 1}}, {{1, 6}, {1, 6}}, {{3, 4}, {2, 3, 4}}};
  for (const auto& [vs, xs] : cases) {
    for (Input in : all_inputs) {
      auto g = leaf(randn({vs[0]}, gen, DType::f64, 1.0, 0.5));
      auto v = leaf(make_input(vs, in, gen));
      auto b = leaf(randn({vs[0]}, gen, DType::f64));
      auto x = leaf(randn(xs, gen, DType::f64));
      GradcheckOptions opt;
      if (in == Input::near_constant) opt.eps = 1e-6;
      worst = std::max(worst, expect_gradcheck("weight_norm linear v " + to_string(vs) + " x " + to_string(xs) + " " +
                                                   input_name(in),
                                               [](const std::vector<Variable>& a) {
                                                 return matmul(a[3], transpose(weight_norm(a[0], a[1]), 0, 1)) + a[2];
                                               },
                                               {g, v, b, x}, opt));
      worst = std::max(worst, expect_gradcheck("weight_norm w v " + to_string(vs) + " " + input_name(in),
                                               [](const std::vector<Variable>& a) { return weight_norm(a[0], a[1]); },
                                               {g, v}, opt));
    }
  }
  // Through the module's own forward.
  WeightNorm wn(5, 3, true, gen, DType::f64);
  auto x = leaf(randn({2, 2, 5}, gen, DType::f64));
  worst = std::max(worst, expect_gradcheck("WeightNorm module", [&wn](const std::vector<Variable>& a) { return wn.forward(a[0]); },
                                           {x, wn.g, wn.v, wn.bias}));
  std::printf("weight_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(node_and_parameter_names) {
  Generator gen(5);
  WeightNorm wn(4, 3, true, gen, DType::f64);
  const auto params = wn.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 3u);
  BOOST_CHECK_EQUAL(params[0].first, "weight_g");
  BOOST_CHECK_EQUAL(params[1].first, "weight_v");
  BOOST_CHECK_EQUAL(params[2].first, "bias");
  BOOST_CHECK(wn.g.shape() == (Shape{3}));
  Variable w = wn.weight();
  auto* node = dynamic_cast<WeightNormNode*>(w.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "weight_norm");
  BOOST_CHECK(node->rnorm.shape() == (Shape{3}));
  Variable y = wn.forward(Variable(randn({2, 4}, gen, DType::f64)));
  y.backward(ones(y.shape(), DType::f64));
  BOOST_CHECK(wn.g.grad().defined() && wn.v.grad().defined() && wn.bias.grad().defined());
  NoGradGuard guard;
  BOOST_CHECK(wn.weight().grad_fn() == nullptr);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(6);
  WeightNorm wn(4, 3, true, gen);
  BOOST_CHECK(contains(error_of([&] { wn.forward(Variable(randn({2, 5}, gen))); }),
                       "last dim of the input to be 4, got shape [2, 5]"));
  BOOST_CHECK(contains(error_of([&] { wn.forward(Variable(empty({0, 4}))); }), "empty"));
  BOOST_CHECK(contains(error_of([&] { weight_norm_forward(ones({2}), zeros({2, 3})); }),
                       "row 0 of v has norm 0"));
  BOOST_CHECK(contains(error_of([&] { weight_norm_forward(ones({3}), randn({2, 3}, gen)); }),
                       "g must have shape [2], got [3]"));
  BOOST_CHECK(contains(error_of([&] { weight_norm_forward(ones({2}, DType::f64), randn({2, 3}, gen)); }),
                       "g has dtype f64 but the input has f32"));
  BOOST_CHECK(contains(error_of([&] { weight_norm_forward(ones({2}), randn({2, 3, 1}, gen)); }),
                       "v must be 2-D [out, in], got shape [2, 3, 1]"));
  BOOST_CHECK(contains(error_of([&] { WeightNorm(0, 3, true, gen); }), "feature sizes must be >= 1, got in=0"));
}

BOOST_AUTO_TEST_SUITE_END()
