// Fused residual add + norm: {h, y} = {x + r, norm(x + r)} for LayerNorm and RMSNorm. The
// forward and every gradient must equal the unfused pair (add, then the norm) whichever
// outputs the loss uses; gradcheck against finite differences with a loss on both outputs.
#include <boost/test/unit_test.hpp>

#include <functional>

#include "autograd/ops.h"
#include "framework/parallel.h"
#include "norm/fused_add_norm/fused_add_norm.h"
#include "norm/scale_norm/scale_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

using PairFn = std::function<std::pair<Variable, Variable>(const std::vector<Variable>&)>;

// The gradient of a leaf, zeros where backward never reached it.
Tensor grad_or_zeros(const Variable& v) { return v.grad().defined() ? v.grad() : zeros_like(v.data()); }

// Fresh leaves holding copies of `values`.
std::vector<Variable> leaves(const std::vector<Tensor>& values) {
  std::vector<Variable> out;
  for (const Tensor& t : values) out.push_back(leaf(t.clone()));
  return out;
}

// Backpropagates seed_h into h and seed_y into y (an undefined seed: that output is unused)
// and returns the gradient of every input.
std::vector<Tensor> input_grads(const PairFn& fn, const std::vector<Tensor>& values, const Tensor& seed_h,
                                const Tensor& seed_y) {
  std::vector<Variable> in = leaves(values);
  auto [h, y] = fn(in);
  std::vector<Variable> roots;
  std::vector<Tensor> seeds;
  if (seed_h.defined()) roots.push_back(h), seeds.push_back(seed_h);
  if (seed_y.defined()) roots.push_back(y), seeds.push_back(seed_y);
  backward(roots, seeds);
  std::vector<Tensor> grads;
  for (const Variable& v : in) grads.push_back(grad_or_zeros(v));
  return grads;
}

// Checks fused against unfused: outputs, and the input gradients for a loss on h and y, on
// y only and on h only. Returns the largest relative difference.
double expect_same_as_unfused(const std::string& name, const PairFn& fused, const PairFn& unfused,
                              const std::vector<Tensor>& values, Generator& gen) {
  std::vector<Variable> in = leaves(values);
  auto [h1, y1] = fused(in);
  auto [h2, y2] = unfused(in);
  double worst = std::max(max_rel_diff(h1.data(), h2.data()), max_rel_diff(y1.data(), y2.data()));
  const Tensor a = randn(h1.shape(), gen, DType::f64), b = randn(y1.shape(), gen, DType::f64);
  for (int uses = 0; uses < 3; ++uses) {  // 0: h and y, 1: y only, 2: h only
    const Tensor seed_h = uses == 1 ? Tensor() : a, seed_y = uses == 2 ? Tensor() : b;
    const std::vector<Tensor> g1 = input_grads(fused, values, seed_h, seed_y);
    const std::vector<Tensor> g2 = input_grads(unfused, values, seed_h, seed_y);
    for (size_t i = 0; i < g1.size(); ++i) {
      const double d = max_rel_diff(g1[i], g2[i]);
      BOOST_CHECK_MESSAGE(d < 1e-12, name << " uses=" << uses << " input " << i << " differs by " << d);
      worst = std::max(worst, d);
    }
  }
  BOOST_CHECK_MESSAGE(worst < 1e-12, name << ": fused and unfused differ by " << worst);
  return worst;
}

// Gradcheck of a loss on both outputs: the check's random direction covers concat(h, y).
double expect_pair_gradcheck(const std::string& name, const PairFn& fn, const std::vector<Variable>& in,
                             GradcheckOptions opt = {}) {
  return expect_gradcheck(name, [fn](const std::vector<Variable>& v) {
    auto [h, y] = fn(v);
    return concat({h, y}, -1);
  }, in, opt);
}

