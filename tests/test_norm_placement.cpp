// Residual placements: each placement's output against its formula written out with the
// ops, gradcheck of x, every norm parameter and the sublayer's own parameters, DeepNorm's
// skip scaling, parameter names, the placement table, parsing and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "autograd/ops.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/placement.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

constexpr int64_t kN = 5;
constexpr double kEps = 1e-5;
constexpr SublayerRole kRoles[] = {SublayerRole::attention, SublayerRole::ffn};

// LayerNorms in f64 with random affine parameters, so that swapped or skipped norms show.
NormFactory random_layer_norms(Generator& gen, double eps = kEps) {
  return [&gen, eps] {
    auto ln = std::make_shared<LayerNorm>(kN, eps, true, true, DType::f64);
    ln->weight.data().copy_from(randn({kN}, gen, DType::f64, 1.0, 0.5));
    ln->bias.data().copy_from(randn({kN}, gen, DType::f64));
    return ln;
  };
}

// LayerNorm written with primitive ops, with the parameters of the module `n`.
Variable ln_by_ops(const std::shared_ptr<NormLayer>& n, const Variable& x, double eps = kEps) {
  auto ln = std::dynamic_pointer_cast<LayerNorm>(n);
  BOOST_REQUIRE(ln != nullptr);
  const Variable c = x - mean(x, {-1}, true);
  return c * rsqrt(mean(c * c, {-1}, true) + eps) * ln->weight + ln->bias;
}

// The block output written out per placement (PAPERS.md's formulas), independent of
// residual_form().
Variable by_hand(Placement p, SublayerRole role, int64_t block, const Residual& r, const Variable& x,
                 const SublayerFn& f) {
  const bool attn = role == SublayerRole::attention;
  switch (p) {
    case Placement::none: return x + f(x);
    case Placement::pre: return x + f(ln_by_ops(r.norm, x));
    case Placement::post: return ln_by_ops(r.norm, x + f(x));
    case Placement::peri: return x + ln_by_ops(r.norm_out, f(ln_by_ops(r.norm_in, x)));
    case Placement::deepnorm: return ln_by_ops(r.norm, r.alpha() * x + f(x));
    case Placement::hybrid_star:
      if (block == 0) return x + f(ln_by_ops(r.norm, x));
      [[fallthrough]];
    case Placement::hybrid:
      if (attn) return x + f(x);
      return ln_by_ops(r.norm, x) + f(ln_by_ops(r.norm, x));
  }
  return Variable();
}

