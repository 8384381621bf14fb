// The row-normalization engine behind the CUDA LayerNorm and RMSNorm kernels (and their fused
// residual-add forms): M rows of N features, one row per group of G threads.
//
// Regimes, chosen on the host by N (row_norm_plan):
//   - warp per row (G = 32): short rows, N <= 32 * C * V (V = elements per 16-byte vector:
//     4 f32, 8 bf16, 2 f64; C <= 8 vectors a lane, at most 32 elements a lane);
//   - block per row (G = 256, 512 or 1024): long rows up to 16384 (8192 f64), 8-16 elements a
//     thread. In both, the row (and dy) sits in registers, so x is read from memory once;
//   - streaming (G = 1024): longer rows; the statistics and the output take passes over the
//     row in global memory (the later passes mostly hit L2).
// Thread t of a group owns columns (c * G + t) * V + k for c < C, k < V: 16-byte loads when
// every row is 16-byte aligned (rows_vectorizable), element loads with bounds checks otherwise.
//
// Backward fuses dx with the dgamma/dbeta partials: each group keeps its columns' sums of
// dy * xhat and dy in registers over the rows it visits, writes them to its row of a
// [groups, 2N] fp32 buffer, and sum_partials adds the rows in order. The number of groups is
// a function of (M, N) only, so the result is bit-identical run to run (and across GPUs).
// The streaming regime computes the partials in a separate column kernel.
#pragma once

#include <algorithm>

#include "norm/common.h"
#include "norm/common_cuda.cuh"

