// The toy transformer: config checks before allocation, parameter names per placement, every
// norm x placement runs, gradients of the whole model against finite differences, DeepNorm's
// constants and init, determinism across thread counts, and a 1000-block model's step.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "autograd/gradcheck.h"
#include "experiments/model.h"
#include "framework/allocator.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "norm/init.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

ModelConfig tiny(NormKind norm = NormKind::layer, Placement placement = Placement::pre) {
  ModelConfig c;
  c.vocab = 7;
  c.seq_len = 6;
  c.d_model = 8;
  c.heads = 2;
  c.ffn_mult = 2;
  c.depth = 2;
  c.norm = norm;
  c.placement = placement;
  c.groups = 2;
  return c;
}

// Tokens [B, T] and targets (the next token, or -100 at the end).
void make_batch(const ModelConfig& c, int64_t B, uint64_t seed, Tensor& tokens, Tensor& targets) {
  Generator gen(seed);
  const Tensor u = uniform({B, c.seq_len}, gen, 0.0, double(c.vocab), DType::f64);
  tokens = empty({B, c.seq_len}, DType::i64);
  targets = empty({B, c.seq_len}, DType::i64);
  for (int64_t i = 0; i < B * c.seq_len; ++i) tokens.data<int64_t>()[i] = int64_t(u.data<double>()[i]);
  for (int64_t i = 0; i < B * c.seq_len; ++i)
    targets.data<int64_t>()[i] = (i + 1) % c.seq_len == 0 ? -100 : tokens.data<int64_t>()[i + 1];
}

std::set<std::string> names_of(const Transformer& m) {
  std::set<std::string> names;
  for (const auto& [n, p] : m.named_parameters()) names.insert(n);
  return names;
}

bool has(const std::set<std::string>& s, const std::string& name) { return s.count(name) > 0; }

}  // namespace

BOOST_AUTO_TEST_SUITE(model)

BOOST_AUTO_TEST_CASE(bad_configs_fail_before_allocating) {
  struct Case {
    ModelConfig c;
    std::string expect;
  };
  std::vector<Case> cases;
  {
    ModelConfig c = tiny();
    c.d_model = 10, c.heads = 3;
    cases.push_back({c, "d_model=10 is not divisible by heads=3"});
  }
  {
    ModelConfig c = tiny();
    c.depth = 0;
    cases.push_back({c, "depth must be >= 1, got 0"});
  }
  {
    ModelConfig c = tiny(NormKind::none, Placement::pre);
    cases.push_back({c, "norm none needs placement none"});
  }
  {
    ModelConfig c = tiny(NormKind::layer, Placement::hybrid);
    c.qk_norm = QKNormKind::rms;
    cases.push_back({c, "qk_norm must be none, got rms"});
  }
  {
    ModelConfig c = tiny(NormKind::group);
    c.groups = 3;
    cases.push_back({c, "groups=3 does not divide d_model=8"});
  }
  {
    ModelConfig c = tiny();
    c.norm_eps = 0;
    cases.push_back({c, "norm_eps must be > 0, got 0"});
  }
  {
    ModelConfig c = tiny();
    c.dtype = DType::bf16;
    cases.push_back({c, "dtype must be f32 or f64, got bf16"});
  }
  for (const Case& k : cases) {
    const AllocatorStats before = CpuAllocator::instance().stats();
    const std::string err = error_of([&] { Transformer m(k.c); });
    BOOST_TEST(contains(err, k.expect), err);
    const AllocatorStats after = CpuAllocator::instance().stats();
    BOOST_TEST(after.bytes_in_use == before.bytes_in_use);
    BOOST_TEST(after.os_allocations == before.os_allocations);
  }
  BOOST_TEST(contains(error_of([] { parse_norm_kind("batchnorm"); }), "unknown norm 'batchnorm'"));
  BOOST_TEST(contains(error_of([] { parse_qk_norm("l1"); }), "unknown qk_norm 'l1'"));
}

