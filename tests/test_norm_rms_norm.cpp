// RMSNorm: forward against the formula (with and without unit_offset), gradcheck of x and
// gamma on hard inputs and shapes (N = 1, odd N, M = 1, 3-D), the node, the module, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>

#include "autograd/ops.h"
#include "norm/rms_norm/rms_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

BOOST_AUTO_TEST_SUITE(rms_norm_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula) {
  Generator gen(1);
  const Tensor x = randn({3, 7}, gen, DType::f64, 2.0, 3.0);
  const Tensor gamma = randn({7}, gen, DType::f64);
  for (bool unit_offset : {false, true}) {
    const RMSNormStats s = rms_norm_forward(x, gamma, 1e-6, unit_offset);
    for (int64_t i = 0; i < 3; ++i) {
      double ms = 0;
      for (int64_t j = 0; j < 7; ++j) ms += x.at({i, j}) * x.at({i, j}) / 7;
      const double rrms = 1 / std::sqrt(ms + 1e-6);
      BOOST_CHECK_CLOSE(s.rrms.at({i}), rrms, 1e-12);
      for (int64_t j = 0; j < 7; ++j) {
        const double scale = unit_offset ? 1 + gamma.at({j}) : gamma.at({j});
        BOOST_CHECK_CLOSE(s.y.at({i, j}), x.at({i, j}) * rrms * scale, 1e-10);
      }
    }
  }
  // Without a weight the rows come out with unit RMS (up to eps).
  const Tensor y = rms_norm_forward(x, Tensor(), 1e-6).y;
  for (int64_t i = 0; i < 3; ++i) {
    double ms = 0;
    for (int64_t j = 0; j < 7; ++j) ms += y.at({i, j}) * y.at({i, j}) / 7;
    BOOST_CHECK_CLOSE(ms, 1.0, 1e-4);
  }
}

BOOST_AUTO_TEST_CASE(f32_forward_agrees_with_f64) {
  Generator gen(2);
  for (Input k : all_inputs) {
    const Tensor x64 = make_input({5, 33}, k, gen);
    const Tensor g64 = randn({33}, gen, DType::f64, 1.0, 0.3);
    const RMSNormStats s64 = rms_norm_forward(x64, g64, 1e-6);
    const RMSNormStats s32 = rms_norm_forward(x64.to(DType::f32), g64.to(DType::f32), 1e-6);
    BOOST_CHECK_MESSAGE(max_rel_diff(s32.y, s64.y) < 1e-5, input_name(k) << ": y differs by "
                                                                          << max_rel_diff(s32.y, s64.y));
    BOOST_CHECK_MESSAGE(max_rel_diff(s32.rrms, s64.rrms) < 1e-5, input_name(k) << ": rrms differs");
  }
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference) {
  WorstByKind worst_f32;
  for_each_kernel_case([&](DType dtype, double tol, const Shape& s, Input k, const Tensor& x) {
    const int64_t M = s[0], N = s[1];
    Generator gen(8);
    const Tensor gamma = randn({N}, gen, dtype, 1.0, 0.5), dy = randn(s, gen, dtype);
    for (bool unit_offset : {false, true}) {
      Tensor y[2], rrms[2], dx[2], dgamma[2];
      for (int v = 0; v < 2; ++v)
        y[v] = empty(s, dtype), rrms[v] = empty({M}, dtype), dx[v] = empty(s, dtype), dgamma[v] = empty({N}, dtype);
      NL_DISPATCH_FLOATING(dtype, "test", [&] {
        using T = scalar_t;
        rms_norm_forward<T>(y[0].data<T>(), rrms[0].data<T>(), x.data<T>(), gamma.data<T>(), M, N, 1e-6, unit_offset);
        rms_norm_forward_cpu<T>(y[1].data<T>(), rrms[1].data<T>(), x.data<T>(), gamma.data<T>(), M, N, 1e-6,
                                unit_offset);
        rms_norm_backward<T>(dx[0].data<T>(), dgamma[0].data<T>(), dy.data<T>(), x.data<T>(), gamma.data<T>(),
                             rrms[0].data<T>(), M, N, unit_offset);
        rms_norm_backward_cpu<T>(dx[1].data<T>(), dgamma[1].data<T>(), dy.data<T>(), x.data<T>(), gamma.data<T>(),
                                 rrms[0].data<T>(), M, N, unit_offset);
      });
      // dx cancels terms of size |dy| rstat (|gamma| + 1); the rest are compared with their own size.
      const double dx_floor = max_abs(dy) * max_abs(rrms[0]) * (max_abs(gamma) + 1);
      check_fast_outputs({{"y", y}, {"rrms", rrms}, {"dx", dx, dx_floor}, {"dgamma", dgamma}}, dtype, tol,
                         to_string(s) + (unit_offset ? " unit_offset" : ""), k, worst_f32);
    }
  });
  worst_f32.print("rms_norm");
}

