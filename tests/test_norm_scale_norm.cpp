// ScaleNorm: forward against the formula on both sides of the max(||x||, eps) kink,
// gradcheck of x and g on hard inputs and shapes on each branch, the node, the module,
// and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "framework/parallel.h"
#include "norm/scale_norm/scale_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

// x with row i scaled by row_scale[i]: rows of chosen norm, to put them on either side of eps.
Tensor rows_scaled(const Tensor& x, const std::vector<double>& row_scale) {
  Tensor s = from_vector(row_scale, {int64_t(row_scale.size()), 1}, DType::f64);
  return mul(x, s);
}

// Fails unless every row's norm is at least a factor 2 away from eps, on the side asked for.
void expect_branch(const Tensor& norm, double eps, bool clamped) {
  for (double n : norm.to(DType::f64).to_vector<double>()) {
    if (clamped) BOOST_CHECK_MESSAGE(n < 0.5 * eps, "row norm " << n << " is not clearly below eps " << eps);
    else BOOST_CHECK_MESSAGE(n > 2 * eps, "row norm " << n << " is not clearly above eps " << eps);
  }
}

// Gradchecks on the branch ||x|| > eps: hard inputs, shapes, eps variants. Returns the worst error.
double gradcheck_above_eps() {
  Generator gen(3);
  double worst = 0;
  const Shape shapes[] = {{4, 7}, {1, 5}, {3, 1}, {2, 3, 6}};
  for (const Shape& s : shapes) {
    for (Input k : all_inputs) {
      auto x = leaf(make_input(s, k, gen));
      auto g = leaf(randn({1}, gen, DType::f64, 2.0, 0.5));
      for (double eps : {1e-5, 1e-2}) {
        expect_branch(scale_norm_forward(x.data(), g.data(), eps).norm, eps, false);
        worst = std::max(worst, expect_gradcheck("scale_norm " + to_string(s) + " " + input_name(k) +
                                                     " eps=" + std::to_string(eps),
                                                 [eps](const std::vector<Variable>& v) {
                                                   return scale_norm(v[0], v[1], eps);
                                                 },
                                                 {x, g}));
      }
    }
  }
  return worst;
}

// Gradchecks on the branch ||x|| < eps, and on batches with rows on both sides.
double gradcheck_below_eps_and_mixed_rows() {
  Generator gen(4);
  double worst = 0;
  const double eps = 1.0;
  // Every row below eps: the denominator is the constant eps, so y = g x / eps.
  for (const Shape& s : {Shape{3, 5}, Shape{1, 1}, Shape{2, 2, 4}}) {
    auto x = leaf(mul_scalar(randn(s, gen, DType::f64), 0.1));
    auto g = leaf(randn({1}, gen, DType::f64, 2.0, 0.5));
    expect_branch(scale_norm_forward(x.data(), g.data(), eps).norm, eps, true);
    worst = std::max(worst, expect_gradcheck("scale_norm clamped " + to_string(s),
                                             [eps](const std::vector<Variable>& v) {
                                               return scale_norm(v[0], v[1], eps);
                                             },
                                             {x, g}));
  }
  // Rows on both sides in one batch (norms ~0.2 and ~6.5 against eps = 1).
  auto x = leaf(rows_scaled(randn({4, 6}, gen, DType::f64), {0.1, 3.0, 3.0, 0.1}));
  auto g = leaf(randn({1}, gen, DType::f64, 2.0, 0.5));
  const Tensor norm = scale_norm_forward(x.data(), g.data(), eps).norm;
  expect_branch(norm.slice(0, 0, 1), eps, true);
  expect_branch(norm.slice(0, 1, 3), eps, false);
  expect_branch(norm.slice(0, 3, 4), eps, true);
  worst = std::max(worst, expect_gradcheck("scale_norm mixed rows", [eps](const std::vector<Variable>& v) {
    return scale_norm(v[0], v[1], eps);
  }, {x, g}));
  return worst;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(scale_norm_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula_on_both_branches) {
  Generator gen(1);
  // Rows 0 and 2 have norm ~0.01 * sqrt(7) < eps = 0.5; rows 1 and 3 ~3 * sqrt(7) > eps.
  const Tensor x = rows_scaled(randn({4, 7}, gen, DType::f64), {0.01, 3.0, 0.01, 3.0});
  const Tensor g = from_vector(std::vector<double>{1.7}, {1}, DType::f64);
  const ScaleNormStats s = scale_norm_forward(x, g, 0.5);
  int clamped = 0;
  for (int64_t i = 0; i < 4; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < 7; ++j) ss += x.at({i, j}) * x.at({i, j});
    const double norm = std::sqrt(ss);
    clamped += norm < 0.5;
    BOOST_CHECK_CLOSE(s.norm.at({i}), norm, 1e-12);
    for (int64_t j = 0; j < 7; ++j) BOOST_CHECK_CLOSE(s.y.at({i, j}), 1.7 * x.at({i, j}) / std::max(norm, 0.5), 1e-12);
  }
  BOOST_CHECK_EQUAL(clamped, 2);
  // A zero row stays zero (the clamp keeps it finite).
  const ScaleNormStats z = scale_norm_forward(zeros({2, 3}, DType::f64), g, 1e-5);
  BOOST_CHECK_EQUAL(max_abs(z.y), 0.0);
}