// A norm that only scales: y = x * weight (weight 1), so a wrongly scaled skip shows in full.
struct ScaleOnly : NormLayer {
  ScaleOnly() { weight = register_parameter("weight", ones({kN}, DType::f64)); }
  Variable forward(const Variable& x) override { return x * weight; }
  Variable weight;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(placement_suite)

BOOST_AUTO_TEST_CASE(parse_and_to_string_round_trip) {
  for (Placement p : all_placements) BOOST_CHECK(parse_placement(to_string(p)) == p);
  BOOST_CHECK_EQUAL(to_string(Placement::hybrid_star), "hybrid_star");
  BOOST_CHECK_EQUAL(to_string(Placement::peri), "peri");
  const std::string valid = "(valid: none, pre, post, peri, deepnorm, hybrid, hybrid_star)";
  for (const char* bad : {"Pre", "sandwich", "hybrid*", "", "pre "}) {
    const std::string msg = error_of([&] { parse_placement(bad); });
    BOOST_CHECK_MESSAGE(contains(msg, std::string("unknown placement '") + bad + "'") && contains(msg, valid), msg);
  }
}

BOOST_AUTO_TEST_CASE(placement_table) {
  using F = ResidualForm;
  const auto A = SublayerRole::attention, Ffn = SublayerRole::ffn;
  BOOST_CHECK(residual_form(Placement::none, A, 3) == F::plain);
  BOOST_CHECK(residual_form(Placement::pre, Ffn, 0) == F::pre);
  BOOST_CHECK(residual_form(Placement::post, A, 1) == F::post);
  BOOST_CHECK(residual_form(Placement::peri, Ffn, 2) == F::peri);
  BOOST_CHECK(residual_form(Placement::deepnorm, A, 0) == F::deepnorm);
  for (int64_t block : {0, 1, 7}) {
    BOOST_CHECK(residual_form(Placement::hybrid, A, block) == F::plain);
    BOOST_CHECK(residual_form(Placement::hybrid, Ffn, block) == F::norm_first);
    BOOST_CHECK(normalizes_qkv(Placement::hybrid, block));
  }
  BOOST_CHECK(residual_form(Placement::hybrid_star, A, 0) == F::pre);
  BOOST_CHECK(residual_form(Placement::hybrid_star, Ffn, 0) == F::pre);
  BOOST_CHECK(residual_form(Placement::hybrid_star, A, 1) == F::plain);
  BOOST_CHECK(residual_form(Placement::hybrid_star, Ffn, 1) == F::norm_first);
  BOOST_CHECK(!normalizes_qkv(Placement::hybrid_star, 0));
  BOOST_CHECK(normalizes_qkv(Placement::hybrid_star, 1));
  for (Placement p : {Placement::none, Placement::pre, Placement::post, Placement::peri, Placement::deepnorm})
    BOOST_CHECK(!normalizes_qkv(p, 1));
  for (Placement p : all_placements) {
    const bool expected = p == Placement::pre || p == Placement::peri || p == Placement::hybrid ||
                          p == Placement::hybrid_star;
    BOOST_CHECK_MESSAGE(uses_final_norm(p) == expected, to_string(p));
  }
  BOOST_CHECK_EQUAL(to_string(F::deepnorm), "N(alpha * x + f(x))");
}

BOOST_AUTO_TEST_CASE(output_matches_the_formula) {
  Generator gen(11);
  const Variable W(randn({kN, kN}, gen, DType::f64, 0.0, 0.6));
  const Variable x(randn({2, 3, kN}, gen, DType::f64, 0.5, 2.0));
  int calls = 0;
  const SublayerFn f = [&](const Variable& h) {
    ++calls;
    return tanh(matmul(h, W));
  };
  for (Placement p : all_placements)
    for (SublayerRole role : kRoles)
      for (int64_t block : {0, 1}) {
        const std::string name = to_string(p) + " " + to_string(role) + " block " + std::to_string(block);
        const double alpha = p == Placement::deepnorm ? 1.7 : 1.0;
        Residual r(p, role, block, random_layer_norms(gen), alpha);
        calls = 0;
        const Variable y = r.forward(x, f);
        BOOST_CHECK_MESSAGE(calls == 1, name << ": f called " << calls << " times");
        const Variable want = by_hand(p, role, block, r, x, f);
        const double err = max_rel_diff(y.data(), want.data());
        BOOST_CHECK_MESSAGE(err < 1e-13, name << ": differs from the formula by " << err);
        // The residual is not a plain identity either: the output differs from x + f(x)
        // wherever a norm is involved.
        if (r.form() != ResidualForm::plain)
          BOOST_CHECK_MESSAGE(max_rel_diff(y.data(), (x + f(x)).data()) > 1e-2, name << ": no norm applied");
      }
}

BOOST_AUTO_TEST_CASE(deepnorm_scales_the_skip_not_the_branch) {
  Generator gen(12);
  const Variable x(randn({4, kN}, gen, DType::f64));
  const SublayerFn zero = [](const Variable& h) { return h * 0.0; };
  // With a norm that only scales, N(2x + 0) = 2x exactly; the buggy N(x + 2 f(x)) gives x.
  Residual r(Placement::deepnorm, SublayerRole::ffn, 0, [] { return std::make_shared<ScaleOnly>(); }, 2.0);
  BOOST_CHECK_LT(max_rel_diff(r.forward(x, zero).data(), (2.0 * x).data()), 1e-15);
  // With LayerNorm and a large eps (not scale-invariant): N(2x), clearly not N(x).
  Residual ln(Placement::deepnorm, SublayerRole::ffn, 0, random_layer_norms(gen, 1.0), 2.0);
  const Tensor y = ln.forward(x, zero).data();
  BOOST_CHECK_LT(max_rel_diff(y, ln_by_ops(ln.norm, 2.0 * x, 1.0).data()), 1e-13);
  BOOST_CHECK_GT(max_rel_diff(y, ln_by_ops(ln.norm, x, 1.0).data()), 0.05);
}

BOOST_AUTO_TEST_CASE(gradcheck_x_norm_parameters_and_sublayer_parameters) {
  Generator gen(13);
  double worst = 0;
  for (Placement p : all_placements)
    for (SublayerRole role : kRoles)
      for (int64_t block : {0, 1}) {
        if (block == 1 && p != Placement::hybrid_star) continue;  // only hybrid_star depends on the block
        for (Input k : {Input::normal, Input::wide}) {
          Residual r(p, role, block, random_layer_norms(gen), p == Placement::deepnorm ? 1.7 : 1.0);
          Linear lin(kN, kN, true, gen, DType::f64);
          const SublayerFn f = [&](const Variable& h) { return tanh(lin.forward(h)); };
          std::vector<Variable> inputs{leaf(make_input({2, 3, kN}, k, gen)), lin.weight, lin.bias};
          for (auto& [n, v] : r.named_parameters()) inputs.push_back(v);
          const size_t norms = r.form() == ResidualForm::peri ? 2 : r.form() == ResidualForm::plain ? 0 : 1;
          BOOST_CHECK_EQUAL(inputs.size(), 3 + 2 * norms);  // x, W, b, and weight + bias per norm
          const std::string name = to_string(p) + " " + to_string(role) + " block " + std::to_string(block) + " " +
                                   input_name(k);
          worst = std::max(worst, expect_gradcheck("residual " + name,
                                                   [&](const std::vector<Variable>& v) { return r.forward(v[0], f); },
                                                   inputs));
        }
      }
  std::printf("residual placements worst gradcheck rel err %.1e\n", worst);
}

// Residuals chained on a ResidualStream (attention and FFN of a block, then the next block's
// attention, then a final norm): the pending adds fused with the norms that read them give the
// formulas' values and gradients, and gradcheck passes through the fused nodes.
BOOST_AUTO_TEST_CASE(chained_on_a_stream_the_fused_adds_match_the_formulas) {
  Generator gen(16);
  double worst = 0;
  for (Placement p : all_placements)
    for (int64_t block : {0, 1}) {
      if (block == 1 && p != Placement::hybrid_star) continue;
      const double alpha = p == Placement::deepnorm ? 1.7 : 1.0;
      const Residual r1(p, SublayerRole::attention, block, random_layer_norms(gen), alpha);
      const Residual r2(p, SublayerRole::ffn, block, random_layer_norms(gen), alpha);
      const Residual r3(p, SublayerRole::attention, block + 1, random_layer_norms(gen), alpha);
      const std::shared_ptr<NormLayer> final_norm = random_layer_norms(gen)();
      Linear lin(kN, kN, true, gen, DType::f64);
      const SublayerFn f = [&](const Variable& h) { return tanh(lin.forward(h)); };
      auto fused = [&](const std::vector<Variable>& v) {
        ResidualStream x{v[0], {}};
        for (const Residual* r : {&r1, &r2, &r3}) x = r->forward(x, f);
        return x.sum_and_norm(*final_norm, false).second;
      };
      auto unfused = [&](const std::vector<Variable>& v) {
        Variable x = v[0];
        for (const Residual* r : {&r1, &r2, &r3}) x = by_hand(p, r->role(), r->block(), *r, x, f);
        return ln_by_ops(final_norm, x);
      };
      std::vector<Variable> inputs{leaf(randn({2, 3, kN}, gen, DType::f64, 0.5, 2.0)), lin.weight, lin.bias};
      for (const Module* m : {&r1, &r2, &r3})
        for (auto& [n, v] : m->named_parameters()) inputs.push_back(v);
      for (auto& [n, v] : final_norm->named_parameters()) inputs.push_back(v);
      const std::string name = to_string(p) + " from block " + std::to_string(block);
      BOOST_CHECK_LT(max_rel_diff(fused(inputs).data(), unfused(inputs).data()), 1e-13);
      const Tensor seed = randn({2, 3, kN}, gen, DType::f64);
      std::vector<Tensor> grads[2];
      for (int k = 0; k < 2; ++k) {
        for (Variable& v : inputs) v.zero_grad();
        (k == 0 ? fused(inputs) : unfused(inputs)).backward(seed);
        for (const Variable& v : inputs) grads[k].push_back(v.grad().clone());
      }
      for (size_t i = 0; i < inputs.size(); ++i)
        BOOST_CHECK_MESSAGE(max_rel_diff(grads[0][i], grads[1][i]) < 1e-12,
                            name << ": gradient " << i << " differs by " << max_rel_diff(grads[0][i], grads[1][i]));
      worst = std::max(worst, expect_gradcheck("residual stream " + name, fused, inputs));
    }
  std::printf("residual streams worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(parameter_names) {
  Generator gen(14);
  auto names_of = [&](Placement p, int64_t block) {
    ModuleDict model;
    auto blocks = model.add("blocks", std::make_shared<ModuleDict>());
    auto b = blocks->add(std::to_string(block), std::make_shared<ModuleDict>());
    b->add("attn_res", std::make_shared<Residual>(p, SublayerRole::attention, block, random_layer_norms(gen)));
    b->add("ffn_res", std::make_shared<Residual>(p, SublayerRole::ffn, block, random_layer_norms(gen)));
    std::vector<std::string> names;
    for (auto& [n, v] : model.named_parameters()) names.push_back(n);
    return names;
  };
  using V = std::vector<std::string>;
  BOOST_CHECK(names_of(Placement::none, 3).empty());
  BOOST_CHECK(names_of(Placement::pre, 3) == (V{"blocks.3.attn_res.norm.weight", "blocks.3.attn_res.norm.bias",
                                                "blocks.3.ffn_res.norm.weight", "blocks.3.ffn_res.norm.bias"}));
  BOOST_CHECK(names_of(Placement::peri, 3) ==
              (V{"blocks.3.attn_res.norm_in.weight", "blocks.3.attn_res.norm_in.bias",
                 "blocks.3.attn_res.norm_out.weight", "blocks.3.attn_res.norm_out.bias",
                 "blocks.3.ffn_res.norm_in.weight", "blocks.3.ffn_res.norm_in.bias",
                 "blocks.3.ffn_res.norm_out.weight", "blocks.3.ffn_res.norm_out.bias"}));
  BOOST_CHECK(names_of(Placement::hybrid, 3) == (V{"blocks.3.ffn_res.norm.weight", "blocks.3.ffn_res.norm.bias"}));
  BOOST_CHECK(names_of(Placement::hybrid_star, 3) == (V{"blocks.3.ffn_res.norm.weight", "blocks.3.ffn_res.norm.bias"}));
  BOOST_CHECK(names_of(Placement::hybrid_star, 0) == (V{"blocks.0.attn_res.norm.weight", "blocks.0.attn_res.norm.bias",
                                                        "blocks.0.ffn_res.norm.weight", "blocks.0.ffn_res.norm.bias"}));
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(15);
  const NormFactory make = random_layer_norms(gen);
  const auto A = SublayerRole::attention;
  BOOST_CHECK(contains(error_of([&] { Residual(Placement::pre, A, 0, make, 2.0); }),
                       "alpha=2 given for placement 'pre'; only deepnorm scales the skip"));
  BOOST_CHECK(contains(error_of([&] { Residual(Placement::deepnorm, A, 0, make, 0.0); }),
                       "alpha must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([&] { Residual(Placement::deepnorm, A, 0, make, NAN); }), "got nan"));
  BOOST_CHECK(contains(error_of([&] { Residual(Placement::pre, A, -1, make); }),
                       "block index must be >= 0, got -1"));
  BOOST_CHECK(contains(error_of([&] { Residual(Placement::post, A, 0, nullptr); }),
                       "placement 'post' needs a norm factory"));
  BOOST_CHECK(contains(error_of([&] { Residual(Placement::peri, A, 0, [] { return std::shared_ptr<NormLayer>(); }); }),
                       "the norm factory returned null for 'norm_in'"));
  BOOST_CHECK(error_of([&] { Residual(Placement::none, A, 0, nullptr); }).empty());
  BOOST_CHECK(error_of([&] { Residual(Placement::hybrid, A, 4, nullptr); }).empty());  // attention: no norm

  Residual r(Placement::pre, SublayerRole::ffn, 2, make);
  const Variable x(randn({3, kN}, gen, DType::f64));
  BOOST_CHECK(contains(error_of([&] { r.forward(x, [](const Variable& h) { return sum(h, {-1}, true); }); }),
                       "the ffn sublayer of block 2 returned shape [3, 1] for input shape [3, 5]"));
  BOOST_CHECK(contains(error_of([&] { r.forward(Variable(), [](const Variable& h) { return h; }); }),
                       "the input is undefined"));
}

BOOST_AUTO_TEST_SUITE_END()