BOOST_AUTO_TEST_CASE(gradcheck_every_parameter_on_hard_inputs) {
  Generator gen(3);
  double worst = 0;
  for_each_hard_case(gen, row_shapes, -1, [&](const HardCase& c) {
    auto w = leaf(randn({c.shape.back()}, gen, DType::f64, 0.0, 0.5));  // the unit_offset weight, around 0
    for (double eps : {1e-6, 1e-2, 10.0}) {
      const std::string name = "rms_norm " + c.label() + " eps=" + std::to_string(eps);
      worst = std::max(worst, expect_gradcheck(name,
                                               [eps](const std::vector<Variable>& v) {
                                                 return rms_norm(v[0], v[1], eps);
                                               },
                                               {c.x, c.gamma}));
      worst = std::max(worst, expect_gradcheck(name + " unit_offset",
                                               [eps](const std::vector<Variable>& v) {
                                                 return rms_norm(v[0], v[1], eps, true);
                                               },
                                               {c.x, w}));
    }
  });
  std::printf("rms_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(gradcheck_without_weight) {
  Generator gen(4);
  auto x = leaf(randn({3, 5}, gen, DType::f64));
  expect_gradcheck("rms_norm no weight", [](const std::vector<Variable>& v) { return rms_norm(v[0], {}); }, {x});
  expect_gradcheck("rms_norm no weight unit_offset",
                   [](const std::vector<Variable>& v) { return rms_norm(v[0], {}, 1e-6, true); }, {x});
}

BOOST_AUTO_TEST_CASE(unit_offset_is_the_plain_norm_with_one_plus_w) {
  Generator gen(5);
  const Tensor x0 = randn({4, 9}, gen, DType::f64), w0 = randn({9}, gen, DType::f64, 0.0, 0.3);
  const Tensor dy = randn({4, 9}, gen, DType::f64);
  auto x1 = leaf(x0.clone()), w = leaf(w0.clone());
  auto x2 = leaf(x0.clone()), g = leaf(add_scalar(w0, 1.0));
  Variable y1 = rms_norm(x1, w, 1e-6, true), y2 = rms_norm(x2, g, 1e-6, false);
  BOOST_CHECK_LT(max_rel_diff(y1.data(), y2.data()), 1e-15);
  y1.backward(dy);
  y2.backward(dy);
  BOOST_CHECK_LT(max_rel_diff(x1.grad(), x2.grad()), 1e-14);
  BOOST_CHECK_LT(max_rel_diff(w.grad(), g.grad()), 1e-14);
}

BOOST_AUTO_TEST_CASE(node_saves_rrms_and_module_names_its_weight) {
  Generator gen(6);
  RMSNorm rn(6, 1e-6, true, false, DType::f64);
  auto x = leaf(randn({2, 3, 6}, gen, DType::f64));
  Variable y = rn.forward(x);
  auto* node = dynamic_cast<RMSNormNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "rms_norm");
  BOOST_CHECK(node->rrms.shape() == (Shape{2, 3}));
  const auto params = rn.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 1u);
  BOOST_CHECK_EQUAL(params[0].first, "weight");
  BOOST_CHECK_EQUAL(max_abs(sub(rn.weight.data(), ones({6}, DType::f64))), 0.0);
  // dy = y (the gradient of sum(y^2) / 2): with gamma = 1, x . dx = rrms (|xhat|^2 - N mean(xhat^2)) ~ 0 per row,
  // because a scaled row gives the same y.
  y.backward(y.data());
  BOOST_CHECK(rn.weight.grad().defined());
  BOOST_CHECK(node->released());
  BOOST_CHECK(!node->x.defined() && !node->rrms.defined());
  const Tensor xdx = sum(mul(x.data(), x.grad()), {-1});
  BOOST_CHECK_LT(max_abs(xdx), 1e-4);  // eps = 1e-6 breaks the scale invariance only slightly

  RMSNorm gemma(5, 1e-6, true, true, DType::f64);
  BOOST_CHECK(gemma.unit_offset);
  BOOST_CHECK_EQUAL(max_abs(gemma.weight.data()), 0.0);  // scale 1 + 0 at init
  const Tensor x2 = randn({3, 5}, gen, DType::f64);
  BOOST_CHECK_LT(max_rel_diff(gemma.forward(Variable(x2)).data(), rms_norm_forward(x2, Tensor(), 1e-6).y), 1e-15);

  RMSNorm no_weight(5, 1e-6, false);
  BOOST_CHECK(no_weight.named_parameters().empty());
  BOOST_CHECK(!no_weight.weight.defined());
}

