// Residual placements: where the norm sits around a sublayer f (attention or FFN) of a
// transformer block. One Residual module wraps one sublayer and owns that sublayer's norms,
// built by a NormFactory so any NormLayer (LayerNorm, RMSNorm, DyT, ...) can be used.
//
//   none         x + f(x)                               no norm
//   pre          x + f(N(x))                            Pre-LN (Xiong et al. 2020)
//   post         N(x + f(x))                            Post-LN (the original transformer)
//   peri         x + N_out(f(N_in(x)))                  Peri-LN / Gemma 2 "sandwich"
//   deepnorm     N(alpha * x + f(x))                    DeepNet: alpha scales the SKIP, never the branch
//   hybrid       attention: x + f(x)                    HybridNorm: the caller's f normalizes Q, K and V
//                ffn:       z + f(z), z = N(x)          itself (see normalizes_qkv); the FFN is post-norm
//                                                       in PAPERS.md's form X' = Norm(Y) + FFN(Norm(Y))
//   hybrid_star  as hybrid, except block 0, whose attention and FFN are both pre-norm (HybridNorm*)
//
// Typical use inside a block (the names give "blocks.3.attn_res.norm.weight"):
//   attn_res = register_module("attn_res", std::make_shared<Residual>(p, SublayerRole::attention, i, factory));
//   ffn_res  = register_module("ffn_res",  std::make_shared<Residual>(p, SublayerRole::ffn, i, factory));
//   x = attn_res->forward(x, [&](const Variable& h) { return attn->forward(h); });
//   x = ffn_res->forward(x,  [&](const Variable& h) { return ffn->forward(h); });
//
// Fused residual add + norm. Where a residual add is followed directly by a norm of the sum, the
// two run as one node (NormLayer::forward_add; one pass each way for LayerNorm and RMSNorm):
//   post, deepnorm   N(x + f(x)), N(alpha x + f(x)): the add inside the residual;
//   pre, peri        the add x + f(.) of one sublayer and the norm N(x) (N_in(x)) that starts the
//                    next one: x stays a ResidualStream {x, f(.)} with the add pending, and the
//                    next residual does it together with its first norm;
//   hybrid           the attention's x + f(x) and the FFN's z = N(x).
// A ResidualStream passed from residual to residual (x = attn_res->forward(x, ...) with x a
// ResidualStream) fuses across sublayers and blocks; the Variable form fuses inside one residual.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "norm/common.h"

namespace normlab {

enum class Placement { none, pre, post, peri, deepnorm, hybrid, hybrid_star };
constexpr std::array<Placement, 7> all_placements = {Placement::none,     Placement::pre,    Placement::post,
                                                     Placement::peri,     Placement::deepnorm, Placement::hybrid,
                                                     Placement::hybrid_star};

// "none", "pre", "post", "peri", "deepnorm", "hybrid", "hybrid_star".
std::string to_string(Placement p);
// The inverse of to_string; throws naming the bad name and listing the valid ones.
Placement parse_placement(std::string_view name);

enum class SublayerRole { attention, ffn };
std::string to_string(SublayerRole r);  // "attention", "ffn"

// The residual form one sublayer gets, once the placement, role and block are known.
enum class ResidualForm {
  plain,       // x + f(x)
  pre,         // x + f(N(x))
  post,        // N(x + f(x))
  peri,        // x + N_out(f(N_in(x)))
  deepnorm,    // N(alpha * x + f(x))
  norm_first,  // z + f(z), z = N(x)   (HybridNorm's FFN)
};
ResidualForm residual_form(Placement p, SublayerRole role, int64_t block);
std::string to_string(ResidualForm f);  // the formula, e.g. "x + f(N(x))"

// Whether the attention of block `block` must normalize Q, K and V itself: hybrid (every
// block) and hybrid_star (blocks > 0). The Residual around such an attention adds no norm.
bool normalizes_qkv(Placement p, int64_t block);

// Whether a final norm before the output head is customary: true where the residual stream
// leaving the last block is not normalized, i.e. pre (Pre-LN), peri (Peri-LN and Gemma 2 use
// one), hybrid and hybrid_star (the FFN returns z + f(z), and HybridNorm's model keeps the
// final norm). False for post and deepnorm (their blocks end in a norm already) and for none
// (a model without norms).
bool uses_final_norm(Placement p);

using NormFactory = std::function<std::shared_ptr<NormLayer>()>;
using SublayerFn = std::function<Variable(const Variable&)>;

// The residual stream between sublayers, its last residual add still to do: the stream's value
// is x + r (x alone while r is undefined). Leaving the add pending lets the next sublayer that
// starts with a norm compute the add and the norm in one node.
struct ResidualStream {
  Variable x, r;

  // x + r (an add node), or x.
  Variable sum() const;
  // {x + r, norm(x + r)}: one node where the norm fuses the add (NormLayer::forward_add, with
  // keep_sum as there); {x, norm(x)} without a pending add.
  std::pair<Variable, Variable> sum_and_norm(NormLayer& norm, bool keep_sum = true) const;
  // The value x + r as a Tensor, outside the graph (for metrics).
  Tensor data() const;
};

// A residual connection around one sublayer. Norm children (built by `make_norm`, one call
// each): "norm" for pre, post, deepnorm and hybrid's FFN; "norm_in" and "norm_out" for peri;
// none for plain forms. `alpha` (> 0) is DeepNorm's skip scale and must stay 1 for every
// other placement.
class Residual : public Module {
 public:
  Residual(Placement placement, SublayerRole role, int64_t block, const NormFactory& make_norm, double alpha = 1.0);

  // The block output for input x; f must return x's shape. f is called exactly once.
  Variable forward(const Variable& x, const SublayerFn& f) const;
  // The same on a stream: a pending add of `in` is done with this residual's first norm where
  // its form starts with one (pre, peri, hybrid's FFN), else first; the result's own last add
  // is left pending where the form ends with one (plain, pre, peri, hybrid's FFN).
  ResidualStream forward(const ResidualStream& in, const SublayerFn& f) const;

  Placement placement() const { return placement_; }
  SublayerRole role() const { return role_; }
  int64_t block() const { return block_; }
  ResidualForm form() const { return form_; }
  double alpha() const { return alpha_; }

  // The norms this residual owns (null where its form has none).
  std::shared_ptr<NormLayer> norm, norm_in, norm_out;

 private:
  Placement placement_;
  SublayerRole role_;
  int64_t block_;
  ResidualForm form_;
  double alpha_;
};

}  // namespace normlab
