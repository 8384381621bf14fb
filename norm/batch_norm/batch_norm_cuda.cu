#include "norm/batch_norm/reduce_cuda.cuh"

#include "norm/batch_norm/batch_norm_cuda.h"

namespace normlab {

namespace {
using namespace cuda_channel;

// ---- Forward ----

// Scalar math: channel_norm_apply (batch_norm.cpp): y = (x - mean[k]) * rstd[k] * gamma[c] + beta[c],
// row (n, c) = i / S, k = n * per_sample + c / channels_per_stat.
template <class T>
__global__ void channel_apply_kernel(T* y, const T* x, const T* gamma, const T* beta, const acc_t<T>* mean,
                                     const acc_t<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t per_sample,
                                     int64_t channels_per_stat) {
  using Acc = acc_t<T>;
  const int64_t total = N * C * S;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / S, n = row / C, c = row % C;
    const int64_t k = n * per_sample + c / channels_per_stat;
    const Acc g = gamma ? val(gamma[c]) : Acc(1), b = beta ? val(beta[c]) : Acc(0);
    y[i] = from_acc<T>((val(x[i]) - mean[k]) * rstd[k] * g + b);
  }
}

// Terms of the batch statistics over (N, C) (L = 1): x, then (x - mean_c)^2. Reads across C are
// coalesced (col_reduce).
template <class T>
struct ColValue {
  const T* x;
  const acc_t<T>* center;  // null: the plain sum
  int64_t C;
  __device__ void operator()(int64_t n, int64_t c, acc_t<T> (&acc)[1]) const {
    const acc_t<T> v = val(x[n * C + c]);
    if (center) {
      const acc_t<T> d = v - center[c];
      acc[0] += d * d;
    } else {
      acc[0] += v;
    }
  }
};

// The same terms summed over the L positions of row (n, c) = row (L > 1).
template <class T>
struct RowValue {
  const T* x;
  const acc_t<T>* center;  // null: the plain sum
  int64_t C, L;
  __device__ void operator()(int64_t row, int64_t l, acc_t<T> (&acc)[1]) const {
    const acc_t<T> v = val(x[row * L + l]);
    if (center) {
      const acc_t<T> d = v - center[row % C];
      acc[0] += d * d;
    } else {
      acc[0] += v;
    }
  }
};

// Per-row sums kept in buf[k * rows + row].
template <class Acc, int K>
struct StoreRow {
  Acc* buf;
  int64_t rows;
  __device__ void operator()(int64_t row, const Acc (&total)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) buf[k * rows + row] = total[k];
  }
};

// Column terms read back from such a buffer laid out [K][N][C].
template <class Acc, int K>
struct ColFromBuffer {
  const Acc* buf;
  int64_t rows, C;
  __device__ void operator()(int64_t n, int64_t c, Acc (&acc)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] += buf[k * rows + n * C + c];
  }
};

template <class Acc>
struct StoreMean {
  Acc* mean;
  Acc count;
  __device__ void operator()(int64_t c, const Acc (&total)[1]) const { mean[c] = total[0] / count; }
};

// Scalar math: batch_norm_forward_train (batch_norm.cpp): var = ss / count (biased),
// rstd = 1 / sqrt(var + eps); running_mean = (1 - m) running_mean + m mean,
// running_var = (1 - m) running_var + m var count / (count - 1).
template <class T>
struct FinishStats {
  using Acc = acc_t<T>;
  const Acc* mean;
  Acc* rstd;
  T *running_mean, *running_var;  // may be null
  Acc count, eps, momentum;
  __device__ void operator()(int64_t c, const Acc (&total)[1]) const {
    const Acc var = total[0] / count;
    rstd[c] = Acc(1) / sqrt_acc(var + eps);
    if (running_mean)
      running_mean[c] = from_acc<T>((Acc(1) - momentum) * val(running_mean[c]) + momentum * mean[c]);
    if (running_var)
      running_var[c] =
          from_acc<T>((Acc(1) - momentum) * val(running_var[c]) + momentum * var * count / (count - Acc(1)));
  }
};