BOOST_AUTO_TEST_CASE(dgamma_does_not_depend_on_the_thread_count) {
  Generator gen(7);
  const Tensor x = randn({1000, 13}, gen, DType::f32), dy = randn({1000, 13}, gen, DType::f32);
  const Tensor gamma = randn({13}, gen, DType::f32);
  const RMSNormStats s = rms_norm_forward(x, gamma, 1e-6);
  const int threads = num_threads();
  set_num_threads(1);
  const Tensor one = rms_norm_backward(dy, x, gamma, s.rrms, false, false, true).dgamma;
  set_num_threads(std::max(2, threads));
  const Tensor many = rms_norm_backward(dy, x, gamma, s.rrms, false, false, true).dgamma;
  set_num_threads(threads);
  BOOST_CHECK(one.to_vector<float>() == many.to_vector<float>());
}

BOOST_AUTO_TEST_CASE(same_bits_for_any_thread_count) {
  // N = 32 and 128 take the unrolled row loops; odd M puts the row groups at other rows per thread count.
  for (const Shape& s : std::vector<Shape>{{1001, 32}, {37, 128}, {300, 20}}) {
    Generator gen(9);
    const int64_t N = s[1];
    const Tensor x = randn(s, gen), dy = randn(s, gen), gamma = randn({N}, gen);
    auto run = [&](int threads) {
      const int prev = num_threads();
      set_num_threads(threads);
      const RMSNormStats st = rms_norm_forward(x, gamma, 1e-6);
      const RMSNormGrads g = rms_norm_backward(dy, x, gamma, st.rrms, false, true, true);
      set_num_threads(prev);
      return std::vector<Tensor>{st.y, st.rrms, g.dx, g.dgamma};
    };
    const std::vector<Tensor> one = run(1), two = run(2), three = run(3);
    for (size_t i = 0; i < one.size(); ++i) {
      BOOST_CHECK_MESSAGE(one[i].to_vector<float>() == two[i].to_vector<float>(), to_string(s) << " output " << i);
      BOOST_CHECK_MESSAGE(one[i].to_vector<float>() == three[i].to_vector<float>(), to_string(s) << " output " << i);
    }
  }
}

BOOST_AUTO_TEST_CASE(no_graph_without_grad) {
  Generator gen(8);
  RMSNorm rn(4);
  BOOST_CHECK(rn.forward(Variable(randn({2, 4}, gen))).grad_fn() != nullptr);  // the weight requires grad
  NoGradGuard guard;
  BOOST_CHECK(rn.forward(Variable(randn({2, 4}, gen))).grad_fn() == nullptr);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(9);
  RMSNorm rn(4);
  BOOST_CHECK(contains(error_of([&] { rn.forward(Variable(randn({2, 5}, gen))); }),
                       "last dim of the input to be 4, got shape [2, 5]"));
  BOOST_CHECK(contains(error_of([&] { rn.forward(Variable(empty({0, 4}))); }), "empty"));
  BOOST_CHECK(contains(error_of([] { RMSNorm(4, 0.0); }), "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { RMSNorm(4, -1e-6); }), "got -1e-06"));
  BOOST_CHECK(contains(error_of([] { RMSNorm(0); }), "feature size must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([&] { rms_norm(Variable(randn({2, 4}, gen)), Variable(randn({4}, gen)), 0.0); }),
                       "rms_norm: eps must be"));
  BOOST_CHECK(contains(error_of([&] { rms_norm_forward(randn({2, 4}, gen), randn({3}, gen), 1e-6); }),
                       "gamma must have shape [4], got [3]"));
  BOOST_CHECK(contains(error_of([&] { rms_norm_forward(randn({2, 4}, gen), randn({4}, gen, DType::f64), 1e-6); }),
                       "gamma has dtype f64 but the input has f32"));
}

BOOST_AUTO_TEST_SUITE_END()
