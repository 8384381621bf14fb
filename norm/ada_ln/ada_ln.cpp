#include "norm/ada_ln/ada_ln.h"

#include "autograd/ops.h"
#include "norm/layer_norm/layer_norm.h"

namespace normlab {

AdaLN::AdaLN(int64_t N_, int64_t cond_dim_, bool zero_, Generator& gen, DType dtype, double eps_)
    : N(N_), cond_dim(cond_dim_), zero(zero_), eps(eps_) {
  check_features(N, "AdaLN");
  check_features(cond_dim, "AdaLN", "cond_dim");
  check_eps(eps, "AdaLN");
  modulation = register_module("modulation", std::make_shared<Linear>(cond_dim, (zero ? 3 : 2) * N, true, gen, dtype));
  if (zero) {
    modulation->weight.data().zero_();
    modulation->bias.data().zero_();
  }
}

AdaLNOutput AdaLN::modulate(const Variable& x, const Variable& c) {
  NL_CHECK(x.defined() && c.defined(), "AdaLN: x and c are required");
  NL_CHECK(c.dim() == 2 && c.size(1) == cond_dim, "AdaLN: expected the conditioning c of shape [B, ", cond_dim,
           "], got ", to_string(c.shape()));
  NL_CHECK(x.dim() >= 2 && x.size(0) == c.size(0), "AdaLN: expected x of shape [B, ..., ", N, "] with B = ",
           c.size(0), " (c's batch), got ", to_string(x.shape()));
  rows_of(x.data(), N, "AdaLN");
  const DType math = modulation->weight.dtype();
  if (is_low_precision(x.dtype()) || is_low_precision(c.dtype())) {
    // 16-bit storage: x and c widen to the module's f32 and everything runs there; y (and the
    // gate) narrow to x's dtype once, and dx, dc narrow once on the way back.
    NL_CHECK(math == DType::f32, "AdaLN: ", dtype_name(x.dtype()), " x and ", dtype_name(c.dtype()),
             " c need an f32 module (the math and the parameters), got ", dtype_name(math));
    const AdaLNOutput out = modulate(to_dtype(x, DType::f32), to_dtype(c, DType::f32));
    return {to_dtype(out.y, x.dtype()), out.gate.defined() ? to_dtype(out.gate, x.dtype()) : Variable()};
  }
  NL_CHECK(x.dtype() == c.dtype() && x.dtype() == math, "AdaLN: x has dtype ", dtype_name(x.dtype()), ", c ",
           dtype_name(c.dtype()), ", the module ", dtype_name(math));
  // [B, kN] -> chunks of N, each viewed as [B, 1, ..., 1, N] to broadcast over x's middle dims.
  const std::vector<Variable> chunks = split(modulation->forward(silu(c)), N, 1);
  Shape bshape(size_t(x.dim()), 1);
  bshape.front() = x.size(0);
  bshape.back() = N;
  const Variable shift = reshape(chunks[0], bshape), scale = reshape(chunks[1], bshape);
  const Variable xhat = layer_norm(x, Variable(), Variable(), eps);
  return {xhat * (scale + 1.0) + shift, zero ? reshape(chunks[2], bshape) : Variable()};
}

Variable AdaLN::forward(const Variable& x, const Variable& c) { return modulate(x, c).y; }

AdaLNOutput AdaLN::forward_gated(const Variable& x, const Variable& c) {
  NL_CHECK(zero, "AdaLN: only adaLN-Zero (zero = true) has a gate");
  return modulate(x, c);
}

}  // namespace normlab
