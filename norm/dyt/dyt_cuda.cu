#include "norm/batch_norm/reduce_cuda.cuh"

#include "norm/dyt/dyt_cuda.h"

namespace normlab {

namespace {
using namespace cuda_channel;

// Scalar math: dyt_forward (dyt.cpp), y = gamma * tanh(alpha * x) + beta (identity: t = alpha * x).
template <class T>
__global__ void dyt_forward_kernel(T* y, const T* x, const T* alpha, const T* gamma, const T* beta, int64_t M,
                                   int64_t N, bool identity) {
  using Acc = acc_t<T>;
  const Acc a = val(alpha[0]);
  const int64_t total = M * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % N;
    const Acc u = a * val(x[i]);
    const Acc t = identity ? u : tanh_acc(u);
    y[i] = from_acc<T>(val(gamma[j]) * t + val(beta[j]));
  }
}

// Scalar math: dyt_backward (dyt.cpp):
// u = alpha * x,  t = tanh(u) (identity: t = u),  dt_du = 1 - t^2 (identity: 1)
// du = dy * gamma * dt_du
// dx = du * alpha,  dalpha = sum(du * x),  dgamma = sum_rows(dy * t),  dbeta = sum_rows(dy)
template <class T>
struct DyTTerms {
  using Acc = acc_t<T>;
  T* dx;  // may be null
  const T *dy, *x, *alpha, *gamma;
  int64_t N;
  bool identity;
  // acc[0]: dgamma, acc[1]: dbeta, acc[2]: this column's share of dalpha
  __device__ void operator()(int64_t i, int64_t j, Acc (&acc)[3]) const {
    const int64_t e = i * N + j;
    const Acc a = val(alpha[0]);
    const Acc xv = val(x[e]), dyv = val(dy[e]);
    const Acc u = a * xv;
    const Acc t = identity ? u : tanh_acc(u);
    const Acc dt_du = identity ? Acc(1) : Acc(1) - t * t;
    const Acc du = dyv * val(gamma[j]) * dt_du;
    if (dx) dx[e] = from_acc<T>(du * a);
    acc[0] += dyv * t;
    acc[1] += dyv;
    acc[2] += du * xv;
  }
};

template <class T>
struct DyTColumns {
  using Acc = acc_t<T>;
  T *dgamma, *dbeta;  // may be null
  Acc* dalpha_cols;   // [N]
  __device__ void operator()(int64_t j, const Acc (&total)[3]) const {
    if (dgamma) dgamma[j] = from_acc<T>(total[0]);
    if (dbeta) dbeta[j] = from_acc<T>(total[1]);
    dalpha_cols[j] = total[2];
  }
};

// dx alone: the elementwise part of the backward above.
template <class T>
__global__ void dyt_dx_kernel(T* dx, const T* dy, const T* x, const T* alpha, const T* gamma, int64_t M, int64_t N,
                              bool identity) {
  using Acc = acc_t<T>;
  const Acc a = val(alpha[0]);
  const int64_t total = M * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Acc u = a * val(x[i]);
    const Acc t = identity ? u : tanh_acc(u);
    const Acc dt_du = identity ? Acc(1) : Acc(1) - t * t;
    dx[i] = from_acc<T>(val(dy[i]) * val(gamma[i % N]) * dt_du * a);
  }
}

void check_dyt_params(const Tensor& x, const Tensor& alpha, const Tensor& gamma, const Tensor& beta, int64_t N,
                      const char* who) {
  NL_CHECK(alpha.defined(), who, ": alpha is undefined");
  check_vector(alpha, 1, x.dtype(), who, "alpha");
  check_vector(gamma, N, x.dtype(), who, "gamma");
  check_vector(beta, N, x.dtype(), who, "beta");
  check_on_cuda(alpha, who, "alpha");
  check_on_cuda(gamma, who, "gamma");
  check_on_cuda(beta, who, "beta");
}
}  // namespace