BOOST_AUTO_TEST_CASE(f32_forward_agrees_with_f64) {
  Generator gen(2);
  const Tensor g = from_vector(std::vector<double>{4.0}, {1}, DType::f64);
  for (Input k : all_inputs) {
    const Tensor x64 = make_input({5, 33}, k, gen);
    const ScaleNormStats s64 = scale_norm_forward(x64, g, 1e-5);
    const ScaleNormStats s32 = scale_norm_forward(x64.to(DType::f32), g.to(DType::f32), 1e-5);
    BOOST_CHECK_MESSAGE(max_rel_diff(s32.y, s64.y) < 1e-5, input_name(k) << ": y differs by "
                                                                          << max_rel_diff(s32.y, s64.y));
    BOOST_CHECK_MESSAGE(max_rel_diff(s32.norm, s64.norm) < 1e-5, input_name(k) << ": norm differs");
  }
}

BOOST_AUTO_TEST_CASE(gradcheck_x_and_g_on_both_branches) {
  const double worst = std::max(gradcheck_above_eps(), gradcheck_below_eps_and_mixed_rows());
  std::printf("scale_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(clamped_rows_get_g_dy_over_eps) {
  // Below eps the backward is exactly dx = g dy / eps, and a zero row gets a finite gradient.
  Generator gen(5);
  auto x = leaf(zeros({2, 3}, DType::f64));
  auto g = leaf(from_vector(std::vector<double>{3.0}, {1}, DType::f64));
  const Tensor dy = randn({2, 3}, gen, DType::f64);
  scale_norm(x, g, 0.5).backward(dy);
  BOOST_CHECK_LT(max_abs(sub(x.grad(), mul_scalar(dy, 3.0 / 0.5))), 1e-15);
  BOOST_CHECK_EQUAL(g.grad().item(), 0.0);  // y = 0 whatever g is
}

BOOST_AUTO_TEST_CASE(gradcheck_without_g) {
  Generator gen(6);
  auto x = leaf(randn({3, 5}, gen, DType::f64));
  expect_gradcheck("scale_norm no g", [](const std::vector<Variable>& v) { return scale_norm(v[0], {}); }, {x});
}

BOOST_AUTO_TEST_CASE(node_saves_the_norm_and_module_names_g) {
  Generator gen(7);
  ScaleNorm sn(16, 1e-5, DType::f64);
  const auto params = sn.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 1u);
  BOOST_CHECK_EQUAL(params[0].first, "g");
  BOOST_CHECK(sn.g.shape() == (Shape{1}));
  BOOST_CHECK_EQUAL(sn.g.item(), 4.0);  // sqrt(16)
  auto x = leaf(randn({2, 3, 16}, gen, DType::f64));
  Variable y = sn.forward(x);
  auto* node = dynamic_cast<ScaleNormNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "scale_norm");
  BOOST_CHECK(node->norm.shape() == (Shape{2, 3}));
  BOOST_CHECK_EQUAL(node->eps, 1e-5);
  // Each row of y has norm g.
  const Tensor row_norms = sum(mul(y.data(), y.data()), {-1});
  BOOST_CHECK_LT(max_abs(add_scalar(row_norms, -16.0)), 1e-12);
  // dy = y: y is invariant to the row's scale, so x . dx = 0 per row.
  y.backward(y.data());
  BOOST_CHECK(node->released());
  BOOST_CHECK(!node->x.defined() && !node->norm.defined());
  BOOST_CHECK_LT(max_abs(sum(mul(x.data(), x.grad()), {-1})), 1e-12);
  BOOST_CHECK_CLOSE(sn.g.grad().item(), 2 * 3 * 4.0, 1e-10);  // sum(y * y / g) = rows * g
}