PairFn fused_ln(double eps) {
  return [eps](const std::vector<Variable>& v) { return add_layer_norm(v[0], v[1], v[2], v[3], eps); };
}
PairFn unfused_ln(double eps) {
  return [eps](const std::vector<Variable>& v) {
    Variable h = add(v[0], v[1]);
    return std::pair{h, layer_norm(h, v[2], v[3], eps)};
  };
}
PairFn fused_rms(double eps, bool unit_offset) {
  return [=](const std::vector<Variable>& v) { return add_rms_norm(v[0], v[1], v[2], eps, unit_offset); };
}
PairFn unfused_rms(double eps, bool unit_offset) {
  return [=](const std::vector<Variable>& v) {
    Variable h = add(v[0], v[1]);
    return std::pair{h, rms_norm(h, v[2], eps, unit_offset)};
  };
}

const Shape shapes[] = {{4, 7}, {1, 5}, {3, 1}, {2, 3, 6}};

// A residual that keeps h = x + r of the input's kind: N(0, 1), or 1e-3 N(0, 1) beside a
// near-constant x so that h stays near-constant.
Tensor residual_for(const Shape& s, Input k, Generator& gen) {
  return randn(s, gen, DType::f64, 0.0, k == Input::near_constant ? 1e-3 : 1.0);
}

// The finite-difference step for the gradchecks on input kind k; `centered` for LayerNorm.
GradcheckOptions step_for(Input k, bool centered) {
  GradcheckOptions opt;
  // Near-constant under LayerNorm: the centered row's scale is ~sqrt(eps + 1e-6), so the step
  // must stay far below it. (RMSNorm does not center: its scale there is ~3.)
  if (k == Input::near_constant && centered) opt.eps = 1e-6;
  // Large mean: the loss includes h ~ 1e4, whose rounding (~1e-12 a term) a step of 1e-4 would
  // turn into ~1e-7 of noise; the norm's derivatives scale with the row's spread (>= 1), so a
  // step of 1e-2 keeps the 4-point stencil's truncation error below 1e-9.
  if (k == Input::large_mean) opt.eps = 1e-2;
  return opt;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fused_add_norm_suite)

BOOST_AUTO_TEST_CASE(add_layer_norm_equals_add_then_layer_norm) {
  Generator gen(1);
  for (const Shape& s : shapes)
    for (Input k : all_inputs) {
      const int64_t N = s.back();
      const std::vector<Tensor> values{make_input(s, k, gen), residual_for(s, k, gen),
                                       randn({N}, gen, DType::f64, 1.0, 0.5), randn({N}, gen, DType::f64)};
      expect_same_as_unfused("add_layer_norm " + to_string(s) + " " + input_name(k), fused_ln(1e-5), unfused_ln(1e-5),
                             values, gen);
    }
  // Without affine, and without bias.
  Generator g2(11);
  const Tensor x = randn({3, 5}, g2, DType::f64), r = randn({3, 5}, g2, DType::f64), gamma = randn({5}, g2, DType::f64);
  expect_same_as_unfused("add_layer_norm no affine",
                         [](const std::vector<Variable>& v) { return add_layer_norm(v[0], v[1], {}, {}); },
                         [](const std::vector<Variable>& v) {
                           Variable h = add(v[0], v[1]);
                           return std::pair{h, layer_norm(h, {}, {})};
                         },
                         {x, r}, g2);
  expect_same_as_unfused("add_layer_norm no bias",
                         [](const std::vector<Variable>& v) { return add_layer_norm(v[0], v[1], v[2], {}); },
                         [](const std::vector<Variable>& v) {
                           Variable h = add(v[0], v[1]);
                           return std::pair{h, layer_norm(h, v[2], {})};
                         },
                         {x, r, gamma}, g2);
}

BOOST_AUTO_TEST_CASE(add_rms_norm_equals_add_then_rms_norm) {
  Generator gen(2);
  for (const Shape& s : shapes)
    for (Input k : all_inputs)
      for (bool unit_offset : {false, true}) {
        const int64_t N = s.back();
        const std::vector<Tensor> values{make_input(s, k, gen), residual_for(s, k, gen),
                                         randn({N}, gen, DType::f64, unit_offset ? 0.0 : 1.0, 0.5)};
        expect_same_as_unfused("add_rms_norm " + to_string(s) + " " + input_name(k) +
                                   (unit_offset ? " unit_offset" : ""),
                               fused_rms(1e-6, unit_offset), unfused_rms(1e-6, unit_offset), values, gen);
      }
  Generator g2(12);
  expect_same_as_unfused("add_rms_norm no weight",
                         [](const std::vector<Variable>& v) { return add_rms_norm(v[0], v[1], {}); },
                         [](const std::vector<Variable>& v) {
                           Variable h = add(v[0], v[1]);
                           return std::pair{h, rms_norm(h, {})};
                         },
                         {randn({3, 5}, g2, DType::f64), randn({3, 5}, g2, DType::f64)}, g2);
}

