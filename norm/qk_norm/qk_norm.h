// QK-Norm: normalize queries and keys per head, over head_dim, before the attention logits.
// Inputs are [..., heads, T, head_dim] (or any [..., head_dim]); q and k have separate
// parameters (child modules "q_norm" and "k_norm").
//   layer: LayerNorm on q and k (ViT-22B; Wortsman et al.'s qk-layernorm), weight and bias [head_dim].
//   rms:   RMSNorm on q and k, weight [head_dim].
//   l2:    Henry et al. 2020: q_hat = q / max(||q||, eps) (likewise k), the hand-derived
//          ScaleNorm kernel without its gain (norm/scale_norm), so no per-feature parameters;
//          a learnable scalar temperature g (parameter "g", shape [1]) REPLACES 1/sqrt(head_dim)
//          in the logits: logits = g * q_hat . k_hat, each in [-g, g].
//          g0 defaults to sqrt(head_dim): the logit scale of unnormalized attention whose q, k
//          have unit-variance entries (|q| ~ sqrt(d), divided by sqrt(d)). The paper's own
//          init, g0 = log2(L^2 - L) for training sequence length L, is qk_norm_henry_g0(L).
// eps is LayerNorm's/RMSNorm's variance eps for layer/rms and the norm floor for l2.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "norm/common.h"

namespace normlab {

enum class QKNormKind { layer, rms, l2 };

const char* qk_norm_kind_name(QKNormKind kind);  // "layer", "rms", "l2"
// The kind named `name`; throws naming it when unknown.
QKNormKind parse_qk_norm_kind(const std::string& name);

// Henry et al.'s initial temperature log2(L^2 - L) for sequence length L >= 2.
double qk_norm_henry_g0(int64_t seq_len);

// Parameter-free l2 normalization over the last N features: y = x / max(||x||, eps).
class L2Norm : public NormLayer {
 public:
  explicit L2Norm(int64_t N, double eps = 1e-6);
  Variable forward(const Variable& x) override;

  int64_t N;
  double eps;
};

class QKNorm : public Module {
 public:
  // g0 is used by kind l2 only (default sqrt(head_dim)); it must be finite and > 0.
  explicit QKNorm(int64_t head_dim, QKNormKind kind = QKNormKind::layer, double eps = 1e-6, DType dtype = DType::f32,
                  std::optional<double> g0 = std::nullopt);

  // (q_hat, k_hat): q [..., Tq, head_dim] and k [..., Tk, head_dim] normalized over head_dim.
  std::pair<Variable, Variable> forward(const Variable& q, const Variable& k);
  // The factor of q_hat . k_hat in the logits, shape [1]: the learnable g for l2, else the
  // constant 1/sqrt(head_dim) (requires no grad).
  Variable logit_scale() const;
  // The inputs of a fused attention (causal_attention in autograd/ops.h): (q', k') whose
  // logits are attention_scale() * q' @ k'^T. layer and rms: (q_hat, k_hat) with the scale
  // 1/sqrt(head_dim); l2: (g * q_hat, k_hat) with the scale 1, so g's gradient flows through q'.
  std::pair<Variable, Variable> attention_inputs(const Variable& q, const Variable& k);
  double attention_scale() const;
  // logit_scale() * q_hat @ k_hat^T: [..., Tq, Tk] (pre-softmax, before any mask), computed as
  // attention_scale() * q' @ k'^T from attention_inputs.
  Variable attention_logits(const Variable& q, const Variable& k);

  int64_t head_dim;
  QKNormKind kind;
  double eps;
  DType dtype;  // of the parameters; q and k must have it
  std::shared_ptr<NormLayer> q_norm, k_norm;
  Variable g;  // the temperature; undefined unless kind == l2

 private:
  Variable inv_sqrt_d_;  // the constant logit scale of layer and rms
};

}  // namespace normlab
