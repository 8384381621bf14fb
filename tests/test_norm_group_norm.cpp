// GroupNorm: forward against the formula, gradcheck of x, gamma, beta on hard inputs and shapes
// ((N, C), (N, C, L), (N, C, H, W), G = 1, G = C), the identities GroupNorm(G = 1) = LayerNorm
// over (C, *) and InstanceNorm = GroupNorm(G = C), determinism across thread counts, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "autograd/ops.h"
#include "framework/parallel.h"
#include "norm/group_norm/group_norm.h"
#include "norm/layer_norm/layer_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

BOOST_AUTO_TEST_SUITE(group_norm_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula) {
  Generator gen(1);
  const int64_t N = 2, C = 6, S = 5, G = 3, cg = C / G;
  const Tensor x = randn({N, C, S}, gen, DType::f64, 2.0, 3.0);
  const Tensor gamma = randn({C}, gen, DType::f64), beta = randn({C}, gen, DType::f64);
  const GroupNormStats st = group_norm_forward(x, gamma, beta, G, 1e-5);
  BOOST_CHECK(st.mean.shape() == (Shape{N, G}) && st.rstd.shape() == (Shape{N, G}));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double mu = 0, var = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s) mu += x.at({n, c, s}) / double(cg * S);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s) var += (x.at({n, c, s}) - mu) * (x.at({n, c, s}) - mu) / double(cg * S);
      BOOST_CHECK_CLOSE(st.mean.at({n, g}), mu, 1e-12);
      BOOST_CHECK_CLOSE(st.rstd.at({n, g}), 1 / std::sqrt(var + 1e-5), 1e-12);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t s = 0; s < S; ++s)
          BOOST_CHECK_CLOSE(st.y.at({n, c, s}),
                            (x.at({n, c, s}) - mu) / std::sqrt(var + 1e-5) * gamma.at({c}) + beta.at({c}), 1e-10);
    }
}

