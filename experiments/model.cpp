#include "experiments/model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>

#include "autograd/ops.h"
#include "framework/enum_names.h"
#include "framework/tensor_ops.h"
#include "norm/batch_norm/batch_norm.h"
#include "norm/dyt/dyt.h"
#include "norm/group_norm/group_norm.h"
#include "norm/init.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/rms_norm/rms_norm.h"
#include "norm/scale_norm/scale_norm.h"

namespace normlab {

namespace {

// BatchNorm and GroupNorm normalize channels of [N, C, ...]; the model's activations are
// [B, T, D], so they see the tokens as N = B*T rows of C = D channels.
template <class Norm>
class TokenChannels : public Norm {
 public:
  using Norm::Norm;
  Variable forward(const Variable& x) override {
    const Shape shape = x.shape();
    return reshape(Norm::forward(reshape(x, {x.numel() / shape.back(), shape.back()})), shape);
  }
};

// A norm that records the size of its input while asked to (NormInputProbe): x, or the sum h
// that forward_add normalizes. (A norm without a fused add reaches forward(h) too, which
// records the same value.)
template <class Norm>
class Probed : public Norm, public NormInputProbe {
 public:
  using Norm::Norm;
  Variable forward(const Variable& x) override {
    record_input(x);
    return Norm::forward(x);
  }
  std::pair<Variable, Variable> forward_add(const Variable& x, const Variable& r, bool keep_sum = true) override {
    std::pair<Variable, Variable> hy = Norm::forward_add(x, r, keep_sum);
    record_input(hy.first);
    return hy;
  }

 private:
  void record_input(const Variable& x) {
    if (record) input_rms = mean_row_norm(x.data()) / std::sqrt(double(x.size(-1)));
  }
};

// A norm in a low-precision model (precision.h): it reads the stored (rounded) residual sum and
// stores its output, each rounded once after an f32 kernel, their gradients rounded on the way
// back. The add and the norm run as two nodes, since the norm reads the sum as stored.
template <class Norm>
class Rounded : public Norm {
 public:
  template <class... Args>
  explicit Rounded(Precision p, Args&&... args) : Norm(std::forward<Args>(args)...), precision_(p) {}
  Variable forward(const Variable& x) override { return round_to(Norm::forward(x), precision_); }
  std::pair<Variable, Variable> forward_add(const Variable& x, const Variable& r, bool = true) override {
    const Variable h = round_to(x + r, precision_);
    return {h, forward(h)};
  }

