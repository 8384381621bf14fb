#include "norm/weight_norm/weight_norm.h"

#include "autograd/ops.h"
#include "framework/tensor_ops.h"

namespace normlab {

template <class T>
void weight_norm_forward(T* w, T* rnorm, const T* g, const T* v, int64_t M, int64_t N) {
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* vi = v + i * N;
      double ss = 0;
      for (int64_t j = 0; j < N; ++j) ss += double(vi[j]) * double(vi[j]);
      const double rn = 1.0 / std::sqrt(ss);
      rnorm[i] = T(rn);
      const double scale = double(g[i]) * rn;
      T* wi = w + i * N;
      for (int64_t j = 0; j < N; ++j) wi[j] = T(scale * double(vi[j]));
    }
  });
}

// Per row: w = g * v * rnorm,  rnorm = 1 / ||v||,  d||v|| / dv = v * rnorm
// dg = rnorm * sum(dw * v)
// dv = g * rnorm * dw - g * v * rnorm^2 * sum(dw * v) = g * rnorm * (dw - dg * rnorm * v)
//    (= (g / ||v||) (I - w w^T / ||w||^2) dw, so sum(dv * v) = 0)
// dg is a reduction within a row, made by the one thread that owns the row.
template <class T>
void weight_norm_backward(T* dg, T* dv, const T* dw, const T* g, const T* v, const T* rnorm, int64_t M, int64_t N) {
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* vi = v + i * N;
      const T* dwi = dw + i * N;
      const double rn = double(rnorm[i]);
      double sum_dw_v = 0;
      for (int64_t j = 0; j < N; ++j) sum_dw_v += double(dwi[j]) * double(vi[j]);
      const double dgi = rn * sum_dw_v;
      if (dg) dg[i] = T(dgi);
      if (dv) {
        const double g_rn = double(g[i]) * rn;
        T* dvi = dv + i * N;
        for (int64_t j = 0; j < N; ++j) dvi[j] = T(g_rn * (double(dwi[j]) - dgi * rn * double(vi[j])));
      }
    }
  });
}

template void weight_norm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t);
template void weight_norm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t);
template void weight_norm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                          int64_t, int64_t);
template void weight_norm_backward<double>(double*, double*, const double*, const double*, const double*,
                                           const double*, int64_t, int64_t);

WeightNormStats weight_norm_forward(const Tensor& g_in, const Tensor& v_in) {
  NL_CHECK(g_in.defined() && v_in.defined(), "weight_norm: g and v are required");
  NL_CHECK(v_in.dim() == 2, "weight_norm: v must be 2-D [out, in], got shape ", to_string(v_in.shape()));
  const int64_t N = v_in.size(1);
  const int64_t M = rows_of(v_in, N, "weight_norm");  // also rejects an empty v
  check_vector(g_in, M, v_in.dtype(), "weight_norm", "g");
  const Tensor g = g_in.contiguous(), v = v_in.contiguous();
  WeightNormStats out{empty(v.shape(), v.dtype()), empty({M}, v.dtype())};
  NL_DISPATCH_FLOATING(v.dtype(), "weight_norm", [&] {
    weight_norm_forward<scalar_t>(out.w.data<scalar_t>(), out.rnorm.data<scalar_t>(), g.data<scalar_t>(),
                                  v.data<scalar_t>(), M, N);
    const scalar_t* rn = out.rnorm.data<scalar_t>();
    for (int64_t i = 0; i < M; ++i)
      NL_CHECK(std::isfinite(double(rn[i])), "weight_norm: row ", i, " of v has norm 0 (or is not finite)");
  });
  return out;
}

WeightNormGrads weight_norm_backward(const Tensor& dw_in, const Tensor& g, const Tensor& v, const Tensor& rnorm,
                                     bool want_dg, bool want_dv) {
  NL_CHECK(dw_in.shape() == v.shape(), "weight_norm_backward: dw has shape ", to_string(dw_in.shape()),
           " but v has ", to_string(v.shape()));
  const int64_t M = v.size(0), N = v.size(1);
  const Tensor dw = dw_in.contiguous(), vc = v.contiguous();
  WeightNormGrads grads;
  if (want_dg) grads.dg = empty({M}, v.dtype());
  if (want_dv) grads.dv = empty(v.shape(), v.dtype());
  NL_DISPATCH_FLOATING(v.dtype(), "weight_norm_backward", [&] {
    weight_norm_backward<scalar_t>(ptr_or_null<scalar_t>(grads.dg), ptr_or_null<scalar_t>(grads.dv),
                                   dw.data<scalar_t>(), g.contiguous().data<scalar_t>(), vc.data<scalar_t>(),
                                   rnorm.contiguous().data<scalar_t>(), M, N);
  });
  return grads;
}

std::vector<Tensor> WeightNormNode::backward(const std::vector<Tensor>& grad_outputs) {
  WeightNormGrads grads = weight_norm_backward(grad_outputs[0], g, v, rnorm, needs_input_grad(0), needs_input_grad(1));
  return {grads.dg, grads.dv};
}

void WeightNormNode::release() {
  g = v = rnorm = Tensor();
  Node::release();
}

Variable weight_norm(const Variable& g, const Variable& v) {
  NL_CHECK(g.defined() && v.defined(), "weight_norm: g and v are required");
  WeightNormStats s = weight_norm_forward(g.data(), v.data());
  return record({g, v}, {s.w}, [&] { return std::make_shared<WeightNormNode>(g.data(), v.data(), s.rnorm); })[0];
}

WeightNorm::WeightNorm(int64_t in_features, int64_t out_features, bool with_bias, Generator& gen, DType dtype)
    : WeightNorm(Linear(in_features, out_features, with_bias, gen, dtype)) {}

WeightNorm::WeightNorm(const Linear& linear) {
  const Tensor v0 = linear.weight.data().clone();
  const int64_t out = v0.size(0);
  // g = ||v|| per row: 1 / rnorm of the kernel run with g = 1.
  const Tensor unit = ones({out}, v0.dtype());
  g = register_parameter("weight_g", div(unit, weight_norm_forward(unit, v0).rnorm));
  v = register_parameter("weight_v", v0);
  if (linear.bias.defined()) bias = register_parameter("bias", linear.bias.data().clone());
}

Variable WeightNorm::weight() const { return weight_norm(g, v); }

Variable WeightNorm::forward(const Variable& x) const {
  rows_of(x.data(), v.size(1), "WeightNorm");
  Variable y = matmul(x, transpose(weight(), 0, 1));
  return bias.defined() ? y + bias : y;
}

}  // namespace normlab