// Scalar math: batch_norm_forward_eval (batch_norm.cpp): mean = running_mean, rstd = 1 / sqrt(running_var + eps).
template <class T>
__global__ void eval_stats_kernel(acc_t<T>* mean, acc_t<T>* rstd, const T* running_mean, const T* running_var,
                                  int64_t C, double eps) {
  using Acc = acc_t<T>;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    mean[c] = val(running_mean[c]);
    rstd[c] = Acc(1) / sqrt_acc(val(running_var[c]) + Acc(eps));
  }
}

// Two passes over the batch (sum, then the centered sum of squares), each deterministic:
// (N, C) reduces over N directly with coalesced reads across C; (N, C, L) first sums each row of
// L values (a warp per row), then reduces the [N, C] row sums over N the same way.
template <class T>
void batch_stats_train(acc_t<T>* mean, acc_t<T>* rstd, T* running_mean, T* running_var, const T* x, int64_t N,
                       int64_t C, int64_t L, double eps, double momentum) {
  using Acc = acc_t<T>;
  const Acc count = Acc(double(N * L));
  const FinishStats<T> finish{mean, rstd, running_mean, running_var, count, Acc(eps), Acc(momentum)};
  if (L == 1) {
    col_reduce<Acc, 1>(N, C, ColValue<T>{x, nullptr, C}, StoreMean<Acc>{mean, count});
    col_reduce<Acc, 1>(N, C, ColValue<T>{x, mean, C}, finish);
    return;
  }
  const int64_t rows = N * C;
  const Tensor buf = empty({rows}, acc_dtype<Acc>(), Device::cuda());
  Acc* b = dptr<Acc>(buf);
  row_reduce<Acc, 1>(rows, L, RowValue<T>{x, nullptr, C, L}, StoreRow<Acc, 1>{b, rows});
  col_reduce<Acc, 1>(N, C, ColFromBuffer<Acc, 1>{b, rows, C}, StoreMean<Acc>{mean, count});
  row_reduce<Acc, 1>(rows, L, RowValue<T>{x, mean, C, L}, StoreRow<Acc, 1>{b, rows});
  col_reduce<Acc, 1>(N, C, ColFromBuffer<Acc, 1>{b, rows, C}, finish);
}

template <class T>
void launch_apply(T* y, const T* x, const T* gamma, const T* beta, const acc_t<T>* mean, const acc_t<T>* rstd,
                  int64_t N, int64_t C, int64_t S, ChannelStatMap map) {
  channel_apply_kernel<T><<<grid_for(N * C * S, 256), 256, 0, cuda_stream()>>>(
      y, x, gamma, beta, mean, rstd, N, C, S, map.per_sample, map.channels_per_stat);
  check_launch();
}

// ---- Backward ----
// Scalar math: channel_norm_backward (batch_norm.cpp):
// xhat = (x - mean_k) * rstd_k,  dxhat = dy * gamma_c,  k = map(n, c)
// per row (n, c): row_dy = sum_s dy,  row_dy_xhat = sum_s dy * xhat
// dbeta_c = sum_n row_dy,  dgamma_c = sum_n row_dy_xhat             (col_reduce: deterministic)
// per statistic k over its `count` values:
//   mean_dxhat_k = sum_{(n,c) in k} gamma_c row_dy / count,  mean_dxhat_xhat_k = sum gamma_c row_dy_xhat / count
// batch statistics: dx = rstd_k * (dxhat - mean_dxhat_k - xhat * mean_dxhat_xhat_k)
// fixed statistics: dx = rstd_k * dxhat
// acc[0] = sum dy, acc[1] = sum dy * xhat.
template <class T>
struct ColGradTerms {  // BatchNorm on (N, C): the row of (n, c) is the single value x[n, c]
  const T *dy, *x;
  const acc_t<T>*mean, *rstd;
  int64_t C;
  __device__ void operator()(int64_t n, int64_t c, acc_t<T> (&acc)[2]) const {
    const acc_t<T> d = val(dy[n * C + c]);
    acc[0] += d;
    acc[1] += d * (val(x[n * C + c]) - mean[c]) * rstd[c];
  }
};

