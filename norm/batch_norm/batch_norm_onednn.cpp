#include "norm/batch_norm/batch_norm_onednn.h"

namespace normlab {
namespace {
using dnnl::memory;

// Checks eps, x [N, C] or [N, C, L] (f32, training) and its parameters; describes x as nc or ncw.
onednn_norm::Descs batch_norm_descs(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                                    const char* who) {
  check_eps(eps, who);
  onednn_norm::check_f32(x, who, "x");
  NL_CHECK(x.dim() >= 2, who, ": expected an input of shape [N, C] or [N, C, L], got ", to_string(x.shape()));
  const int64_t C = x.size(1);
  batch_norm_check_input(x, C, true, who);
  check_vector(gamma, C, DType::f32, who, "gamma");
  check_vector(beta, C, DType::f32, who, "beta");
  const memory::desc data = x.dim() == 2
                                ? memory::desc({x.size(0), C}, memory::data_type::f32, memory::format_tag::nc)
                                : memory::desc({x.size(0), C, x.size(2)}, memory::data_type::f32,
                                               memory::format_tag::ncw);
  const memory::desc channel({C}, memory::data_type::f32, memory::format_tag::a);
  return {data, channel, channel, {C}, C};
}

}  // namespace

NormStatsOnednn batch_norm_forward_onednn(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  return onednn_norm::forward<dnnl::batch_normalization_forward>(
      batch_norm_descs(x, gamma, beta, eps, "batch_norm_forward_onednn"), eps, x, gamma, beta);
}

BatchNormGrads batch_norm_backward_onednn(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& mean, const Tensor& variance, double eps) {
  const char* who = "batch_norm_backward_onednn";
  return onednn_norm::backward<dnnl::batch_normalization_forward, dnnl::batch_normalization_backward>(
      batch_norm_descs(x, gamma, beta, eps, who), eps, dy, x, gamma, beta, mean, variance, who);
}

}  // namespace normlab