namespace normlab {
namespace cuda_norm {

template <class T> struct FwdArgs {
  T* y;
  T* h;                // x + r, when r is given
  acc_t<T>* mean;      // LayerNorm only
  acc_t<T>* rstd;      // rstd (LayerNorm) or rrms (RMSNorm)
  const T* x;
  const T* r;          // residual (may be null)
  const T* gamma;      // may be null
  const T* beta;       // may be null (LayerNorm only)
  int64_t M, N;
  acc_t<T> eps;
  bool unit_offset;    // scale is 1 + gamma (RMSNorm)
  bool vec;            // every row array and gamma/beta allow 16-byte access
};

template <class T> struct BwdArgs {
  T* dx;               // may be null (not wanted)
  acc_t<T>* partial;   // [groups, ld]: dgamma at [0, N), dbeta at [N, 2N); null when not wanted
  int64_t ld;
  const T* dy;
  const T* x;          // the normalized input (h for the fused forms)
  const T* gamma;      // may be null
  const acc_t<T>* mean;
  const acc_t<T>* rstd;
  const T* dh;         // added to dx when given (fused forms: the gradient reaching h directly)
  int64_t M, N;
  bool unit_offset;
  bool vec;
};

// Sum over a row group: a warp (G == 32) or the block.
template <int G, class A> __device__ __forceinline__ A group_sum(A v, A* scratch) {
  if constexpr (G == kWarp)
    return warp_sum(v);
  else
    return block_sum(v, scratch);
}
template <int G, class A> __device__ __forceinline__ void group_sum2(A& a, A& b, A* scratch) {
  if constexpr (G == kWarp) {
    a = warp_sum(a);
    b = warp_sum(b);
  } else {
    block_sum2(a, b, scratch);
  }
}

// The scale of the V columns at c0 (1 without gamma; 1 + gamma with unit_offset), 0 past N.
template <class T, class A>
__device__ __forceinline__ void load_scale(A (&g)[kVec<T>], const T* gamma, int64_t c0, int64_t N, bool vec,
                                           bool unit_offset) {
  if (gamma) {
    load_vec<T, A>(g, gamma, c0, N, vec);
    if (unit_offset) {
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) g[k] += A(1);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) g[k] = A(1);
  }
}

// Group geometry: lane/thread t in its group, the first row and the row stride.
template <int G> struct Group {
  int t;
  int64_t first, stride, id;
  __device__ Group() {
    if constexpr (G == kWarp) {
      t = int(threadIdx.x % kWarp);
      id = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
      first = id;
      stride = int64_t(gridDim.x) * blockDim.x / kWarp;
    } else {
      t = int(threadIdx.x);
      id = blockIdx.x;
      first = blockIdx.x;
      stride = gridDim.x;
    }
  }
};

constexpr int kWarpBlock = 128;  // threads a block in the warp-per-row regime (4 rows at once)

// ---- Forward, row in registers ----
// Scalar math: layer_norm_forward / rms_norm_forward (norm/layer_norm, norm/rms_norm): h = x + r
// (rounded to T, and the norm reads the rounded h, as backward will), LayerNorm mean =
// sum(h)/N, var = sum((h - mean)^2)/N (two passes over the registers), rstd = 1/sqrt(var + eps),
// y = (h - mean) * rstd * gamma + beta; RMSNorm rrms = 1/sqrt(sum(h^2)/N + eps),
// y = h * rrms * scale.
template <class T, int G, int C, bool kRms>
__global__ void __launch_bounds__(G == kWarp ? kWarpBlock : G) row_norm_fwd_kernel(const FwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  __shared__ A scratch[2 * kWarp];
  const Group<G> grp;
  const int64_t N = a.N;
  for (int64_t i = grp.first; i < a.M; i += grp.stride) {
    A v[C][V];
    const T* xi = a.x + i * N;
#pragma unroll
    for (int c = 0; c < C; ++c) load_vec_stream<T, A>(v[c], xi, (int64_t(c) * G + grp.t) * V, N, a.vec);
    if (a.r) {
      const T* ri = a.r + i * N;
      T* hi = a.h + i * N;
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int64_t c0 = (int64_t(c) * G + grp.t) * V;
        A rv[V];
        load_vec_stream<T, A>(rv, ri, c0, N, a.vec);
#pragma unroll
        for (int k = 0; k < V; ++k) v[c][k] = to_acc<A>(from_acc<T>(v[c][k] + rv[k]));
        store_vec<T, A>(hi, c0, N, a.vec, v[c]);
      }
    }
    A mean = A(0);
    if constexpr (!kRms) {
      A s = A(0);
#pragma unroll
      for (int c = 0; c < C; ++c)
#pragma unroll
        for (int k = 0; k < V; ++k) s += v[c][k];  // columns past N hold 0
      mean = group_sum<G>(s, scratch) / A(N);
    }
    A ss = A(0);
#pragma unroll
    for (int c = 0; c < C; ++c)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A d = ((int64_t(c) * G + grp.t) * V + k < N) ? v[c][k] - mean : A(0);
        ss += d * d;
      }
    const A rstd = A(1) / sqrt_acc(group_sum<G>(ss, scratch) / A(N) + a.eps);
    if (grp.t == 0) {
      if constexpr (!kRms) a.mean[i] = mean;
      a.rstd[i] = rstd;
    }
    T* yi = a.y + i * N;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int64_t c0 = (int64_t(c) * G + grp.t) * V;
      A g[V], b[V];
      load_scale<T, A>(g, a.gamma, c0, N, a.vec, a.unit_offset);
      if (!kRms && a.beta)
        load_vec<T, A>(b, a.beta, c0, N, a.vec);
      else
#pragma unroll
        for (int k = 0; k < V; ++k) b[k] = A(0);
      A out[V];
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = (v[c][k] - mean) * rstd * g[k] + b[k];
      store_vec<T, A>(yi, c0, N, a.vec, out);
    }
  }
}

