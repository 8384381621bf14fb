// Shared device code of the CUDA norm kernels: element types and their accumulators,
// vectorized loads/stores with scalar tails, fp32 (or f64) warp/block reductions, and the
// deterministic column reduction behind dgamma/dbeta and batch statistics (per-block partial
// rows, then a second kernel that sums them in block order: no atomics, bit-identical run
// to run). Included only from .cu files (needs the CUDA runtime headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "framework/cuda.h"
#include "framework/cuda_check.h"
#include "framework/dtype.h"
#include "framework/error.h"
#include "framework/tensor.h"

// Checks the launch just made (a bad configuration or an earlier asynchronous error) and
// throws normlab::Error with the file and line.
#define NL_CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

namespace normlab {
namespace cuda_norm {

// ---- Element types ----
// normlab::bf16 (host) and __nv_bfloat16 (device) are both the 16 top bits of an IEEE float.
static_assert(sizeof(normlab::bf16) == sizeof(__nv_bfloat16), "bf16 layouts differ");

// The device element type of a host element type: float, double, or __nv_bfloat16.
template <class T> struct device_type { using type = T; };
template <> struct device_type<normlab::bf16> { using type = __nv_bfloat16; };
template <class T> using device_t = typename device_type<T>::type;

// Accumulation type: f64 for double I/O, fp32 for everything else.
template <class T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <class T> using acc_t = typename acc_type<T>::type;

// Element <-> accumulator conversions (bf16 rounds to nearest even on store).
template <class A> __device__ __forceinline__ A to_acc(float v) { return A(v); }
template <class A> __device__ __forceinline__ A to_acc(double v) { return A(v); }
template <class A> __device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return A(__bfloat162float(v)); }
template <class T, class A> __device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(float(v));
  else
    return T(v);
}

// Correctly rounded square root of the accumulator type.
__device__ __forceinline__ float sqrt_acc(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_acc(double v) { return ::sqrt(v); }

// Elements per 16-byte vector: 4 f32, 8 bf16, 2 f64.
template <class T> inline constexpr int kVec = int(16 / sizeof(T));

// A 16-byte vector of T.
template <class T> struct alignas(16) Vec16 {
  T v[kVec<T>];
};

__host__ __device__ __forceinline__ bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// True when every row of a [M, N] row-major array at p starts 16-byte aligned, so whole
// vectors of kVec<T> elements can be loaded at column multiples of kVec<T>.
template <class T> __host__ __device__ __forceinline__ bool rows_vectorizable(const void* p, int64_t N) {
  return p == nullptr || (is_aligned16(p) && (N * int64_t(sizeof(T))) % 16 == 0);
}

// Loads kVec<T> elements of a row starting at column c0 into out (as A): one 16-byte load
// when `vec` (the row is vectorizable) and the vector lies inside the row, else element by
// element with the columns past N read as `fill`.
template <class T, class A>
__device__ __forceinline__ void load_vec(A (&out)[kVec<T>], const T* row, int64_t c0, int64_t N, bool vec, A fill = A(0)) {
  if (vec && c0 + kVec<T> <= N) {
    const Vec16<T> w = *reinterpret_cast<const Vec16<T>*>(row + c0);
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) out[k] = to_acc<A>(w.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) out[k] = (c0 + k < N) ? to_acc<A>(row[c0 + k]) : fill;
  }
}

// Same, through the read-only path with an evict-first hint (streamed inputs read once).
template <class T, class A>
__device__ __forceinline__ void load_vec_stream(A (&out)[kVec<T>], const T* row, int64_t c0, int64_t N, bool vec,
                                                A fill = A(0)) {
  if (vec && c0 + kVec<T> <= N) {
    const int4 raw = __ldcs(reinterpret_cast<const int4*>(row + c0));
    Vec16<T> w;
    static_assert(sizeof(w) == sizeof(raw));
    memcpy(&w, &raw, sizeof(raw));
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) out[k] = to_acc<A>(w.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) out[k] = (c0 + k < N) ? to_acc<A>(row[c0 + k]) : fill;
  }
}

// Stores kVec<T> values (converted to T) at columns [c0, c0 + kVec<T>) of a row, skipping
// columns past N.
template <class T, class A>
__device__ __forceinline__ void store_vec(T* row, int64_t c0, int64_t N, bool vec, const A (&in)[kVec<T>]) {
  if (vec && c0 + kVec<T> <= N) {
    Vec16<T> w;
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) w.v[k] = from_acc<T>(in[k]);
    *reinterpret_cast<Vec16<T>*>(row + c0) = w;
  } else {
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k)
      if (c0 + k < N) row[c0 + k] = from_acc<T>(in[k]);
  }
}