BOOST_AUTO_TEST_CASE(many_row_blocks_equal_the_unfused_pair) {
  // 50 rows of 1000: row_grain(1000) = 16 rows a block, so the fused kernels run several
  // blocks per thread, the last one partial.
  BOOST_REQUIRE_LT(row_grain(1000), 50 / 2);
  Generator gen(13);
  const Shape s{50, 1000};
  const Tensor x = randn(s, gen, DType::f64, 1.0, 2.0), r = randn(s, gen, DType::f64);
  const Tensor gamma = randn({1000}, gen, DType::f64, 1.0, 0.5), beta = randn({1000}, gen, DType::f64);
  expect_same_as_unfused("add_layer_norm [50, 1000]", fused_ln(1e-5), unfused_ln(1e-5), {x, r, gamma, beta}, gen);
  expect_same_as_unfused("add_rms_norm [50, 1000]", fused_rms(1e-6, false), unfused_rms(1e-6, false), {x, r, gamma},
                         gen);
}

BOOST_AUTO_TEST_CASE(gradcheck_with_both_outputs_on_hard_inputs) {
  Generator gen(3);
  double worst_ln = 0, worst_rms = 0;
  for (const Shape& s : shapes)
    for (Input k : all_inputs) {
      const int64_t N = s.back();
      auto x = leaf(make_input(s, k, gen)), r = leaf(residual_for(s, k, gen));
      auto gamma = leaf(randn({N}, gen, DType::f64, 1.0, 0.5)), beta = leaf(randn({N}, gen, DType::f64));
      auto w = leaf(randn({N}, gen, DType::f64, 0.0, 0.5));  // the unit_offset weight, around 0
      const std::string where = to_string(s) + " " + input_name(k);
      for (double eps : {1e-5, 1e-2})
        worst_ln = std::max(worst_ln, expect_pair_gradcheck("add_layer_norm " + where + " eps=" + std::to_string(eps),
                                                            fused_ln(eps), {x, r, gamma, beta}, step_for(k, true)));
      for (double eps : {1e-6, 1e-2}) {
        const std::string name = "add_rms_norm " + where + " eps=" + std::to_string(eps);
        const GradcheckOptions opt = step_for(k, false);
        worst_rms = std::max(worst_rms, expect_pair_gradcheck(name, fused_rms(eps, false), {x, r, gamma}, opt));
        worst_rms = std::max(worst_rms,
                             expect_pair_gradcheck(name + " unit_offset", fused_rms(eps, true), {x, r, w}, opt));
      }
    }
  std::printf("add_layer_norm worst gradcheck rel err %.1e\n", worst_ln);
  std::printf("add_rms_norm worst gradcheck rel err %.1e\n", worst_rms);
}

BOOST_AUTO_TEST_CASE(the_same_variable_as_x_and_r) {
  // x + x: both inputs of the node are one leaf, which must get the gradient twice.
  Generator gen(5);
  const Tensor x0 = randn({3, 6}, gen, DType::f64), g0 = randn({6}, gen, DType::f64);
  const Tensor a = randn({3, 6}, gen, DType::f64), b = randn({3, 6}, gen, DType::f64);
  auto x1 = leaf(x0.clone()), g1 = leaf(g0.clone());
  auto [h1, y1] = add_rms_norm(x1, x1, g1);
  backward({h1, y1}, {a, b});
  auto x2 = leaf(x0.clone()), g2 = leaf(g0.clone());
  Variable h2 = add(x2, x2);
  backward({h2, rms_norm(h2, g2)}, {a, b});
  BOOST_CHECK_LT(max_rel_diff(x1.grad(), x2.grad()), 1e-12);
  BOOST_CHECK_LT(max_rel_diff(g1.grad(), g2.grad()), 1e-12);
}

