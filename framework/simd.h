// A fixed-width vector of T (64 bytes: 16 floats or 8 doubles) on GCC/Clang vector extensions,
// for the norm kernels' hot loops. The lane count is fixed here, not by the machine, so a sum over
// lanes gives the same bits on any CPU and for any thread count; the compiler maps the type to
// AVX-512, two AVX2 registers or SSE as the build's -march allows.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "framework/dtype.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors pass in memory without AVX-512; all inlined

namespace normlab::simd {

template <class T>
struct VecOf {
  typedef T type __attribute__((vector_size(64)));
};
template <class T>
using Vec = typename VecOf<T>::type;

template <class T>
constexpr int64_t lanes = int64_t(64 / sizeof(T));

template <class T>
[[gnu::always_inline]] inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class T>
[[gnu::always_inline]] inline void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

template <class T>
[[gnu::always_inline]] inline Vec<T> splat(T s) {
  return Vec<T>{} + s;
}

// Sum of the lanes in a fixed pairwise order: a[l] += a[l + w] for w = lanes/2, ..., 1, as
// vector adds of the vector and its halves swapped.
template <class T>
[[gnu::always_inline]] inline T hsum(Vec<T> v) {
  if constexpr (lanes<T> == 16) {
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  } else {
    static_assert(lanes<T> == 8);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
  }
  return v[0];
}

// Low-precision rows (bf16, f16): a block of lanes<float> 16-bit values widens to a Vec<float>
// (exactly) and a Vec<float> narrows with the scalar S(float)'s rounding (to nearest even; a NaN
// becomes a quiet NaN; f16: past 65504 to infinity, below 2^-14 to subnormals or zero), lane by
// lane, so a kernel on Vec<float> reads and writes such rows as f32 rows, with the bits of the
// scalar conversions of dtype.h.
typedef uint16_t HalfBits __attribute__((vector_size(32)));
typedef uint32_t F32Bits __attribute__((vector_size(64)));
static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2 && sizeof(HalfBits) / 2 == lanes<float>);

// f16 through F16C's vcvtph2ps / vcvtps2ph (round to nearest even, no exceptions), 16 lanes at
// a time with AVX-512 or 8 with F16C alone; without either, lane by lane through dtype.h's f16.
// The hardware's results are the scalar ones for every input, NaNs included (tests/
// test_norm_low_precision.cpp checks every half and a stride through the floats). The AVX-512
// forms are the zero-masked ones with every lane selected (the same instruction): GCC 12's plain
// forms start from _mm512_undefined_*, which -Wmaybe-uninitialized reports.
[[gnu::always_inline]] inline Vec<float> widen_f16(HalfBits h) {
#if defined(__AVX512F__)
  return reinterpret_cast<Vec<float>>(_mm512_maskz_cvtph_ps(__mmask16(0xffff), reinterpret_cast<__m256i>(h)));
#elif defined(__F16C__)
  typedef uint16_t Half8 __attribute__((vector_size(16)));
  typedef float Float8 __attribute__((vector_size(32)));
  const Half8 lo = __builtin_shufflevector(h, h, 0, 1, 2, 3, 4, 5, 6, 7);
  const Half8 hi = __builtin_shufflevector(h, h, 8, 9, 10, 11, 12, 13, 14, 15);
  const Float8 a = reinterpret_cast<Float8>(_mm256_cvtph_ps(reinterpret_cast<__m128i>(lo)));
  const Float8 b = reinterpret_cast<Float8>(_mm256_cvtph_ps(reinterpret_cast<__m128i>(hi)));
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  Vec<float> v;
  for (int l = 0; l < 16; ++l) {
    f16 x;
    x.bits = h[l];
    v[l] = float(x);
  }
  return v;
#endif
}

