// LayerNorm (Ba et al. 2016): y = (x - mean) * rstd * gamma + beta over the last N features,
// rstd = 1 / sqrt(var + eps) with the biased variance; saves mean and rstd per row.
#pragma once

#include "norm/common.h"

namespace normlab {

// ---- Reference kernels: M rows of N features, row-major; T is float or double. ----
// gamma and beta may be null (no affine). Statistics accumulate in double.
template <class T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t M, int64_t N,
                        double eps);
// Writes dx, dgamma, dbeta (each may be null when not wanted); gamma may be null.
template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                         const T* rstd, int64_t M, int64_t N);

// ---- Fast CPU kernels, same signatures: the row in L1, sums in vector accumulators of
// math_t<T> (framework/simd.h), a centred two-pass variance; the backward computes dx and the
// dgamma/dbeta partials in one pass over the rows. Checked against the reference kernels on
// large-mean and near-constant rows; the Tensor level below runs these. T is float, double, bf16
// or f16: bf16 and f16 rows widen to f32 as they load (before any square or sum), the math, the
// saved mean and rstd and the dgamma/dbeta sums are f32's, and each output is rounded once to T;
// the results are bit for bit the f32 kernel's on the widened values, rounded to T. ----
template <class T>
void layer_norm_forward_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                            int64_t M, int64_t N, double eps);
// dx_add, when given, is added to dx in the same pass (add_layer_norm's dh).
template <class T>
void layer_norm_backward_cpu(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t M, int64_t N,
                             const T* dx_add = nullptr);

// ---- Tensor level: x [..., N] in f32, f64, bf16 or f16 (gamma, beta, dy and the gradients in x's
// dtype); mean and rstd have x's leading shape, in f32 for bf16 and f16 (norm_stat_dtype). ----
struct LayerNormStats {
  Tensor y, mean, rstd;
};
LayerNormStats layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps);
using LayerNormGrads = NormGrads;
LayerNormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                   const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta);

// ---- Autograd ----
// The node of layer_norm: inputs (x, gamma?, beta?); saves x, gamma, mean, rstd (visible members).
class LayerNormNode : public AffineNormNode {
 public:
  LayerNormNode(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, bool has_beta)
      : AffineNormNode("layer_norm", std::move(x), std::move(gamma), std::move(mean), std::move(rstd), has_beta) {}

 protected:
  NormGrads grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const override;
};

// gamma and beta may be undefined Variables (no affine / no bias).
Variable layer_norm(const Variable& x, const Variable& gamma, const Variable& beta, double eps = 1e-5);

// ---- Module: weight (ones) and bias (zeros) of [N] unless disabled. ----
class LayerNorm : public NormLayer {
 public:
  explicit LayerNorm(int64_t N, double eps = 1e-5, bool elementwise_affine = true, bool bias = true,
                     DType dtype = DType::f32);
  Variable forward(const Variable& x) override;
  // One add_layer_norm node (defined in norm/fused_add_norm).
  std::pair<Variable, Variable> forward_add(const Variable& x, const Variable& r, bool keep_sum = true) override;

  int64_t N;
  double eps;
  Variable weight, bias;  // undefined when disabled
};

}  // namespace normlab