// ---- Backward, row in registers ----
// Scalar math: layer_norm_backward / rms_norm_backward (norm/layer_norm, norm/rms_norm):
//   xhat = (x - mean) * rstd (RMSNorm: x * rrms, mean = 0),  dxhat = dy * scale
//   LayerNorm: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//   RMSNorm:   dx = rrms * (dxhat - xhat * mean(dxhat * xhat))
//   dx += dh (fused forms),  dgamma = sum_rows(dy * xhat),  dbeta = sum_rows(dy)
template <class T, int G, int C, bool kRms>
__global__ void __launch_bounds__(G == kWarp ? kWarpBlock : G) row_norm_bwd_kernel(const BwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  __shared__ A scratch[2 * kWarp];
  const Group<G> grp;
  const int64_t N = a.N;
  A acc_dgamma[C][V], acc_dbeta[C][V];
#pragma unroll
  for (int c = 0; c < C; ++c)
#pragma unroll
    for (int k = 0; k < V; ++k) acc_dgamma[c][k] = acc_dbeta[c][k] = A(0);

  for (int64_t i = grp.first; i < a.M; i += grp.stride) {
    const T* xi = a.x + i * N;
    const T* dyi = a.dy + i * N;
    A xv[C][V], dyv[C][V];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int64_t c0 = (int64_t(c) * G + grp.t) * V;
      load_vec_stream<T, A>(xv[c], xi, c0, N, a.vec);
      load_vec_stream<T, A>(dyv[c], dyi, c0, N, a.vec);  // 0 past N: those terms vanish
    }
    const A mean = kRms ? A(0) : a.mean[i];
    const A rstd = a.rstd[i];
    if (a.partial) {
#pragma unroll
      for (int c = 0; c < C; ++c)
#pragma unroll
        for (int k = 0; k < V; ++k) {
          acc_dgamma[c][k] += dyv[c][k] * ((xv[c][k] - mean) * rstd);
          acc_dbeta[c][k] += dyv[c][k];
        }
    }
    if (a.dx) {
      A sum_dxhat = A(0), sum_dxhat_xhat = A(0);
#pragma unroll
      for (int c = 0; c < C; ++c) {
        A g[V];
        load_scale<T, A>(g, a.gamma, (int64_t(c) * G + grp.t) * V, N, a.vec, a.unit_offset);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const A xhat = (xv[c][k] - mean) * rstd;
          const A dxhat = dyv[c][k] * g[k];
          sum_dxhat += dxhat;
          sum_dxhat_xhat += dxhat * xhat;
        }
      }
      if constexpr (kRms)
        sum_dxhat_xhat = group_sum<G>(sum_dxhat_xhat, scratch);
      else
        group_sum2<G>(sum_dxhat, sum_dxhat_xhat, scratch);
      const A mean_dxhat = kRms ? A(0) : sum_dxhat / A(N);
      const A mean_dxhat_xhat = sum_dxhat_xhat / A(N);
      T* dxi = a.dx + i * N;
      const T* dhi = a.dh ? a.dh + i * N : nullptr;
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int64_t c0 = (int64_t(c) * G + grp.t) * V;
        A g[V], extra[V];
        load_scale<T, A>(g, a.gamma, c0, N, a.vec, a.unit_offset);
        if (dhi)
          load_vec_stream<T, A>(extra, dhi, c0, N, a.vec);
        else
#pragma unroll
          for (int k = 0; k < V; ++k) extra[k] = A(0);
        A out[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const A xhat = (xv[c][k] - mean) * rstd;
          const A dxhat = dyv[c][k] * g[k];
          out[k] = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) + extra[k];
        }
        store_vec<T, A>(dxi, c0, N, a.vec, out);
      }
    }
  }
  if (a.partial) {
    A* p = a.partial + grp.id * a.ld;
#pragma unroll
    for (int c = 0; c < C; ++c)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t j = (int64_t(c) * G + grp.t) * V + k;
        if (j < N) {
          p[j] = acc_dgamma[c][k];
          if constexpr (!kRms) p[N + j] = acc_dbeta[c][k];
        }
      }
  }
}

// ---- Streaming regime (rows too long for registers) ----
constexpr int kStreamThreads = 1024;

// Scalar math: as row_norm_fwd_kernel, with the passes over the row in global memory: (h and)
// the sum, the centered sum of squares, then y.
template <class T, bool kRms>
__global__ void __launch_bounds__(kStreamThreads) row_norm_fwd_stream_kernel(const FwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  constexpr int64_t step = int64_t(kStreamThreads) * V;
  __shared__ A scratch[2 * kWarp];
  const int64_t N = a.N;
  const int64_t t0 = int64_t(threadIdx.x) * V;
  for (int64_t i = blockIdx.x; i < a.M; i += gridDim.x) {
    const T* src = a.x + i * N;
    A s = A(0);
    if (a.r) {
      const T* ri = a.r + i * N;
      T* hi = a.h + i * N;
      for (int64_t c0 = t0; c0 < N; c0 += step) {
        A v[V], rv[V];
        load_vec<T, A>(v, src, c0, N, a.vec);
        load_vec<T, A>(rv, ri, c0, N, a.vec);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          v[k] = to_acc<A>(from_acc<T>(v[k] + rv[k]));
          s += v[k];
        }
        store_vec<T, A>(hi, c0, N, a.vec, v);  // each thread re-reads only its own columns
      }
      src = hi;
    } else if constexpr (!kRms) {
      for (int64_t c0 = t0; c0 < N; c0 += step) {
        A v[V];
        load_vec<T, A>(v, src, c0, N, a.vec);
#pragma unroll
        for (int k = 0; k < V; ++k) s += v[k];
      }
    }
    A mean = A(0);
    if constexpr (!kRms) mean = block_sum(s, scratch) / A(N);
    A ss = A(0);
    for (int64_t c0 = t0; c0 < N; c0 += step) {
      A v[V];
      load_vec<T, A>(v, src, c0, N, a.vec);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A d = (c0 + k < N) ? v[k] - mean : A(0);
        ss += d * d;
      }
    }
    const A rstd = A(1) / sqrt_acc(block_sum(ss, scratch) / A(N) + a.eps);
    if (threadIdx.x == 0) {
      if constexpr (!kRms) a.mean[i] = mean;
      a.rstd[i] = rstd;
    }
    T* yi = a.y + i * N;
    for (int64_t c0 = t0; c0 < N; c0 += step) {
      A v[V], g[V], b[V], out[V];
      load_vec<T, A>(v, src, c0, N, a.vec);
      load_scale<T, A>(g, a.gamma, c0, N, a.vec, a.unit_offset);
      if (!kRms && a.beta)
        load_vec<T, A>(b, a.beta, c0, N, a.vec);
      else
#pragma unroll
        for (int k = 0; k < V; ++k) b[k] = A(0);
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = (v[k] - mean) * rstd * g[k] + b[k];
      store_vec<T, A>(yi, c0, N, a.vec, out);
    }
  }
}