template <class T>
struct RowGradTerms {  // the S values of row (n, c)
  const T *dy, *x;
  const acc_t<T>*mean, *rstd;
  int64_t C, S, per_sample, channels_per_stat;
  __device__ void operator()(int64_t row, int64_t s, acc_t<T> (&acc)[2]) const {
    const int64_t k = (row / C) * per_sample + (row % C) / channels_per_stat;
    const acc_t<T> d = val(dy[row * S + s]);
    acc[0] += d;
    acc[1] += d * (val(x[row * S + s]) - mean[k]) * rstd[k];
  }
};

// Column totals: dgamma, dbeta and (statistics shared by every sample, BatchNorm) the mean terms.
template <class T>
struct FinishGradColumns {
  using Acc = acc_t<T>;
  T *dgamma, *dbeta;           // may be null
  const T* gamma;              // may be null
  Acc *mean_dxhat, *mean_dxhat_xhat;  // null unless the dx of shared statistics needs them
  Acc count;
  __device__ void operator()(int64_t c, const Acc (&total)[2]) const {
    if (dgamma) dgamma[c] = from_acc<T>(total[1]);
    if (dbeta) dbeta[c] = from_acc<T>(total[0]);
    if (mean_dxhat) {
      const Acc g = gamma ? val(gamma[c]) : Acc(1);
      mean_dxhat[c] = g * total[0] / count;
      mean_dxhat_xhat[c] = g * total[1] / count;
    }
  }
};

// Statistics per (n, group) (GroupNorm): the mean terms gathered from the row sums, in channel order.
template <class T>
__global__ void group_terms_kernel(acc_t<T>* mean_dxhat, acc_t<T>* mean_dxhat_xhat, const acc_t<T>* row_sums,
                                   const T* gamma, int64_t N, int64_t C, int64_t G, int64_t cps, acc_t<T> count) {
  using Acc = acc_t<T>;
  const int64_t rows = N * C;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < N * G; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = k / G, c0 = (k % G) * cps;
    Acc sdy = 0, sdyx = 0;
    for (int64_t c = c0; c < c0 + cps; ++c) {
      const Acc g = gamma ? val(gamma[c]) : Acc(1);
      sdy += g * row_sums[n * C + c];
      sdyx += g * row_sums[rows + n * C + c];
    }
    mean_dxhat[k] = sdy / count;
    mean_dxhat_xhat[k] = sdyx / count;
  }
}

template <class T>
__global__ void channel_dx_kernel(T* dx, const T* dy, const T* x, const T* gamma, const acc_t<T>* mean,
                                  const acc_t<T>* rstd, const acc_t<T>* mean_dxhat, const acc_t<T>* mean_dxhat_xhat,
                                  int64_t N, int64_t C, int64_t S, int64_t per_sample, int64_t channels_per_stat) {
  using Acc = acc_t<T>;
  const int64_t total = N * C * S;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / S, n = row / C, c = row % C;
    const int64_t k = n * per_sample + c / channels_per_stat;
    const Acc rs = rstd[k];
    const Acc dxhat = val(dy[i]) * (gamma ? val(gamma[c]) : Acc(1));
    if (mean_dxhat) {
      const Acc xhat = (val(x[i]) - mean[k]) * rs;
      dx[i] = from_acc<T>(rs * (dxhat - mean_dxhat[k] - xhat * mean_dxhat_xhat[k]));
    } else {
      dx[i] = from_acc<T>(rs * dxhat);
    }
  }
}

