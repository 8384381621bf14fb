// GELU with its derivative over contiguous values (autograd/activation_math.h).
#include "autograd/activation_math.h"

#include "framework/elementwise.h"
#include "framework/parallel.h"
#include "framework/simd.h"

namespace normlab {

void gelu_with_derivative(const float* x, const float* b, float* y, float* d, int64_t n) {
  using V = simd::Vec<float>;
  constexpr float k = float(kGeluK), c = float(kGeluC), k2 = float(-2 * kGeluK), c3 = float(3 * kGeluC);
  simd::row_for<float>(n, [&](int64_t j, auto at) {
    const V v = b ? at(x + j) + at(b + j) : at(x + j);
    const V s = 1.0f / (1.0f + exp_f32(k2 * (v + c * v * v * v)));
    at.store(y + j, v * s);
    at.store(d + j, s + v * 2.0f * s * (1.0f - s) * k * (1.0f + c3 * v * v));
  });
}

void gelu_with_derivative(const double* x, const double* b, double* y, double* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = b ? x[i] + b[i] : x[i];
    y[i] = gelu_value(v);
    d[i] = gelu_backward(v, 1.0);
  }
}

GeluAndDerivative gelu_with_derivative(const Tensor& x, const Tensor& bias) {
  NL_CHECK(x.defined(), "gelu: input tensor is undefined");
  check_cpu(x, "gelu");
  const int64_t N = x.dim() == 0 ? 1 : x.size(-1);
  if (bias.defined())
    NL_CHECK(bias.dim() == 1 && bias.size(0) == N && bias.dtype() == x.dtype(), "gelu: bias must be ",
             dtype_name(x.dtype()), " [", N, "], got ", dtype_name(bias.dtype()), " ", to_string(bias.shape()));
  const Tensor xc = x.contiguous(), bc = bias.defined() ? bias.contiguous() : Tensor();
  GeluAndDerivative out{empty(x.shape(), x.dtype()), empty(x.shape(), x.dtype())};
  NL_DISPATCH_FLOATING(x.dtype(), "gelu", [&] {
    const scalar_t* px = xc.data<scalar_t>();
    scalar_t* py = out.y.data<scalar_t>();
    scalar_t* pd = out.d.data<scalar_t>();
    if (!bc.defined()) {
      parallel_for(0, xc.numel(), kElementwiseGrain, [&](int64_t i0, int64_t i1) {
        gelu_with_derivative(px + i0, nullptr, py + i0, pd + i0, i1 - i0);
      });
      return;
    }
    const scalar_t* pb = bc.data<scalar_t>();
    parallel_for(0, N == 0 ? 0 : xc.numel() / N, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(N, 1)),
                 [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) gelu_with_derivative(px + r * N, pb, py + r * N, pd + r * N, N);
    });
  });
  return out;
}

}  // namespace normlab
