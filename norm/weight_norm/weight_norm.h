// WeightNorm (Salimans & Kingma 2016) on a linear layer: w = g * v / ||v|| per output row
// (v [out, in], g [out]), y = x w^T + b. The reparametrization w(g, v) is a hand-derived
// kernel that saves rnorm = 1 / ||v|| per row; the product with x is the autograd matmul.
#pragma once

#include "norm/common.h"

namespace normlab {

// ---- Reference kernels: v is M rows (outputs) of N features (inputs); T is float or double. ----
// Accumulates in double. A row of v with norm 0 gives rnorm = inf (the Tensor level throws).
template <class T>
void weight_norm_forward(T* w, T* rnorm, const T* g, const T* v, int64_t M, int64_t N);
// Writes dg [M] and dv [M, N] (each may be null when not wanted).
template <class T>
void weight_norm_backward(T* dg, T* dv, const T* dw, const T* g, const T* v, const T* rnorm, int64_t M, int64_t N);

// ---- Tensor level: g [M], v [M, N]; rnorm [M]. ----
struct WeightNormStats {
  Tensor w, rnorm;
};
WeightNormStats weight_norm_forward(const Tensor& g, const Tensor& v);
struct WeightNormGrads {
  Tensor dg, dv;
};
WeightNormGrads weight_norm_backward(const Tensor& dw, const Tensor& g, const Tensor& v, const Tensor& rnorm,
                                     bool want_dg, bool want_dv);

// ---- Autograd ----
// The node of weight_norm: inputs (g, v), its saved tensors visible for inspection.
class WeightNormNode : public Node {
 public:
  WeightNormNode(Tensor g, Tensor v, Tensor rnorm)
      : Node("weight_norm"), g(std::move(g)), v(std::move(v)), rnorm(std::move(rnorm)) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor g, v, rnorm;
};

// w = g * v / ||v|| (rows), [M, N].
Variable weight_norm(const Variable& g, const Variable& v);

// ---- Module: parameters "weight_g" [out], "weight_v" [out, in], "bias" [out] (PyTorch's names). ----
// g starts at ||v|| per row, so w = v at init.
class WeightNorm : public Module {
 public:
  // v and b initialised as Linear's (uniform +-1/sqrt(in)).
  WeightNorm(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype = DType::f32);
  // Reparametrizes a linear layer: v and b are copies of its weight and bias.
  explicit WeightNorm(const Linear& linear);

  Variable weight() const;                     // w = g v / ||v||
  Variable forward(const Variable& x) const;  // x [..., in] -> [..., out]

  Variable g, v, bias;  // bias undefined when disabled
};

}  // namespace normlab
