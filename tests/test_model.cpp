// The toy transformer: config checks before allocation, parameter names per placement, every
// norm x placement runs, gradients of the whole model against finite differences, DeepNorm's
// constants and init, determinism across thread counts, and a 1000-block model's step.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "experiments/model.h"
#include "framework/allocator.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "norm/init.h"
#include "tests/norm_test_util.h"
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

constexpr NormKind kNorms[] = {NormKind::layer, NormKind::rms,   NormKind::scale,
                               NormKind::dyt,   NormKind::batch, NormKind::group};

// The model's loss with every residual add and every norm a node of its own: each residual
// form written out (README, "The toy transformer's math") on the model's own modules, as the
// model ran before its adds and norms were fused.
Variable unfused_loss(Transformer& m, const Tensor& tokens, const Tensor& targets) {
  auto apply = [](const Residual& res, const Variable& x, const SublayerFn& f) {
    switch (res.form()) {
      case ResidualForm::plain: return x + f(x);
      case ResidualForm::pre: return x + f(res.norm->forward(x));
      case ResidualForm::post: return res.norm->forward(x + f(x));
      case ResidualForm::peri: return x + res.norm_out->forward(f(res.norm_in->forward(x)));
      case ResidualForm::deepnorm: return res.norm->forward(res.alpha() * x + f(x));
      case ResidualForm::norm_first: {
        const Variable z = res.norm->forward(x);
        return z + f(z);
      }
    }
    return Variable();
  };
  BOOST_REQUIRE(tokens.size(1) == m.config().seq_len);
  Variable x = m.tok->forward(tokens) + m.pos;
  if (m.keep_residuals) m.residuals.assign(1, x.data());
  for (const auto& b : m.blocks) {
    x = apply(*b->attn_res, x, [&](const Variable& a) { return b->attn->forward(a); });
    x = apply(*b->ffn_res, x, [&](const Variable& a) { return b->ffn->forward(a); });
    if (m.keep_residuals) m.residuals.push_back(x.data());
  }
  if (m.final_norm) x = m.final_norm->forward(x);
  return cross_entropy(m.head->forward(x), targets);
}

// The loss, every parameter's gradient, every norm's input probe and the residual stream
// after each block, of one forward and backward of `loss_fn`, the metrics recording.
std::vector<Tensor> loss_grads_and_probes(Transformer& m, const std::function<Variable()>& loss_fn) {
  for (const auto& [name, probe] : m.norm_probes()) probe->record = true;
  m.keep_residuals = true;
  m.zero_grad();
  Variable loss = loss_fn();
  loss.backward();
  m.keep_residuals = false;
  BOOST_REQUIRE(m.residuals.size() == m.blocks.size() + 1);
  std::vector<Tensor> out = m.residuals;
  out.push_back(loss.data().clone());
  for (const auto& [name, p] : m.named_parameters()) out.push_back(p.grad().clone());
  Tensor probes = empty({int64_t(m.norm_probes().size())}, DType::f64);
  int64_t i = 0;
  for (const auto& [name, probe] : m.norm_probes()) {
    probes.data<double>()[i++] = probe->input_rms;
    probe->record = false;
  }
  out.push_back(probes);
  return out;
}

// How many nodes of each name the graph behind `root` holds.
std::map<std::string, int> node_counts(const Variable& root) {
  std::map<std::string, int> counts;
  std::set<const Node*> seen;
  std::vector<const Node*> stack{root.grad_fn().get()};
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    if (!n || !seen.insert(n).second) continue;
    ++counts[n->name()];
    for (const Variable& in : n->inputs()) stack.push_back(in.grad_fn().get());
  }
  return counts;
}

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
  Tensor tokens, targets;
  for (NormKind n : kNorms)
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
  auto run = [&](const ModelConfig& config, int threads) {
    set_num_threads(threads);
    Transformer m(config);
    Variable loss = m.loss(tokens, targets);
    loss.backward();
    std::vector<Tensor> out{loss.data().clone()};
    for (const auto& [n, p] : m.named_parameters()) out.push_back(p.data().clone()), out.push_back(p.grad().clone());
    return out;
  };
  const int saved = num_threads();
  // Every placement with the fused LayerNorm and RMSNorm, and one norm without a fused add.
  for (NormKind n : {NormKind::layer, NormKind::rms, NormKind::dyt})
    for (Placement p : all_placements) {
      ModelConfig k = c;
      k.norm = n;
      k.placement = p;
      const auto a = run(k, 1), b = run(k, 2);
      BOOST_REQUIRE(a.size() == b.size());
      for (size_t i = 0; i < a.size(); ++i)
        BOOST_TEST(std::memcmp(a[i].data<float>(), b[i].data<float>(), size_t(a[i].numel()) * 4) == 0,
                   to_string(n) << "/" << to_string(p) << " tensor " << i);
    }
  set_num_threads(saved);
  ModelConfig c1 = c;
  c1.seed = 1;
  BOOST_TEST(max_abs(sub(Transformer(c1).tok->weight.data(), Transformer(c).tok->weight.data())) > 0);
}

