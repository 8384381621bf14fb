#include "norm/layer_norm/layer_norm_onednn.h"

#include <unordered_map>

namespace normlab {
namespace onednn_norm {

dnnl::engine& engine() {
  // Leaked on purpose (as in framework/matmul.cpp): no oneDNN object is destroyed during static
  // destruction, when oneDNN's own globals may already be gone.
  static dnnl::engine* e = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *e;
}

namespace {
dnnl::stream& thread_stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

// A oneDNN memory over t's data (t contiguous, laid out as md describes).
dnnl::memory wrap(const dnnl::memory::desc& md, const Tensor& t) { return dnnl::memory(md, engine(), t.raw_data()); }

void execute(const dnnl::primitive& p, const std::unordered_map<int, dnnl::memory>& args) {
  dnnl::stream& s = thread_stream();
  p.execute(s, args);
  s.wait();
}

// Adds gamma and beta (when defined) as the primitive's scale and shift.
void add_params(std::unordered_map<int, dnnl::memory>& args, const Descs& md, const Tensor& gamma,
                const Tensor& beta) {
  if (gamma.defined()) args[DNNL_ARG_SCALE] = wrap(md.param, gamma);
  if (beta.defined()) args[DNNL_ARG_SHIFT] = wrap(md.param, beta);
}

Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : Tensor(); }
}  // namespace

dnnl::normalization_flags flags(bool scale, bool shift) {
  auto f = dnnl::normalization_flags::none;
  if (scale) f = f | dnnl::normalization_flags::use_scale;
  if (shift) f = f | dnnl::normalization_flags::use_shift;
  return f;
}

void check_f32(const Tensor& t, const char* who, const char* name) {
  NL_CHECK(t.defined(), who, ": ", name, " is undefined");
  NL_CHECK(t.dtype() == DType::f32, who, ": oneDNN normalization is f32 only, ", name, " has dtype ",
           dtype_name(t.dtype()));
}

NormStatsOnednn run_forward(const dnnl::primitive& p, const Descs& md, const Tensor& x, const Tensor& gamma,
                            const Tensor& beta) {
  NormStatsOnednn out{empty(x.shape()), empty(md.stat_shape), empty(md.stat_shape)};
  const Tensor xc = x.contiguous(), g = contiguous_or_undefined(gamma), b = contiguous_or_undefined(beta);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, wrap(md.data, xc)},
                                             {DNNL_ARG_DST, wrap(md.data, out.y)},
                                             {DNNL_ARG_MEAN, wrap(md.stat, out.mean)},
                                             {DNNL_ARG_VARIANCE, wrap(md.stat, out.variance)}};
  add_params(args, md, g, b);
  execute(p, args);
  return out;
}

NormGrads run_backward(const dnnl::primitive& p, const Descs& md, const Tensor& dy, const Tensor& x,
                            const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& variance,
                            const char* who) {
  check_f32(dy, who, "dy");
  NL_CHECK(dy.shape() == x.shape(), who, ": dy has shape ", to_string(dy.shape()), " but x has ",
           to_string(x.shape()));
  check_f32(mean, who, "mean");
  check_f32(variance, who, "variance");
  NL_CHECK(mean.shape() == md.stat_shape && variance.shape() == md.stat_shape, who,
           ": mean and variance must have shape ", to_string(md.stat_shape), ", got ", to_string(mean.shape()),
           " and ", to_string(variance.shape()));
  NormGrads out{empty(x.shape()), gamma.defined() ? empty({md.param_size}) : Tensor(),
                     beta.defined() ? empty({md.param_size}) : Tensor()};
  const Tensor dyc = dy.contiguous(), xc = x.contiguous(), mc = mean.contiguous(), vc = variance.contiguous();
  const Tensor g = contiguous_or_undefined(gamma), b = contiguous_or_undefined(beta);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, wrap(md.data, xc)},
                                             {DNNL_ARG_DIFF_DST, wrap(md.data, dyc)},
                                             {DNNL_ARG_MEAN, wrap(md.stat, mc)},
                                             {DNNL_ARG_VARIANCE, wrap(md.stat, vc)},
                                             {DNNL_ARG_DIFF_SRC, wrap(md.data, out.dx)}};
  add_params(args, md, g, b);
  if (out.dgamma.defined()) args[DNNL_ARG_DIFF_SCALE] = wrap(md.param, out.dgamma);
  if (out.dbeta.defined()) args[DNNL_ARG_DIFF_SHIFT] = wrap(md.param, out.dbeta);
  execute(p, args);
  return out;
}

}  // namespace onednn_norm

namespace {
using dnnl::memory;

// Checks eps, x [..., N] (f32, non-empty) and its parameters; describes x as M rows of N.
onednn_norm::Descs layer_norm_descs(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                                    const char* who) {
  check_eps(eps, who);
  onednn_norm::check_f32(x, who, "x");
  NL_CHECK(x.dim() >= 1, who, ": the input needs at least 1 dim");
  const int64_t N = x.size(-1), M = rows_of(x, N, who);
  check_vector(gamma, N, DType::f32, who, "gamma");
  check_vector(beta, N, DType::f32, who, "beta");
  return {memory::desc({M, N}, memory::data_type::f32, memory::format_tag::ab),
          memory::desc({M}, memory::data_type::f32, memory::format_tag::a),
          memory::desc({N}, memory::data_type::f32, memory::format_tag::a), leading_shape(x), N};
}
}  // namespace

NormStatsOnednn layer_norm_forward_onednn(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  return onednn_norm::forward<dnnl::layer_normalization_forward>(
      layer_norm_descs(x, gamma, beta, eps, "layer_norm_forward_onednn"), eps, x, gamma, beta);
}

LayerNormGrads layer_norm_backward_onednn(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& mean, const Tensor& variance, double eps) {
  const char* who = "layer_norm_backward_onednn";
  return onednn_norm::backward<dnnl::layer_normalization_forward, dnnl::layer_normalization_backward>(
      layer_norm_descs(x, gamma, beta, eps, who), eps, dy, x, gamma, beta, mean, variance, who);
}

}  // namespace normlab