Tensor dyt_forward_cuda(const Tensor& x_in, const Tensor& alpha_in, const Tensor& gamma_in, const Tensor& beta_in,
                        bool identity) {
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "dyt: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "dyt");
  NL_CHECK(gamma_in.defined() && beta_in.defined(), "dyt: gamma and beta are required");
  check_on_cuda(x_in, "dyt", "x");
  check_dyt_params(x_in, alpha_in, gamma_in, beta_in, N, "dyt");
  const Tensor x = x_in.contiguous(), alpha = alpha_in.contiguous(), gamma = gamma_in.contiguous(),
               beta = beta_in.contiguous();
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  dispatch(x.dtype(), "dyt", [&](auto tag) {
    using T = decltype(tag);
    dyt_forward_kernel<T><<<grid_for(M * N, 256), 256, 0, cuda_stream()>>>(
        dptr<T>(y), dptr<T>(x), dptr<T>(alpha), dptr<T>(gamma), dptr<T>(beta), M, N, identity);
    check_launch();
  });
  return y;
}

DyTGrads dyt_backward_cuda(const Tensor& dy_in, const Tensor& x_in, const Tensor& alpha_in, const Tensor& gamma_in,
                           bool identity, bool want_dx, bool want_dalpha, bool want_dgamma, bool want_dbeta) {
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "dyt_backward: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "dyt_backward");
  NL_CHECK(dy_in.defined() && dy_in.shape() == x_in.shape(), "dyt_backward: dy has shape ",
           dy_in.defined() ? to_string(dy_in.shape()) : std::string("(undefined)"), " but x has ",
           to_string(x_in.shape()));
  NL_CHECK(dy_in.dtype() == x_in.dtype(), "dyt_backward: dy has dtype ", dtype_name(dy_in.dtype()), " but x has ",
           dtype_name(x_in.dtype()));
  check_on_cuda(x_in, "dyt_backward", "x");
  check_on_cuda(dy_in, "dyt_backward", "dy");
  NL_CHECK(gamma_in.defined(), "dyt_backward: gamma is required");
  check_dyt_params(x_in, alpha_in, gamma_in, Tensor(), N, "dyt_backward");
  const Tensor dy = dy_in.contiguous(), x = x_in.contiguous(), alpha = alpha_in.contiguous(),
               gamma = gamma_in.contiguous();
  DyTGrads g;
  const Device dev = x.device();
  if (want_dx) g.dx = empty(x.shape(), x.dtype(), dev);
  if (want_dalpha) g.dalpha = empty({1}, x.dtype(), dev);
  if (want_dgamma) g.dgamma = empty({N}, x.dtype(), dev);
  if (want_dbeta) g.dbeta = empty({N}, x.dtype(), dev);
  dispatch(x.dtype(), "dyt_backward", [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    if (!want_dalpha && !want_dgamma && !want_dbeta) {
      if (!want_dx) return;
      dyt_dx_kernel<T><<<grid_for(M * N, 256), 256, 0, cuda_stream()>>>(dptr<T>(g.dx), dptr<T>(dy), dptr<T>(x),
                                                                         dptr<T>(alpha), dptr<T>(gamma), M, N,
                                                                         identity);
      check_launch();
      return;
    }
    // One pass writes dx and the per-column partials; a second adds the partials in order.
    const Tensor dalpha_cols = empty({N}, acc_dtype<Acc>(), dev);
    col_reduce<Acc, 3>(M, N,
                       DyTTerms<T>{dptr<T>(g.dx), dptr<T>(dy), dptr<T>(x), dptr<T>(alpha), dptr<T>(gamma), N,
                                   identity},
                       DyTColumns<T>{dptr<T>(g.dgamma), dptr<T>(g.dbeta), dptr<Acc>(dalpha_cols)});
    if (want_dalpha) vector_sum<Acc, T>(dptr<T>(g.dalpha), dptr<Acc>(dalpha_cols), N);
  });
  return g;
}

}  // namespace normlab