BOOST_AUTO_TEST_CASE(gradcheck_every_parameter_on_hard_inputs) {
  Generator gen(2);
  double worst = 0;
  struct Case {
    Shape shape;
    int64_t G;
  };
  const Case cases[] = {{{2, 6, 5}, 3}, {{3, 4}, 2}, {{1, 3, 2, 3}, 1}, {{2, 5, 3}, 5}, {{1, 4, 1}, 4}};
  for (const Case& cs : cases) {
    const int64_t G = cs.G;
    for_each_hard_case(gen, {cs.shape}, 1, [&](const HardCase& c) {
      for (double eps : {1e-5, 1e-2})
        worst = std::max(worst, expect_gradcheck("group_norm " + c.label() + " G=" + std::to_string(G) +
                                                     " eps=" + std::to_string(eps),
                                                 [eps, G](const std::vector<Variable>& v) {
                                                   return group_norm(v[0], v[1], v[2], G, eps);
                                                 },
                                                 {c.x, c.gamma, c.beta}, hard_input_options(c.kind)));
    });
  }
  auto x = leaf(randn({2, 4, 3}, gen, DType::f64));
  worst = std::max(worst, expect_gradcheck("group_norm no affine",
                                           [](const std::vector<Variable>& v) { return group_norm(v[0], {}, {}, 2); },
                                           {x}));
  std::printf("group_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(one_group_is_layer_norm_over_channels_and_positions) {
  Generator gen(3);
  const int64_t N = 3, C = 4, S = 5;
  for (Input k : all_inputs) {
    const Tensor x0 = make_input({N, C, S}, k, gen), dy = randn({N, C, S}, gen, DType::f64);
    // GroupNorm(G = 1) without affine ...
    auto xg = leaf(x0.clone());
    const Variable yg = group_norm(xg, {}, {}, 1);
    yg.backward(dy);
    // ... against LayerNorm without affine over the reshaped (N, C*S) input.
    auto xl = leaf(x0.clone());
    const Variable yl = reshape(layer_norm(reshape(xl, {N, C * S}), {}, {}), {N, C, S});
    yl.backward(dy);
    // The two sum in different orders: at a mean of 1e4 (ulp 1.8e-12) y differs by ~3e-13.
    BOOST_CHECK_LT(max_rel_diff(yg.data(), yl.data()), 1e-12);
    BOOST_CHECK_LT(max_rel_diff(xg.grad(), xl.grad()), 1e-12);
    const GroupNormStats sg = group_norm_forward(x0, Tensor(), Tensor(), 1, 1e-5);
    const LayerNormStats sl = layer_norm_forward(x0.reshape({N, C * S}), Tensor(), Tensor(), 1e-5);
    BOOST_CHECK_LT(max_rel_diff(sg.mean.reshape({N}), sl.mean), 1e-15);
    BOOST_CHECK_LT(max_rel_diff(sg.rstd.reshape({N}), sl.rstd), 1e-15);
    std::printf("group_norm G=1 vs layer_norm (%s): y %.1e, dx %.1e\n", input_name(k),
                max_rel_diff(yg.data(), yl.data()), max_rel_diff(xg.grad(), xl.grad()));
  }
}

BOOST_AUTO_TEST_CASE(instance_norm_is_one_group_per_channel) {
  Generator gen(4);
  const int64_t N = 2, C = 3, S = 4;
  InstanceNorm in(C, 1e-5, true, DType::f64);
  BOOST_CHECK_EQUAL(in.G, C);
  in.weight.data().copy_from(randn({C}, gen, DType::f64));
  in.bias.data().copy_from(randn({C}, gen, DType::f64));
  const Tensor x = randn({N, C, S}, gen, DType::f64, 1.0, 2.0);
  const Tensor y = in.forward(Variable(x)).data();
  BOOST_CHECK_EQUAL(max_abs(sub(y, group_norm_forward(x, in.weight.data(), in.bias.data(), C, 1e-5).y)), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double mu = 0, var = 0;
      for (int64_t s = 0; s < S; ++s) mu += x.at({n, c, s}) / S;
      for (int64_t s = 0; s < S; ++s) var += (x.at({n, c, s}) - mu) * (x.at({n, c, s}) - mu) / S;
      for (int64_t s = 0; s < S; ++s)
        BOOST_CHECK_CLOSE(y.at({n, c, s}),
                          (x.at({n, c, s}) - mu) / std::sqrt(var + 1e-5) * in.weight.data().at({c}) +
                              in.bias.data().at({c}),
                          1e-10);
    }
  BOOST_CHECK(InstanceNorm(C).named_parameters().empty());  // no affine by default, as PyTorch
}

BOOST_AUTO_TEST_CASE(module_node_and_parameters) {
  Generator gen(5);
  GroupNorm gn(2, 4, 1e-5, true, DType::f64);
  const auto params = gn.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 2u);
  BOOST_CHECK_EQUAL(params[0].first, "weight");
  BOOST_CHECK_EQUAL(params[1].first, "bias");
  BOOST_CHECK(gn.named_buffers().empty());
  auto x = leaf(randn({3, 4, 2, 2}, gen, DType::f64));
  Variable y = gn.forward(x);
  auto* node = dynamic_cast<GroupNormNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "group_norm");
  BOOST_CHECK(node->mean.shape() == (Shape{3, 2}) && node->rstd.shape() == (Shape{3, 2}));
  y.backward(ones(y.shape(), DType::f64));
  BOOST_CHECK(gn.weight.grad().defined() && gn.bias.grad().defined());
  BOOST_CHECK(node->released() && !node->x.defined());
  BOOST_CHECK_LT(max_abs(x.grad()), 1e-12);  // a uniform dy with gamma = 1 gives dx = 0
  NoGradGuard guard;
  BOOST_CHECK(gn.forward(Variable(randn({1, 4}, gen, DType::f64))).grad_fn() == nullptr);
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference) {
  // Each kernel shape [M, F] as [M, 8, F / 8] in 4 groups where 8 divides F, else [M, F, 1] in one group.
  WorstByKind worst_f32;
  for_each_kernel_case([&](DType dtype, double tol, const Shape& s, Input k, const Tensor& x) {
    const int64_t N = s[0], F = s[1];
    const int64_t C = F % 8 == 0 ? 8 : F, S = F / C, G = F % 8 == 0 ? 4 : 1;
    Generator gen(8);
    const Tensor gamma = randn({C}, gen, dtype, 1.0, 0.5), beta = randn({C}, gen, dtype), dy = randn(s, gen, dtype);
    Tensor y[2], mean[2], rstd[2], dx[2], dgamma[2], dbeta[2];
    for (int v = 0; v < 2; ++v) {
      y[v] = empty(s, dtype), mean[v] = empty({N, G}, dtype), rstd[v] = empty({N, G}, dtype);
      dx[v] = empty(s, dtype), dgamma[v] = empty({C}, dtype), dbeta[v] = empty({C}, dtype);
    }
    NL_DISPATCH_FLOATING(dtype, "test", [&] {
      using T = scalar_t;
      group_norm_forward<T>(y[0].data<T>(), mean[0].data<T>(), rstd[0].data<T>(), x.data<T>(), gamma.data<T>(),
                            beta.data<T>(), N, C, S, G, 1e-5);
      group_norm_forward_cpu<T>(y[1].data<T>(), mean[1].data<T>(), rstd[1].data<T>(), x.data<T>(), gamma.data<T>(),
                                beta.data<T>(), N, C, S, G, 1e-5);
      group_norm_backward<T>(dx[0].data<T>(), dgamma[0].data<T>(), dbeta[0].data<T>(), dy.data<T>(), x.data<T>(),
                             gamma.data<T>(), mean[0].data<T>(), rstd[0].data<T>(), N, C, S, G);
      group_norm_backward_cpu<T>(dx[1].data<T>(), dgamma[1].data<T>(), dbeta[1].data<T>(), dy.data<T>(), x.data<T>(),
                                 gamma.data<T>(), mean[0].data<T>(), rstd[0].data<T>(), N, C, S, G);
    });
    // dx cancels terms of size |dy| rstd (|gamma| + 1); the rest are compared with their own size.
    const double dx_floor = max_abs(dy) * max_abs(rstd[0]) * (max_abs(gamma) + 1);
    check_fast_outputs({{"y", y}, {"mean", mean}, {"rstd", rstd}, {"dx", dx, dx_floor}, {"dgamma", dgamma},
                        {"dbeta", dbeta}},
                       dtype, tol, to_string(s) + " G=" + std::to_string(G), k, worst_f32);
  });
  worst_f32.print("group_norm");
}

