// Inlinable f32 math that the compiler can vectorize (glibc's expf is an opaque call per
// element). f64 keeps the C library's functions, so the f64 gradient checks see libm.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "framework/simd.h"

namespace normlab {

// exp for float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-6
// polynomial for e^r, scaled by 2^n built from its bits. Within 2 ulp of the correctly
// rounded result on [-87.33, 88.37] (tests/test_tensor.cpp sweeps the range); 0 below
// (where e^x would be subnormal), +inf above; NaN stays NaN. V is float, or simd::Vec<float> for
// 16 values at once with the same operations lane by lane (so the same bits per value).
namespace detail {
inline float pow2_of(float n) { return std::bit_cast<float>((int32_t(n) + 127) << 23); }
inline simd::Vec<float> pow2_of(simd::Vec<float> n) {
  return std::bit_cast<simd::Vec<float>>((__builtin_convertvector(n, simd::Vec<int32_t>) + 127) << 23);
}
}  // namespace detail

template <class V>
inline V exp_f32(V x) {
  static_assert(std::is_same_v<V, float> || std::is_same_v<V, simd::Vec<float>>);
  constexpr float kLo = -87.33654f, kHi = 88.37626f;  // 2^n stays a normal float
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  constexpr float kInf = std::numeric_limits<float>::infinity();
  V xc = x >= kLo ? x : kLo;  // also maps NaN to kLo (fixed below)
  xc = xc <= kHi ? xc : kHi;
  const V n = (xc * kLog2e + kRound) - kRound;
  const V r = (xc - n * kLn2Hi) - n * kLn2Lo;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  V y = p * detail::pow2_of(n);
  y = x > kHi ? kInf : y;
  y = x < kLo ? 0.0f : y;
  return x != x ? x : y;
}

// tanh for float, branch-free so that loops over it vectorize: Cephes' tanhf, an odd
// polynomial x + x^3 P(x^2) below |x| = 0.625 and 1 - 2 / (e^{2|x|} + 1) (with x's sign) above;
// +-1 for large |x|; NaN stays NaN.
inline float tanh_f32(float x) {
  const float ax = std::fabs(x), z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float large = std::copysign(1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f), x);
  return ax < 0.625f ? small : large;
}

template <class T> inline T fast_tanh(T x) {
  if constexpr (std::is_same_v<T, float>) return tanh_f32(x);
  else return std::tanh(x);
}

template <class T> inline T fast_exp(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_f32(x);
  else return std::exp(x);
}

}  // namespace normlab