BOOST_AUTO_TEST_CASE(parameter_names_follow_the_placement) {
  const auto pre = names_of(Transformer(tiny()));
  for (const char* n : {"tok.weight", "pos", "blocks.0.attn.q.weight", "blocks.0.attn.k.bias", "blocks.1.attn.v.weight",
                        "blocks.1.attn.out.weight", "blocks.0.attn_res.norm.weight", "blocks.0.attn_res.norm.bias",
                        "blocks.1.ffn_res.norm.weight", "blocks.1.ffn.up.weight", "blocks.1.ffn.down.bias",
                        "final_norm.weight", "head.weight"})
    BOOST_TEST(has(pre, n), n);
  BOOST_TEST(!has(pre, "blocks.0.ffn.gate.weight"));
  BOOST_TEST(!has(pre, "head.bias"));

  ModelConfig c = tiny(NormKind::rms, Placement::peri);
  c.activation = Activation::swiglu;
  c.final_norm = false;
  c.bias = false;
  const auto peri = names_of(Transformer(c));
  for (const char* n : {"blocks.0.attn_res.norm_in.weight", "blocks.0.attn_res.norm_out.weight",
                        "blocks.1.ffn.gate.weight"})
    BOOST_TEST(has(peri, n), n);
  BOOST_TEST(!has(peri, "final_norm.weight"));
  BOOST_TEST(!has(peri, "blocks.0.attn.q.bias"));

  const auto hybrid_star = names_of(Transformer(tiny(NormKind::layer, Placement::hybrid_star)));
  BOOST_TEST(has(hybrid_star, "blocks.0.attn_res.norm.weight"));  // block 0 is pre-norm
  BOOST_TEST(!has(hybrid_star, "blocks.0.attn.q_norm.weight"));
  BOOST_TEST(has(hybrid_star, "blocks.1.attn.q_norm.weight"));
  BOOST_TEST(has(hybrid_star, "blocks.1.attn.v_norm.weight"));
  BOOST_TEST(!has(hybrid_star, "blocks.1.attn_res.norm.weight"));
  BOOST_TEST(has(hybrid_star, "blocks.1.ffn_res.norm.weight"));

  ModelConfig q = tiny();
  q.qk_norm = QKNormKind::l2;
  BOOST_TEST(has(names_of(Transformer(q)), "blocks.1.attn.qk_norm.g"));
}

BOOST_AUTO_TEST_CASE(every_norm_and_placement_trains_a_step) {
  const NormKind norms[] = {NormKind::layer, NormKind::rms, NormKind::scale, NormKind::dyt, NormKind::batch,
                            NormKind::group};
  Tensor tokens, targets;
  for (NormKind n : norms)
    for (Placement p : all_placements) {
      ModelConfig c = tiny(n, p);
      make_batch(c, 3, 5, tokens, targets);
      Transformer m(c);
      Variable loss = m.loss(tokens, targets);
      BOOST_TEST(std::isfinite(loss.item()), to_string(n) << "/" << to_string(p));
      // At init the logits are small: the loss is near ln(vocab).
      BOOST_TEST(std::abs(loss.item() - std::log(double(c.vocab))) < 1.5, to_string(n) << "/" << to_string(p));
      loss.backward();
      for (const auto& [name, param] : m.named_parameters()) {
        BOOST_TEST(param.grad().defined(), name << " " << to_string(n) << "/" << to_string(p));
        if (param.grad().defined()) BOOST_TEST(all_finite(param.grad()), name);
      }
    }
  ModelConfig none = tiny(NormKind::none, Placement::none);
  none.final_norm = false;
  make_batch(none, 3, 5, tokens, targets);
  Transformer m(none);
  BOOST_TEST(std::isfinite(m.loss(tokens, targets).item()));
  BOOST_TEST(!has(names_of(m), "final_norm.weight"));
}

