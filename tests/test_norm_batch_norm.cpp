// BatchNorm: forward against the formula for (N, C) and (N, C, L), gradcheck of x, gamma, beta
// in training and eval mode on hard inputs, the running statistics (momentum update with the
// unbiased variance, registered buffers, used in eval), determinism across thread counts, and
// bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "framework/parallel.h"
#include "norm/batch_norm/batch_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

// Per-channel mean and biased variance of x [N, C] or [N, C, L], by hand.
struct ChannelMoments {
  std::vector<double> mean, var;
  double count;
};
ChannelMoments moments(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), L = x.dim() == 3 ? x.size(2) : 1;
  const Tensor x3 = x.reshape({N, C, L});
  ChannelMoments m{std::vector<double>(size_t(C), 0.0), std::vector<double>(size_t(C), 0.0), double(N * L)};
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) m.mean[size_t(c)] += x3.at({n, c, l}) / m.count;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const double d = x3.at({n, c, l}) - m.mean[size_t(c)];
        m.var[size_t(c)] += d * d / m.count;
      }
  }
  return m;
}

// Checks y == (x - mean_c) * rstd_c * gamma_c + beta_c for x [N, C] or [N, C, L].
void check_affine(const Tensor& y, const Tensor& x, const std::vector<double>& mean, const std::vector<double>& rstd,
                  const Tensor& gamma, const Tensor& beta, double tol) {
  const int64_t N = x.size(0), C = x.size(1), L = x.dim() == 3 ? x.size(2) : 1;
  const Tensor x3 = x.reshape({N, C, L}), y3 = y.reshape({N, C, L});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; l < L; ++l)
        BOOST_CHECK_CLOSE(y3.at({n, c, l}),
                          (x3.at({n, c, l}) - mean[size_t(c)]) * rstd[size_t(c)] * gamma.at({c}) + beta.at({c}), tol);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(batch_norm_suite)

BOOST_AUTO_TEST_CASE(training_forward_matches_the_formula) {
  Generator gen(1);
  for (const Shape& s : {Shape{5, 3}, Shape{3, 4, 7}}) {
    const int64_t C = s[1];
    const Tensor x = randn(s, gen, DType::f64, 2.0, 3.0);
    const Tensor gamma = randn({C}, gen, DType::f64), beta = randn({C}, gen, DType::f64);
    const BatchNormStats st = batch_norm_forward(x, gamma, beta, Tensor(), Tensor(), true, 0.1, 1e-5);
    const ChannelMoments m = moments(x);
    std::vector<double> rstd;
    for (int64_t c = 0; c < C; ++c) {
      rstd.push_back(1 / std::sqrt(m.var[size_t(c)] + 1e-5));
      BOOST_CHECK_CLOSE(st.mean.at({c}), m.mean[size_t(c)], 1e-12);
      BOOST_CHECK_CLOSE(st.rstd.at({c}), rstd.back(), 1e-12);
    }
    BOOST_CHECK(st.mean.shape() == (Shape{C}) && st.rstd.shape() == (Shape{C}));
    check_affine(st.y, x, m.mean, rstd, gamma, beta, 1e-10);
  }
}

