// LayerNorm through oneDNN 2.6 (dnnl::layer_normalization_forward / _backward, f32): a parity
// peer of layer_norm_forward / layer_norm_backward. oneDNN saves the biased VARIANCE per row,
// not rstd: rstd = 1 / sqrt(variance + eps).
//
// Also the plumbing that the oneDNN normalization peers share (engine, stream, running a
// forward_training or backward primitive with its mean/variance/scale/shift arguments).
#pragma once

#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include <dnnl.hpp>

#include "norm/layer_norm/layer_norm.h"

namespace normlab {

// x [..., N] f32; gamma and beta [N] may be undefined. mean and variance have x's leading shape.
struct NormStatsOnednn {
  Tensor y, mean, variance;
};
NormStatsOnednn layer_norm_forward_onednn(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps);
// prop_kind::backward: dx, and dgamma / dbeta when gamma / beta are defined (oneDNN reads beta
// although dx does not depend on it), from the mean and variance the forward saved.
LayerNormGrads layer_norm_backward_onednn(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& mean, const Tensor& variance, double eps);

namespace onednn_norm {

dnnl::engine& engine();
// use_scale and/or use_shift.
dnnl::normalization_flags flags(bool scale, bool shift);
// Throws unless t is a defined f32 tensor.
void check_f32(const Tensor& t, const char* who, const char* name);

// Memory descriptors of a normalization primitive: data (x, y, dy, dx), statistics (mean,
// variance, of stat_shape) and parameters (gamma, beta and their gradients, of param_size), all
// plain f32.
struct Descs {
  dnnl::memory::desc data, stat, param;
  Shape stat_shape;
  int64_t param_size;
};
// Runs a forward_training primitive on x (gamma/beta undefined when unused): y, mean, variance.
NormStatsOnednn run_forward(const dnnl::primitive& p, const Descs& md, const Tensor& x, const Tensor& gamma,
                            const Tensor& beta);
// Checks dy and the statistics, then runs a backward primitive: dx, and dgamma / dbeta when
// gamma / beta are defined.
NormGrads run_backward(const dnnl::primitive& p, const Descs& md, const Tensor& dy, const Tensor& x,
                            const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& variance,
                            const char* who);

// The forward_training primitive descriptor of Fwd (dnnl::layer_normalization_forward or
// dnnl::batch_normalization_forward; only layer normalization takes a statistics descriptor).
template <class Fwd>
typename Fwd::primitive_desc forward_pd(const Descs& md, double eps, dnnl::normalization_flags f) {
  constexpr auto training = dnnl::prop_kind::forward_training;
  if constexpr (std::is_same_v<Fwd, dnnl::layer_normalization_forward>)
    return {typename Fwd::desc(training, md.data, md.stat, float(eps), f), engine()};
  else
    return {typename Fwd::desc(training, md.data, float(eps), f), engine()};
}

// The primitive make() builds, cached by (primitive type, data dims, eps, flags): building one
// costs far more than running it on a small tensor. Cached primitives may run on any thread.
template <class Prim, class Make>
const Prim& cached_primitive(const Descs& md, double eps, dnnl::normalization_flags f, const Make& make) {
  using Key = std::tuple<dnnl::memory::dims, double, int>;
  static std::mutex mutex;
  static auto* cache = new std::map<Key, Prim>;  // leaked, like engine()
  const Key key{md.data.dims(), eps, int(f)};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, make()).first;
  return it->second;
}

// Forward (training) of a normalization: y, mean, variance.
template <class Fwd>
NormStatsOnednn forward(const Descs& md, double eps, const Tensor& x, const Tensor& gamma, const Tensor& beta) {
  const dnnl::normalization_flags f = flags(gamma.defined(), beta.defined());
  const Fwd& prim = cached_primitive<Fwd>(md, eps, f, [&] { return Fwd(forward_pd<Fwd>(md, eps, f)); });
  return run_forward(prim, md, x, gamma, beta);
}

// Backward (prop_kind::backward) of a normalization from its saved mean and variance.
template <class Fwd, class Bwd>
NormGrads backward(const Descs& md, double eps, const Tensor& dy, const Tensor& x, const Tensor& gamma,
                   const Tensor& beta, const Tensor& mean, const Tensor& variance, const char* who) {
  const dnnl::normalization_flags f = flags(gamma.defined(), beta.defined());
  const Bwd& prim = cached_primitive<Bwd>(md, eps, f, [&] {
    constexpr auto backward = dnnl::prop_kind::backward;
    if constexpr (std::is_same_v<Bwd, dnnl::layer_normalization_backward>)
      return Bwd({typename Bwd::desc(backward, md.data, md.data, md.stat, float(eps), f), engine(),
                  forward_pd<Fwd>(md, eps, f)});
    else
      return Bwd({typename Bwd::desc(backward, md.data, md.data, float(eps), f), engine(),
                  forward_pd<Fwd>(md, eps, f)});
  });
  return run_backward(prim, md, dy, x, gamma, beta, mean, variance, who);
}

}  // namespace onednn_norm
}  // namespace normlab