// Scalar math: the dx of row_norm_bwd_kernel, in two passes over the row in global memory.
template <class T, bool kRms>
__global__ void __launch_bounds__(kStreamThreads) row_norm_bwd_dx_stream_kernel(const BwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  constexpr int64_t step = int64_t(kStreamThreads) * V;
  __shared__ A scratch[2 * kWarp];
  const int64_t N = a.N;
  const int64_t t0 = int64_t(threadIdx.x) * V;
  for (int64_t i = blockIdx.x; i < a.M; i += gridDim.x) {
    const T* xi = a.x + i * N;
    const T* dyi = a.dy + i * N;
    const A mean = kRms ? A(0) : a.mean[i];
    const A rstd = a.rstd[i];
    A sum_dxhat = A(0), sum_dxhat_xhat = A(0);
    for (int64_t c0 = t0; c0 < N; c0 += step) {
      A xv[V], dyv[V], g[V];
      load_vec<T, A>(xv, xi, c0, N, a.vec);
      load_vec<T, A>(dyv, dyi, c0, N, a.vec);
      load_scale<T, A>(g, a.gamma, c0, N, a.vec, a.unit_offset);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A dxhat = dyv[k] * g[k];
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * ((xv[k] - mean) * rstd);
      }
    }
    block_sum2(sum_dxhat, sum_dxhat_xhat, scratch);
    const A mean_dxhat = kRms ? A(0) : sum_dxhat / A(N);
    const A mean_dxhat_xhat = sum_dxhat_xhat / A(N);
    T* dxi = a.dx + i * N;
    const T* dhi = a.dh ? a.dh + i * N : nullptr;
    for (int64_t c0 = t0; c0 < N; c0 += step) {
      A xv[V], dyv[V], g[V], extra[V], out[V];
      load_vec<T, A>(xv, xi, c0, N, a.vec);
      load_vec<T, A>(dyv, dyi, c0, N, a.vec);
      load_scale<T, A>(g, a.gamma, c0, N, a.vec, a.unit_offset);
      if (dhi)
        load_vec<T, A>(extra, dhi, c0, N, a.vec);
      else
#pragma unroll
        for (int k = 0; k < V; ++k) extra[k] = A(0);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A xhat = (xv[k] - mean) * rstd;
        out[k] = rstd * (dyv[k] * g[k] - mean_dxhat - xhat * mean_dxhat_xhat) + extra[k];
      }
      store_vec<T, A>(dxi, c0, N, a.vec, out);
    }
  }
}

// Column partials for the streaming regime: block (bx, by) sums dy * xhat and dy over the rows
// [by * rows_per, (by + 1) * rows_per) for the 256 columns of bx, into row by of the partials.
// Scalar math: dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy).
constexpr int kColThreads = 256;
template <class T, bool kRms>
__global__ void __launch_bounds__(kColThreads) column_partials_kernel(const BwdArgs<T> a, int64_t rows_per) {
  using A = acc_t<T>;
  const int64_t j = int64_t(blockIdx.x) * kColThreads + threadIdx.x;
  if (j >= a.N) return;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per, r1 = r0 + rows_per < a.M ? r0 + rows_per : a.M;
  A sg = A(0), sb = A(0);
  for (int64_t i = r0; i < r1; ++i) {
    const A dyv = to_acc<A>(a.dy[i * a.N + j]);
    const A mean = kRms ? A(0) : a.mean[i];
    sg += dyv * ((to_acc<A>(a.x[i * a.N + j]) - mean) * a.rstd[i]);
    sb += dyv;
  }
  A* p = a.partial + int64_t(blockIdx.y) * a.ld;
  p[j] = sg;
  if constexpr (!kRms) p[a.N + j] = sb;
}

