// ScaleNorm (Nguyen & Salazar 2019): y = g * x / max(||x||_2, eps) over the last N features,
// with one learnable scalar g (initialised to sqrt(N)); saves the unclamped norm ||x|| per row.
#pragma once

#include "norm/common.h"

namespace normlab {

// ---- Reference kernels: M rows of N features, row-major; T is float or double. ----
// g points at the scalar gain, or is null (g = 1). Accumulates in double.
template <class T>
void scale_norm_forward(T* y, T* norm, const T* x, const T* g, int64_t M, int64_t N, double eps);
// Writes dx and dg (a single element; each may be null when not wanted); g may be null.
template <class T>
void scale_norm_backward(T* dx, T* dg, const T* dy, const T* x, const T* g, const T* norm, int64_t M, int64_t N,
                         double eps);

// ---- Fast CPU kernels, same signatures: the row in L1, sums in vector accumulators of
// math_t<T> (framework/simd.h). Checked against the reference; the Tensor level runs these. T is
// float, double, bf16 or f16; bf16 and f16 as in layer_norm_forward_cpu: widened to f32 before
// squaring, f32 math, norm and dg sum, each output rounded once to T (bit for bit the f32 kernel's
// on the widened values, rounded). ----
template <class T>
void scale_norm_forward_cpu(T* y, math_t<T>* norm, const T* x, const T* g, int64_t M, int64_t N, double eps);
template <class T>
void scale_norm_backward_cpu(T* dx, T* dg, const T* dy, const T* x, const T* g, const math_t<T>* norm, int64_t M,
                             int64_t N, double eps);

// ---- Tensor level: x [..., N] in f32, f64, bf16 or f16, g [1] (g, dy and the gradients in x's
// dtype); norm has x's leading shape, in f32 for bf16 and f16 (norm_stat_dtype). ----
struct ScaleNormStats {
  Tensor y, norm;
};
ScaleNormStats scale_norm_forward(const Tensor& x, const Tensor& g, double eps);
struct ScaleNormGrads {
  Tensor dx, dg;
};
ScaleNormGrads scale_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& norm, double eps,
                                   bool want_dx, bool want_dg);

// ---- Autograd ----
// The node of scale_norm: inputs (x, g?), its saved tensors visible for inspection.
class ScaleNormNode : public Node {
 public:
  ScaleNormNode(Tensor x, Tensor g, Tensor norm, double eps)
      : Node("scale_norm"), x(std::move(x)), g(std::move(g)), norm(std::move(norm)), eps(eps) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor x, g, norm;  // g undefined without a gain; norm is ||x|| per row, before the clamp
  double eps;
};

// g may be an undefined Variable (g = 1); otherwise its shape is [1].
Variable scale_norm(const Variable& x, const Variable& g, double eps = 1e-5);

// ---- Module: the scalar gain g of shape [1], initialised to sqrt(N). ----
class ScaleNorm : public NormLayer {
 public:
  explicit ScaleNorm(int64_t N, double eps = 1e-5, DType dtype = DType::f32);
  Variable forward(const Variable& x) override;

  int64_t N;
  double eps;
  Variable g;
};

}  // namespace normlab
