// RMSNorm (Zhang & Sennrich 2019): y = x * rrms * g over the last N features,
// rrms = 1 / sqrt(mean(x^2) + eps); saves rrms per row. With unit_offset (Gemma) the scale
// is g = 1 + w and the weight w starts at zero.
#pragma once

#include "norm/common.h"

namespace normlab {

// ---- Reference kernels: M rows of N features, row-major; T is float or double. ----
// gamma may be null (no weight: g = 1, or g = 1 + 0 with unit_offset). Accumulates in double.
template <class T>
void rms_norm_forward(T* y, T* rrms, const T* x, const T* gamma, int64_t M, int64_t N, double eps, bool unit_offset);
// Writes dx and dgamma (each may be null when not wanted); gamma may be null.
template <class T>
void rms_norm_backward(T* dx, T* dgamma, const T* dy, const T* x, const T* gamma, const T* rrms, int64_t M, int64_t N,
                       bool unit_offset);

// ---- Fast CPU kernels, same signatures: the row in L1, sums in vector accumulators of
// math_t<T> (framework/simd.h), dx and the dgamma partials in one pass. Checked against the
// reference; the Tensor level runs these. T is float, double, bf16 or f16; bf16 and f16 as in
// layer_norm_forward_cpu: widened to f32 before squaring, f32 math, rrms and dgamma sums, each
// output rounded once to T (bit for bit the f32 kernel's on the widened values, rounded). ----
template <class T>
void rms_norm_forward_cpu(T* y, math_t<T>* rrms, const T* x, const T* gamma, int64_t M, int64_t N, double eps,
                          bool unit_offset);
// dx_add, when given, is added to dx in the same pass (add_rms_norm's dh).
template <class T>
void rms_norm_backward_cpu(T* dx, T* dgamma, const T* dy, const T* x, const T* gamma, const math_t<T>* rrms,
                           int64_t M, int64_t N, bool unit_offset, const T* dx_add = nullptr);

// ---- Tensor level: x [..., N] in f32, f64, bf16 or f16 (gamma, dy and the gradients in x's
// dtype); rrms has x's leading shape, in f32 for bf16 and f16 (norm_stat_dtype). ----
struct RMSNormStats {
  Tensor y, rrms;
};
RMSNormStats rms_norm_forward(const Tensor& x, const Tensor& gamma, double eps, bool unit_offset = false);
struct RMSNormGrads {
  Tensor dx, dgamma;
};
RMSNormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& rrms,
                               bool unit_offset, bool want_dx, bool want_dgamma);

// ---- Autograd ----
// The node of rms_norm: inputs (x, gamma?), its saved tensors visible for inspection.
class RMSNormNode : public Node {
 public:
  RMSNormNode(Tensor x, Tensor gamma, Tensor rrms, bool unit_offset)
      : Node("rms_norm"), x(std::move(x)), gamma(std::move(gamma)), rrms(std::move(rrms)), unit_offset(unit_offset) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor x, gamma, rrms;  // gamma undefined without weight
  bool unit_offset;
};

// gamma may be an undefined Variable (no weight). With unit_offset the scale is (1 + gamma).
Variable rms_norm(const Variable& x, const Variable& gamma, double eps = 1e-6, bool unit_offset = false);

// ---- Module: weight of [N], ones (zeros with unit_offset), unless disabled. ----
class RMSNorm : public NormLayer {
 public:
  explicit RMSNorm(int64_t N, double eps = 1e-6, bool weight = true, bool unit_offset = false,
                   DType dtype = DType::f32);
  Variable forward(const Variable& x) override;
  // One add_rms_norm node (defined in norm/fused_add_norm).
  std::pair<Variable, Variable> forward_add(const Variable& x, const Variable& r, bool keep_sum = true) override;

  int64_t N;
  double eps;
  bool unit_offset;
  Variable weight;  // undefined when disabled
};

}  // namespace normlab