BOOST_AUTO_TEST_CASE(no_graph_without_grad) {
  Generator gen(8);
  ScaleNorm sn(4);
  BOOST_CHECK(sn.forward(Variable(randn({2, 4}, gen))).grad_fn() != nullptr);  // g requires grad
  NoGradGuard guard;
  BOOST_CHECK(sn.forward(Variable(randn({2, 4}, gen))).grad_fn() == nullptr);
}

BOOST_AUTO_TEST_CASE(fast_kernels_match_the_reference) {
  WorstByKind worst_f32;
  for_each_kernel_case([&](DType dtype, double tol, const Shape& s, Input k, const Tensor& x) {
    const int64_t M = s[0], N = s[1];
    Generator gen(38);
    const Tensor g = full({1}, 1.7, dtype), dy = randn(s, gen, dtype);
    Tensor y[2], norm[2], dx[2], dg[2];
    for (int v = 0; v < 2; ++v)
      y[v] = empty(s, dtype), norm[v] = empty({M}, dtype), dx[v] = empty(s, dtype), dg[v] = empty({1}, dtype);
    NL_DISPATCH_FLOATING(dtype, "test", [&] {
      using T = scalar_t;
      for (int v = 0; v < 2; ++v) {
        (v == 0 ? scale_norm_forward<T> : scale_norm_forward_cpu<T>)(y[v].data<T>(), norm[v].data<T>(), x.data<T>(),
                                                                     g.data<T>(), M, N, 1e-5);
        (v == 0 ? scale_norm_backward<T> : scale_norm_backward_cpu<T>)(dx[v].data<T>(), dg[v].data<T>(), dy.data<T>(),
                                                                       x.data<T>(), g.data<T>(), norm[0].data<T>(),
                                                                       M, N, 1e-5);
      }
    });
    // dx cancels terms of size |g| |dy| / ||x||; dg sums |dy| |xhat| <= |dy| over every row.
    double min_d = 1e300;
    for (double v : norm[0].to(DType::f64).to_vector<double>()) min_d = std::min(min_d, std::max(v, 1e-5));
    const double dx_floor = max_abs(dy) * 1.7 / min_d;
    check_fast_outputs({{"y", y}, {"norm", norm}, {"dx", dx, dx_floor}, {"dg", dg, max_abs(dy) * double(M)}},
                       dtype, tol, to_string(s), k, worst_f32);
  });
  worst_f32.print("scale_norm");
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(9);
  ScaleNorm sn(4);
  BOOST_CHECK(contains(error_of([&] { sn.forward(Variable(randn({2, 5}, gen))); }),
                       "last dim of the input to be 4, got shape [2, 5]"));
  BOOST_CHECK(contains(error_of([&] { sn.forward(Variable(empty({0, 4}))); }), "empty"));
  BOOST_CHECK(contains(error_of([] { ScaleNorm(4, 0.0); }), "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { ScaleNorm(4, -1e-5); }), "got -1e-05"));
  BOOST_CHECK(contains(error_of([] { ScaleNorm(0); }), "feature size must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([&] { scale_norm_forward(randn({2, 4}, gen), randn({2}, gen), 1e-5); }),
                       "g must have shape [1], got [2]"));
  BOOST_CHECK(contains(error_of([&] { scale_norm_forward(randn({2, 4}, gen), randn({1}, gen, DType::f64), 1e-5); }),
                       "g has dtype f64 but the input has f32"));
  BOOST_CHECK(contains(error_of([&] { scale_norm(Variable(randn({2, 4}, gen)), Variable(randn({1}, gen)), -1.0); }),
                       "scale_norm: eps must be"));
}

BOOST_AUTO_TEST_CASE(same_bits_for_any_thread_count) {
  Generator gen(15);
  const Tensor x = randn({900, 40}, gen), dy = randn({900, 40}, gen), g = full({1}, 1.3);
  auto run = [&](int threads) {
    const int prev = num_threads();
    set_num_threads(threads);
    const ScaleNormStats s = scale_norm_forward(x, g, 1e-5);
    const ScaleNormGrads d = scale_norm_backward(dy, x, g, s.norm, 1e-5, true, true);
    set_num_threads(prev);
    std::vector<float> out;
    for (const Tensor& t : {s.y, s.norm, d.dx, d.dg}) {
      const std::vector<float> v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  BOOST_CHECK(run(1) == run(3));
}

BOOST_AUTO_TEST_SUITE_END()