BOOST_AUTO_TEST_CASE(f32_saves_f32_statistics_and_keeps_large_means_exact) {
  Generator gen(2);
  const Tensor x64 = randn({16, 3, 8}, gen, DType::f64, 1e4, 0.1);
  const BatchNormStats s64 = batch_norm_forward(x64, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
  const BatchNormStats s32 =
      batch_norm_forward(x64.to(DType::f32), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
  BOOST_CHECK(s32.mean.dtype() == DType::f32 && s32.rstd.dtype() == DType::f32);
  BOOST_CHECK_LT(max_rel_diff(s32.y, s64.y), 1e-2);  // input rounding to f32 at 1e4 is ~5e-4 absolute
}

BOOST_AUTO_TEST_CASE(gradcheck_training_every_parameter_on_hard_inputs) {
  Generator gen(3);
  double worst = 0;
  for_each_hard_case(gen, {{5, 3}, {2, 3, 4}, {1, 2, 3}, {3, 1, 1}, {2, 1}}, 1, [&](const HardCase& c) {
    for (double eps : {1e-5, 1e-2})
      worst = std::max(worst, expect_gradcheck("batch_norm train " + c.label() + " eps=" + std::to_string(eps),
                                               [eps](const std::vector<Variable>& v) {
                                                 return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true, 0.1,
                                                                   eps);
                                               },
                                               {c.x, c.gamma, c.beta}, hard_input_options(c.kind)));
  });
  std::printf("batch_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(gradcheck_eval_and_without_affine) {
  Generator gen(4);
  double worst = 0;
  for (const Shape& s : {Shape{4, 3}, Shape{2, 3, 5}, Shape{1, 3}}) {
    for (Input k : all_inputs) {
      const int64_t C = s[1];
      const Tensor running_mean = randn({C}, gen, DType::f64), running_var = uniform({C}, gen, 0.5, 2.0, DType::f64);
      auto x = leaf(make_input(s, k, gen));
      auto gamma = leaf(randn({C}, gen, DType::f64, 1.0, 0.5));
      auto beta = leaf(randn({C}, gen, DType::f64));
      // Eval is affine in x, gamma and beta, so a large step has no truncation error; it keeps the
      // rounding noise of L (outputs ~1e4 for large-mean inputs) small after dividing by the step.
      GradcheckOptions opt;
      opt.eps = 1e-2;
      worst = std::max(worst, expect_gradcheck("batch_norm eval " + to_string(s) + " " + input_name(k),
                                               [&](const std::vector<Variable>& v) {
                                                 return batch_norm(v[0], v[1], v[2], running_mean, running_var,
                                                                   false, 0.1, 1e-5);
                                               },
                                               {x, gamma, beta}, opt));
    }
  }
  auto x = leaf(randn({3, 2, 4}, gen, DType::f64));
  worst = std::max(worst, expect_gradcheck("batch_norm train no affine",
                                           [](const std::vector<Variable>& v) {
                                             return batch_norm(v[0], {}, {}, Tensor(), Tensor(), true);
                                           },
                                           {x}));
  std::printf("batch_norm (eval, no affine) worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(running_statistics_follow_the_momentum_update_and_serve_eval) {
  Generator gen(5);
  const int64_t C = 3;
  const double eps = 1e-5, momentum = 0.25;
  BatchNorm bn(C, eps, momentum, true, DType::f64);
  std::vector<double> rm(C, 0.0), rv(C, 1.0);  // the hand computation
  for (int step = 0; step < 3; ++step) {
    const Tensor x = randn({4, C, 5}, gen, DType::f64, double(step), 1.0 + step);
    bn.forward(Variable(x));
    const ChannelMoments m = moments(x);
    for (int64_t c = 0; c < C; ++c) {
      const double unbiased = m.var[size_t(c)] * m.count / (m.count - 1);
      rm[size_t(c)] = (1 - momentum) * rm[size_t(c)] + momentum * m.mean[size_t(c)];
      rv[size_t(c)] = (1 - momentum) * rv[size_t(c)] + momentum * unbiased;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    BOOST_CHECK_CLOSE(bn.running_mean().at({c}), rm[size_t(c)], 1e-11);
    BOOST_CHECK_CLOSE(bn.running_var().at({c}), rv[size_t(c)], 1e-11);
  }
  // Eval: y from the running statistics; they do not change, and one sample is enough.
  bn.weight.data().copy_from(randn({C}, gen, DType::f64));
  bn.bias.data().copy_from(randn({C}, gen, DType::f64));
  bn.eval();
  std::vector<double> rstd;
  for (int64_t c = 0; c < C; ++c) rstd.push_back(1 / std::sqrt(rv[size_t(c)] + eps));
  for (const Shape& s : {Shape{2, C, 3}, Shape{1, C}}) {
    auto x = leaf(randn(s, gen, DType::f64));
    Variable y = bn.forward(x);
    check_affine(y.data(), x.data(), rm, rstd, bn.weight.data(), bn.bias.data(), 1e-10);
    // Eval backward is the affine one: dx = dy * gamma * rstd_running.
    const Tensor dy = randn(s, gen, DType::f64);
    y.backward(dy);
    const Tensor dx = x.grad().reshape({s[0], C, -1}), dy3 = dy.reshape({s[0], C, -1});
    for (int64_t n = 0; n < s[0]; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < dx.size(2); ++l)
          BOOST_CHECK_CLOSE(dx.at({n, c, l}), dy3.at({n, c, l}) * bn.weight.data().at({c}) * rstd[size_t(c)], 1e-10);
  }
  for (int64_t c = 0; c < C; ++c) {  // eval left the running statistics alone
    BOOST_CHECK_CLOSE(bn.running_mean().at({c}), rm[size_t(c)], 1e-11);
    BOOST_CHECK_CLOSE(bn.running_var().at({c}), rv[size_t(c)], 1e-11);
  }
}

BOOST_AUTO_TEST_CASE(running_statistics_are_registered_buffers) {
  Generator gen(6);
  BatchNorm bn(4);
  auto buffers = bn.named_buffers();
  BOOST_REQUIRE_EQUAL(buffers.size(), 2u);
  BOOST_CHECK_EQUAL(buffers[0].first, "running_mean");
  BOOST_CHECK_EQUAL(buffers[1].first, "running_var");
  BOOST_CHECK_EQUAL(max_abs(buffers[0].second), 0.0);
  BOOST_CHECK_EQUAL(max_abs(sub(buffers[1].second, ones({4}))), 0.0);
  const auto params = bn.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 2u);
  BOOST_CHECK_EQUAL(params[0].first, "weight");
  BOOST_CHECK_EQUAL(params[1].first, "bias");
  // Training updates the buffers in place: the handles named_buffers gave see the new values,
  // and a value written into them (as when loading a checkpoint) is what eval uses.
  bn.forward(Variable(randn({8, 4}, gen, DType::f32, 5.0)));
  BOOST_CHECK_GT(buffers[0].second.at({0}), 0.1);
  buffers[0].second.fill_(1.0);
  buffers[1].second.fill_(4.0);
  bn.eval();
  const Tensor y = bn.forward(Variable(full({1, 4}, 3.0))).data();
  BOOST_CHECK_CLOSE(y.at({0, 2}), 2.0 / std::sqrt(4.0 + 1e-5), 1e-4);
  BOOST_CHECK(BatchNorm(3, 1e-5, 0.1, false).named_parameters().empty());
  BOOST_CHECK_EQUAL(BatchNorm(3, 1e-5, 0.1, false).named_buffers().size(), 2u);
}

BOOST_AUTO_TEST_CASE(node_saves_mean_and_rstd_and_no_graph_without_grad) {
  Generator gen(7);
  BatchNorm bn(3, 1e-5, 0.1, true, DType::f64);
  auto x = leaf(randn({4, 3, 2}, gen, DType::f64));
  Variable y = bn.forward(x);
  auto* node = dynamic_cast<BatchNormNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "batch_norm");
  BOOST_CHECK(node->training);
  BOOST_CHECK(node->mean.shape() == (Shape{3}) && node->rstd.shape() == (Shape{3}));
  y.backward(ones(y.shape(), DType::f64));
  BOOST_CHECK(bn.weight.grad().defined() && bn.bias.grad().defined());
  BOOST_CHECK(node->released() && !node->x.defined());
  BOOST_CHECK_LT(max_abs(x.grad()), 1e-12);  // a uniform dy with gamma = 1 gives dx = 0
  // No graph under NoGradGuard, but training still updates the running statistics.
  NoGradGuard guard;
  const double before = bn.running_mean().at({0});
  BOOST_CHECK(bn.forward(Variable(randn({4, 3}, gen, DType::f64, 3.0))).grad_fn() == nullptr);
  BOOST_CHECK_NE(bn.running_mean().at({0}), before);
}

BOOST_AUTO_TEST_CASE(same_bits_for_any_thread_count) {
  Generator gen(8);
  struct Run {
    std::vector<float> values;
  };
  const auto run = [](const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& beta) {
    const Tensor rm = zeros({x.size(1)}), rv = ones({x.size(1)});
    const BatchNormStats s = batch_norm_forward(x, gamma, beta, rm, rv, true, 0.1, 1e-5);
    const BatchNormGrads g = batch_norm_backward(dy, x, gamma, s.mean, s.rstd, true, true, true, true);
    std::vector<float> out;
    for (const Tensor& t : {s.y, s.mean, s.rstd, rm, rv, g.dx, g.dgamma, g.dbeta}) {
      const std::vector<float> v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  const int threads = num_threads();
  // (N, C, L): short L (positions down the samples) and long L (along each row), several blocks each.
  for (const Shape& s : {Shape{301, 5, 33}, Shape{40, 3, 150}, Shape{5000, 7}}) {
    const Tensor x = randn(s, gen, DType::f32, 1.0, 2.0), dy = randn(s, gen);
    const Tensor gamma = randn({s[1]}, gen), beta = randn({s[1]}, gen);
    set_num_threads(1);
    const std::vector<float> one = run(x, dy, gamma, beta);
    set_num_threads(2);
    const std::vector<float> two = run(x, dy, gamma, beta);
    set_num_threads(3);
    const std::vector<float> three = run(x, dy, gamma, beta);
    set_num_threads(threads);
    BOOST_CHECK(one == two);
    BOOST_CHECK(one == three);
  }
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference) {
  // (N, C) on kernel_shapes read as [N, C], hard inputs, training and eval; f32 outputs against
  // the reference kernel (double statistics) with dx compared to the size of the terms it cancels.
  WorstByKind worst_f32;
  for_each_kernel_case([&](DType dtype, double tol, const Shape& s, Input k, const Tensor& x) {
    const int64_t N = s[0], C = s[1];
    Generator gen(18);
    const Tensor gamma = randn({C}, gen, dtype, 1.0, 0.5), beta = randn({C}, gen, dtype), dy = randn(s, gen, dtype);
    const Tensor run_mean = randn({C}, gen, dtype), run_var = uniform({C}, gen, 0.5, 2.0, dtype);
    for (bool training : {true, false}) {
      if (training && N < 2) continue;
      Tensor y[2], mean[2], rstd[2], dx[2], dgamma[2], dbeta[2];
      for (int v = 0; v < 2; ++v) {
        y[v] = empty(s, dtype), mean[v] = empty({C}, dtype), rstd[v] = empty({C}, dtype);
        dx[v] = empty(s, dtype), dgamma[v] = empty({C}, dtype), dbeta[v] = empty({C}, dtype);
      }
      NL_DISPATCH_FLOATING(dtype, "test", [&] {
        using T = scalar_t;
        const T *xp = x.data<T>(), *g = gamma.data<T>(), *b = beta.data<T>();
        if (training) {
          batch_norm_forward_train<T>(y[0].data<T>(), mean[0].data<T>(), rstd[0].data<T>(), nullptr, nullptr, xp, g,
                                      b, N, C, 1, 1e-5, 0.1);
          batch_norm_forward_train_cpu<T>(y[1].data<T>(), mean[1].data<T>(), rstd[1].data<T>(), nullptr, nullptr,
                                          xp, g, b, N, C, 1, 1e-5, 0.1);
        } else {
          for (int v = 0; v < 2; ++v)
            (v == 0 ? batch_norm_forward_eval<T> : batch_norm_forward_eval_cpu<T>)(
                y[v].data<T>(), mean[v].data<T>(), rstd[v].data<T>(), xp, g, b, run_mean.data<T>(),
                run_var.data<T>(), N, C, 1, 1e-5);
        }
        for (int v = 0; v < 2; ++v)
          (v == 0 ? batch_norm_backward<T> : batch_norm_backward_cpu<T>)(
              dx[v].data<T>(), dgamma[v].data<T>(), dbeta[v].data<T>(), dy.data<T>(), xp, g, mean[0].data<T>(),
              rstd[0].data<T>(), N, C, 1, training);
      });
      const double dx_floor = max_abs(dy) * max_abs(rstd[0]) * (max_abs(gamma) + 1);
      check_fast_outputs({{"y", y}, {"mean", mean}, {"rstd", rstd}, {"dx", dx, dx_floor}, {"dgamma", dgamma},
                          {"dbeta", dbeta}},
                         dtype, tol, to_string(s) + (training ? " training" : " eval"), k, worst_f32);
    }
  });
  worst_f32.print("batch_norm (N, C)");
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference_on_n_c_l) {
  // (N, C, L): L short (< 64: the kernels run down the samples with a vector per slab position) and
  // long (along each (n, c) row), with tails, N = 1, and several blocks of samples ({700, 3, 17}: 3,
  // {20, 4, 300}: 2); hard inputs, training and eval, against the reference (double statistics).
  const std::vector<Shape> shapes{{3, 2, 7},   {1, 3, 20},   {64, 4, 16}, {700, 3, 17},
                                  {2, 3, 200}, {20, 4, 300}, {5, 2, 64}};
  WorstByKind worst_f32;
  Generator gen_x(78);
  for (DType dtype : {DType::f32, DType::f64})
    for (const Shape& s : shapes)
      for (Input k : all_inputs) {
        const double tol = dtype == DType::f32 ? 2e-6 : 1e-10;
        const Tensor x = make_input(s, k, gen_x).to(dtype);
        const int64_t N = s[0], C = s[1], L = s[2];
        Generator gen(19);
        const Tensor gamma = randn({C}, gen, dtype, 1.0, 0.5), beta = randn({C}, gen, dtype);
        const Tensor dy = randn(s, gen, dtype);
        const Tensor run_mean = randn({C}, gen, dtype), run_var = uniform({C}, gen, 0.5, 2.0, dtype);
        for (bool training : {true, false}) {
          Tensor y[2], mean[2], rstd[2], dx[2], dgamma[2], dbeta[2], rm[2], rv[2];
          for (int v = 0; v < 2; ++v) {
            y[v] = empty(s, dtype), mean[v] = empty({C}, dtype), rstd[v] = empty({C}, dtype);
            dx[v] = empty(s, dtype), dgamma[v] = empty({C}, dtype), dbeta[v] = empty({C}, dtype);
            rm[v] = run_mean.clone(), rv[v] = run_var.clone();
          }
          NL_DISPATCH_FLOATING(dtype, "test", [&] {
            using T = scalar_t;
            const T *xp = x.data<T>(), *g = gamma.data<T>(), *b = beta.data<T>();
            for (int v = 0; v < 2; ++v) {
              if (training)
                (v == 0 ? batch_norm_forward_train<T> : batch_norm_forward_train_cpu<T>)(
                    y[v].data<T>(), mean[v].data<T>(), rstd[v].data<T>(), rm[v].data<T>(), rv[v].data<T>(), xp, g,
                    b, N, C, L, 1e-5, 0.1);
              else
                (v == 0 ? batch_norm_forward_eval<T> : batch_norm_forward_eval_cpu<T>)(
                    y[v].data<T>(), mean[v].data<T>(), rstd[v].data<T>(), xp, g, b, run_mean.data<T>(),
                    run_var.data<T>(), N, C, L, 1e-5);
              (v == 0 ? batch_norm_backward<T> : batch_norm_backward_cpu<T>)(
                  dx[v].data<T>(), dgamma[v].data<T>(), dbeta[v].data<T>(), dy.data<T>(), xp, g, mean[0].data<T>(),
                  rstd[0].data<T>(), N, C, L, training);
            }
          });
          // dx cancels terms of size |dy| rstd (|gamma| + 1); dgamma sums dy * xhat, terms of size |dy| |xhat|.
          const double dx_floor = max_abs(dy) * max_abs(rstd[0]) * (max_abs(gamma) + 1);
          check_fast_outputs({{"y", y}, {"mean", mean}, {"rstd", rstd}, {"running_mean", rm}, {"running_var", rv},
                              {"dx", dx, dx_floor}, {"dgamma", dgamma}, {"dbeta", dbeta}},
                             dtype, tol, to_string(s) + (training ? " training" : " eval"), k, worst_f32);
        }
      }
  worst_f32.print("batch_norm (N, C, L)");
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(9);
  BatchNorm bn(4);
  const auto fwd = [&](const Tensor& x) { return error_of([&] { bn.forward(Variable(x)); }); };
  BOOST_CHECK(contains(fwd(randn({2, 5}, gen)), "expected an input of shape [N, 4] or [N, 4, L], got shape [2, 5]"));
  BOOST_CHECK(contains(fwd(randn({8}, gen)), "got shape [8]"));
  BOOST_CHECK(contains(fwd(randn({2, 4, 3, 3}, gen)), "got shape [2, 4, 3, 3]"));
  BOOST_CHECK(contains(fwd(empty({0, 4})), "the input is empty (shape [0, 4])"));
  BOOST_CHECK(contains(fwd(empty({2, 4, 0})), "the input is empty (shape [2, 4, 0])"));
  BOOST_CHECK(contains(fwd(randn({1, 4}, gen)), "more than one value per channel"));
  BOOST_CHECK(contains(fwd(randn({1, 4}, gen)), "got shape [1, 4]"));
  BOOST_CHECK(contains(fwd(randn({1, 4, 1}, gen)), "got shape [1, 4, 1]"));
  bn.eval();
  BOOST_CHECK_EQUAL(fwd(randn({1, 4}, gen)), "");  // eval needs no batch statistics
  BOOST_CHECK(contains(error_of([] { BatchNorm(4, 0.0); }), "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { BatchNorm(4, -1e-5); }), "got -1e-05"));
  BOOST_CHECK(contains(error_of([] { BatchNorm(4, 1e-5, 1.5); }), "momentum must be in [0, 1], got 1.5"));
  BOOST_CHECK(contains(error_of([] { BatchNorm(0); }), "the number of channels C must be >= 1, got 0"));
  const Tensor x = randn({3, 4}, gen);
  BOOST_CHECK(contains(error_of([&] { batch_norm_forward(x, randn({3}, gen), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); }),
                       "gamma must have shape [4], got [3]"));
  BOOST_CHECK(contains(error_of([&] { batch_norm_forward(x, Tensor(), Tensor(), zeros({4}, DType::f64), ones({4}, DType::f64), true, 0.1, 1e-5); }),
                       "running_mean has dtype f64 but the input has f32"));
  BOOST_CHECK(contains(error_of([&] { batch_norm_forward(x, Tensor(), Tensor(), Tensor(), Tensor(), false, 0.1, 1e-5); }),
                       "eval mode needs running_mean and running_var"));
  BOOST_CHECK(contains(error_of([&] { batch_norm_forward(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 0.0); }),
                       "eps must be a finite number > 0, got 0"));
}

BOOST_AUTO_TEST_SUITE_END()
