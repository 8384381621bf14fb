#include "norm/fused_add_norm/fused_add_norm_cuda.h"

#include "norm/layer_norm/layer_norm_cuda.h"
#include "norm/layer_norm/row_norm_cuda.cuh"
#include "norm/rms_norm/rms_norm_cuda.h"

namespace normlab {

using namespace cuda_norm;

namespace {

// Checks x and r (one shape, dtype, on CUDA) and returns M.
int64_t check_pair_cuda(const Tensor& x, const Tensor& r, const char* who) {
  const int64_t M = check_rows_cuda(x, who);
  NL_CHECK(r.defined(), who, ": the residual r is undefined");
  check_like_cuda(r, x, who, "the residual r");
  return M;
}

// Checks the operands of a fused backward (dh optional) and returns M.
int64_t check_fused_backward(const Tensor& dh, const Tensor& dy, const Tensor& h, const char* who) {
  const int64_t M = check_rows_cuda(h, who);
  check_like_cuda(dy, h, who, "dy");
  if (dh.defined()) check_like_cuda(dh, h, who, "dh");
  return M;
}

}  // namespace

// h = x + r; y = layer_norm(h). Scalar math: add_layer_norm_forward (fused_add_norm.cpp).
AddLayerNormStats add_layer_norm_forward_cuda(const Tensor& x_in, const Tensor& r_in, const Tensor& gamma_in,
                                              const Tensor& beta_in, double eps) {
  const char* who = "add_layer_norm_forward_cuda";
  check_eps(eps, who);
  const int64_t M = check_pair_cuda(x_in, r_in, who);
  const int64_t N = x_in.size(-1);
  check_param_cuda(gamma_in, N, x_in.dtype(), who, "gamma");
  check_param_cuda(beta_in, N, x_in.dtype(), who, "beta");
  const Tensor x = dense(x_in), r = dense(r_in), gamma = dense(gamma_in), beta = dense(beta_in);
  const Device dev = x.device();
  const DType sd = stat_dtype(x.dtype());
  AddLayerNormStats out{empty(x.shape(), x.dtype(), dev), empty(x.shape(), x.dtype(), dev),
                        empty(leading_shape(x), sd, dev), empty(leading_shape(x), sd, dev)};
  NL_CUDA_DISPATCH(x.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    layer_norm_forward_cuda<scalar_t>(out.y.data<scalar_t>(), out.mean.data<S>(), out.rstd.data<S>(),
                                      out.h.data<scalar_t>(), x.data<scalar_t>(), r.data<scalar_t>(),
                                      ptr_or_null_cuda<scalar_t>(gamma), ptr_or_null_cuda<scalar_t>(beta), M, N, eps);
  });
  return out;
}

// dh_total = dh + rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); dgamma, dbeta from
// dy and h. Scalar math: add_layer_norm_backward (fused_add_norm.cpp); dh is added in the same
// pass as the norm's dx.
AddLayerNormGrads add_layer_norm_backward_cuda(const Tensor& dh_in, const Tensor& dy_in, const Tensor& h_in,
                                               const Tensor& gamma_in, const Tensor& mean_in, const Tensor& rstd_in,
                                               bool want_dh_total, bool want_dgamma, bool want_dbeta) {
  const char* who = "add_layer_norm_backward_cuda";
  const int64_t M = check_fused_backward(dh_in, dy_in, h_in, who);
  const int64_t N = h_in.size(-1);
  check_param_cuda(gamma_in, N, h_in.dtype(), who, "gamma");
  check_stat_cuda(mean_in, M, h_in.dtype(), who, "mean");
  check_stat_cuda(rstd_in, M, h_in.dtype(), who, "rstd");
  const Tensor dh = dense(dh_in), dy = dense(dy_in), h = dense(h_in), gamma = dense(gamma_in),
               mean = dense(mean_in), rstd = dense(rstd_in);
  const Device dev = h.device();
  AddLayerNormGrads g;
  if (want_dh_total) g.dh_total = empty(h.shape(), h.dtype(), dev);
  if (want_dgamma) g.dgamma = empty({N}, h.dtype(), dev);
  if (want_dbeta) g.dbeta = empty({N}, h.dtype(), dev);
  NL_CUDA_DISPATCH(h.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    layer_norm_backward_cuda<scalar_t>(ptr_or_null_cuda<scalar_t>(g.dh_total), ptr_or_null_cuda<scalar_t>(g.dgamma),
                                       ptr_or_null_cuda<scalar_t>(g.dbeta), dy.data<scalar_t>(), h.data<scalar_t>(),
                                       ptr_or_null_cuda<scalar_t>(gamma), mean.data<S>(), rstd.data<S>(),
                                       ptr_or_null_cuda<scalar_t>(dh), M, N);
  });
  return g;
}