// ---- Host side ----
// Launch configuration for rows of N elements of T: the group size G (32: warp per row) and
// vectors per thread C; G == 0 selects the streaming regime.
struct RowPlan {
  int G, C;
};
// Elements a thread holds: at most kWarpItems<T> in the warp regime; kBlockItems<T> (twice
// that for the longest rows) in the block regime.
template <class T> inline constexpr int kWarpItems = sizeof(T) == 8 ? 16 : 32;
template <class T> inline constexpr int kBlockItems = std::max(kVec<T>, sizeof(T) == 8 ? 4 : 8);
template <class T> inline RowPlan row_norm_plan(int64_t N) {
  constexpr int V = kVec<T>;
  for (int C = 1; C * V <= kWarpItems<T>; C *= 2)
    if (N <= int64_t(kWarp) * C * V) return {kWarp, C};
  constexpr int C1 = kBlockItems<T> / V;
  for (int G = 256; G <= 1024; G *= 2)
    if (N <= int64_t(G) * C1 * V) return {G, C1};
  if (N <= int64_t(1024) * 2 * C1 * V) return {1024, 2 * C1};
  return {0, 0};
}

// Row groups of a backward launch (the rows of the partial buffer): a function of M and the
// plan only, never of the device.
inline int64_t bwd_groups(int64_t M, RowPlan p) {
  if (p.G == kWarp) {
    const int64_t blocks = std::min<int64_t>((M + 3) / 4, 512);
    return blocks * (kWarpBlock / kWarp);
  }
  return std::min<int64_t>(M, std::max<int64_t>(256, 262144 / p.G));
}

template <class T, bool kRms, int G, int C> void launch_fwd(const FwdArgs<T>& a) {
  if constexpr (G == kWarp) {
    const int64_t blocks = std::min<int64_t>((a.M + 3) / 4, int64_t(1) << 20);
    row_norm_fwd_kernel<T, G, C, kRms><<<unsigned(blocks), kWarpBlock, 0, cuda_stream()>>>(a);
  } else {
    const int64_t blocks = std::min<int64_t>(a.M, int64_t(1) << 20);
    row_norm_fwd_kernel<T, G, C, kRms><<<unsigned(blocks), G, 0, cuda_stream()>>>(a);
  }
  NL_CUDA_LAUNCH_CHECK();
}

template <class T, bool kRms, int G, int C> void launch_bwd(const BwdArgs<T>& a, int64_t groups) {
  const int64_t blocks = G == kWarp ? groups / (kWarpBlock / kWarp) : groups;
  row_norm_bwd_kernel<T, G, C, kRms><<<unsigned(blocks), G == kWarp ? kWarpBlock : G, 0, cuda_stream()>>>(a);
  NL_CUDA_LAUNCH_CHECK();
}

// Calls f.template operator()<G, C>() for the plan's (G, C), from the configurations
// row_norm_plan can return for T.
template <class T, class F> void with_plan(RowPlan p, const F& f) {
  constexpr int V = kVec<T>;
  constexpr int C1 = kBlockItems<T> / V;
  if (p.G == kWarp) {
    if (p.C == 1) return f.template operator()<kWarp, 1>();
    if (p.C == 2) return f.template operator()<kWarp, 2>();
    if constexpr (4 * V <= kWarpItems<T>)
      if (p.C == 4) return f.template operator()<kWarp, 4>();
    if constexpr (8 * V <= kWarpItems<T>)
      if (p.C == 8) return f.template operator()<kWarp, 8>();
  } else if (p.C == C1) {
    if (p.G == 256) return f.template operator()<256, C1>();
    if (p.G == 512) return f.template operator()<512, C1>();
    if (p.G == 1024) return f.template operator()<1024, C1>();
  } else if (p.G == 1024 && p.C == 2 * C1) {
    return f.template operator()<1024, 2 * C1>();
  }
  NL_FAIL("row_norm: no kernel for the plan G=", p.G, " C=", p.C);
}

