#include "norm/batch_norm/reduce_cuda.cuh"

#include "norm/group_norm/group_norm_cuda.h"
#include "norm/batch_norm/batch_norm_cuda.h"

namespace normlab {

namespace {
using namespace cuda_channel;

// Scalar math: group_norm_forward (group_norm.cpp): group k = n * G + g is the contiguous block
// of K = C/G * S values; mean = sum / K, var = sum (x - mean)^2 / K (two passes, biased),
// rstd = 1 / sqrt(var + eps). One block per group; each thread adds a fixed strided subset and
// block_sum adds the threads in a fixed tree: deterministic.
template <class T>
__global__ void group_stats_kernel(acc_t<T>* mean, acc_t<T>* rstd, const T* x, int64_t K, double eps) {
  using Acc = acc_t<T>;
  const int64_t k = blockIdx.x;
  const T* xk = x + k * K;
  Acc sum = 0;
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) sum += val(xk[j]);
  const Acc m = block_total(sum) / Acc(double(K));
  Acc ss = 0;
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
    const Acc d = val(xk[j]) - m;
    ss += d * d;
  }
  const Acc var = block_total(ss) / Acc(double(K));
  if (threadIdx.x == 0) {
    mean[k] = m;
    rstd[k] = Acc(1) / sqrt_acc(var + Acc(eps));
  }
}
}  // namespace

GroupNormStats group_norm_forward_cuda(const Tensor& x_in, const Tensor& gamma_in, const Tensor& beta_in, int64_t G,
                                       double eps) {
  const char* who = "group_norm";
  check_eps(eps, who);
  NL_CHECK(x_in.defined() && x_in.dim() >= 2, "group_norm: expected an input of shape [N, C, *], got ",
           x_in.defined() ? to_string(x_in.shape()) : std::string("an undefined tensor"));
  const int64_t N = x_in.size(0), C = x_in.size(1);
  check_groups(G, C, who);
  const int64_t S = group_norm_check_input(x_in, C, who);
  NL_CHECK(N * G <= (int64_t(1) << 31) - 1, who, ": too many groups for the GPU kernel (", N * G, ")");
  check_vector(gamma_in, C, x_in.dtype(), who, "gamma");
  check_vector(beta_in, C, x_in.dtype(), who, "beta");
  check_on_cuda(x_in, who, "x");
  check_on_cuda(gamma_in, who, "gamma");
  check_on_cuda(beta_in, who, "beta");
  const Tensor x = x_in.contiguous(), gamma = contiguous_or_undefined(gamma_in),
               beta = contiguous_or_undefined(beta_in);
  const DType sd = stat_dtype(x.dtype());
  GroupNormStats out{Tensor(), empty({N, G}, sd, x.device()), empty({N, G}, sd, x.device())};
  dispatch(x.dtype(), who, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    group_stats_kernel<T><<<unsigned(N * G), 256, 0, cuda_stream()>>>(dptr<Acc>(out.mean), dptr<Acc>(out.rstd),
                                                                       dptr<T>(x), C / G * S, eps);
    check_launch();
  });
  out.y = channel_norm_apply_cuda(x, gamma, beta, out.mean, out.rstd, ChannelStatMap{G, C / G});
  return out;
}

GroupNormGrads group_norm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                        const Tensor& rstd, bool want_dx, bool want_dgamma, bool want_dbeta) {
  NL_CHECK(x.defined() && x.dim() >= 2 && mean.defined() && mean.dim() == 2,
           "group_norm_backward: expected x [N, C, *] and mean [N, G]");
  const int64_t C = x.size(1), G = mean.size(1);
  check_groups(G, C, "group_norm_backward");
  return channel_norm_backward_cuda(dy, x, gamma, mean, rstd, ChannelStatMap{G, C / G}, false, want_dx, want_dgamma,
                                    want_dbeta, "group_norm_backward");
}

}  // namespace normlab
