// Device helpers, on top of norm/common_cuda.cuh, of the channel norms (BatchNorm, GroupNorm),
// DyT and ScaleNorm: element access, dispatch, and the deterministic reductions they share. Every sum here adds
// its terms in an order fixed by the sizes alone (never by timing or the number of SMs): the
// same input gives bit-identical results run to run. No atomics.
//   col_reduce: K sums per column of a rows x cols grid of terms f(n, c): per-block partials over
//               fixed chunks of rows (a warp reads 32 adjacent columns: coalesced), then one
//               thread per column adds the chunks in order and hands the totals to an epilogue.
//   row_reduce: K sums per row of `len` terms f(row, l): a warp per row (a thread per row when
//               rows are shorter than a few values), then an epilogue per row.
//   vector_sum: one block adds n values in a fixed tree.
// Names live in cuda_channel, apart from common_cuda.cuh's cuda_norm.
// Only for .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "norm/common.h"
#include "norm/common_cuda.cuh"

namespace normlab::cuda_channel {

using cuda_norm::acc_t;
using cuda_norm::check_on_cuda;
using cuda_norm::from_acc;
using cuda_norm::sqrt_acc;
using cuda_norm::warp_sum;

// ---- Element types (beyond norm/common_cuda.cuh): storage T, accumulator acc_t<T>. ----
// The host type a Tensor stores for the device type T.
template <class T> struct HostOf { using type = T; };
template <> struct HostOf<__nv_bfloat16> { using type = normlab::bf16; };

// An element as its accumulator type (fp32 for f32/bf16, f64 for f64).
__device__ __forceinline__ float val(float v) { return v; }
__device__ __forceinline__ double val(double v) { return v; }
__device__ __forceinline__ float val(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float tanh_acc(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_acc(double v) { return ::tanh(v); }

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024), fixed order; every
// thread gets the total. All threads of the block must call it.
template <class Acc>
__device__ Acc block_total(Acc v) {
  __shared__ Acc scratch[32];
  return cuda_norm::block_sum(v, scratch);
}

// ---- Launch plumbing ----
inline void check_launch() { NL_CUDA_LAUNCH_CHECK(); }
// Blocks of a grid-stride loop over n items (capped: the kernels loop over the rest).
inline unsigned grid_for(int64_t n, int threads) {
  return unsigned(std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20));
}

template <class T>
T* dptr(const Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data<typename HostOf<T>::type>()) : nullptr;
}

template <class Acc> constexpr DType acc_dtype() { return sizeof(Acc) == 8 ? DType::f64 : DType::f32; }

// Dtype of the saved statistics: fp32 for f32 and bf16 inputs, f64 for f64.
inline DType stat_dtype(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

// Calls f(T{}) with T the device type of dtype (float, double, __nv_bfloat16).
template <class F>
void dispatch(DType dtype, const char* who, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(__nv_bfloat16{}); return;
    default: NL_FAIL(who, ": dtype ", dtype_name(dtype), " is not supported on CUDA (expected f32, bf16 or f64)");
  }
}

inline Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : Tensor(); }

// ---- col_reduce ----
constexpr int kColTile = 32, kColRowsPerPass = 8;

template <class Acc, int K, class F>
__global__ void col_partials_kernel(Acc* partial, int64_t rows, int64_t cols, int64_t rows_per_chunk, F f) {
  __shared__ Acc sh[K][kColRowsPerPass][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kColTile + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t n0 = chunk * rows_per_chunk, n1 = min(rows, n0 + rows_per_chunk);
  Acc acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0;
  if (c < cols)
    for (int64_t n = n0 + ty; n < n1; n += kColRowsPerPass) f(n, c, acc);
#pragma unroll
  for (int k = 0; k < K; ++k) sh[k][ty][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && c < cols) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      Acc s = sh[k][0][tx];
      for (int t = 1; t < kColRowsPerPass; ++t) s += sh[k][t][tx];
      partial[(chunk * K + k) * cols + c] = s;
    }
  }
}

