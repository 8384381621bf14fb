// Initialisation utilities: DeepNorm's alpha/beta per architecture (Wang et al. 2022), the
// in-place initialisers (normal, truncated normal, xavier with gain), and DeepNorm's init
// of a whole model, which picks its matrices by parameter name.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/module.h"
#include "framework/rng.h"
#include "framework/tensor.h"

namespace normlab {

// ---- DeepNorm constants. N encoder layers, M decoder layers (a layer is a whole block). ----
// alpha scales the skip in N(alpha * x + f(x)) (Placement::deepnorm); beta is the xavier gain
// of the value, attention-output and FFN matrices (deepnorm_init).
struct DeepNormConstants {
  double alpha, beta;
};
// alpha = (2N)^(1/4), beta = (8N)^(-1/4)
DeepNormConstants deepnorm_encoder_only(int64_t N);
// alpha = (2M)^(1/4), beta = (8M)^(-1/4)
DeepNormConstants deepnorm_decoder_only(int64_t M);
// encoder: alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16)
// decoder: alpha = (3M)^(1/4),          beta = (12M)^(-1/4)
struct DeepNormEncoderDecoder {
  DeepNormConstants encoder, decoder;
};
DeepNormEncoderDecoder deepnorm_encoder_decoder(int64_t N, int64_t M);

// ---- In-place initialisers (any float dtype and layout; deterministic from gen). ----
// Fans of a weight laid out [out, in, ...] like Linear's: fan_in = size(1) * receptive field,
// fan_out = size(0) * receptive field, the receptive field being the product of dims 2... .
// Throws for tensors of fewer than 2 dims.
struct Fans {
  int64_t in, out;
};
Fans fans_of(const Shape& shape, const char* who = "fans_of");

// N(mean, std^2); std > 0.
void normal_(Tensor& t, double std, Generator& gen, double mean = 0.0);
// N(0, std^2) truncated to [lo, hi] (default [-2 std, 2 std]), by inverse CDF: one uniform
// draw per element, exact in the tails (no rejection loop).
void trunc_normal_(Tensor& t, double std, Generator& gen);
void trunc_normal_(Tensor& t, double std, Generator& gen, double lo, double hi);
// std = gain * sqrt(2 / (fan_in + fan_out)); gain > 0.
double xavier_normal_std(const Shape& shape, double gain);
void xavier_normal_(Tensor& t, double gain, Generator& gen);
// uniform(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out)); gain > 0.
double xavier_uniform_bound(const Shape& shape, double gain);
void xavier_uniform_(Tensor& t, double gain, Generator& gen);

// ---- DeepNorm's init of a model (DeepNet's pseudo-code and official code). ----
// qk:     xavier-normal, gain 1       (query and key projections)
// scaled: xavier-normal, gain beta    (value and attention-output projections, FFN matrices)
// other:  left as it is               (embeddings, norms, biases, ...)
enum class DeepNormRole { other, qk, scaled };
using DeepNormRoleFn = std::function<DeepNormRole(const std::string& parameter_name)>;

// The naming convention the toy transformer follows. A name matches a suffix when it equals
// it or ends in "." + suffix (so "blocks.3.attn.q.weight" matches "attn.q.weight" and
// "blocks.3.self_attn.q.weight" does not):
//   qk:     attn.q.weight, attn.k.weight
//   scaled: attn.v.weight, attn.out.weight, ffn.up.weight, ffn.gate.weight, ffn.down.weight
// Biases are left alone (DeepNet's pseudo-code inits weights only). A fused QKV matrix is
// not recognised: use separate q, k, v projections, or pass your own role function.
DeepNormRole deepnorm_role(const std::string& parameter_name);

struct DeepNormInitResult {
  std::vector<std::string> scaled;  // names initialised with gain beta, in parameter order
  std::vector<std::string> qk;      // names initialised with gain 1
};
// Initialises m's parameters by role; beta > 0 (e.g. deepnorm_decoder_only(M).beta).
// Throws when no parameter has the scaled role (a naming mismatch).
DeepNormInitResult deepnorm_init(Module& m, double beta, Generator& gen, const DeepNormRoleFn& role = deepnorm_role);

}  // namespace normlab
