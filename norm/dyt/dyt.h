// DyT, Dynamic Tanh (Zhu, Chen, He, LeCun, Liu 2025): y = gamma * tanh(alpha * x) + beta over the
// last N features, with alpha a learnable scalar (shape [1]). No statistics: a drop-in
// replacement for LayerNorm/RMSNorm. The paper's ablation replaces tanh by the identity
// (y = gamma * alpha * x + beta), which it reports diverges; `identity` selects it.
#pragma once

#include "norm/common.h"

namespace normlab {

// ---- Reference kernels: M rows of N features, row-major; T is float or double. ----
// alpha is the scalar's value; gamma and beta have N elements. Nothing is saved: the
// backward recomputes tanh(alpha * x).
template <class T>
void dyt_forward(T* y, const T* x, double alpha, const T* gamma, const T* beta, int64_t M, int64_t N, bool identity);
// Writes dx [M, N], dalpha [1], dgamma [N], dbeta [N] (each may be null when not wanted).
template <class T>
void dyt_backward(T* dx, T* dalpha, T* dgamma, T* dbeta, const T* dy, const T* x, double alpha, const T* gamma,
                  int64_t M, int64_t N, bool identity);

// ---- Fast CPU kernels, same signatures: math in math_t<T> with a vectorizable f32 tanh
// (framework/fast_math.h), dx and the parameter partials in one pass. Checked against the
// reference; the Tensor level runs these. T is float, double, bf16 or f16; bf16 and f16 as in
// layer_norm_forward_cpu: each value widened to f32 as it loads, f32 math and partials, each output
// rounded once to T (bit for bit the f32 kernel's on the widened values, rounded). ----
template <class T>
void dyt_forward_cpu(T* y, const T* x, double alpha, const T* gamma, const T* beta, int64_t M, int64_t N,
                     bool identity);
template <class T>
void dyt_backward_cpu(T* dx, T* dalpha, T* dgamma, T* dbeta, const T* dy, const T* x, double alpha, const T* gamma,
                      int64_t M, int64_t N, bool identity);

// ---- Tensor level: x [..., N] in f32, f64, bf16 or f16, alpha [1], gamma and beta [N] (the
// parameters, dy and the gradients in x's dtype). ----
Tensor dyt_forward(const Tensor& x, const Tensor& alpha, const Tensor& gamma, const Tensor& beta,
                   bool identity = false);
struct DyTGrads {
  Tensor dx, dalpha, dgamma, dbeta;
};
DyTGrads dyt_backward(const Tensor& dy, const Tensor& x, const Tensor& alpha, const Tensor& gamma, bool identity,
                      bool want_dx, bool want_dalpha, bool want_dgamma, bool want_dbeta);

// ---- Autograd ----
// The node of dyt: inputs (x, alpha, gamma, beta); it saves x, alpha and gamma.
class DyTNode : public Node {
 public:
  DyTNode(Tensor x, Tensor alpha, Tensor gamma, bool identity)
      : Node("dyt"), x(std::move(x)), alpha(std::move(alpha)), gamma(std::move(gamma)), identity(identity) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor x, alpha, gamma;
  bool identity;
};

Variable dyt(const Variable& x, const Variable& alpha, const Variable& gamma, const Variable& beta,
             bool identity = false);

// ---- Module: alpha [1] = alpha0, weight [N] ones, bias [N] zeros (the official code's names). ----
class DyT : public NormLayer {
 public:
  explicit DyT(int64_t N, double alpha0 = 0.5, bool identity = false, DType dtype = DType::f32);
  Variable forward(const Variable& x) override;

  int64_t N;
  bool identity;
  Variable alpha, weight, bias;
};

}  // namespace normlab
