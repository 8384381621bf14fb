// Element types and devices.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <type_traits>

namespace normlab {

// bf16 storage type: the top 16 bits of an IEEE float (round-to-nearest-even on conversion).
// Kernels read it as storage only and accumulate in fp32.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = uint16_t((u >> 16) | 0x40u);  // quiet NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = uint16_t(u >> 16);
    }
  }
  explicit operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// fp16 storage type: IEEE binary16 (1 sign, 5 exponent, 10 mantissa bits; largest finite 65504,
// smallest subnormal 2^-24 ~ 5.96e-8). Conversion from float rounds to nearest even: past 65504 a
// value becomes infinity, below 2^-25 it becomes zero (so an eps of 1e-8 stored in fp16 is 0).
// Written in integer arithmetic (no F16C or _Float16) so device and host code can share it.
struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
      bits = uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
    } else if (a >= 0x477ff000u) {
      bits = uint16_t(sign | 0x7c00u);  // 65520 and above (and inf) round to infinity
    } else if (a >= 0x38800000u) {
      // Normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits, to nearest even.
      const uint32_t r = a - (112u << 23) + 0xfffu + ((a >> 13) & 1u);
      bits = uint16_t(sign | (r >> 13));
    } else {
      // Subnormal or zero: adding 0.5f rounds |f| to a multiple of 2^-24 (0.5's ulp), to nearest
      // even; the low bits of the sum then count those units (1024 is the smallest normal).
      float abs_f, half = 0.5f;
      std::memcpy(&abs_f, &a, 4);
      const float sum = abs_f + half;
      uint32_t s, h;
      std::memcpy(&s, &sum, 4);
      std::memcpy(&h, &half, 4);
      bits = uint16_t(sign | (s - h));
    }
  }
  explicit operator float() const {
    const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
    const uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    uint32_t u;
    if (e == 0) {
      float v = float(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
      std::memcpy(&u, &v, 4);
      u |= sign;
    } else if (e == 31) {
      // Infinity, or a NaN made quiet (as IEEE conversions and F16C's vcvtph2ps do, so that the
      // vector widening in simd.h gives the same bits).
      u = sign | 0x7f800000u | (m << 13) | (m != 0 ? 0x400000u : 0u);
    } else {
      u = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// f16 comes last so that the values of the others stay as they were.
enum class DType : uint8_t { f32, f64, bf16, i64, f16 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i64: return 8;
    case DType::f16: return 2;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i64: return "i64";
    case DType::f16: return "f16";
  }
  return "?";
}

constexpr bool is_floating(DType t) { return t != DType::i64; }

inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<f16> { static constexpr DType value = DType::f16; };
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

// Low-precision storage types (bf16, f16): 16-bit values that kernels widen to f32 to compute in,
// and that hold their results rounded once from f32.
template <class T> inline constexpr bool is_low_precision_v = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;
constexpr bool is_low_precision(DType t) { return t == DType::bf16 || t == DType::f16; }

// Applies the macro m to each low-precision storage type, for the explicit instantiations of
// kernels that take them.
#define NL_FOR_EACH_LOW_PRECISION(m) m(::normlab::bf16) m(::normlab::f16)

// The type a CPU kernel computes in for storage type T: T itself, f32 for bf16 and f16. Such a
// value widens to f32 exactly (before any square or sum); a result narrows back with one rounding.
template <class T> struct math_of { using type = T; };
template <> struct math_of<bf16> { using type = float; };
template <> struct math_of<f16> { using type = float; };
template <class T> using math_t = typename math_of<T>::type;

template <class T>
inline math_t<T> to_math(T v) {
  return math_t<T>(v);
}
// v in storage type T (bf16, f16: rounded to f32, then to nearest even in T).
template <class T>
inline T to_storage(double v) {
  if constexpr (is_low_precision_v<T>) return T(float(v));
  else return T(v);
}

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  bool operator==(const Device&) const = default;
  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceType::cuda, i}; }
};

inline std::ostream& operator<<(std::ostream& os, Device d) {
  if (d.type == DeviceType::cpu) return os << "cpu";
  return os << "cuda:" << d.index;
}

}  // namespace normlab

// Runs `body` with `scalar_t` bound to float or double; other dtypes throw naming the op.
#define NL_DISPATCH_FLOATING(dtype, op_name, ...)                                         \
  [&] {                                                                                    \
    switch (dtype) {                                                                       \
      case ::normlab::DType::f32: { using scalar_t = float; return __VA_ARGS__(); }        \
      case ::normlab::DType::f64: { using scalar_t = double; return __VA_ARGS__(); }       \
      default:                                                                             \
        NL_FAIL(op_name, ": dtype ", ::normlab::dtype_name(dtype), " is not supported (expected f32 or f64)"); \
    }                                                                                      \
  }()
