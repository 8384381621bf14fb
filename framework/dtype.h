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

enum class DType : uint8_t { f32, f64, bf16, i64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i64: return 8;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i64: return "i64";
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
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

// The type a CPU kernel computes in for storage type T: T itself, f32 for bf16. A bf16 value
// widens to f32 exactly (before any square or sum); a result narrows back with one rounding.
template <class T> struct math_of { using type = T; };
template <> struct math_of<bf16> { using type = float; };
template <class T> using math_t = typename math_of<T>::type;

template <class T>
inline math_t<T> to_math(T v) {
  return math_t<T>(v);
}
// v in storage type T (bf16: rounded to f32, then to nearest even bf16).
template <class T>
inline T to_storage(double v) {
  if constexpr (std::is_same_v<T, bf16>) return bf16(float(v));
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