// h = x + r; y = rms_norm(h). Scalar math: add_rms_norm_forward (fused_add_norm.cpp).
AddRMSNormStats add_rms_norm_forward_cuda(const Tensor& x_in, const Tensor& r_in, const Tensor& gamma_in, double eps,
                                          bool unit_offset) {
  const char* who = "add_rms_norm_forward_cuda";
  check_eps(eps, who);
  const int64_t M = check_pair_cuda(x_in, r_in, who);
  const int64_t N = x_in.size(-1);
  check_param_cuda(gamma_in, N, x_in.dtype(), who, "gamma");
  const Tensor x = dense(x_in), r = dense(r_in), gamma = dense(gamma_in);
  const Device dev = x.device();
  AddRMSNormStats out{empty(x.shape(), x.dtype(), dev), empty(x.shape(), x.dtype(), dev),
                      empty(leading_shape(x), stat_dtype(x.dtype()), dev)};
  NL_CUDA_DISPATCH(x.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    rms_norm_forward_cuda<scalar_t>(out.y.data<scalar_t>(), out.rrms.data<S>(), out.h.data<scalar_t>(),
                                    x.data<scalar_t>(), r.data<scalar_t>(), ptr_or_null_cuda<scalar_t>(gamma), M, N,
                                    eps, unit_offset);
  });
  return out;
}

// dh_total = dh + rrms * (dxhat - xhat * mean(dxhat * xhat)); dgamma from dy and h.
// Scalar math: add_rms_norm_backward (fused_add_norm.cpp).
AddRMSNormGrads add_rms_norm_backward_cuda(const Tensor& dh_in, const Tensor& dy_in, const Tensor& h_in,
                                           const Tensor& gamma_in, const Tensor& rrms_in, bool unit_offset,
                                           bool want_dh_total, bool want_dgamma) {
  const char* who = "add_rms_norm_backward_cuda";
  const int64_t M = check_fused_backward(dh_in, dy_in, h_in, who);
  const int64_t N = h_in.size(-1);
  check_param_cuda(gamma_in, N, h_in.dtype(), who, "gamma");
  check_stat_cuda(rrms_in, M, h_in.dtype(), who, "rrms");
  const Tensor dh = dense(dh_in), dy = dense(dy_in), h = dense(h_in), gamma = dense(gamma_in), rrms = dense(rrms_in);
  const Device dev = h.device();
  AddRMSNormGrads g;
  if (want_dh_total) g.dh_total = empty(h.shape(), h.dtype(), dev);
  if (want_dgamma) g.dgamma = empty({N}, h.dtype(), dev);
  NL_CUDA_DISPATCH(h.dtype(), who, [&] {
    using S = cuda_stat_t<scalar_t>;
    rms_norm_backward_cuda<scalar_t>(ptr_or_null_cuda<scalar_t>(g.dh_total), ptr_or_null_cuda<scalar_t>(g.dgamma),
                                     dy.data<scalar_t>(), h.data<scalar_t>(), ptr_or_null_cuda<scalar_t>(gamma),
                                     rrms.data<S>(), ptr_or_null_cuda<scalar_t>(dh), M, N, unit_offset);
  });
  return g;
}

}  // namespace normlab
