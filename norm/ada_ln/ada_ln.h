// adaLN and adaLN-Zero (DiT, Peebles & Xie 2023): LayerNorm without affine (the hand-derived
// layer_norm kernel) modulated by a conditioning vector c:
//   (shift, scale[, gate]) = Linear(SiLU(c)),   y = LN(x) * (1 + scale) + shift
// c is [B, cond_dim]; x is [B, N] or [B, ..., N], shift/scale/gate broadcasting over the
// middle dims. The modulation is composed of autograd ops around the norm kernel.
// zero = true (adaLN-Zero): the linear makes 3N values (shift, scale, gate: DiT's chunk
// order) and its weight and bias start at zero, so at init y = LN(x), gate = 0, and a block
// x + gate * f(y) is the identity. zero = false: 2N values (shift, scale), Linear's default init.
// x and c are in the module's dtype (f32 or f64), or in bf16/f16 storage with an f32 module: they
// widen to f32, and y (and the gate) are the f32 results rounded once to x's dtype, dx and dc the
// f32 gradients rounded once to theirs.
#pragma once

#include <memory>

#include "norm/common.h"

namespace normlab {

struct AdaLNOutput {
  Variable y;     // x's shape
  Variable gate;  // [B, 1, ..., 1, N] (broadcasts against x); adaLN-Zero only
};

class AdaLN : public Module {
 public:
  // eps 1e-6 as in DiT's LayerNorm(elementwise_affine=False, eps=1e-6).
  AdaLN(int64_t N, int64_t cond_dim, bool zero, Generator& gen, DType dtype = DType::f32, double eps = 1e-6);

  Variable forward(const Variable& x, const Variable& c);
  // y and the gate, for a block x + gate * f(y); throws unless zero.
  AdaLNOutput forward_gated(const Variable& x, const Variable& c);

  int64_t N, cond_dim;
  bool zero;
  double eps;
  std::shared_ptr<Linear> modulation;  // "modulation.weight" [(2 or 3) N, cond_dim], "modulation.bias"

 private:
  AdaLNOutput modulate(const Variable& x, const Variable& c);
};

}  // namespace normlab
