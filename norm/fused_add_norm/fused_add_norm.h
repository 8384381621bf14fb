// Fused residual add + norm: h = x + r and y = norm(h) in one pass over each block of rows,
// for LayerNorm and RMSNorm. Both h (the new residual stream) and y (the norm's output, the
// sublayer's input) are outputs. The norm math is the LayerNorm / RMSNorm kernels', run on
// each block while it is in cache.
#pragma once

#include <utility>

#include "norm/layer_norm/layer_norm.h"
#include "norm/rms_norm/rms_norm.h"

namespace normlab {

// ---- Reference kernels: M rows of N features, row-major; T is float, double, bf16 or f16
// (statistics in math_t<T>, f32 for bf16 and f16, as layer_norm_forward_cpu and
// rms_norm_forward_cpu). ----
// h = x + r (rounded to T, as the unfused add), then y, mean, rstd = layer_norm(h).
template <class T>
void add_layer_norm_forward(T* h, T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* r, const T* gamma,
                            const T* beta, int64_t M, int64_t N, double eps);
// dh_total = dh + dx of layer_norm's backward from dy; it is both dx and dr. dh may be null
// (no gradient at h); each output may be null when not wanted.
template <class T>
void add_layer_norm_backward(T* dh_total, T* dgamma, T* dbeta, const T* dh, const T* dy, const T* h, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t M, int64_t N);
// h = x + r, then y, rrms = rms_norm(h).
template <class T>
void add_rms_norm_forward(T* h, T* y, math_t<T>* rrms, const T* x, const T* r, const T* gamma, int64_t M, int64_t N,
                          double eps, bool unit_offset);
template <class T>
void add_rms_norm_backward(T* dh_total, T* dgamma, const T* dh, const T* dy, const T* h, const T* gamma,
                           const math_t<T>* rrms, int64_t M, int64_t N, bool unit_offset);

// ---- Tensor level: x, r [..., N] of one shape and dtype (f32, f64, bf16 or f16); statistics have
// the leading shape, in norm_stat_dtype (f32 for bf16 and f16). ----
struct AddLayerNormStats {
  Tensor h, y, mean, rstd;
};
AddLayerNormStats add_layer_norm_forward(const Tensor& x, const Tensor& r, const Tensor& gamma, const Tensor& beta,
                                         double eps);
struct AddLayerNormGrads {
  Tensor dh_total, dgamma, dbeta;  // dx = dr = dh_total
};
// dh may be undefined (no gradient at h).
AddLayerNormGrads add_layer_norm_backward(const Tensor& dh, const Tensor& dy, const Tensor& h, const Tensor& gamma,
                                          const Tensor& mean, const Tensor& rstd, bool want_dh_total,
                                          bool want_dgamma, bool want_dbeta);
struct AddRMSNormStats {
  Tensor h, y, rrms;
};
AddRMSNormStats add_rms_norm_forward(const Tensor& x, const Tensor& r, const Tensor& gamma, double eps,
                                     bool unit_offset = false);
struct AddRMSNormGrads {
  Tensor dh_total, dgamma;  // dx = dr = dh_total
};
AddRMSNormGrads add_rms_norm_backward(const Tensor& dh, const Tensor& dy, const Tensor& h, const Tensor& gamma,
                                      const Tensor& rrms, bool unit_offset, bool want_dh_total, bool want_dgamma);

// ---- Autograd: nodes with outputs (h, y), or y alone where the sum is not kept. ----
// Inputs (x, r, gamma?, beta?). Saves h, not x and r: the norm's backward needs only h.
class AddLayerNormNode : public Node {
 public:
  AddLayerNormNode(Tensor h, Tensor gamma, Tensor mean, Tensor rstd, bool has_beta)
      : Node("add_layer_norm"), h(std::move(h)), gamma(std::move(gamma)), mean(std::move(mean)),
        rstd(std::move(rstd)), has_beta(has_beta) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor h, gamma, mean, rstd;  // gamma undefined without affine
  bool has_beta;
};

// Inputs (x, r, gamma?).
class AddRMSNormNode : public Node {
 public:
  AddRMSNormNode(Tensor h, Tensor gamma, Tensor rrms, bool unit_offset)
      : Node("add_rms_norm"), h(std::move(h)), gamma(std::move(gamma)), rrms(std::move(rrms)),
        unit_offset(unit_offset) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

  Tensor h, gamma, rrms;  // gamma undefined without weight
  bool unit_offset;
};

// {h, y} = {x + r, layer_norm(x + r, gamma, beta, eps)}; gamma and beta may be undefined.
// keep_sum false, for a sum used only through the norm (post-norm, DeepNorm, a final norm): y is
// the node's only output, so backward has no dh to add (the engine would feed zeros), and h is
// returned as a value outside the graph.
std::pair<Variable, Variable> add_layer_norm(const Variable& x, const Variable& r, const Variable& gamma,
                                             const Variable& beta, double eps = 1e-5, bool keep_sum = true);
// {h, y} = {x + r, rms_norm(x + r, gamma, eps, unit_offset)}; gamma may be undefined; keep_sum
// as above.
std::pair<Variable, Variable> add_rms_norm(const Variable& x, const Variable& r, const Variable& gamma,
                                           double eps = 1e-6, bool unit_offset = false, bool keep_sum = true);
// The same with a module's parameters and settings: {x + r, norm.forward(x + r)}.
std::pair<Variable, Variable> add_layer_norm(const Variable& x, const Variable& r, const LayerNorm& norm,
                                             bool keep_sum = true);
std::pair<Variable, Variable> add_rms_norm(const Variable& x, const Variable& r, const RMSNorm& norm,
                                           bool keep_sum = true);

}  // namespace normlab