template <class Acc, int K, class E>
__global__ void col_finalize_kernel(const Acc* partial, int64_t chunks, int64_t cols, E e) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  Acc total[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    Acc s = 0;
    for (int64_t r = 0; r < chunks; ++r) s += partial[(r * K + k) * cols + c];
    total[k] = s;
  }
  e(c, total);
}

// f(n, c, Acc (&acc)[K]) adds the terms of (n, c) (and may write per-element outputs: each (n, c)
// is visited exactly once); e(c, const Acc (&total)[K]) consumes column c's totals.
template <class Acc, int K, class F, class E>
void col_reduce(int64_t rows, int64_t cols, const F& f, const E& e) {
  const int64_t tiles = (cols + kColTile - 1) / kColTile;
  // Chunks of rows: a function of the sizes only, so the summation order never changes.
  const int64_t max_chunks = std::max<int64_t>(1, std::min<int64_t>(1024, 2048 / tiles));
  const int64_t want = std::min<int64_t>(max_chunks, (rows + kColRowsPerPass - 1) / kColRowsPerPass);
  const int64_t rows_per_chunk = (rows + want - 1) / want;
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  NL_CHECK(tiles <= (int64_t(1) << 31) - 1, "col_reduce: too many columns (", cols, ")");
  const Tensor partial = empty({chunks * K * cols}, acc_dtype<Acc>(), Device::cuda());
  Acc* p = dptr<Acc>(partial);
  cudaStream_t stream = cuda_stream();
  col_partials_kernel<Acc, K, F>
      <<<dim3(unsigned(tiles), unsigned(chunks)), dim3(kColTile, kColRowsPerPass), 0, stream>>>(p, rows, cols,
                                                                                              rows_per_chunk, f);
  check_launch();
  col_finalize_kernel<Acc, K, E><<<unsigned((cols + 255) / 256), 256, 0, stream>>>(p, chunks, cols, e);
  check_launch();
}

// ---- row_reduce ----
template <class Acc, int K, class F, class E>
__global__ void row_reduce_warp_kernel(int64_t rows, int64_t len, F f, E e) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp leaves together
  Acc acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0;
  for (int64_t l = lane; l < len; l += 32) f(row, l, acc);
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = warp_sum(acc[k]);
  if (lane == 0) e(row, acc);
}

template <class Acc, int K, class F, class E>
__global__ void row_reduce_thread_kernel(int64_t rows, int64_t len, F f, E e) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    Acc acc[K];
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] = 0;
    for (int64_t l = 0; l < len; ++l) f(row, l, acc);
    e(row, acc);
  }
}

// f(row, l, Acc (&acc)[K]) adds term l of row; e(row, const Acc (&total)[K]) consumes the sums.
template <class Acc, int K, class F, class E>
void row_reduce(int64_t rows, int64_t len, const F& f, const E& e) {
  cudaStream_t stream = cuda_stream();
  if (len <= 4) {
    row_reduce_thread_kernel<Acc, K, F, E><<<grid_for(rows, 256), 256, 0, stream>>>(rows, len, f, e);
  } else {
    NL_CHECK((rows + 7) / 8 <= (int64_t(1) << 31) - 1, "row_reduce: too many rows (", rows, ")");
    row_reduce_warp_kernel<Acc, K, F, E><<<unsigned((rows + 7) / 8), 256, 0, stream>>>(rows, len, f, e);
  }
  check_launch();
}

// ---- vector_sum: out[0] = sum of v[0..n) (fixed tree), stored as T ----
template <class Acc, class T>
__global__ void vector_sum_kernel(T* out, const Acc* v, int64_t n) {
  Acc s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_total(s);
  if (threadIdx.x == 0) out[0] = from_acc<T>(s);
}

template <class Acc, class T>
void vector_sum(T* out, const Acc* v, int64_t n) {
  vector_sum_kernel<Acc, T><<<1, 1024, 0, cuda_stream()>>>(out, v, n);
  check_launch();
}

}  // namespace normlab::cuda_channel