BOOST_AUTO_TEST_CASE(two_output_node_saves_h_and_the_stats) {
  Generator gen(6);
  LayerNorm ln(6, 1e-5, true, true, DType::f64);
  auto x = leaf(randn({2, 3, 6}, gen, DType::f64)), r = leaf(randn({2, 3, 6}, gen, DType::f64));
  auto [h, y] = add_layer_norm(x, r, ln);
  BOOST_CHECK(h.grad_fn() == y.grad_fn());
  BOOST_CHECK_EQUAL(h.output_nr(), 0);
  BOOST_CHECK_EQUAL(y.output_nr(), 1);
  auto* node = dynamic_cast<AddLayerNormNode*>(y.grad_fn().get());
  BOOST_REQUIRE(node != nullptr);
  BOOST_CHECK_EQUAL(node->name(), "add_layer_norm");
  BOOST_CHECK(node->mean.shape() == (Shape{2, 3}));
  BOOST_CHECK(node->rstd.shape() == (Shape{2, 3}));
  BOOST_CHECK_EQUAL(max_abs(sub(node->h, add(x.data(), r.data()))), 0.0);
  BOOST_CHECK_EQUAL(max_abs(sub(y.data(), ln.forward(Variable(h.data())).data())), 0.0);
  backward({h, y}, {ones(h.shape(), DType::f64), ones(y.shape(), DType::f64)});
  BOOST_CHECK(node->released());
  BOOST_CHECK(!node->h.defined());
  // dy = 1 with gamma = 1 gives no norm gradient, so dx = dr = dh = 1.
  BOOST_CHECK_LT(max_abs(add_scalar(x.grad(), -1.0)), 1e-12);
  BOOST_CHECK_LT(max_abs(sub(r.grad(), x.grad())), 1e-15);
  BOOST_CHECK(ln.weight.grad().defined() && ln.bias.grad().defined());

  RMSNorm rn(6, 1e-6, true, true, DType::f64);
  auto [h2, y2] = add_rms_norm(x, r, rn);
  auto* rnode = dynamic_cast<AddRMSNormNode*>(y2.grad_fn().get());
  BOOST_REQUIRE(rnode != nullptr);
  BOOST_CHECK_EQUAL(rnode->name(), "add_rms_norm");
  BOOST_CHECK(rnode->unit_offset);
  BOOST_CHECK(rnode->rrms.shape() == (Shape{2, 3}));
  BOOST_CHECK_EQUAL(max_abs(sub(y2.data(), rn.forward(Variable(h2.data())).data())), 0.0);
}

BOOST_AUTO_TEST_CASE(without_the_sum_y_is_the_only_output) {
  // keep_sum false (post-norm, a final norm): the node's one output is y, its backward adds no
  // dh, and h comes back as a value outside the graph. Through the modules' forward_add.
  Generator gen(10);
  const Tensor x0 = randn({2, 3, 6}, gen, DType::f64), r0 = randn({2, 3, 6}, gen, DType::f64);
  const Tensor seed = randn({2, 3, 6}, gen, DType::f64);
  LayerNorm ln(6, 1e-5, true, true, DType::f64);
  RMSNorm rn(6, 1e-6, true, false, DType::f64);
  ln.weight.data().copy_from(randn({6}, gen, DType::f64, 1.0, 0.5));
  ln.bias.data().copy_from(randn({6}, gen, DType::f64));
  rn.weight.data().copy_from(randn({6}, gen, DType::f64, 1.0, 0.5));
  for (NormLayer* norm : std::initializer_list<NormLayer*>{&ln, &rn}) {
    std::vector<Tensor> grads[2];
    for (int fused = 0; fused < 2; ++fused) {
      auto x = leaf(x0.clone()), r = leaf(r0.clone());
      norm->zero_grad();
      Variable y;
      if (fused) {
        auto [h, y1] = norm->forward_add(x, r, false);
        BOOST_CHECK(!h.requires_grad() && h.grad_fn() == nullptr);
        BOOST_CHECK_EQUAL(max_abs(sub(h.data(), add(x0, r0))), 0.0);
        BOOST_REQUIRE(y1.grad_fn() != nullptr);
        BOOST_CHECK_EQUAL(y1.grad_fn()->outputs().size(), 1u);
        BOOST_CHECK(y1.grad_fn()->name() == (norm == &ln ? "add_layer_norm" : "add_rms_norm"));
        y = y1;
      } else {
        y = norm->forward(add(x, r));
      }
      y.backward(seed);
      grads[fused] = {y.data().clone(), x.grad(), r.grad()};
      for (auto& [n, p] : norm->named_parameters()) grads[fused].push_back(p.grad());
    }
    for (size_t i = 0; i < grads[0].size(); ++i)
      BOOST_CHECK_MESSAGE(max_rel_diff(grads[1][i], grads[0][i]) < 1e-12,
                          "keep_sum false, tensor " << i << " differs by " << max_rel_diff(grads[1][i], grads[0][i]));
  }
  // Without a graph both come back as plain values.
  NoGradGuard no_grad;
  auto [h, y] = ln.forward_add(Variable(x0), Variable(r0), false);
  BOOST_CHECK(h.grad_fn() == nullptr && y.grad_fn() == nullptr);
  BOOST_CHECK_EQUAL(max_abs(sub(y.data(), ln.forward(Variable(add(x0, r0))).data())), 0.0);
}