// y (and h, mean, rstd) of M rows of N. T is the device element type.
template <class T, bool kRms> void row_norm_forward(const FwdArgs<T>& a) {
  const RowPlan p = row_norm_plan<T>(a.N);
  if (p.G == 0) {
    const int64_t blocks = std::min<int64_t>(a.M, int64_t(1) << 20);
    row_norm_fwd_stream_kernel<T, kRms><<<unsigned(blocks), kStreamThreads, 0, cuda_stream()>>>(a);
    NL_CUDA_LAUNCH_CHECK();
    return;
  }
  with_plan<T>(p, [&]<int G, int C>() { launch_fwd<T, kRms, G, C>(a); });
}

// dx (when a.dx), and dgamma / dbeta (when not null) of M rows of N. T is the device type.
template <class T, bool kRms> void row_norm_backward(BwdArgs<T> a, T* dgamma, T* dbeta) {
  using A = acc_t<T>;
  const bool want_partials = dgamma || (!kRms && dbeta);
  if (!a.dx && !want_partials) return;
  const RowPlan p = row_norm_plan<T>(a.N);
  const int64_t width = kRms ? a.N : 2 * a.N;
  Tensor partial;
  int64_t groups = 0;
  a.ld = width;
  if (p.G == 0) {
    if (a.dx) {
      BwdArgs<T> dxa = a;
      dxa.partial = nullptr;
      const int64_t blocks = std::min<int64_t>(a.M, int64_t(1) << 20);
      row_norm_bwd_dx_stream_kernel<T, kRms><<<unsigned(blocks), kStreamThreads, 0, cuda_stream()>>>(dxa);
      NL_CUDA_LAUNCH_CHECK();
    }
    if (want_partials) {
      groups = std::min<int64_t>(a.M, 128);
      const int64_t rows_per = (a.M + groups - 1) / groups;
      groups = (a.M + rows_per - 1) / rows_per;
      partial = partial_buffer<A>(groups, width);
      a.partial = partial.data<A>();
      const dim3 grid(ceil_blocks(a.N, kColThreads), unsigned(groups));
      column_partials_kernel<T, kRms><<<grid, kColThreads, 0, cuda_stream()>>>(a, rows_per);
      NL_CUDA_LAUNCH_CHECK();
    }
  } else {
    groups = bwd_groups(a.M, p);
    if (want_partials) {
      partial = partial_buffer<A>(groups, width);
      a.partial = partial.data<A>();
    } else {
      a.partial = nullptr;
    }
    with_plan<T>(p, [&]<int G, int C>() { launch_bwd<T, kRms, G, C>(a, groups); });
  }
  if (want_partials) {
    sum_partials<T, A>(dgamma, a.partial, groups, a.N, width);
    if constexpr (!kRms) sum_partials<T, A>(dbeta, a.partial + a.N, groups, a.N, width);
  }
}

}  // namespace cuda_norm
}  // namespace normlab