 private:
  Precision precision_;
};

// A model norm: Probed, and Rounded in a low precision.
template <class Norm, class... Args>
std::shared_ptr<NormLayer> build_norm(const ModelConfig& c, Args&&... args) {
  if (c.precision == Precision::f32) return std::make_shared<Probed<Norm>>(std::forward<Args>(args)...);
  return std::make_shared<Rounded<Probed<Norm>>>(c.precision, std::forward<Args>(args)...);
}

// l(x) with the weight, the bias and the output in precision p (l itself for f32).
Variable rounded_linear(const Linear& l, const Variable& x, Precision p) {
  if (p == Precision::f32) return l.forward(x);
  return round_to(linear(x, round_to(l.weight, p), round_to(l.bias, p)), p);
}

void check_positive(int64_t v, const char* field) { NL_CHECK(v >= 1, "model config: ", field, " must be >= 1, got ", v); }

}  // namespace

constexpr EnumNames<NormKind, 7> kNormNames{{{NormKind::layer, "layer"},
                                             {NormKind::rms, "rms"},
                                             {NormKind::scale, "scale"},
                                             {NormKind::dyt, "dyt"},
                                             {NormKind::batch, "batch"},
                                             {NormKind::group, "group"},
                                             {NormKind::none, "none"}}};
constexpr EnumNames<Activation, 2> kActivationNames{{{Activation::gelu, "gelu"}, {Activation::swiglu, "swiglu"}}};
constexpr EnumNames<InitScheme, 3> kInitNames{
    {{InitScheme::xavier, "xavier"}, {InitScheme::normal, "normal"}, {InitScheme::deepnorm, "deepnorm"}}};

const char* to_string(NormKind k) { return enum_name(kNormNames, k); }
NormKind parse_norm_kind(const std::string& name) { return parse_enum(kNormNames, name, "norm"); }

const char* to_string(Activation a) { return enum_name(kActivationNames, a); }
Activation parse_activation(const std::string& name) { return parse_enum(kActivationNames, name, "activation"); }

const char* to_string(InitScheme s) { return enum_name(kInitNames, s); }
InitScheme parse_init_scheme(const std::string& name) { return parse_enum(kInitNames, name, "init scheme"); }

std::string qk_norm_name(const std::optional<QKNormKind>& k) { return k ? qk_norm_kind_name(*k) : "none"; }
std::optional<QKNormKind> parse_qk_norm(const std::string& name) {
  if (name == "none") return std::nullopt;
  NL_CHECK(name == "layer" || name == "rms" || name == "l2", "unknown qk_norm '", name,
           "' (valid: none, layer, rms, l2)");
  return parse_qk_norm_kind(name);
}

void check(const ModelConfig& c) {
  check_positive(c.vocab, "vocab");
  check_positive(c.seq_len, "seq_len");
  check_positive(c.d_model, "d_model");
  check_positive(c.heads, "heads");
  check_positive(c.ffn_mult, "ffn_mult");
  check_positive(c.depth, "depth");
  NL_CHECK(c.d_model % c.heads == 0, "model config: d_model=", c.d_model, " is not divisible by heads=", c.heads);
  NL_CHECK(std::isfinite(c.norm_eps) && c.norm_eps > 0, "model config: norm_eps must be > 0, got ", c.norm_eps);
  NL_CHECK(std::isfinite(c.init_std) && c.init_std > 0, "model config: init_std must be > 0, got ", c.init_std);
  NL_CHECK(std::isfinite(c.dyt_alpha0) && c.dyt_alpha0 > 0, "model config: dyt_alpha0 must be > 0, got ",
           c.dyt_alpha0);
  NL_CHECK(std::isfinite(c.dropout) && c.dropout >= 0 && c.dropout < 1, "model config: dropout must be in [0, 1), got ",
           c.dropout);
  NL_CHECK(c.dtype == DType::f32 || c.dtype == DType::f64, "model config: dtype must be f32 or f64, got ",
           dtype_name(c.dtype));
  NL_CHECK(c.precision == Precision::f32 || c.dtype == DType::f32, "model config: precision ", to_string(c.precision),
           " keeps f32 master weights and needs dtype f32, got dtype ", dtype_name(c.dtype));
  if (c.norm == NormKind::group) {
    check_positive(c.groups, "groups");
    NL_CHECK(c.d_model % c.groups == 0, "model config: groups=", c.groups, " does not divide d_model=", c.d_model);
  }
  if (c.norm == NormKind::none) {
    NL_CHECK(c.placement == Placement::none, "model config: norm none needs placement none, got placement ",
             to_string(c.placement));
    NL_CHECK(!c.final_norm, "model config: norm none cannot have a final norm (set final_norm off)");
    NL_CHECK(!c.qk_norm, "model config: norm none with qk_norm ", qk_norm_name(c.qk_norm),
             " (qk_norm is a norm; use norm layer/rms/... or qk_norm none)");
  }
  const bool hybrid = c.placement == Placement::hybrid || c.placement == Placement::hybrid_star;
  NL_CHECK(!(hybrid && c.qk_norm), "model config: placement ", to_string(c.placement),
           " normalizes q, k and v itself; qk_norm must be none, got ", qk_norm_name(c.qk_norm));
}

double residual_alpha(const ModelConfig& c) {
  return c.placement == Placement::deepnorm ? deepnorm_decoder_only(c.depth).alpha : 1.0;
}

std::shared_ptr<NormLayer> make_norm(const ModelConfig& c, int64_t d) {
  switch (c.norm) {
    case NormKind::layer: return build_norm<LayerNorm>(c, d, c.norm_eps, true, c.bias, c.dtype);
    case NormKind::rms: return build_norm<RMSNorm>(c, d, c.norm_eps, true, false, c.dtype);
    case NormKind::scale: return build_norm<ScaleNorm>(c, d, c.norm_eps, c.dtype);
    case NormKind::dyt: return build_norm<DyT>(c, d, c.dyt_alpha0, c.dyt_identity, c.dtype);
    case NormKind::batch: return build_norm<TokenChannels<BatchNorm>>(c, d, c.norm_eps, 0.1, true, c.dtype);
    case NormKind::group: return build_norm<TokenChannels<GroupNorm>>(c, c.groups, d, c.norm_eps, true, c.dtype);
    case NormKind::none: return nullptr;
  }
  return nullptr;
}

// ---- Attention ----

Attention::Attention(const ModelConfig& c, int64_t block, Generator& gen)
    : heads(c.heads), head_dim(c.d_model / c.heads), precision(c.precision) {
  const int64_t D = c.d_model;
  q = register_module("q", std::make_shared<Linear>(D, D, c.bias, gen, c.dtype));
  k = register_module("k", std::make_shared<Linear>(D, D, c.bias, gen, c.dtype));
  v = register_module("v", std::make_shared<Linear>(D, D, c.bias, gen, c.dtype));
  out = register_module("out", std::make_shared<Linear>(D, D, c.bias, gen, c.dtype));
  if (normalizes_qkv(c.placement, block)) {
    q_norm = register_module("q_norm", make_norm(c, D));
    k_norm = register_module("k_norm", make_norm(c, D));
    v_norm = register_module("v_norm", make_norm(c, D));
  }
  if (c.qk_norm) qk_norm = register_module("qk_norm", std::make_shared<QKNorm>(head_dim, *c.qk_norm, c.norm_eps, c.dtype));
}

Variable Attention::forward(const Variable& x) {
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2);
  // One linear node for q, k and v: x [W_q; W_k; W_v]^T (+ [b_q; b_k; b_v]).
  const Precision p = precision;
  const Variable qkv =
      round_to(linear(round_to(x, p), round_to(concat({q->weight, k->weight, v->weight}, 0), p),
                      q->bias.defined() ? round_to(concat({q->bias, k->bias, v->bias}, 0), p) : Variable()),
               p);
  std::vector<Variable> parts = split(qkv, D, -1);
  if (q_norm) {
    parts[0] = q_norm->forward(parts[0]);
    parts[1] = k_norm->forward(parts[1]);
    parts[2] = v_norm->forward(parts[2]);
  }
  // Head views [B, H, T, head_dim] of the projection (no copies).
  auto split_heads = [&](const Variable& t) { return transpose(reshape(t, {B, T, heads, head_dim}), 1, 2); };
  Variable qh = split_heads(parts[0]), kh = split_heads(parts[1]);
  double scale = 1.0 / std::sqrt(double(head_dim));
  if (qk_norm) {
    std::tie(qh, kh) = qk_norm->attention_inputs(qh, kh);
    qh = round_to(qh, p);
    kh = round_to(kh, p);
    scale = qk_norm->attention_scale();
  }
  // softmax(causal_mask(scale qh kh^T)) vh as one node; the context is stored [B, T, H, head_dim],
  // so the reshape below is a view.
  Tensor logits;
  const Variable context = causal_attention(qh, kh, split_heads(parts[2]), scale, keep_logits ? &logits : nullptr);
  if (keep_logits) max_logit = max_causal_logit(logits);
  return rounded_linear(*out, round_to(reshape(transpose(context, 1, 2), {B, T, D}), p), p);
}

