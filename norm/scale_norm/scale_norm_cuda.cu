#include "norm/batch_norm/reduce_cuda.cuh"

#include "norm/scale_norm/scale_norm_cuda.h"

namespace normlab {

namespace {
using namespace cuda_channel;

// A row is handled by a team of WPR warps of a 256-thread block: WPR = 1 (8 rows a block) for
// rows up to kShortRow values, WPR = 8 (a block a row) above.
constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int64_t kShortRow = 2048;

// Sum over the team (fixed order); every thread of the team gets it. For WPR = 8 every thread
// of the block must call it.
template <int WPR, class Acc>
__device__ Acc team_sum(Acc v) {
  if constexpr (WPR == 1) {
    return warp_sum(v);
  } else {
    return block_total(v);
  }
}

// Scalar math: scale_norm_forward (scale_norm.cpp): norm = ||x||, d = max(norm, eps),
// y = g * x / d; the clamp reads the saved norm, as the backward does.
template <class T, int WPR>
__global__ void scale_norm_forward_kernel(T* y, acc_t<T>* norm, const T* x, const T* g, int64_t M, int64_t N,
                                          double eps) {
  using Acc = acc_t<T>;
  const int64_t row = int64_t(blockIdx.x) * (kWarps / WPR) + threadIdx.x / (32 * WPR);
  const int tid = threadIdx.x % (32 * WPR), team = 32 * WPR;
  if (row >= M) return;  // a whole team leaves together (for WPR = 8, the whole block)
  const T* xi = x + row * N;
  Acc ss = 0;
  for (int64_t j = tid; j < N; j += team) {
    const Acc v = val(xi[j]);
    ss += v * v;
  }
  ss = team_sum<WPR>(ss);
  const Acc nrm = sqrt_acc(ss);
  if (tid == 0) norm[row] = nrm;
  const Acc d = nrm < Acc(eps) ? Acc(eps) : nrm;
  const Acc gain = g ? val(g[0]) : Acc(1);
  T* yi = y + row * N;
  for (int64_t j = tid; j < N; j += team) yi[j] = from_acc<T>(gain * val(xi[j]) / d);
}

// Scalar math: scale_norm_backward (scale_norm.cpp):
// d = max(norm, eps),  xhat = x / d,  y = g * xhat,  s = sum(dy * xhat) = sum(dy * x) / d
// norm >= eps: dx = (g / d) * (dy - xhat * s);   norm < eps (d = eps constant): dx = (g / d) * dy
// dg = sum over rows of s (row_s holds each row's s; vector_sum adds them in a fixed order)
template <class T, int WPR>
__global__ void scale_norm_backward_kernel(T* dx, acc_t<T>* row_s, const T* dy, const T* x, const T* g,
                                           const acc_t<T>* norm, int64_t M, int64_t N, double eps) {
  using Acc = acc_t<T>;
  const int64_t row = int64_t(blockIdx.x) * (kWarps / WPR) + threadIdx.x / (32 * WPR);
  const int tid = threadIdx.x % (32 * WPR), team = 32 * WPR;
  if (row >= M) return;
  const T* xi = x + row * N;
  const T* dyi = dy + row * N;
  Acc dot = 0;
  for (int64_t j = tid; j < N; j += team) dot += val(dyi[j]) * val(xi[j]);
  dot = team_sum<WPR>(dot);
  const Acc nrm = norm[row];
  const bool clamped = nrm < Acc(eps);
  const Acc d = clamped ? Acc(eps) : nrm;
  const Acc s = dot / d;
  if (row_s && tid == 0) row_s[row] = s;
  if (!dx) return;
  const Acc gain = g ? val(g[0]) : Acc(1);
  const Acc proj = clamped ? Acc(0) : s;
  T* dxi = dx + row * N;
  for (int64_t j = tid; j < N; j += team) {
    const Acc xhat = val(xi[j]) / d;
    dxi[j] = from_acc<T>(gain / d * (val(dyi[j]) - xhat * proj));
  }
}

template <class T>
void launch_forward(T* y, acc_t<T>* norm, const T* x, const T* g, int64_t M, int64_t N, double eps) {
  if (N <= kShortRow)
    scale_norm_forward_kernel<T, 1><<<unsigned((M + kWarps - 1) / kWarps), kThreads, 0, cuda_stream()>>>(
        y, norm, x, g, M, N, eps);
  else
    scale_norm_forward_kernel<T, kWarps><<<unsigned(M), kThreads, 0, cuda_stream()>>>(y, norm, x, g, M, N, eps);
  check_launch();
}

template <class T>
void launch_backward(T* dx, acc_t<T>* row_s, const T* dy, const T* x, const T* g, const acc_t<T>* norm, int64_t M,
                     int64_t N, double eps) {
  if (N <= kShortRow)
    scale_norm_backward_kernel<T, 1><<<unsigned((M + kWarps - 1) / kWarps), kThreads, 0, cuda_stream()>>>(
        dx, row_s, dy, x, g, norm, M, N, eps);
  else
    scale_norm_backward_kernel<T, kWarps><<<unsigned(M), kThreads, 0, cuda_stream()>>>(dx, row_s, dy, x, g, norm,
                                                                                      M, N, eps);
  check_launch();
}
}  // namespace

ScaleNormStats scale_norm_forward_cuda(const Tensor& x_in, const Tensor& g_in, double eps) {
  check_eps(eps, "scale_norm");
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "scale_norm: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "scale_norm");
  NL_CHECK(M <= (int64_t(1) << 31) - 1, "scale_norm: too many rows for the GPU kernel (", M, ")");
  check_vector(g_in, 1, x_in.dtype(), "scale_norm", "g");
  check_on_cuda(x_in, "scale_norm", "x");
  check_on_cuda(g_in, "scale_norm", "g");
  const Tensor x = x_in.contiguous(), g = contiguous_or_undefined(g_in);
  ScaleNormStats out{empty(x.shape(), x.dtype(), x.device()),
                     empty(leading_shape(x), stat_dtype(x.dtype()), x.device())};
  dispatch(x.dtype(), "scale_norm", [&](auto tag) {
    using T = decltype(tag);
    launch_forward<T>(dptr<T>(out.y), dptr<acc_t<T>>(out.norm), dptr<T>(x), dptr<T>(g), M, N, eps);
  });
  return out;
}

ScaleNormGrads scale_norm_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& g_in,
                                        const Tensor& norm_in, double eps, bool want_dx, bool want_dg) {
  check_eps(eps, "scale_norm_backward");
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "scale_norm_backward: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "scale_norm_backward");
  NL_CHECK(dy_in.defined() && dy_in.shape() == x_in.shape() && dy_in.dtype() == x_in.dtype(),
           "scale_norm_backward: dy must match x (shape ", to_string(x_in.shape()), ", dtype ",
           dtype_name(x_in.dtype()), ")");
  NL_CHECK(norm_in.defined() && norm_in.numel() == M && norm_in.dtype() == stat_dtype(x_in.dtype()),
           "scale_norm_backward: norm must hold ", M, " values of dtype ", dtype_name(stat_dtype(x_in.dtype())));
  check_vector(g_in, 1, x_in.dtype(), "scale_norm_backward", "g");
  check_on_cuda(x_in, "scale_norm_backward", "x");
  check_on_cuda(dy_in, "scale_norm_backward", "dy");
  check_on_cuda(g_in, "scale_norm_backward", "g");
  check_on_cuda(norm_in, "scale_norm_backward", "norm");
  const Tensor dy = dy_in.contiguous(), x = x_in.contiguous(), g = contiguous_or_undefined(g_in),
               norm = norm_in.contiguous();
  ScaleNormGrads grads;
  if (want_dx) grads.dx = empty(x.shape(), x.dtype(), x.device());
  if (want_dg) grads.dg = empty({1}, x.dtype(), x.device());
  if (!want_dx && !want_dg) return grads;
  dispatch(x.dtype(), "scale_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    const Tensor row_s = want_dg ? empty({M}, acc_dtype<Acc>(), x.device()) : Tensor();
    launch_backward<T>(dptr<T>(grads.dx), dptr<Acc>(row_s), dptr<T>(dy), dptr<T>(x), dptr<T>(g), dptr<Acc>(norm), M,
                       N, eps);
    if (want_dg) vector_sum<Acc, T>(dptr<T>(grads.dg), dptr<Acc>(row_s), M);
  });
  return grads;
}

}  // namespace normlab
