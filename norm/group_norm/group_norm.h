// GroupNorm (Wu & He 2018) over (N, C, *): the C channels form G groups of C/G; each
// (sample, group) is normalized over its C/G channels times every spatial position, with the
// biased variance; gamma and beta are per channel. Saves mean and rstd per (sample, group).
// InstanceNorm is GroupNorm with G = C; GroupNorm with G = 1 is LayerNorm over (C, *) with a
// per-channel affine.
#pragma once

#include "norm/batch_norm/batch_norm.h"

namespace normlab {

// ---- Reference kernels: x is (N, C, S) row-major (S = product of the spatial dims, 1 for
// (N, C)); mean and rstd are (N, G). T is float or double; gamma and beta may be null. ----
template <class T>
void group_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N, int64_t C,
                        int64_t S, int64_t G, double eps);
// Writes dx, dgamma, dbeta (each may be null when not wanted); gamma may be null.
template <class T>
void group_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                         const T* rstd, int64_t N, int64_t C, int64_t S, int64_t G);
// Fast CPU kernels, same signatures: each (sample, group) a row of the fast LayerNorm kernels
// (layer_norm_rows.h: vector sums of math_t<T>, centred two-pass variance, one-pass backward with
// deterministic dgamma/dbeta partials); checked against the reference kernels. T is float, double,
// bf16 or f16; bf16 and f16 as in layer_norm_forward_cpu: widened to f32 as it loads, f32 math,
// mean, rstd and dgamma/dbeta sums, each output rounded once to T (bit for bit the f32 kernel's on
// the widened values, rounded).
template <class T>
void group_norm_forward_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                            int64_t N, int64_t C, int64_t S, int64_t G, double eps);
template <class T>
void group_norm_backward_cpu(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t N, int64_t C, int64_t S,
                             int64_t G);

// ---- Tensor level: x [N, C, *] in f32, f64, bf16 or f16 (gamma, beta, dy and the gradients in
// x's dtype); mean and rstd [N, G], in f32 for bf16 and f16 (norm_stat_dtype). ----
// Throws unless G >= 1 and G divides C >= 1.
void check_groups(int64_t G, int64_t C, const char* who);
// Checks x (rank >= 2, C channels, non-empty) and returns S, the product of its spatial dims.
int64_t group_norm_check_input(const Tensor& x, int64_t C, const char* who);
struct GroupNormStats {
  Tensor y, mean, rstd;
};
GroupNormStats group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t G, double eps);
using GroupNormGrads = NormGrads;
GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                   const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta);

// ---- Autograd ----
// The node of group_norm: inputs (x, gamma?, beta?), its saved tensors visible for inspection.
// mean and rstd are [N, G].
class GroupNormNode : public AffineNormNode {
 public:
  GroupNormNode(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, bool has_beta)
      : AffineNormNode("group_norm", std::move(x), std::move(gamma), std::move(mean), std::move(rstd), has_beta) {}

 protected:
  NormGrads grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const override;
};

// gamma and beta may be undefined Variables (no affine).
Variable group_norm(const Variable& x, const Variable& gamma, const Variable& beta, int64_t G, double eps = 1e-5);

// ---- Modules: weight (ones) and bias (zeros) of [C] when affine. ----
class GroupNorm : public NormLayer {
 public:
  GroupNorm(int64_t G, int64_t C, double eps = 1e-5, bool affine = true, DType dtype = DType::f32);
  Variable forward(const Variable& x) override;

  int64_t G, C;
  double eps;
  Variable weight, bias;  // undefined without affine
};

// InstanceNorm: GroupNorm with one group per channel (statistics per sample and channel over
// the spatial positions). Without affine by default, as PyTorch's InstanceNorm.
class InstanceNorm : public GroupNorm {
 public:
  explicit InstanceNorm(int64_t C, double eps = 1e-5, bool affine = false, DType dtype = DType::f32)
      : GroupNorm(C, C, eps, affine, dtype) {}
};

}  // namespace normlab