// ---- FeedForward ----

FeedForward::FeedForward(const ModelConfig& c, Generator& gen) : activation(c.activation), precision(c.precision) {
  const int64_t D = c.d_model, hidden = c.ffn_mult * c.d_model;
  up = register_module("up", std::make_shared<Linear>(D, hidden, c.bias, gen, c.dtype));
  if (activation == Activation::swiglu)
    gate = register_module("gate", std::make_shared<Linear>(D, hidden, c.bias, gen, c.dtype));
  down = register_module("down", std::make_shared<Linear>(hidden, D, c.bias, gen, c.dtype));
}

// down(gelu(up(x))) or down(swiglu(gate(x), up(x))), the activation fused into its linear layer(s).
Variable FeedForward::forward(const Variable& x) const {
  const Precision p = precision;
  auto r = [p](const Variable& v) { return round_to(v, p); };
  const Variable xr = r(x);
  const Variable a = activation == Activation::gelu
                         ? linear_gelu(xr, r(up->weight), r(up->bias))
                         : linear_swiglu(xr, r(gate->weight), r(gate->bias), r(up->weight), r(up->bias));
  return rounded_linear(*down, r(a), p);
}

// ---- Block ----

Block::Block(const ModelConfig& c, int64_t index, Generator& gen) : dropout(c.dropout), precision(c.precision) {
  const NormFactory factory = [&c] { return make_norm(c, c.d_model); };
  const double alpha = residual_alpha(c);
  attn_res = register_module("attn_res", std::make_shared<Residual>(c.placement, SublayerRole::attention, index,
                                                                    factory, alpha));
  attn = register_module("attn", std::make_shared<Attention>(c, index, gen));
  ffn_res = register_module("ffn_res", std::make_shared<Residual>(c.placement, SublayerRole::ffn, index, factory,
                                                                  alpha));
  ffn = register_module("ffn", std::make_shared<FeedForward>(c, gen));
}