// ---- Reductions (deterministic: a fixed butterfly and a fixed warp order) ----
constexpr int kWarp = 32;

// Sum over the 32 lanes of a warp; every lane gets the same result.
template <class A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over all threads of a block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the same result. `scratch` is shared memory of at least 32 A; the function may be
// called repeatedly with the same scratch (it synchronizes before reuse).
template <class A> __device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A t = lane < warps ? scratch[lane] : A(0);
  return warp_sum(t);
}

// Two sums at once (one round of synchronization).
template <class A> __device__ __forceinline__ void block_sum2(A& a, A& b, A* scratch /* >= 64 A */) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = a;
    scratch[kWarp + warp] = b;
  }
  __syncthreads();
  a = warp_sum(lane < warps ? scratch[lane] : A(0));
  b = warp_sum(lane < warps ? scratch[kWarp + lane] : A(0));
}

// ---- Deterministic column reduction ----
// Stage 1 (the caller's kernel): block (or warp) b writes its partial column sums to row b of
// a [rows, ld] accumulator buffer. Stage 2 (below): out[j] = sum over b in order of
// partial[b * ld + j], for j < width; one thread per column, so reads are coalesced.
template <class T, class A>
__global__ void sum_partials_kernel(T* __restrict__ out, const A* __restrict__ partial, int64_t rows, int64_t width,
                                    int64_t ld) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= width) return;
  // Compensated (Kahan) sum in a fixed order: deterministic, and accurate for many partials.
  A s = A(0), comp = A(0);
  for (int64_t b = 0; b < rows; ++b) {
    const A y = partial[b * ld + j] - comp;
    const A t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  out[j] = from_acc<T>(s);
}

// Launches stage 2 on normlab's stream; does nothing when out is null.
template <class T, class A>
inline void sum_partials(T* out, const A* partial, int64_t rows, int64_t width, int64_t ld) {
  if (!out || width <= 0) return;
  constexpr int threads = 256;
  const unsigned blocks = unsigned((width + threads - 1) / threads);
  sum_partials_kernel<T, A><<<blocks, threads, 0, cuda_stream()>>>(out, partial, rows, width, ld);
  NL_CUDA_LAUNCH_CHECK();
}

// A device buffer of rows x width accumulators (A = float or double) for stage 1, from the
// caching allocator; kept alive by the returned Tensor.
template <class A> inline Tensor partial_buffer(int64_t rows, int64_t width) {
  return empty({rows, width}, std::is_same_v<A, double> ? DType::f64 : DType::f32, Device::cuda());
}

// ---- Host-side checks of the CUDA entry points ----
// Throws unless t is undefined or a CUDA tensor.
inline void check_on_cuda(const Tensor& t, const char* who, const char* name) {
  NL_CHECK(!t.defined() || t.device().type == DeviceType::cuda, who, ": ", name,
           " must be a CUDA tensor, got a tensor on the CPU");
}

// The dtypes the CUDA norm kernels take: f32, bf16 (fp32 math) and f64.
inline void check_cuda_dtype(DType d, const char* who) {
  NL_CHECK(d == DType::f32 || d == DType::bf16 || d == DType::f64, who, ": dtype ", dtype_name(d),
           " is not supported on CUDA (expected f32, bf16 or f64)");
}

// Number of blocks for a 1-D launch of n items at `per_block` items a block.
inline unsigned ceil_blocks(int64_t n, int64_t per_block) { return unsigned((n + per_block - 1) / per_block); }

}  // namespace cuda_norm
}  // namespace normlab

// Runs `body` with `scalar_t` bound to the host element type (float, double, normlab::bf16)
// of a CUDA norm kernel; other dtypes throw naming the op.
#define NL_CUDA_DISPATCH(dtype, op_name, ...)                                                   \
  [&] {                                                                                         \
    switch (dtype) {                                                                            \
      case ::normlab::DType::f32: { using scalar_t = float; return __VA_ARGS__(); }             \
      case ::normlab::DType::f64: { using scalar_t = double; return __VA_ARGS__(); }            \
      case ::normlab::DType::bf16: { using scalar_t = ::normlab::bf16; return __VA_ARGS__(); }  \
      default:                                                                                  \
        NL_FAIL(op_name, ": dtype ", ::normlab::dtype_name(dtype), " is not supported on CUDA (expected f32, bf16 or f64)"); \
    }                                                                                           \
  }()