BOOST_AUTO_TEST_CASE(norms_without_a_fused_kernel_add_then_normalize) {
  // NormLayer::forward_add's default: {x + r, forward(x + r)} as two nodes, keep_sum or not.
  Generator gen(14);
  const Tensor x0 = randn({3, 6}, gen, DType::f64), r0 = randn({3, 6}, gen, DType::f64);
  ScaleNorm sn(6, 1e-5, DType::f64);
  for (bool keep_sum : {true, false}) {
    auto x = leaf(x0.clone()), r = leaf(r0.clone());
    auto [h, y] = sn.forward_add(x, r, keep_sum);
    BOOST_REQUIRE(h.grad_fn() != nullptr && y.grad_fn() != nullptr);
    BOOST_CHECK_EQUAL(h.grad_fn()->name(), "add");
    BOOST_CHECK_EQUAL(max_abs(sub(y.data(), sn.forward(Variable(add(x0, r0))).data())), 0.0);
  }
}

BOOST_AUTO_TEST_CASE(f32_forward_agrees_with_f64) {
  Generator gen(7);
  for (Input k : all_inputs) {
    const Tensor x = make_input({5, 33}, k, gen), r = randn({5, 33}, gen, DType::f64);
    const Tensor gamma = randn({33}, gen, DType::f64, 1.0, 0.3), beta = randn({33}, gen, DType::f64);
    const AddLayerNormStats l64 = add_layer_norm_forward(x, r, gamma, beta, 1e-5);
    const AddLayerNormStats l32 = add_layer_norm_forward(x.to(DType::f32), r.to(DType::f32), gamma.to(DType::f32),
                                                         beta.to(DType::f32), 1e-5);
    const AddRMSNormStats r64 = add_rms_norm_forward(x, r, gamma, 1e-6);
    const AddRMSNormStats r32 = add_rms_norm_forward(x.to(DType::f32), r.to(DType::f32), gamma.to(DType::f32), 1e-6);
    BOOST_CHECK_LT(max_rel_diff(l32.h, l64.h), 1e-6);
    BOOST_CHECK_LT(max_rel_diff(r32.h, r64.h), 1e-6);
    // large-mean: x + r rounds to f32 at 1e4 (5e-4 absolute) before the mean is taken out.
    const double tol = k == Input::large_mean ? 1e-2 : 1e-5;
    BOOST_CHECK_MESSAGE(max_rel_diff(l32.y, l64.y) < tol, input_name(k) << ": layer norm y differs by "
                                                                        << max_rel_diff(l32.y, l64.y));
    BOOST_CHECK_MESSAGE(max_rel_diff(r32.y, r64.y) < 1e-5, input_name(k) << ": rms norm y differs by "
                                                                         << max_rel_diff(r32.y, r64.y));
  }
}

