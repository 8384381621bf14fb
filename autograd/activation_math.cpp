// GELU with its derivative over contiguous values (autograd/activation_math.h).
#include "autograd/activation_math.h"

#include "framework/elementwise.h"
#include "framework/parallel.h"
#include "framework/simd.h"

namespace normlab {

void gelu_with_derivative(const float* x, float* y, float* d, int64_t n) {
  using V = simd::Vec<float>;
  constexpr float k = float(kGeluK), c = float(kGeluC), k2 = float(-2 * kGeluK), c3 = float(3 * kGeluC);
  simd::row_for<float>(n, [&](int64_t j, auto at) {
    const V v = at(x + j);
    const V s = 1.0f / (1.0f + exp_f32(k2 * (v + c * v * v * v)));
    at.store(y + j, v * s);
    at.store(d + j, s + v * 2.0f * s * (1.0f - s) * k * (1.0f + c3 * v * v));
  });
}

void gelu_with_derivative(const double* x, double* y, double* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = gelu_value(x[i]);
    d[i] = gelu_backward(x[i], 1.0);
  }
}

GeluAndDerivative gelu_with_derivative(const Tensor& x) {
  NL_CHECK(x.defined(), "gelu: input tensor is undefined");
  check_cpu(x, "gelu");
  const Tensor xc = x.contiguous();
  GeluAndDerivative out{empty(x.shape(), x.dtype()), empty(x.shape(), x.dtype())};
  NL_DISPATCH_FLOATING(x.dtype(), "gelu", [&] {
    const scalar_t* px = xc.data<scalar_t>();
    scalar_t* py = out.y.data<scalar_t>();
    scalar_t* pd = out.d.data<scalar_t>();
    parallel_for(0, xc.numel(), kElementwiseGrain, [&](int64_t b, int64_t e) {
      gelu_with_derivative(px + b, py + b, pd + b, e - b);
    });
  });
  return out;
}

}  // namespace normlab
