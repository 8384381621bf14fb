// GELU and SiLU and their derivatives: shared by the elementwise ops (gelu, silu) and the fused
// linear ops (linear_gelu, linear_swiglu), so both give the same bits.
#pragma once

#include <cstdint>

#include "framework/fast_math.h"
#include "framework/tensor.h"

namespace normlab {

inline constexpr double kGeluK = 0.79788456080286535588;  // sqrt(2/pi)
inline constexpr double kGeluC = 0.044715;

// GELU, tanh form: y = 0.5 x (1 + tanh(u)), u = k (x + c x^3), k = sqrt(2/pi), c = 0.044715.
// Computed through the identity 0.5 (1 + tanh(u)) = sigmoid(2u) =: s (one exp, no tanh):
//   y = x s,  dy/dx = s + x * 2 s (1 - s) * k (1 + 3 c x^2).
template <class T>
inline T gelu_value(T x) {
  return x / (T(1) + fast_exp(T(-2 * kGeluK) * (x + T(kGeluC) * x * x * x)));
}
template <class T>
inline T gelu_backward(T x, T dy) {  // dy * dgelu/dx at x
  const T s = T(1) / (T(1) + fast_exp(T(-2 * kGeluK) * (x + T(kGeluC) * x * x * x)));
  return dy * (s + x * T(2) * s * (T(1) - s) * T(kGeluK) * (T(1) + T(3 * kGeluC) * x * x));
}

// GELU over n contiguous values with its derivative: y[i] = gelu(v) and d[i] = gelu'(v) for
// v = x[i] (+ b[i] when b is not null, one rounded add), so that backward is dx = dy * d, a product
// (no exp or division left for backward). f32 runs 16 values at a time (exp_f32 on vectors; s is
// one division, y = v s); f64 uses the scalar formulas above and libm. The same v gives the same
// bits from every caller and for every chunking.
void gelu_with_derivative(const float* x, const float* b, float* y, float* d, int64_t n);
void gelu_with_derivative(const double* x, const double* b, double* y, double* d, int64_t n);

// The same for a tensor (any layout; f32 or f64), split over threads: {gelu(x + bias),
// gelu'(x + bias)}, both fresh, contiguous and in x's shape; bias, when defined, is [x.size(-1)]
// added to every row (linear_gelu's bias).
struct GeluAndDerivative {
  Tensor y, d;
};
GeluAndDerivative gelu_with_derivative(const Tensor& x, const Tensor& bias = Tensor());

// SiLU: y = x s, s = sigmoid(x); dy/dx = s (1 + x (1 - s)).
template <class T>
inline T silu_value(T x) {
  return x / (T(1) + fast_exp(-x));
}
template <class T>
inline T silu_backward(T x, T dy) {  // dy * dsilu/dx at x
  const T s = T(1) / (T(1) + fast_exp(-x));
  return dy * s * (T(1) + x * (T(1) - s));
}

}  // namespace normlab