ResidualStream Block::forward(const ResidualStream& x, Generator& dropout_gen) {
  // A low-precision stream is stored after each residual add (its sum rounded), so no add waits
  // for the next norm.
  auto stored = [this](const ResidualStream& s) {
    return precision == Precision::f32 ? s : ResidualStream{round_to(s.sum(), precision), {}};
  };
  const ResidualStream h = stored(attn_res->forward(
      x, [&](const Variable& a) { return normlab::dropout(attn->forward(a), dropout, training(), dropout_gen); }));
  return stored(ffn_res->forward(
      h, [&](const Variable& a) { return normlab::dropout(ffn->forward(a), dropout, training(), dropout_gen); }));
}

Variable Block::forward(const Variable& x, Generator& dropout_gen) {
  return forward(ResidualStream{x, {}}, dropout_gen).sum();
}

// ---- Transformer ----

namespace {

// The config's init scheme over the whole model; one generator, parameters in name order.
void initialise(Transformer& model, const ModelConfig& c, Generator& gen) {
  for (auto& [name, p] : model.named_parameters()) {
    Tensor t = p.data();
    const bool is_embedding = name == "tok.weight" || name == "pos";
    const bool is_linear_weight = !is_embedding && t.dim() == 2;
    const bool is_linear_bias = name.ends_with(".bias") && name.find("norm") == std::string::npos;
    if (is_embedding) normal_(t, c.init_std, gen);
    else if (is_linear_weight && c.init == InitScheme::normal) normal_(t, c.init_std, gen);
    else if (is_linear_weight) xavier_normal_(t, 1.0, gen);
    else if (is_linear_bias) t.zero_();
    // Norm parameters keep their layers' defaults (gains 1, shifts 0, DyT alpha0, ScaleNorm sqrt(d)).
  }
  if (c.init == InitScheme::deepnorm) deepnorm_init(model, deepnorm_decoder_only(c.depth).beta, gen);
}

}  // namespace

Transformer::Transformer(const ModelConfig& c) : config_(c), dropout_gen_(c.seed + 1) {
  check(c);
  Generator gen(c.seed);
  tok = register_module("tok", std::make_shared<Embedding>(c.vocab, c.d_model, gen, c.dtype));
  pos = register_parameter("pos", zeros({c.seq_len, c.d_model}, c.dtype));
  auto dict = register_module("blocks", std::make_shared<ModuleDict>());
  for (int64_t l = 0; l < c.depth; ++l)
    blocks.push_back(dict->add(std::to_string(l), std::make_shared<Block>(c, l, gen)));
  if (c.final_norm) final_norm = register_module("final_norm", make_norm(c, c.d_model));
  head = register_module("head", std::make_shared<Linear>(c.d_model, c.vocab, false, gen, c.dtype));
  initialise(*this, c, gen);
}