BOOST_AUTO_TEST_CASE(same_bits_for_any_thread_count) {
  Generator gen(6);
  const Tensor x = randn({67, 12, 41}, gen, DType::f32, 1.0, 2.0), dy = randn({67, 12, 41}, gen);
  const Tensor gamma = randn({12}, gen), beta = randn({12}, gen);
  const auto run = [&] {
    const GroupNormStats s = group_norm_forward(x, gamma, beta, 4, 1e-5);
    const GroupNormGrads g = group_norm_backward(dy, x, gamma, s.mean, s.rstd, true, true, true);
    std::vector<float> out;
    for (const Tensor& t : {s.y, s.mean, s.rstd, g.dx, g.dgamma, g.dbeta}) {
      const std::vector<float> v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  const int threads = num_threads();
  set_num_threads(1);
  const std::vector<float> one = run();
  set_num_threads(3);
  const std::vector<float> three = run();
  set_num_threads(threads);
  BOOST_CHECK(one == three);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(7);
  BOOST_CHECK(contains(error_of([] { GroupNorm(3, 8); }),
                       "the number of groups G = 3 must divide the number of channels C = 8"));
  BOOST_CHECK(contains(error_of([] { GroupNorm(0, 8); }), "the number of groups G must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([] { GroupNorm(1, 0); }), "the number of channels C must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([] { GroupNorm(2, 8, 0.0); }), "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { InstanceNorm(4, -1.0); }), "eps must be a finite number > 0, got -1"));
  GroupNorm gn(2, 4);
  const auto fwd = [&](const Tensor& x) { return error_of([&] { gn.forward(Variable(x)); }); };
  BOOST_CHECK(contains(fwd(randn({2, 6, 3}, gen)), "expected an input of shape [N, 4, *], got shape [2, 6, 3]"));
  BOOST_CHECK(contains(fwd(randn({4}, gen)), "got shape [4]"));
  BOOST_CHECK(contains(fwd(empty({0, 4, 3})), "the input is empty (shape [0, 4, 3])"));
  BOOST_CHECK(contains(error_of([&] { group_norm_forward(randn({2, 6}, gen), Tensor(), Tensor(), 4, 1e-5); }),
                       "G = 4 must divide the number of channels C = 6"));
  BOOST_CHECK(contains(error_of([&] { group_norm_forward(randn({2, 4}, gen), randn({3}, gen), Tensor(), 2, 1e-5); }),
                       "gamma must have shape [4], got [3]"));
}

BOOST_AUTO_TEST_SUITE_END()