template <class T>
void channel_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const acc_t<T>* mean,
                      const acc_t<T>* rstd, int64_t N, int64_t C, int64_t S, ChannelStatMap map, bool fixed_stats) {
  using Acc = acc_t<T>;
  const bool shared = map.per_sample == 0;
  const bool dx_sums = dx && !fixed_stats;
  const bool col_sums = dgamma || dbeta || (dx_sums && shared);
  const Acc count = Acc(double(map.count(N, S)));
  const int64_t stats = shared ? C / map.channels_per_stat : N * map.per_sample;
  Tensor terms;  // mean_dxhat [stats], mean_dxhat_xhat [stats]
  Acc *mean_dxhat = nullptr, *mean_dxhat_xhat = nullptr;
  if (dx_sums) {
    terms = empty({2 * stats}, acc_dtype<Acc>(), Device::cuda());
    mean_dxhat = dptr<Acc>(terms);
    mean_dxhat_xhat = mean_dxhat + stats;
  }
  const FinishGradColumns<T> finish{dgamma, dbeta, gamma, shared ? mean_dxhat : nullptr,
                                    shared ? mean_dxhat_xhat : nullptr, count};
  if (shared && S == 1) {
    if (col_sums) col_reduce<Acc, 2>(N, C, ColGradTerms<T>{dy, x, mean, rstd, C}, finish);
  } else if (col_sums || dx_sums) {
    const int64_t rows = N * C;
    const Tensor buf = empty({2 * rows}, acc_dtype<Acc>(), Device::cuda());
    Acc* b = dptr<Acc>(buf);
    row_reduce<Acc, 2>(rows, S, RowGradTerms<T>{dy, x, mean, rstd, C, S, map.per_sample, map.channels_per_stat},
                       StoreRow<Acc, 2>{b, rows});
    if (col_sums) col_reduce<Acc, 2>(N, C, ColFromBuffer<Acc, 2>{b, rows, C}, finish);
    if (dx_sums && !shared) {
      group_terms_kernel<T><<<grid_for(stats, 256), 256, 0, cuda_stream()>>>(
          mean_dxhat, mean_dxhat_xhat, b, gamma, N, C, map.per_sample, map.channels_per_stat, count);
      check_launch();
    }
  }
  if (!dx) return;
  channel_dx_kernel<T><<<grid_for(N * C * S, 256), 256, 0, cuda_stream()>>>(
      dx, dy, x, gamma, mean, rstd, mean_dxhat, mean_dxhat_xhat, N, C, S, map.per_sample, map.channels_per_stat);
  check_launch();
}

void check_momentum_value(double momentum, const char* who) {
  NL_CHECK(std::isfinite(momentum) && momentum >= 0 && momentum <= 1, who, ": momentum must be in [0, 1], got ",
           momentum);
}
}  // namespace

BatchNormStats batch_norm_forward_cuda(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in,
                                       const Tensor& running_mean, const Tensor& running_var, bool training,
                                       double momentum, double eps) {
  const char* who = "batch_norm";
  check_eps(eps, who);
  check_momentum_value(momentum, who);
  NL_CHECK(x_in.defined() && x_in.dim() >= 2, "batch_norm: expected an input of shape [N, C] or [N, C, L], got ",
           x_in.defined() ? to_string(x_in.shape()) : std::string("an undefined tensor"));
  const int64_t C = x_in.size(1);
  const int64_t L = batch_norm_check_input(x_in, C, training, who);
  const int64_t N = x_in.size(0);
  const DType dtype = x_in.dtype();
  check_vector(gamma_in, C, dtype, who, "gamma");
  check_vector(beta_in, C, dtype, who, "beta");
  check_vector(running_mean, C, dtype, who, "running_mean");
  check_vector(running_var, C, dtype, who, "running_var");
  NL_CHECK(!running_mean.defined() || running_mean.is_contiguous(), who, ": running_mean must be contiguous");
  NL_CHECK(!running_var.defined() || running_var.is_contiguous(), who, ": running_var must be contiguous");
  NL_CHECK(training || (running_mean.defined() && running_var.defined()),
           "batch_norm: eval mode needs running_mean and running_var");
  NL_CHECK(running_mean.defined() == running_var.defined(),
           "batch_norm: running_mean and running_var must be both defined or both undefined");
  check_on_cuda(x_in, who, "x");
  check_on_cuda(gamma_in, who, "gamma");
  check_on_cuda(beta_in, who, "beta");
  check_on_cuda(running_mean, who, "running_mean");
  check_on_cuda(running_var, who, "running_var");
  const Tensor x = x_in.contiguous(), gamma = contiguous_or_undefined(gamma_in),
               beta = contiguous_or_undefined(beta_in);
  const Device dev = x.device();
  BatchNormStats out{empty(x.shape(), dtype, dev), empty({C}, stat_dtype(dtype), dev),
                     empty({C}, stat_dtype(dtype), dev)};
  dispatch(dtype, who, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    Acc* mean = dptr<Acc>(out.mean);
    Acc* rstd = dptr<Acc>(out.rstd);
    if (training) {
      batch_stats_train<T>(mean, rstd, dptr<T>(running_mean), dptr<T>(running_var), dptr<T>(x), N, C, L, eps,
                           momentum);
    } else {
      eval_stats_kernel<T><<<grid_for(C, 256), 256, 0, cuda_stream()>>>(mean, rstd, dptr<T>(running_mean),
                                                                         dptr<T>(running_var), C, eps);
      check_launch();
    }
    launch_apply<T>(dptr<T>(out.y), dptr<T>(x), dptr<T>(gamma), dptr<T>(beta), mean, rstd, N, C, L,
                    ChannelStatMap{0, 1});
  });
  return out;
}

