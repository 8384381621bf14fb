// The toy transformer: a decoder-only, GPT-style language model configured by a C++ struct,
// built from norm/'s residual placements and init utilities. The README's "The toy
// transformer's math" section states its forward pass exactly; this file follows it.
//
//   x_0 = tok[tokens] + pos[0..T)                                   [B, T, D]
//   x_l = ffn_res_l(attn_res_l(x_{l-1}, attn_l), ffn_l)             l = 1..depth (Residual; each
//                                                                   residual add runs with the norm
//                                                                   that reads it, ResidualStream)
//   logits = head(final_norm(x_depth))                              [B, T, V]
//   loss = cross_entropy(logits, targets) (+ z_loss * mean logsumexp^2)
//
// Parameter names (also the HDF5 paths of checkpoints and dumps):
//   tok.weight [V, D], pos [T, D], blocks.<l>.attn.{q,k,v,out}.{weight,bias},
//   blocks.<l>.attn.{q_norm,k_norm,v_norm}.*  (hybrid), blocks.<l>.attn.qk_norm.*  (qk_norm),
//   blocks.<l>.{attn_res,ffn_res}.{norm,norm_in,norm_out}.*, blocks.<l>.ffn.{up,gate,down}.*,
//   final_norm.*, head.weight [V, D]
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autograd/module.h"
#include "experiments/precision.h"
#include "norm/placement.h"
#include "norm/qk_norm/qk_norm.h"

namespace normlab {

enum class NormKind { layer, rms, scale, dyt, batch, group, none };
const char* to_string(NormKind k);  // "layer", "rms", "scale", "dyt", "batch", "group", "none"
NormKind parse_norm_kind(const std::string& name);

enum class Activation { gelu, swiglu };
const char* to_string(Activation a);  // "gelu", "swiglu"
Activation parse_activation(const std::string& name);

enum class InitScheme {
  xavier,    // linear weights xavier-normal (gain 1); embeddings N(0, init_std^2)
  normal,    // linear weights and embeddings N(0, init_std^2)
  deepnorm,  // xavier, then DeepNet's beta gain on v, out and the FFN matrices (deepnorm_init)
};
const char* to_string(InitScheme s);  // "xavier", "normal", "deepnorm"
InitScheme parse_init_scheme(const std::string& name);

// "none" or a QKNormKind name.
std::string qk_norm_name(const std::optional<QKNormKind>& k);
std::optional<QKNormKind> parse_qk_norm(const std::string& name);

struct ModelConfig {
  int64_t vocab = 32;
  int64_t seq_len = 64;  // the longest sequence (rows of pos)
  int64_t d_model = 32;
  int64_t heads = 2;     // must divide d_model
  int64_t ffn_mult = 4;  // FFN hidden width = ffn_mult * d_model (for gelu and swiglu alike)
  Activation activation = Activation::gelu;
  int64_t depth = 6;     // blocks, 1 to any number
  NormKind norm = NormKind::layer;
  Placement placement = Placement::pre;
  std::optional<QKNormKind> qk_norm = std::nullopt;  // none by default; not with hybrid (it normalizes q, k, v)
  bool final_norm = true;             // a norm before the head (never with norm none)
  bool bias = true;                   // biases of the linear layers and LayerNorm
  double dropout = 0.0;               // on each sublayer's output, before the residual add
  double norm_eps = 1e-5;             // of every norm (and of qk_norm)
  double dyt_alpha0 = 0.5;
  bool dyt_identity = false;          // DyT ablation: tanh replaced by the identity
  int64_t groups = 4;                 // GroupNorm's G (must divide d_model)
  InitScheme init = InitScheme::xavier;
  double init_std = 0.02;
  uint64_t seed = 0;
  DType dtype = DType::f32;           // f32 or f64 (of the parameters, and of the math)
  Precision precision = Precision::f32;  // storage of activations and gradients (precision.h);
                                         // bf16 and fp16 need dtype f32 (the master weights)
  bool recompute = false;             // activation recomputation: each block keeps only its input
                                      // and runs again in backward (same values and gradients)
};

// Throws normlab::Error naming the first bad field and its value; nothing is allocated.
void check(const ModelConfig& c);
// The DeepNorm skip scale of this config: (2 depth)^(1/4) with placement deepnorm, else 1.
double residual_alpha(const ModelConfig& c);
// A norm over the last dim (d) as the config describes it; null for NormKind::none.
// BatchNorm and GroupNorm see the tokens as [B*T, d] (BatchNorm's statistics are over the
// batch and the positions, so it leaks across a causal sequence; an option, not advice).
// Mean over rows of ||x_row||_2, x viewed as [M, N] (N the last dim), in f64 (for metrics).
double mean_row_norm(const Tensor& x);
// The max over b, h and causal pairs j <= i of logits [B, H, T, T], in f64 (for metrics).
double max_causal_logit(const Tensor& logits);

// Every norm make_norm builds is also a NormInputProbe.
std::shared_ptr<NormLayer> make_norm(const ModelConfig& c, int64_t d);

// The size of a norm's input, for metrics: while `record` is set, each forward stores the
// mean over rows of ||x_row||_2 / sqrt(d), the row's RMS (1 when ||x_row|| = sqrt(d)).
struct NormInputProbe {
  virtual ~NormInputProbe() = default;
  bool record = false;
  double input_rms = 0.0;  // of the last forward while recording
};

// Causal multi-head self-attention with separate q, k, v and out projections (run as one
// matmul over their concatenated weights), the attention itself one node (causal_attention).
class Attention : public Module {
 public:
  Attention(const ModelConfig& c, int64_t block, Generator& gen);
  Variable forward(const Variable& x);
  // While keep_logits is set, each forward records the largest pre-softmax logit over batch,
  // heads and causal pairs j <= i (max_causal_logit; for metrics). The logits themselves
  // ([B, H, T, T]) are not kept.
  bool keep_logits = false;
  double max_logit = 0.0;