Variable Transformer::forward(const Tensor& tokens) {
  NL_CHECK(tokens.dim() == 2 && tokens.dtype() == DType::i64, "Transformer: tokens must be [B, T] i64, got ",
           to_string(tokens.shape()), " ", dtype_name(tokens.dtype()));
  const int64_t T = tokens.size(1);
  NL_CHECK(T >= 1 && T <= config_.seq_len, "Transformer: sequence length ", T, " is outside [1, seq_len=",
           config_.seq_len, "]");
  // The stream keeps each block's last residual add pending, for the next block's (or the
  // final) norm to do with its own (see ResidualStream).
  ResidualStream x{round_to(tok->forward(tokens) + (T == config_.seq_len ? pos : narrow(pos, 0, 0, T)),
                            config_.precision),
                   {}};
  if (keep_residuals) residuals.assign(1, x.data());
  for (const auto& block : blocks) {
    if (config_.recompute && grad_enabled()) {
      CheckpointState state{block->parameters(), &dropout_gen_, {}};
      for (auto& [name, b] : block->named_buffers()) state.buffers.push_back(b);
      // A checkpointed block takes and returns the whole sum: the fusion of its last add with
      // the next norm stops at its boundary.
      x = ResidualStream{checkpoint([block, &gen = dropout_gen_](const Variable& in) { return block->forward(in, gen); },
                                    x.sum(), std::move(state)),
                         {}};
    } else {
      x = block->forward(x, dropout_gen_);
    }
    if (keep_residuals) residuals.push_back(x.data());
  }
  const Precision p = config_.precision;
  return rounded_linear(*head, final_norm ? x.sum_and_norm(*final_norm, false).second : round_to(x.sum(), p), p);
}

Variable Transformer::loss(const Tensor& tokens, const Tensor& targets, double z_loss) {
  return cross_entropy(forward(tokens), targets, -100, z_loss);
}

double mean_row_norm(const Tensor& x) {
  const Tensor t = x.to(Device::cpu()).to(DType::f64).contiguous();
  const int64_t N = t.size(-1), M = t.numel() / N;
  const double* p = t.data<double>();
  double total = 0;
  for (int64_t i = 0; i < M; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < N; ++j) ss += p[i * N + j] * p[i * N + j];
    total += std::sqrt(ss);
  }
  return total / double(M);
}

double max_causal_logit(const Tensor& logits) {
  const Tensor t = logits.to(Device::cpu()).to(DType::f64).contiguous();
  const int64_t T = t.size(-1), planes = t.numel() / (T * T);
  const double* p = t.data<double>();
  double best = -std::numeric_limits<double>::infinity();
  for (int64_t s = 0; s < planes; ++s)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j <= i; ++j) best = std::max(best, p[(s * T + i) * T + j]);
  return best;
}

std::vector<std::pair<std::string, NormInputProbe*>> Transformer::norm_probes() const {
  std::vector<std::pair<std::string, NormInputProbe*>> out;
  auto add = [&](const std::string& name, const std::shared_ptr<NormLayer>& norm) {
    if (norm) out.emplace_back(name, dynamic_cast<NormInputProbe*>(norm.get()));
  };
  for (size_t l = 0; l < blocks.size(); ++l) {
    const Block& b = *blocks[l];
    const std::string prefix = "blocks." + std::to_string(l) + ".";
    for (const auto& [role, res] : {std::pair{"attn_res", b.attn_res}, std::pair{"ffn_res", b.ffn_res}}) {
      add(prefix + role + ".norm_in", res->norm_in);
      add(prefix + role + ".norm", res->norm);
      add(prefix + role + ".norm_out", res->norm_out);
      if (res == b.attn_res) {
        add(prefix + "attn.q_norm", b.attn->q_norm);
        add(prefix + "attn.k_norm", b.attn->k_norm);
        add(prefix + "attn.v_norm", b.attn->v_norm);
      }
    }
  }
  add("final_norm", final_norm);
  return out;
}

int64_t Transformer::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

}  // namespace normlab