Tensor channel_norm_apply_cuda(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                               const Tensor& rstd, ChannelStatMap map) {
  NL_CHECK(x.is_contiguous() && x.dim() >= 2 && x.numel() > 0,
           "channel_norm_apply_cuda: expected a contiguous non-empty [N, C, *] input");
  check_on_cuda(x, "channel_norm_apply_cuda", "x");
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  dispatch(x.dtype(), "channel_norm_apply_cuda", [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    launch_apply<T>(dptr<T>(y), dptr<T>(x), dptr<T>(gamma), dptr<T>(beta), dptr<Acc>(mean), dptr<Acc>(rstd), N, C,
                    S, map);
  });
  return y;
}

NormGrads channel_norm_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma_in,
                                     const Tensor& mean_in, const Tensor& rstd_in, ChannelStatMap map,
                                     bool fixed_stats, bool want_dx, bool want_dgamma, bool want_dbeta,
                                     const char* who) {
  NL_CHECK(x_in.defined() && x_in.dim() >= 2 && x_in.numel() > 0, who, ": expected a non-empty input [N, C, *]");
  NL_CHECK(dy_in.defined() && dy_in.shape() == x_in.shape() && dy_in.dtype() == x_in.dtype(), who,
           ": dy must match x (shape ", to_string(x_in.shape()), ", dtype ", dtype_name(x_in.dtype()), ")");
  const int64_t N = x_in.size(0), C = x_in.size(1), S = x_in.numel() / (N * C);
  NL_CHECK(map.channels_per_stat >= 1 && C % map.channels_per_stat == 0, who, ": bad channel map");
  const int64_t stats = map.per_sample == 0 ? C / map.channels_per_stat : N * map.per_sample;
  const DType sd = stat_dtype(x_in.dtype());
  NL_CHECK(mean_in.defined() && rstd_in.defined() && mean_in.numel() == stats && rstd_in.numel() == stats &&
               mean_in.dtype() == sd && rstd_in.dtype() == sd,
           who, ": mean and rstd must hold ", stats, " values of dtype ", dtype_name(sd));
  check_vector(gamma_in, C, x_in.dtype(), who, "gamma");
  check_on_cuda(x_in, who, "x");
  check_on_cuda(dy_in, who, "dy");
  check_on_cuda(gamma_in, who, "gamma");
  check_on_cuda(mean_in, who, "mean");
  check_on_cuda(rstd_in, who, "rstd");
  const Tensor dy = dy_in.contiguous(), x = x_in.contiguous(), gamma = contiguous_or_undefined(gamma_in),
               mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const Device dev = x.device();
  NormGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype(), dev);
  if (want_dgamma) g.dgamma = empty({C}, x.dtype(), dev);
  if (want_dbeta) g.dbeta = empty({C}, x.dtype(), dev);
  if (!want_dx && !want_dgamma && !want_dbeta) return g;
  dispatch(x.dtype(), who, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    channel_backward<T>(dptr<T>(g.dx), dptr<T>(g.dgamma), dptr<T>(g.dbeta), dptr<T>(dy), dptr<T>(x), dptr<T>(gamma),
                        dptr<Acc>(mean), dptr<Acc>(rstd), N, C, S, map, fixed_stats);
  });
  return g;
}

BatchNormGrads batch_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                        const Tensor& rstd, bool training, bool want_dx, bool want_dgamma,
                                        bool want_dbeta) {
  return channel_norm_backward_cuda(dy, x, gamma, mean, rstd, ChannelStatMap{0, 1}, !training, want_dx, want_dgamma,
                                    want_dbeta, "batch_norm_backward");
}

}  // namespace normlab