  int64_t heads, head_dim;
  std::shared_ptr<Linear> q, k, v, out;
  std::shared_ptr<NormLayer> q_norm, k_norm, v_norm;  // hybrid placements
  std::shared_ptr<QKNorm> qk_norm;
  Precision precision;
};

// The position-wise FFN: down(act(up(x))) for gelu, down(silu(gate(x)) * up(x)) for swiglu.
class FeedForward : public Module {
 public:
  FeedForward(const ModelConfig& c, Generator& gen);
  Variable forward(const Variable& x) const;

  Activation activation;
  std::shared_ptr<Linear> up, gate, down;  // gate: swiglu only
  Precision precision;
};

class Block : public Module {
 public:
  Block(const ModelConfig& c, int64_t index, Generator& gen);
  // `dropout_gen` draws the dropout masks (used only in training with dropout > 0). The
  // stream's pending residual add is done with this block's first norm where it starts with one,
  // and the block's own last add is left pending in the result (ResidualStream).
  ResidualStream forward(const ResidualStream& x, Generator& dropout_gen);
  // x_{l+1} for x_l, the adds done: the block on its own (fused inside it only).
  Variable forward(const Variable& x, Generator& dropout_gen);

  double dropout;
  Precision precision;

  std::shared_ptr<Residual> attn_res, ffn_res;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<FeedForward> ffn;
};

class Transformer : public Module {
 public:
  // Checks the config, builds the model and initialises it from c.seed.
  explicit Transformer(const ModelConfig& c);

  // tokens [B, T] (i64, T <= seq_len) -> logits [B, T, vocab]. With config().recompute, each
  // block is one checkpoint node (autograd/ops.h): the graph keeps the blocks' inputs, and the
  // backward runs each block again (same dropout masks; BatchNorm's running statistics are
  // updated once).
  Variable forward(const Tensor& tokens);
  // Mean cross-entropy over targets != -100, plus z_loss * mean(logsumexp^2).
  Variable loss(const Tensor& tokens, const Tensor& targets, double z_loss = 0.0);

  // The residual stream entering each block and leaving the last, of the last forward
  // (depth + 1 tensors), kept only when keep_residuals is set (for metrics).
  bool keep_residuals = false;
  std::vector<Tensor> residuals;

  const ModelConfig& config() const { return config_; }
  int64_t num_parameters() const;
  // Every norm of the model with its module path ("blocks.3.attn_res.norm", "final_norm"),
  // block by block, then the final norm (qk_norm excluded: it normalizes per head).
  std::vector<std::pair<std::string, NormInputProbe*>> norm_probes() const;
  // The generator of the dropout masks, seeded from seed + 1; its state is part of a
  // checkpoint. Untouched when dropout is 0 or in eval mode.
  Generator& generator() { return dropout_gen_; }

  std::shared_ptr<Embedding> tok;
  Variable pos;
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<NormLayer> final_norm;  // null when off
  std::shared_ptr<Linear> head;

 private:
  ModelConfig config_;
  Generator dropout_gen_;
};

}  // namespace normlab