// The fused residual adds and norms change no number beyond rounding: the loss, every gradient,
// every norm's input probe and the residual stream kept for metrics against the model with
// separate add and norm nodes, for every
// norm and placement; within 1e-12 in f64. In f32 the fused kernels round as the separate ones
// (h = x + r once, the same row kernels, dh + dx_norm one add), but the engine may sum a
// gradient's terms in another order, so only a small relative difference is required.
BOOST_AUTO_TEST_CASE(fused_residual_norms_match_the_unfused_model) {
  Tensor tokens, targets;
  for (DType dtype : {DType::f64, DType::f32}) {
    double worst = 0;
    int identical = 0, cases = 0;
    for (NormKind n : kNorms)
      for (Placement p : all_placements)
        for (bool final_norm : {true, false}) {
          ModelConfig c = tiny(n, p);
          c.depth = 3;
          c.dtype = dtype;
          c.init_std = 0.5;
          c.final_norm = final_norm;
          const std::string name = std::string(to_string(n)) + "/" + to_string(p) + (final_norm ? "" : "/no-final") +
                                   " " + dtype_name(dtype);
          Transformer m(c);
          make_batch(c, 2, 17, tokens, targets);
          const auto fused = loss_grads_and_probes(m, [&] { return m.loss(tokens, targets); });
          const auto unfused = loss_grads_and_probes(m, [&] { return unfused_loss(m, tokens, targets); });
          BOOST_REQUIRE(fused.size() == unfused.size());
          double diff = 0;
          bool same = true;
          for (size_t i = 0; i < fused.size(); ++i) {
            diff = std::max(diff, max_rel_diff(fused[i], unfused[i]));
            same = same && max_abs(sub(fused[i], unfused[i])) == 0;
          }
          BOOST_TEST(diff < (dtype == DType::f64 ? 1e-12 : 1e-5), name << ": fused and unfused differ by " << diff);
          worst = std::max(worst, diff);
          identical += same;
          ++cases;
        }
    BOOST_TEST_MESSAGE("fused vs unfused model, " << dtype_name(dtype) << ": worst rel diff " << worst << "; "
                                                  << identical << " of " << cases << " cases bit-identical");
  }
}

// Where the fused path is taken: one add_layer_norm node per residual add that a LayerNorm
// reads directly, and the separate layer_norm or add nodes only where nothing is fused.
BOOST_AUTO_TEST_CASE(residual_adds_and_norms_fuse_where_a_norm_reads_the_sum) {
  struct Case {
    Placement placement;
    int fused, plain;  // add_layer_norm and layer_norm nodes of the residual norms and the final norm
  };
  constexpr int L = 3;
  const Case cases[] = {
      {Placement::pre, 2 * L, 1},           // block 0's attention norm reads the embedding
      {Placement::post, 2 * L, 1},          // N(x + f(x)) in every residual; the final norm reads a norm
      {Placement::deepnorm, 2 * L, 1},      // N(alpha x + f(x)); likewise
      {Placement::peri, 2 * L, 2 * L + 1},  // every N_in but block 0's, and the final norm; N_out reads f
      {Placement::hybrid, L + 1, 3 * L},    // the FFN's N(x + attn) and the final norm; q, k, v norms
      {Placement::hybrid_star, L + 1, 1 + 3 * (L - 1)},  // block 0 pre; block 1's attention adds first
      {Placement::none, 0, 0},
  };
  Tensor tokens, targets;
  for (const Case& k : cases) {
    ModelConfig c = tiny(NormKind::layer, k.placement);
    c.depth = L;
    c.final_norm = k.placement != Placement::none;
    Transformer m(c);
    make_batch(c, 2, 3, tokens, targets);
    auto counts = node_counts(m.loss(tokens, targets));
    BOOST_TEST(counts["add_layer_norm"] == k.fused, to_string(k.placement) << ": " << counts["add_layer_norm"]);
    BOOST_TEST(counts["layer_norm"] == k.plain, to_string(k.placement) << ": " << counts["layer_norm"]);
  }
  ModelConfig r = tiny(NormKind::rms, Placement::pre);
  r.depth = L;
  Transformer m(r);
  make_batch(r, 2, 3, tokens, targets);
  auto counts = node_counts(m.loss(tokens, targets));
  BOOST_TEST(counts["add_rms_norm"] == 2 * L);
  BOOST_TEST(counts["rms_norm"] == 1);
  // Block::forward on a Variable (one block on its own, e.g. to recompute it) fuses inside the
  // block only and returns the block's output with its adds done.
  Generator gen(5);
  const Variable x(randn({2, r.seq_len, r.d_model}, gen), true);
  const Variable y = m.blocks[1]->forward(x, m.generator());
  counts = node_counts(y);
  BOOST_TEST(counts["add_rms_norm"] == 1);
  BOOST_TEST(counts["rms_norm"] == 1);
  BOOST_TEST(y.grad_fn()->name() == "add");
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