// The whole model's parameter gradients against central differences (f64), probing each
// parameter tensor in random directions.
BOOST_AUTO_TEST_CASE(model_gradients_match_finite_differences) {
  struct Case {
    NormKind norm;
    Placement placement;
    Activation act;
    std::optional<QKNormKind> qk;
  };
  const Case cases[] = {
      {NormKind::layer, Placement::pre, Activation::gelu, std::nullopt},
      {NormKind::layer, Placement::post, Activation::swiglu, QKNormKind::layer},
      {NormKind::rms, Placement::peri, Activation::gelu, QKNormKind::l2},
      {NormKind::rms, Placement::deepnorm, Activation::swiglu, std::nullopt},
      {NormKind::scale, Placement::hybrid_star, Activation::gelu, std::nullopt},
      {NormKind::dyt, Placement::hybrid, Activation::gelu, std::nullopt},
      {NormKind::group, Placement::pre, Activation::gelu, QKNormKind::rms},
      {NormKind::batch, Placement::pre, Activation::gelu, std::nullopt},
  };
  for (const Case& k : cases) {
    ModelConfig c = tiny(k.norm, k.placement);
    c.activation = k.act;
    c.qk_norm = k.qk;
    c.dtype = DType::f64;
    c.init_std = 0.5;  // embeddings large enough that every path carries gradient
    if (k.placement == Placement::deepnorm) c.init = InitScheme::deepnorm;
    Transformer m(c);
    Tensor tokens, targets;
    make_batch(c, 2, 11, tokens, targets);
    GradcheckOptions o;
    o.max_full_elements = 0;  // random directional probes for every parameter
    o.probes = 3;
    o.eps = 1e-4;
    o.atol = 1e-7;
    o.rtol = 1e-5;
    const GradcheckResult r = gradcheck([&](const std::vector<Variable>&) { return m.loss(tokens, targets, 1e-3); },
                                        m.parameters(), o);
    BOOST_TEST_MESSAGE("model gradcheck " << to_string(k.norm) << "/" << to_string(k.placement) << ": worst rel "
                                          << r.max_rel_error << " over " << r.checked << " probes");
    BOOST_TEST(r.ok, to_string(k.norm) << "/" << to_string(k.placement) << ": " << r.report());
    BOOST_TEST(r.checked == int64_t(m.parameters().size()) * 3);
  }
}

BOOST_AUTO_TEST_CASE(deepnorm_alpha_and_init) {
  ModelConfig c = tiny(NormKind::layer, Placement::deepnorm);
  c.d_model = 64;
  c.heads = 4;
  c.depth = 12;
  c.init = InitScheme::deepnorm;
  Transformer m(c);
  const double alpha = std::pow(2.0 * 12, 0.25), beta = std::pow(8.0 * 12, -0.25);
  BOOST_TEST(residual_alpha(c) == alpha);
  BOOST_TEST(m.blocks[3]->attn_res->alpha() == alpha);
  BOOST_TEST(m.blocks[3]->ffn_res->alpha() == alpha);
  auto std_of = [](const Tensor& t) {
    const Tensor d = t.to(DType::f64);
    double s = 0;
    for (int64_t i = 0; i < d.numel(); ++i) s += d.data<double>()[i] * d.data<double>()[i];
    return std::sqrt(s / double(d.numel()));
  };
  const double xavier_dd = std::sqrt(2.0 / (64 + 64));
  // v: gain beta; q: gain 1 (sample std within 5% of the target over 4096 values).
  BOOST_TEST(std::abs(std_of(m.blocks[5]->attn->v->weight.data()) / (beta * xavier_dd) - 1) < 0.05);
  BOOST_TEST(std::abs(std_of(m.blocks[5]->attn->q->weight.data()) / xavier_dd - 1) < 0.05);
  const double xavier_up = std::sqrt(2.0 / (64 + 2 * 64));  // ffn_mult 2
  BOOST_TEST(std::abs(std_of(m.blocks[5]->ffn->up->weight.data()) / (beta * xavier_up) - 1) < 0.05);
  // Embeddings keep init_std; pre-norm has alpha 1.
  BOOST_TEST(std::abs(std_of(m.tok->weight.data()) / c.init_std - 1) < 0.1);
  BOOST_TEST(residual_alpha(tiny()) == 1.0);
}

