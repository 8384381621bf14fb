// LayerNorm: forward against the formula, gradcheck of x, gamma, beta on hard inputs and
// shapes (N = 1, odd N, M = 1), the autograd node, the module, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>

#include "framework/parallel.h"
#include "norm/layer_norm/layer_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

BOOST_AUTO_TEST_SUITE(layer_norm_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula) {
  Generator gen(1);
  const Tensor x = randn({3, 7}, gen, DType::f64, 2.0, 3.0);
  const Tensor gamma = randn({7}, gen, DType::f64), beta = randn({7}, gen, DType::f64);
  const LayerNormStats s = layer_norm_forward(x, gamma, beta, 1e-5);
  for (int64_t i = 0; i < 3; ++i) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < 7; ++j) mu += x.at({i, j}) / 7;
    for (int64_t j = 0; j < 7; ++j) var += (x.at({i, j}) - mu) * (x.at({i, j}) - mu) / 7;
    BOOST_CHECK_CLOSE(s.mean.at({i}), mu, 1e-12);
    BOOST_CHECK_CLOSE(s.rstd.at({i}), 1 / std::sqrt(var + 1e-5), 1e-12);
    for (int64_t j = 0; j < 7; ++j)
      BOOST_CHECK_CLOSE(s.y.at({i, j}), (x.at({i, j}) - mu) / std::sqrt(var + 1e-5) * gamma.at({j}) + beta.at({j}),
                        1e-10);
  }
}

BOOST_AUTO_TEST_CASE(large_mean_rows_keep_their_spread_in_f32) {
  // 1e4 + small spread: the two-pass variance keeps the normalized row exact in f32.
  Generator gen(2);
  const Tensor x64 = randn({4, 64}, gen, DType::f64, 1e4, 0.1);
  const Tensor y64 = layer_norm_forward(x64, Tensor(), Tensor(), 1e-5).y;
  const Tensor y32 = layer_norm_forward(x64.to(DType::f32), Tensor(), Tensor(), 1e-5).y;
  BOOST_CHECK_LT(max_rel_diff(y32, y64), 1e-2);  // input rounding to f32 at 1e4 is ~5e-4 absolute
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference) {
  WorstByKind worst_f32;
  for_each_kernel_case([&](DType dtype, double tol, const Shape& s, Input k, const Tensor& x) {
    const int64_t M = s[0], N = s[1];
    Generator gen(8);
    const Tensor gamma = randn({N}, gen, dtype, 1.0, 0.5), beta = randn({N}, gen, dtype), dy = randn(s, gen, dtype);
    Tensor y[2], mean[2], rstd[2], dx[2], dgamma[2], dbeta[2];
    for (int v = 0; v < 2; ++v) {
      y[v] = empty(s, dtype), mean[v] = empty({M}, dtype), rstd[v] = empty({M}, dtype);
      dx[v] = empty(s, dtype), dgamma[v] = empty({N}, dtype), dbeta[v] = empty({N}, dtype);
    }
    NL_DISPATCH_FLOATING(dtype, "test", [&] {
      using T = scalar_t;
      layer_norm_forward<T>(y[0].data<T>(), mean[0].data<T>(), rstd[0].data<T>(), x.data<T>(), gamma.data<T>(),
                            beta.data<T>(), M, N, 1e-5);
      layer_norm_forward_cpu<T>(y[1].data<T>(), mean[1].data<T>(), rstd[1].data<T>(), x.data<T>(), gamma.data<T>(),
                                beta.data<T>(), M, N, 1e-5);
      layer_norm_backward<T>(dx[0].data<T>(), dgamma[0].data<T>(), dbeta[0].data<T>(), dy.data<T>(), x.data<T>(),
                             gamma.data<T>(), mean[0].data<T>(), rstd[0].data<T>(), M, N);
      layer_norm_backward_cpu<T>(dx[1].data<T>(), dgamma[1].data<T>(), dbeta[1].data<T>(), dy.data<T>(), x.data<T>(),
                                 gamma.data<T>(), mean[0].data<T>(), rstd[0].data<T>(), M, N);
    });
    // dx cancels terms of size |dy| rstat (|gamma| + 1); the rest are compared with their own size.
    const double dx_floor = max_abs(dy) * max_abs(rstd[0]) * (max_abs(gamma) + 1);
    check_fast_outputs({{"y", y}, {"mean", mean}, {"rstd", rstd}, {"dx", dx, dx_floor}, {"dgamma", dgamma},
                        {"dbeta", dbeta}},
                       dtype, tol, to_string(s), k, worst_f32);
  });
  worst_f32.print("layer_norm");
}

