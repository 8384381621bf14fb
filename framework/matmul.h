// CPU matrix multiply, as used by autograd.
//
//   c[..., m, n] = sum_k a[..., m, k] * b[..., k, n]
//
// a is [..., M, K] and b is [..., K, N], both at least 2-D; their batch dims broadcast numpy-style
// (a [2, 1, M, K] x b [3, K, N] -> [2, 3, M, N]). Inputs may be any strided views (transposes,
// slices, stride-0 broadcasts); the result is always a fresh contiguous [..., M, N] tensor.
//
// Backends (DESIGN.md naming):
//   matmul_ref     plain loops, templated on float/double, accumulates in double: the ground truth,
//                  and the f64 path (oneDNN has no f64 matmul).
//   matmul_onednn  f32 through oneDNN's matmul primitive, with primitives cached by layout.
//   matmul         f32 -> matmul_onednn, f64 -> matmul_ref.
//
// Every backend gives bit-identical results for any OpenMP thread count (see matmul.cpp).
// Bad input (rank < 2, mismatched inner or batch dims, f32 x f64, non-float dtypes, non-cpu
// tensors) throws normlab::Error whose message names both shapes and, for dtype errors, both dtypes.
#pragma once

#include <cstdint>
#include <vector>

#include "framework/tensor.h"

namespace normlab {

Tensor matmul(const Tensor& a, const Tensor& b);
Tensor matmul_ref(const Tensor& a, const Tensor& b);
Tensor matmul_onednn(const Tensor& a, const Tensor& b);  // f32 only

// The oneDNN primitive cache: thread-safe, least-recently-used entries dropped beyond its capacity
// (1024 by default; one matmul uses 1 to 8 primitives).
struct MatmulCacheStats {
  int64_t size = 0;       // primitives held now
  int64_t hits = 0;       // lookups that found a primitive
  int64_t misses = 0;     // lookups that had to create one
  int64_t evictions = 0;  // entries dropped to stay within the capacity
  int64_t ref_impls = 0;  // held primitives whose oneDNN implementation is its slow "ref:" one
};
MatmulCacheStats matmul_cache_stats();
int64_t matmul_cache_size();
void matmul_cache_clear();  // drops every primitive and zeroes the counters
int64_t matmul_cache_capacity();
void set_matmul_cache_capacity(int64_t capacity);  // >= 1; evicts down to it at once

// The products matmul() runs while a MatmulRecorder is alive (benchmarks: a training step's
// matmul work, replayed shape by shape to time the matmuls alone). One recorder at a time.
struct MatmulCall {
  Shape a, b;                      // as passed
  bool a_transposed = false;       // a view with unit stride over its second-last dim (x.transpose(-1, -2))
  bool b_transposed = false;
  DType dtype = DType::f32;
  double flops() const;            // 2 x batch x M x N x K
  bool operator==(const MatmulCall&) const = default;
};
class MatmulRecorder {
 public:
  MatmulRecorder();
  ~MatmulRecorder();
  MatmulRecorder(const MatmulRecorder&) = delete;
  MatmulRecorder& operator=(const MatmulRecorder&) = delete;
  std::vector<MatmulCall> calls() const;  // in the order they ran
};

}  // namespace normlab