[[gnu::always_inline]] inline HalfBits narrow_f16(Vec<float> v) {
#if defined(__AVX512F__) || defined(__F16C__)
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#endif
#if defined(__AVX512F__)
  return reinterpret_cast<HalfBits>(_mm512_maskz_cvtps_ph(__mmask16(0xffff), reinterpret_cast<__m512>(v), kRound));
#elif defined(__F16C__)
  typedef float Float8 __attribute__((vector_size(32)));
  typedef uint16_t Half8 __attribute__((vector_size(16)));
  const Float8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const Float8 b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Half8 lo = reinterpret_cast<Half8>(_mm256_cvtps_ph(reinterpret_cast<__m256>(a), kRound));
  const Half8 hi = reinterpret_cast<Half8>(_mm256_cvtps_ph(reinterpret_cast<__m256>(b), kRound));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  HalfBits h;
  for (int l = 0; l < 16; ++l) h[l] = f16(v[l]).bits;
  return h;
#endif
}

// The conversions for storage type S: f16's above; bf16's in integer vector ops (its 16 bits are
// the top of an f32's; narrowing adds the rounding bias and keeps a NaN a quiet NaN).
template <class S>
  requires is_low_precision_v<S>
[[gnu::always_inline]] inline Vec<float> widen(HalfBits h) {
  if constexpr (std::is_same_v<S, f16>) return widen_f16(h);
  else return reinterpret_cast<Vec<float>>(__builtin_convertvector(h, F32Bits) << 16);
}

template <class S>
  requires is_low_precision_v<S>
[[gnu::always_inline]] inline HalfBits narrow(Vec<float> v) {
  if constexpr (std::is_same_v<S, f16>) {
    return narrow_f16(v);
  } else {
    const F32Bits u = reinterpret_cast<F32Bits>(v);
    const F32Bits rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const F32Bits quiet = (u >> 16) | 0x40u;
    const F32Bits nan = reinterpret_cast<F32Bits>((u & 0x7fffffffu) > 0x7f800000u);
    return __builtin_convertvector((quiet & nan) | (rounded & ~nan), HalfBits);
  }
}

// Access to one lanes-wide block of a row: Full for whole blocks, Part for the row's last n < lanes
// elements (loads fill the other lanes with 0, stores write only the n). Row loops call their body
// with either, so one generic lambda serves both.
struct Full {
  template <class T>
    requires std::is_floating_point_v<T>
  [[gnu::always_inline]] Vec<T> operator()(const T* p) const {
    return load(p);
  }
  template <class T>
    requires std::is_floating_point_v<T>
  [[gnu::always_inline]] void store(T* p, Vec<T> v) const {
    simd::store(p, v);
  }
  template <class S>
    requires is_low_precision_v<S>
  [[gnu::always_inline]] Vec<float> operator()(const S* p) const {
    HalfBits h;
    std::memcpy(&h, p, sizeof h);
    return widen<S>(h);
  }
  template <class S>
    requires is_low_precision_v<S>
  [[gnu::always_inline]] void store(S* p, Vec<float> v) const {
    const HalfBits h = narrow<S>(v);
    std::memcpy(static_cast<void*>(p), &h, sizeof h);  // bf16 and f16 are trivially copyable
  }
  template <class T>
  [[gnu::always_inline]] Vec<T> mask(Vec<T> v) const {
    return v;
  }
};
struct Part {
  int64_t n;
  template <class T>
    requires std::is_floating_point_v<T>
  [[gnu::always_inline]] Vec<T> operator()(const T* p) const {
    Vec<T> v{};
    std::memcpy(&v, p, size_t(n) * sizeof(T));
    return v;
  }
  template <class T>
    requires std::is_floating_point_v<T>
  [[gnu::always_inline]] void store(T* p, Vec<T> v) const {
    std::memcpy(p, &v, size_t(n) * sizeof(T));
  }
  template <class S>
    requires is_low_precision_v<S>
  [[gnu::always_inline]] Vec<float> operator()(const S* p) const {
    HalfBits h{};
    std::memcpy(&h, p, size_t(n) * sizeof(S));
    return widen<S>(h);
  }
  template <class S>
    requires is_low_precision_v<S>
  [[gnu::always_inline]] void store(S* p, Vec<float> v) const {
    const HalfBits h = narrow<S>(v);
    std::memcpy(static_cast<void*>(p), &h, size_t(n) * sizeof(S));
  }
  // v with the lanes past n set to 0 (a term computed from the zero-filled lanes).
  template <class T>
  [[gnu::always_inline]] Vec<T> mask(Vec<T> v) const {
    return (*this)(reinterpret_cast<const T*>(&v));
  }
};

