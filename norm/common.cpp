#include "norm/common.h"

#include "autograd/ops.h"

namespace normlab {

std::pair<Variable, Variable> NormLayer::forward_add(const Variable& x, const Variable& r, bool) {
  const Variable h = x + r;
  return {h, forward(h)};
}

std::vector<Tensor> AffineNormNode::backward(const std::vector<Tensor>& grad_outputs) {
  const bool has_gamma = gamma.defined();
  const size_t gamma_slot = 1, beta_slot = has_gamma ? 2 : 1;
  NormGrads g = grads(grad_outputs[0], needs_input_grad(0), has_gamma && needs_input_grad(gamma_slot),
                      has_beta && needs_input_grad(beta_slot));
  std::vector<Tensor> out{g.dx};
  if (has_gamma) out.push_back(g.dgamma);
  if (has_beta) out.push_back(g.dbeta);
  return out;
}

void AffineNormNode::release() {
  x = gamma = mean = rstd = Tensor();
  Node::release();
}

}  // namespace normlab