namespace normlab {
namespace cuda_norm {

// Pointer-level entry points on host element types (float, double, normlab::bf16); all
// pointers are device pointers; the optional ones may be null.
template <class HT, bool kRms>
void row_norm_forward_ptr(HT* y, acc_t<HT>* mean, acc_t<HT>* rstd, HT* h, const HT* x, const HT* r, const HT* gamma,
                          const HT* beta, int64_t M, int64_t N, double eps, bool unit_offset) {
  using T = device_t<HT>;
  NL_CHECK(M >= 1 && N >= 1, kRms ? "rms_norm_forward_cuda" : "layer_norm_forward_cuda",
           ": expected M, N >= 1, got M=", M, " N=", N);
  NL_CHECK(!r || h, "row_norm_forward_cuda: a residual needs an h output");
  FwdArgs<T> a{};
  a.y = reinterpret_cast<T*>(y);
  a.h = reinterpret_cast<T*>(h);
  a.mean = mean;
  a.rstd = rstd;
  a.x = reinterpret_cast<const T*>(x);
  a.r = reinterpret_cast<const T*>(r);
  a.gamma = reinterpret_cast<const T*>(gamma);
  a.beta = reinterpret_cast<const T*>(beta);
  a.M = M;
  a.N = N;
  a.eps = acc_t<HT>(eps);
  a.unit_offset = unit_offset;
  a.vec = rows_vectorizable<T>(y, N) && rows_vectorizable<T>(h, N) && rows_vectorizable<T>(x, N) &&
          rows_vectorizable<T>(r, N) && (!gamma || is_aligned16(gamma)) && (!beta || is_aligned16(beta));
  row_norm_forward<T, kRms>(a);
}

template <class HT, bool kRms>
void row_norm_backward_ptr(HT* dx, HT* dgamma, HT* dbeta, const HT* dy, const HT* x, const HT* gamma,
                           const acc_t<HT>* mean, const acc_t<HT>* rstd, const HT* dh, int64_t M, int64_t N,
                           bool unit_offset) {
  using T = device_t<HT>;
  NL_CHECK(M >= 1 && N >= 1, kRms ? "rms_norm_backward_cuda" : "layer_norm_backward_cuda",
           ": expected M, N >= 1, got M=", M, " N=", N);
  BwdArgs<T> a{};
  a.dx = reinterpret_cast<T*>(dx);
  a.dy = reinterpret_cast<const T*>(dy);
  a.x = reinterpret_cast<const T*>(x);
  a.gamma = reinterpret_cast<const T*>(gamma);
  a.mean = mean;
  a.rstd = rstd;
  a.dh = reinterpret_cast<const T*>(dh);
  a.M = M;
  a.N = N;
  a.unit_offset = unit_offset;
  a.vec = rows_vectorizable<T>(dx, N) && rows_vectorizable<T>(dy, N) && rows_vectorizable<T>(x, N) &&
          rows_vectorizable<T>(dh, N) && (!gamma || is_aligned16(gamma));
  row_norm_backward<T, kRms>(a, reinterpret_cast<T*>(dgamma), reinterpret_cast<T*>(dbeta));
}

// ---- Tensor-level helpers ----
// The statistics dtype of a CUDA norm on x: f64 for f64, f32 for f32 and bf16.
inline DType stat_dtype(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

// t itself when contiguous, else a contiguous copy (undefined stays undefined).
inline Tensor dense(const Tensor& t) { return !t.defined() || t.is_contiguous() ? t : t.contiguous(); }

// Checks a CUDA norm's input x [..., N] (on CUDA, a supported dtype, non-empty) and returns M.
inline int64_t check_rows_cuda(const Tensor& x, const char* who) {
  NL_CHECK(x.defined() && x.dim() >= 1, who, ": the input needs at least 1 dim");
  check_on_cuda(x, who, "x");
  check_cuda_dtype(x.dtype(), who);
  return rows_of(x, x.size(-1), who);
}

// Checks a per-row statistic: on CUDA, shape [M] (any leading shape of M elements), stat dtype.
inline void check_stat_cuda(const Tensor& s, int64_t M, DType x_dtype, const char* who, const char* name) {
  NL_CHECK(s.defined(), who, ": ", name, " is undefined");
  check_on_cuda(s, who, name);
  NL_CHECK(s.numel() == M, who, ": ", name, " has ", s.numel(), " elements, expected one a row (", M, ")");
  NL_CHECK(s.dtype() == stat_dtype(x_dtype), who, ": ", name, " has dtype ", dtype_name(s.dtype()), ", expected ",
           dtype_name(stat_dtype(x_dtype)), " for a ", dtype_name(x_dtype), " input");
}

// Checks an optional [N] parameter on CUDA with x's dtype.
inline void check_param_cuda(const Tensor& p, int64_t N, DType dtype, const char* who, const char* name) {
  if (!p.defined()) return;
  check_on_cuda(p, who, name);
  check_vector(p, N, dtype, who, name);
}

// Checks that t (a row array like dy or r) has x's shape, dtype and device.
inline void check_like_cuda(const Tensor& t, const Tensor& x, const char* who, const char* name) {
  NL_CHECK(t.defined(), who, ": ", name, " is undefined");
  check_on_cuda(t, who, name);
  NL_CHECK(t.shape() == x.shape(), who, ": ", name, " has shape ", to_string(t.shape()), " but x has ",
           to_string(x.shape()));
  NL_CHECK(t.dtype() == x.dtype(), who, ": ", name, " has dtype ", dtype_name(t.dtype()), " but x has ",
           dtype_name(x.dtype()));
}

template <class HT> HT* ptr_or_null_cuda(const Tensor& t) { return t.defined() ? t.data<HT>() : nullptr; }

}  // namespace cuda_norm
}  // namespace normlab
