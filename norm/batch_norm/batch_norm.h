// BatchNorm (Ioffe & Szegedy 2015) over (N, C) or (N, C, L): statistics per channel over the
// N*L values of every sample and position. Training normalizes with the biased batch variance,
// saves mean and rstd per channel, and updates the running statistics with the unbiased one:
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var  = (1 - momentum) * running_var  + momentum * var * count / (count - 1)
// Eval normalizes with the running statistics: y = (x - running_mean) * rstd_running * gamma + beta.
//
// This header also holds the channel-norm kernels BatchNorm shares with GroupNorm (data laid out
// (N, C, S) with one gamma/beta per channel, normalized by statistics per channel (BatchNorm) or
// per (sample, group) (GroupNorm); see ChannelStatMap).
#pragma once

#include <string>

#include "norm/common.h"

namespace normlab {

// ---- Channel-norm kernels: x is (N, C, S) row-major, a "row" is the S values of one (n, c). ----
// Which statistic normalizes channel c of sample n: k = n * per_sample + c / channels_per_stat.
//   BatchNorm: per_sample = 0 (shared by every sample), channels_per_stat = 1   -> k = c
//   GroupNorm: per_sample = G, channels_per_stat = C / G                        -> k = n * G + g
struct ChannelStatMap {
  int64_t per_sample, channels_per_stat;
  int64_t operator()(int64_t n, int64_t c) const { return n * per_sample + c / channels_per_stat; }
  // Values behind one statistic.
  int64_t count(int64_t N, int64_t S) const { return (per_sample == 0 ? N : 1) * channels_per_stat * S; }
};

// y = (x - mean[k]) * rstd[k] * gamma[c] + beta[c]; gamma, beta may be null.
template <class T>
void channel_norm_apply(T* y, const T* x, const T* gamma, const T* beta, const double* mean, const double* rstd,
                        int64_t N, int64_t C, int64_t S, ChannelStatMap map);
// The backward of channel_norm_apply with the statistics of the batch (fixed_stats = false) or
// fixed ones (fixed_stats = true, BatchNorm in eval mode). Outputs may be null; gamma may be null.
template <class T>
void channel_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                           const math_t<T>* mean, const math_t<T>* rstd, int64_t N, int64_t C, int64_t S,
                           ChannelStatMap map, bool fixed_stats);

// Tensor level of channel_norm_backward: x and dy [N, C, *]; gradients only where wanted.
NormGrads channel_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                const Tensor& rstd, ChannelStatMap map, bool fixed_stats, bool want_dx,
                                bool want_dgamma, bool want_dbeta, const char* who);


// ---- BatchNorm reference kernels: x is (N, C, L) (L = 1 for (N, C)); T is float or double (or
// bf16 or f16: math in double from the widened values, mean and rstd in f32, each output rounded to
// f32 and then to T, as the f32 kernel's rounded). ----
// Training: writes y and the batch mean and rstd per channel; updates running_mean/running_var in
// place when they are not null. gamma and beta may be null.
template <class T>
void batch_norm_forward_train(T* y, math_t<T>* mean, math_t<T>* rstd, T* running_mean, T* running_var, const T* x,
                              const T* gamma, const T* beta, int64_t N, int64_t C, int64_t L, double eps,
                              double momentum);
// Eval: normalizes with the running statistics, and writes the ones it used for the backward:
// mean = running_mean, rstd = 1 / sqrt(running_var + eps).
template <class T>
void batch_norm_forward_eval(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                             const T* running_mean, const T* running_var, int64_t N, int64_t C, int64_t L,
                             double eps);
// mean and rstd are the batch statistics (training) or the running ones (eval: training = false).
template <class T>
void batch_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const math_t<T>* mean,
                         const math_t<T>* rstd, int64_t N, int64_t C, int64_t L, bool training);

// ---- Fast CPU kernels, same signatures: for (N, C) (L = 1) they run down the rows with C-wide
// vectors of math_t<T>: Welford statistics per block of rows merged in double (one pass over x),
// the backward's column sums in per-block partials (deterministic); for (N, C, L) over fixed blocks
// of samples, the statistics in two centred passes per block (in cache) merged in double, the
// backward's sums in per-block partials. Checked against the reference; the Tensor level runs
// these. T is float, double, bf16 or f16; bf16 and f16 as in layer_norm_forward_cpu: widened to
// f32 as it loads, f32 math, mean, rstd and partials, each output (y, dx, dgamma, dbeta, the
// running statistics) rounded once to T (bit for bit the f32 kernel's on the widened values,
// rounded). ----
template <class T>
void batch_norm_forward_train_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, T* running_mean, T* running_var,
                                  const T* x, const T* gamma, const T* beta, int64_t N, int64_t C, int64_t L,
                                  double eps, double momentum);
template <class T>
void batch_norm_forward_eval_cpu(T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* gamma, const T* beta,
                                 const T* running_mean, const T* running_var, int64_t N, int64_t C, int64_t L,
                                 double eps);
template <class T>
void batch_norm_backward_cpu(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t N, int64_t C, int64_t L,
                             bool training);

// ---- Tensor level: x is [N, C] or [N, C, L] in f32, f64, bf16 or f16 (gamma, beta, the running
// statistics, dy and the gradients in x's dtype); mean and rstd are [C], in f32 for bf16 and f16
// (norm_stat_dtype). ----
// Checks x (rank 2 or 3, C channels, non-empty, more than one value per channel in training) and
// returns L (1 for [N, C]).
int64_t batch_norm_check_input(const Tensor& x, int64_t C, bool training, const char* who);
struct BatchNormStats {
  Tensor y, mean, rstd;  // mean/rstd: the batch statistics, or in eval the running ones used
};
// running_mean and running_var may be undefined in training (no running statistics); eval needs them.
BatchNormStats batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                  const Tensor& running_var, bool training, double momentum, double eps);
using BatchNormGrads = NormGrads;
BatchNormGrads batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                   const Tensor& rstd, bool training, bool want_dx, bool want_dgamma,
                                   bool want_dbeta);

// ---- Autograd ----
// The node of batch_norm: inputs (x, gamma?, beta?), its saved tensors visible for inspection.
class BatchNormNode : public AffineNormNode {
 public:
  BatchNormNode(Tensor x, Tensor gamma, Tensor mean, Tensor rstd, bool training, bool has_beta)
      : AffineNormNode("batch_norm", std::move(x), std::move(gamma), std::move(mean), std::move(rstd), has_beta),
        training(training) {}

  bool training;  // false: mean/rstd are the running statistics (fixed)

 protected:
  NormGrads grads(const Tensor& dy, bool want_dx, bool want_dgamma, bool want_dbeta) const override;
};

// gamma and beta may be undefined Variables. In training the running statistics (when defined)
// are updated in place, also under NoGradGuard.
Variable batch_norm(const Variable& x, const Variable& gamma, const Variable& beta, const Tensor& running_mean,
                    const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);

// ---- Module: weight (ones) and bias (zeros) of [C] when affine; buffers running_mean (zeros)
// and running_var (ones) of [C]. ----
class BatchNorm : public NormLayer {
 public:
  explicit BatchNorm(int64_t C, double eps = 1e-5, double momentum = 0.1, bool affine = true,
                     DType dtype = DType::f32);
  Variable forward(const Variable& x) override;
  Tensor& running_mean() { return buffer("running_mean"); }
  Tensor& running_var() { return buffer("running_var"); }

  int64_t C;
  double eps, momentum;
  Variable weight, bias;  // undefined without affine
};

}  // namespace normlab