BOOST_AUTO_TEST_CASE(backward_kernel_without_dh_is_the_norm_backward) {
  // An undefined dh at the Tensor level means no gradient at h: dh_total is the norm's dx.
  Generator gen(8);
  const Tensor x = randn({4, 9}, gen, DType::f64), r = randn({4, 9}, gen, DType::f64);
  const Tensor dy = randn({4, 9}, gen, DType::f64);
  const Tensor gamma = randn({9}, gen, DType::f64);
  const AddRMSNormStats s = add_rms_norm_forward(x, r, gamma, 1e-6);
  const AddRMSNormGrads g = add_rms_norm_backward(Tensor(), dy, s.h, gamma, s.rrms, false, true, true);
  const RMSNormGrads ref = rms_norm_backward(dy, s.h, gamma, s.rrms, false, true, true);
  BOOST_CHECK_EQUAL(max_abs(sub(g.dh_total, ref.dx)), 0.0);
  BOOST_CHECK_EQUAL(max_abs(sub(g.dgamma, ref.dgamma)), 0.0);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(9);
  const Variable x(randn({2, 4}, gen)), gamma(randn({4}, gen));
  BOOST_CHECK(contains(error_of([&] { add_layer_norm(x, Variable(randn({2, 5}, gen)), gamma, {}); }),
                       "add_layer_norm: the residual r has shape [2, 5] but x has [2, 4]"));
  BOOST_CHECK(contains(error_of([&] { add_rms_norm(x, Variable(randn({2, 4}, gen, DType::f64)), {}); }),
                       "add_rms_norm: the residual r has dtype f64 but x has f32"));
  BOOST_CHECK(contains(error_of([&] { add_rms_norm(x, Variable(), {}); }), "the residual r is undefined"));
  BOOST_CHECK(contains(error_of([&] { add_layer_norm(x, x, gamma, {}, 0.0); }),
                       "add_layer_norm: eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([&] { add_rms_norm(x, x, gamma, -1.0); }), "add_rms_norm: eps must be"));
  BOOST_CHECK(contains(error_of([&] { add_rms_norm(x, x, Variable(randn({3}, gen))); }),
                       "gamma must have shape [4], got [3]"));
  const Variable e(empty({0, 4}));
  BOOST_CHECK(contains(error_of([&] { add_layer_norm(e, e, {}, {}); }), "empty"));
  LayerNorm ln(5);
  RMSNorm rn(5);
  BOOST_CHECK(contains(error_of([&] { add_layer_norm(x, x, ln); }), "last dim of the input to be 5, got shape [2, 4]"));
  BOOST_CHECK(contains(error_of([&] { add_rms_norm(x, x, rn); }), "last dim of the input to be 5, got shape [2, 4]"));
}

BOOST_AUTO_TEST_CASE(backward_does_not_depend_on_the_thread_count) {
  // The one-pass backward (dx plus dh, and the dgamma/dbeta partials per block of rows) in f32.
  Generator gen(14);
  const Shape s{700, 96};
  const Tensor dh = randn(s, gen), dy = randn(s, gen), h = randn(s, gen, DType::f32, 3.0, 2.0);
  const Tensor gamma = randn({96}, gen), beta = randn({96}, gen);
  auto run = [&](int threads) {
    const int prev = num_threads();
    set_num_threads(threads);
    const AddLayerNormStats st = add_layer_norm_forward(h, dh, gamma, beta, 1e-5);
    const AddLayerNormGrads gl = add_layer_norm_backward(dh, dy, st.h, gamma, st.mean, st.rstd, true, true, true);
    const AddRMSNormStats sr = add_rms_norm_forward(h, dh, gamma, 1e-6);
    const AddRMSNormGrads gr = add_rms_norm_backward(dh, dy, sr.h, gamma, sr.rrms, false, true, true);
    set_num_threads(prev);
    std::vector<float> out;
    for (const Tensor& t : {gl.dh_total, gl.dgamma, gl.dbeta, gr.dh_total, gr.dgamma}) {
      const std::vector<float> v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  BOOST_CHECK(run(1) == run(3));
}

BOOST_AUTO_TEST_SUITE_END()