BOOST_AUTO_TEST_CASE(same_bits_for_any_thread_count) {
  // N = 32 and 128 take the unrolled row loops; odd M puts the row groups at other rows per thread count.
  for (const Shape& s : std::vector<Shape>{{1000, 48}, {1001, 32}, {37, 128}}) {
    Generator gen(9);
    const int64_t N = s[1];
    const Tensor x = randn(s, gen), dy = randn(s, gen), gamma = randn({N}, gen), beta = randn({N}, gen);
    auto run = [&](int threads) {
      const int prev = num_threads();
      set_num_threads(threads);
      const LayerNormStats st = layer_norm_forward(x, gamma, beta, 1e-5);
      const LayerNormGrads g = layer_norm_backward(dy, x, gamma, st.mean, st.rstd, true, true, true);
      set_num_threads(prev);
      return std::vector<Tensor>{st.y, st.mean, st.rstd, g.dx, g.dgamma, g.dbeta};
    };
    const std::vector<Tensor> one = run(1), two = run(2), three = run(3);
    for (size_t i = 0; i < one.size(); ++i) {
      BOOST_CHECK_MESSAGE(one[i].to_vector<float>() == two[i].to_vector<float>(), to_string(s) << " output " << i);
      BOOST_CHECK_MESSAGE(one[i].to_vector<float>() == three[i].to_vector<float>(), to_string(s) << " output " << i);
    }
  }
}

BOOST_AUTO_TEST_CASE(gradcheck_every_parameter_on_hard_inputs) {
  Generator gen(3);
  double worst = 0;
  for_each_hard_case(gen, row_shapes, -1, [&](const HardCase& c) {
    for (double eps : {1e-5, 1e-2})
      worst = std::max(worst, expect_gradcheck("layer_norm " + c.label() + " eps=" + std::to_string(eps),
                                               [eps](const std::vector<Variable>& v) {
                                                 return layer_norm(v[0], v[1], v[2], eps);
                                               },
                                               {c.x, c.gamma, c.beta}, hard_input_options(c.kind)));
  });
  std::printf("layer_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(gradcheck_without_affine_and_without_bias) {
  Generator gen(4);
  auto x = leaf(randn({3, 5}, gen, DType::f64));
  auto gamma = leaf(randn({5}, gen, DType::f64));
  expect_gradcheck("layer_norm no affine", [](const std::vector<Variable>& v) { return layer_norm(v[0], {}, {}); },
                   {x});
  expect_gradcheck("layer_norm no bias", [](const std::vector<Variable>& v) { return layer_norm(v[0], v[1], {}); },
                   {x, gamma});
}

BOOST_AUTO_TEST_CASE(node_saves_mean_and_rstd) {
  Generator gen(5);
  LayerNorm ln(6, 1e-5, true, true, DType::f64);
  auto x = leaf(randn({2, 3, 6}, gen, DType::f64));
  Variable y = ln.forward(x);
  auto* node = dynamic_cast<LayerNormNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "layer_norm");
  BOOST_CHECK(node->mean.shape() == (Shape{2, 3}));
  BOOST_CHECK(node->rstd.shape() == (Shape{2, 3}));
  const auto params = ln.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 2u);
  BOOST_CHECK_EQUAL(params[0].first, "weight");
  BOOST_CHECK_EQUAL(params[1].first, "bias");
  y.backward(ones(y.shape(), DType::f64));
  BOOST_CHECK(ln.weight.grad().defined());
  BOOST_CHECK(node->released());
  // sum over every row of d(sum y)/dx is 0: y's rows are centered when beta = 0... and with
  // gamma = 1, dx of a uniform dy is exactly 0.
  BOOST_CHECK_LT(max_abs(x.grad()), 1e-12);
}

BOOST_AUTO_TEST_CASE(no_graph_without_grad) {
  Generator gen(6);
  LayerNorm ln(4);
  Variable y = ln.forward(Variable(randn({2, 4}, gen)));
  BOOST_CHECK(y.grad_fn() != nullptr);  // the module's weight requires grad
  NoGradGuard guard;
  BOOST_CHECK(ln.forward(Variable(randn({2, 4}, gen))).grad_fn() == nullptr);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(7);
  LayerNorm ln(4);
  BOOST_CHECK(contains(error_of([&] { ln.forward(Variable(randn({2, 5}, gen))); }), "last dim of the input to be 4, got shape [2, 5]"));
  BOOST_CHECK(contains(error_of([&] { ln.forward(Variable(empty({0, 4}))); }), "empty"));
  BOOST_CHECK(contains(error_of([] { LayerNorm(4, 0.0); }), "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { LayerNorm(4, -1e-5); }), "got -1e-05"));
  BOOST_CHECK(contains(error_of([] { LayerNorm(0); }), "feature size must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([&] { layer_norm_forward(randn({2, 4}, gen), randn({3}, gen), Tensor(), 1e-5); }),
                       "gamma must have shape [4], got [3]"));
  BOOST_CHECK(contains(error_of([&] { layer_norm_forward(randn({2, 4}, gen), randn({4}, gen, DType::f64), Tensor(), 1e-5); }),
                       "gamma has dtype f64 but the input has f32"));
}

BOOST_AUTO_TEST_SUITE_END()