// Vectors per step of a row loop: independent accumulators hide the add latency.
constexpr int64_t kUnroll = 4;

// body(j, access) for every lanes-wide block of [0, n): Full blocks, then a Part tail.
template <class T, class F>
[[gnu::always_inline]] inline void row_for(int64_t n, const F& body) {
  constexpr int64_t W = lanes<T>;
  int64_t j = 0;
  for (; j + W <= n; j += W) body(j, Full{});
  if (j < n) body(j, Part{n - j});
}

// Sums of S vector terms over a row in one pass: term(j, access, acc) adds the terms of the
// block at j into acc[0..S). Returns the S sums, each in a fixed order (kUnroll accumulators
// added pairwise, then the lanes), which depends only on n.
template <class T, int S>
struct Sums {
  T v[S];
};
template <class T, int S, class F>
[[gnu::always_inline]] inline Sums<T, S> row_sums(int64_t n, const F& term) {
  constexpr int64_t W = lanes<T>;
  Vec<T> acc[kUnroll][S] = {};
  int64_t j = 0;
  for (; j + kUnroll * W <= n; j += kUnroll * W)
    for (int64_t k = 0; k < kUnroll; ++k) term(j + k * W, Full{}, acc[k]);
  for (; j + W <= n; j += W) term(j, Full{}, acc[0]);
  if (j < n) {
    const Part part{n - j};
    Vec<T> t[S] = {};
    term(j, part, t);
    for (int s = 0; s < S; ++s) acc[1][s] += part.mask<T>(t[s]);
  }
  Sums<T, S> out;
  for (int s = 0; s < S; ++s) out.v[s] = hsum<T>((acc[0][s] + acc[1][s]) + (acc[2][s] + acc[3][s]));
  return out;
}

// Sum of p[j]^2 over a row of n (row_sums), in math_t<S> (a bf16 or f16 row widens before squaring).
template <class S>
[[gnu::always_inline]] inline math_t<S> row_sum_squares(int64_t n, const S* p) {
  using T = math_t<S>;
  return row_sums<T, 1>(n, [&](int64_t j, auto at, Vec<T>* acc) {
           const Vec<T> v = at(p + j);
           acc[0] += v * v;
         }).v[0];
}

// Rows per group of a row kernel that runs each pass over the whole group before the next, so
// that the short dependent chains of several rows (a sum, its lanes, a sqrt) overlap: at most
// kRowGroup, and no more than fit in 8 KiB, so that a group stays in L1 between its passes.
constexpr int64_t kRowGroup = 8;
template <class T>
constexpr int64_t group_rows(int64_t N) {
  const int64_t fit = 8192 / (N * int64_t(sizeof(T)));
  return fit < 1 ? 1 : fit > kRowGroup ? kRowGroup : fit;
}

// f(i0, n) for the groups of n <= rows consecutive rows of [r0, r1).
template <class F>
[[gnu::always_inline]] inline void for_row_groups(int64_t r0, int64_t r1, int64_t rows, const F& f) {
  for (int64_t i0 = r0; i0 < r1; i0 += rows) f(i0, r1 - i0 < rows ? r1 - i0 : rows);
}

// f(n) with n = N as a compile-time constant (a std::integral_constant) for short rows (4 and 8:
// GroupNorm's (sample, group) rows of a few values; 16-128: the toy models' features), so that
// their row loops unroll fully and a partial block's copy inlines; f(N) otherwise. The operations,
// and so the results, are the same either way.
template <class F>
[[gnu::always_inline]] inline void with_row_length(int64_t N, const F& f) {
  switch (N) {
    case 4: return f(std::integral_constant<int64_t, 4>{});
    case 8: return f(std::integral_constant<int64_t, 8>{});
    case 16: return f(std::integral_constant<int64_t, 16>{});
    case 32: return f(std::integral_constant<int64_t, 32>{});
    case 64: return f(std::integral_constant<int64_t, 64>{});
    case 128: return f(std::integral_constant<int64_t, 128>{});
    default: return f(N);
  }
}

}  // namespace normlab::simd

#pragma GCC diagnostic pop