BOOST_AUTO_TEST_CASE(same_seed_same_model_for_any_thread_count) {
  ModelConfig c = tiny(NormKind::layer, Placement::pre);
  c.d_model = 32;
  c.seq_len = 16;
  c.depth = 3;
  Tensor tokens, targets;
  make_batch(c, 4, 3, tokens, targets);
  auto run = [&](int threads) {
    set_num_threads(threads);
    Transformer m(c);
    Variable loss = m.loss(tokens, targets);
    loss.backward();
    std::vector<Tensor> out{loss.data().clone()};
    for (const auto& [n, p] : m.named_parameters()) out.push_back(p.data().clone()), out.push_back(p.grad().clone());
    return out;
  };
  const int saved = num_threads();
  const auto a = run(1), b = run(2);
  set_num_threads(saved);
  BOOST_REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    BOOST_TEST(std::memcmp(a[i].data<float>(), b[i].data<float>(), size_t(a[i].numel()) * 4) == 0, "tensor " << i);
  ModelConfig c1 = c;
  c1.seed = 1;
  BOOST_TEST(max_abs(sub(Transformer(c1).tok->weight.data(), Transformer(c).tok->weight.data())) > 0);
}

// Recomputation changes no number: for every norm and placement (BatchNorm and dropout
// included), the loss, every gradient, the running statistics and the dropout generator's
// state are those of the stored graph, bit for bit, at 1 and 2 threads.
BOOST_AUTO_TEST_CASE(recompute_gives_the_stored_graphs_numbers) {
  struct Case {
    NormKind norm;
    Placement placement;
    Activation act = Activation::gelu;
    std::optional<QKNormKind> qk = std::nullopt;
  };
  std::vector<Case> cases;
  for (NormKind n : {NormKind::layer, NormKind::rms, NormKind::scale, NormKind::dyt, NormKind::batch, NormKind::group})
    for (Placement p : all_placements) cases.push_back({n, p});
  cases.push_back({NormKind::none, Placement::none});
  cases.push_back({NormKind::layer, Placement::pre, Activation::swiglu, QKNormKind::l2});
  cases.push_back({NormKind::rms, Placement::post, Activation::gelu, QKNormKind::layer});
  // The loss, then per parameter its gradient, then the buffers and the generator's offset.
  auto run = [](ModelConfig c, bool recompute, int threads) {
    c.recompute = recompute;
    set_num_threads(threads);
    Transformer m(c);
    Tensor tokens, targets;
    make_batch(c, 3, 5, tokens, targets);
    Variable loss = m.loss(tokens, targets, 1e-3);
    loss.backward();
    std::vector<Tensor> out{loss.data().clone()};
    for (const auto& [n, p] : m.named_parameters()) out.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
    for (const auto& [n, b] : m.named_buffers()) out.push_back(b.clone());
    out.push_back(from_vector({double(m.generator().offset())}, {1}, DType::f64));
    return out;
  };
  const int saved = num_threads();
  for (const Case& k : cases) {
    ModelConfig c = tiny(k.norm, k.placement);
    c.final_norm = k.norm != NormKind::none;
    c.activation = k.act;
    c.qk_norm = k.qk;
    c.dropout = 0.1;
    c.depth = 3;
    const std::string name = std::string(to_string(k.norm)) + "/" + to_string(k.placement);
    const auto stored = run(c, false, 1);
    for (int threads : {1, 2}) {
      const auto recomputed = run(c, true, threads);
      BOOST_REQUIRE(stored.size() == recomputed.size());
      for (size_t i = 0; i < stored.size(); ++i) {
        BOOST_TEST(stored[i].defined() == recomputed[i].defined(), name << " tensor " << i);
        if (stored[i].defined() && recomputed[i].defined())
          BOOST_TEST(same_bits(stored[i], recomputed[i]), name << " tensor " << i << " at " << threads << " threads");
      }
    }
  }
  set_num_threads(saved);
}

// The engine is iterative: a 1000-block graph neither overflows the stack nor fails.
BOOST_AUTO_TEST_CASE(a_thousand_blocks_train_a_step) {
  ModelConfig c = tiny(NormKind::layer, Placement::deepnorm);
  c.depth = 1000;
  c.seq_len = 4;
  c.d_model = 4;
  c.init = InitScheme::deepnorm;
  Transformer m(c);
  Tensor tokens, targets;
  make_batch(c, 1, 2, tokens, targets);
  Variable loss = m.loss(tokens, targets);
  loss.backward();
  BOOST_TEST(std::isfinite(loss.item()));
  BOOST_TEST(all_finite(m.blocks[0]->attn->q->weight.grad()));
  BOOST_TEST(m.blocks.size() == 1000u);
}

BOOST_AUTO_TEST_SUITE_END()
