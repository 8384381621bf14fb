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

// tanh for float as one rational function, no exp: Eigen's generic_fast_tanh_float, an odd
// degree-13 numerator over an even degree-6 denominator on x clamped to +-7.9053111 (where it
// reaches +-1), and x itself below |x| = 4e-4. Within 4e-7 of tanh, absolute and relative (the
// worst near |x| = 5.8, ~7 ulp of 1; tests/test_norm_dyt.cpp sweeps [-12, 12]); +-inf gives +-1,
// NaN stays NaN. V is float or simd::Vec<float> (the same operations lane by lane).
template <class V>
inline V tanh_rational_f32(V x) {
  static_assert(std::is_same_v<V, float> || std::is_same_v<V, simd::Vec<float>>);
  constexpr float kClamp = 7.90531110763549805f, kSmall = 4e-4f;
  V xc = x < -kClamp ? -kClamp : x;
  xc = xc > kClamp ? kClamp : xc;
  const V x2 = xc * xc;
  V p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  V q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const V r = p * xc / q;
  return (x < kSmall && x > -kSmall) ? x : r;
}

// t = tanh(u) and slope = dt/du = 1 - t^2 from one exp and one divide, for a backward that needs
// both. Below |u| = 0.625 tanh_f32's odd polynomial and 1 - t^2 (t^2 < 0.31: no cancellation);
// above, with e = e^{-2|u|} and r = 1 / (1 + e), t = (1 - e) r with u's sign and slope = 4 e r^2,
// which stays accurate where t rounds to +-1 and 1 - t^2 would cancel (or be 0). V as above.
template <class V>
inline V tanh_with_slope_f32(V u, V& slope) {
  static_assert(std::is_same_v<V, float> || std::is_same_v<V, simd::Vec<float>>);
  const V au = u < 0.0f ? -u : u, z = u * u;
  V p = z * -5.70498872745e-3f + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const V t_small = p * z * u + u;
  const V e = exp_f32(-2.0f * au);
  const V r = 1.0f / (1.0f + e);
  const V t_large_abs = (1.0f - e) * r;
  const auto small = au < 0.625f;  // bool, or a lane mask for vectors
  slope = small ? 1.0f - t_small * t_small : 4.0f * e * r * r;
  const V t_large = u < 0.0f ? -t_large_abs : t_large_abs;
  return small ? t_small : t_large;
}

template <class T> inline T fast_exp(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_f32(x);
  else return std::exp(x);
}

}  // namespace normlab
