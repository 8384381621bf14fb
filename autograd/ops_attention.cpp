// Causal self-attention as one node. The forward keeps each row's logsumexp instead of the
// [T, T] probabilities, and the backward rebuilds them from q, k and it (flash attention's
// recomputation): per (batch, head) slice, the memory kept for backward is O(T hd), not O(T^2).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// The kernels' 64-byte vectors (framework/simd.h) stay inside this file, inlined, so GCC's note that
// passing them without AVX-512 changes the ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "autograd/ops.h"
#include "framework/fast_math.h"
#include "framework/parallel.h"
#include "framework/simd.h"

namespace normlab {

namespace {

// A [B, H, T, hd] tensor as the kernels see it: element strides b, h, t and unit stride over hd.
template <class scalar_t>
struct Heads {
  scalar_t* p;
  int64_t b, h, t;
  scalar_t* row(int64_t bi, int64_t hi, int64_t i) const { return p + bi * b + hi * h + i * t; }
};

template <class scalar_t>
Heads<scalar_t> heads_of(const Tensor& x) {
  return {static_cast<scalar_t*>(x.raw_data()), x.strides()[0], x.strides()[1], x.strides()[2]};
}

// x with a unit stride over its last dim (itself when it has one): the kernels' input layout.
Tensor unit_last_stride(const Tensor& x) { return x.strides().back() == 1 ? x : x.contiguous(); }

// A new [B, H, T, hd] tensor stored as [B, T, H, hd]: transpose(1, 2) of it is contiguous.
Tensor empty_heads_interleaved(const Shape& bhtd, DType dtype) {
  return empty({bhtd[0], bhtd[2], bhtd[1], bhtd[3]}, dtype).transpose(1, 2);
}

// Gradient tensors for q, k and v. When the three are head views of one projection, rows of R >=
// 3 H hd values holding q, k and v side by side (a packed [B, T, 3, H, hd]: strides (T R, hd, R,
// 1), k at H hd after q and v at H hd after k), the gradients get that layout in one new buffer,
// so that the projection's gradient is that buffer (split's backward joins such parts without a
// copy). Otherwise each is a new [B, H, T, hd] tensor stored as [B, T, H, hd].
std::array<Tensor, 3> gradient_tensors(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
  const Shape& st = q.strides();
  const int64_t R = st[2], step = H * hd;
  const bool packed = q.storage() == k.storage() && q.storage() == v.storage() && k.strides() == st &&
                      v.strides() == st && k.offset() - q.offset() == step && v.offset() - k.offset() == step &&
                      T > 1 && R >= 3 * step && (B == 1 || st[0] == T * R) && (H == 1 || st[1] == hd) &&
                      (hd == 1 || st[3] == 1);
  if (!packed)
    return {empty_heads_interleaved(q.shape(), q.dtype()), empty_heads_interleaved(q.shape(), q.dtype()),
            empty_heads_interleaved(q.shape(), q.dtype())};
  const Tensor flat = empty({B * T * R}, q.dtype());
  const Shape strides{T * R, hd, R, 1};
  auto part = [&](int64_t i) { return Tensor(flat.storage(), q.shape(), strides, flat.offset() + i * step, q.dtype()); };
  return {part(0), part(1), part(2)};
}

// The kernels take the query rows kRows at a time, i = i0 + r, r < kRows (i0 a multiple of
// kRows). A group's scores are kept transposed, St[j][r] = S_{i0+r, j} for the keys j < i0 +
// kRows, so that the softmax statistics of all kRows rows are vectors (no horizontal sums)
// and every inner loop runs over kRows rows or a block of kBlock features: `omp simd` loops of
// fixed length, with the loops around them unrolled so the accumulators stay in registers.
// The per-slice buffers are zero-padded to whole groups and blocks: rows past T (zero q, dO)
// and keys past the causal limit (masked to -inf, so P = 0) are computed and then ignored.
constexpr int64_t kRows = 16;
constexpr int64_t kBlock = 16;  // features per vector block
constexpr int64_t kKeys = 8;    // keys per step of the score loop
static_assert(kRows % kKeys == 0);
static_assert(kRows == 16 && kKeys == 8, "the '#pragma GCC unroll' counts below are these");
int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// A zeroed per-thread buffer of n values.
template <class scalar_t>
std::vector<scalar_t> buffer(int64_t n) {
  return std::vector<scalar_t>(static_cast<size_t>(n));
}

// The padded sizes of a slice: Tp rows (a multiple of kRows), hdp features (of kBlock).
struct SliceDims {
  int64_t T, hd, Tp, hdp;
  SliceDims(int64_t T_, int64_t hd_) : T(T_), hd(hd_), Tp(round_up(T_, kRows)), hdp(round_up(hd_, kBlock)) {}
};

// r[u][l] becomes r[l][u]: four rounds of two-source shuffles, round b (8, 4, 2, 1) swapping
// the off-diagonal b x b blocks of each 2b x 2b block, so that the whole is the transpose.
[[gnu::always_inline]] inline void transpose16(simd::Vec<float>* r) {
  for (int u = 0; u < 16; ++u)
    if (!(u & 8)) {
      const simd::Vec<float> a = r[u], c = r[u + 8];
      r[u] = __builtin_shufflevector(a, c, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
      r[u + 8] = __builtin_shufflevector(a, c, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
  for (int u = 0; u < 16; ++u)
    if (!(u & 4)) {
      const simd::Vec<float> a = r[u], c = r[u + 4];
      r[u] = __builtin_shufflevector(a, c, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
      r[u + 4] = __builtin_shufflevector(a, c, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    }
  for (int u = 0; u < 16; ++u)
    if (!(u & 2)) {
      const simd::Vec<float> a = r[u], c = r[u + 2];
      r[u] = __builtin_shufflevector(a, c, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      r[u + 2] = __builtin_shufflevector(a, c, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
  for (int u = 0; u < 16; ++u)
    if (!(u & 1)) {
      const simd::Vec<float> a = r[u], c = r[u + 1];
      r[u] = __builtin_shufflevector(a, c, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
      r[u + 1] = __builtin_shufflevector(a, c, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    }
}

// The row helpers below work in whole vectors when n is a multiple of the lane count and value by
// value otherwise: a partial vector goes through memory (a copy of n values into a stack vector),
// which costs more than the few values it saves.

// y[0..n) = s x[0..n).
template <class scalar_t>
[[gnu::always_inline]] inline void scale_row(scalar_t* y, const scalar_t* x, int64_t n, scalar_t s) {
  constexpr int64_t W = simd::lanes<scalar_t>;
  if (n % W == 0)
    for (int64_t d = 0; d < n; d += W) simd::store(y + d, simd::splat(s) * simd::load(x + d));
  else
    for (int64_t d = 0; d < n; ++d) y[d] = s * x[d];
}

// y[0..n) = x[0..n).
template <class scalar_t>
[[gnu::always_inline]] inline void copy_row(scalar_t* y, const scalar_t* x, int64_t n) {
  constexpr int64_t W = simd::lanes<scalar_t>;
  if (n % W == 0)
    for (int64_t d = 0; d < n; d += W) simd::store(y + d, simd::load(x + d));
  else
    std::copy(x, x + n, y);
}

// 8 values of p in double.
template <class scalar_t>
[[gnu::always_inline]] inline simd::Vec<double> double8(const scalar_t* p) {
  typedef scalar_t Eight __attribute__((vector_size(8 * sizeof(scalar_t))));
  Eight x;
  std::memcpy(&x, p, sizeof x);
  return __builtin_convertvector(x, simd::Vec<double>);
}

// a . b over n values in double: lane l sums the products at d = l, l + 8, ... of the whole
// blocks of 8 in order, the lanes add in hsum's fixed order, then the tail's products in order.
template <class scalar_t>
double dot_double(const scalar_t* a, const scalar_t* b, int64_t n) {
  simd::Vec<double> acc{};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) acc += double8(a + d) * double8(b + d);
  double sum = simd::hsum<double>(acc);
  for (; d < n; ++d) sum += double(a[d]) * double(b[d]);
  return sum;
}

// One (b, h) slice of x [T, hd] copied, zero-padded, into `rows` [Tp, hdp] (times `scale`)
// and/or its transpose `cols` [hd, Tp].
template <class scalar_t>
void copy_slice(scalar_t* rows, scalar_t* cols, const Heads<const scalar_t>& x, int64_t b, int64_t h,
                const SliceDims& dims, scalar_t scale = scalar_t(1)) {
  if (rows) {
    std::fill(rows, rows + dims.Tp * dims.hdp, scalar_t(0));
    for (int64_t j = 0; j < dims.T; ++j) {
      const scalar_t* x_j = x.row(b, h, j);
      scale_row(rows + j * dims.hdp, x_j, dims.hd, scale);
    }
  }
  if (!cols) return;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (dims.hd % 16 == 0) {
      // Blocks of 16 rows by 16 features: row loads, a transpose in registers, column stores.
      for (int64_t j0 = 0; j0 < dims.Tp; j0 += 16)
        for (int64_t d0 = 0; d0 < dims.hd; d0 += 16) {
          simd::Vec<float> r[16];
          for (int64_t u = 0; u < 16; ++u)  // rows past T: zeros
            r[u] = j0 + u < dims.T ? simd::load(x.row(b, h, j0 + u) + d0) : simd::Vec<float>{};
          transpose16(r);
          for (int64_t c = 0; c < 16; ++c) simd::store(cols + (d0 + c) * dims.Tp + j0, r[c]);
        }
      return;
    }
  }
  // Contiguous stores down each column, the rows read with x's row stride (a gather).
  const scalar_t* x_0 = x.row(b, h, 0);
  for (int64_t d = 0; d < dims.hd; ++d) {
    scalar_t* col = cols + d * dims.Tp;
#pragma omp simd
    for (int64_t j = 0; j < dims.T; ++j) col[j] = x_0[j * x.t + d];
    std::fill(col + dims.T, col + dims.Tp, scalar_t(0));
  }
}

// A slice's rows as the kernels read them, p[j * ld + d] for j < Tp, d < hdp.
template <class scalar_t>
struct SliceRows {
  const scalar_t* p;
  int64_t ld;
};

// x's own rows when they need no padding (hd a multiple of kBlock and T of kRows: read in place,
// with x's row stride), else a zero-padded copy in `buffer` [Tp, hdp] (sized on first use).
template <class scalar_t>
SliceRows<scalar_t> slice_rows(std::vector<scalar_t>& buffer, const Heads<const scalar_t>& x, int64_t b, int64_t h,
                               const SliceDims& dims) {
  if (dims.hd == dims.hdp && dims.T == dims.Tp) return {x.row(b, h, 0), x.t};
  buffer.resize(size_t(dims.Tp * dims.hdp));
  copy_slice<scalar_t>(buffer.data(), nullptr, x, b, h, dims);
  return {buffer.data(), dims.hdp};
}

// St[j][r] = scale * (a_r . x_j) for the group's rows a_r (columns i0..i0+kRows of at = a^T
// [hd, ldt]) and the keys j < n (a multiple of kKeys), rows x_j of x [n, ldx].
// Scalar math: St[j][r] = scale * sum_{d < hd} a_r[d] x_j[d], summed over d in order.
template <class scalar_t>
void scores(scalar_t* St, const scalar_t* at, int64_t ldt, const scalar_t* x, int64_t ldx, int64_t n, int64_t hd,
            scalar_t scale) {
  for (int64_t j0 = 0; j0 < n; j0 += kKeys) {
    scalar_t acc[kKeys][kRows] = {};
    for (int64_t d = 0; d < hd; ++d) {
      const scalar_t* a_d = at + d * ldt;
#pragma GCC unroll 8
      for (int64_t u = 0; u < kKeys; ++u) {
        const scalar_t x_jd = x[(j0 + u) * ldx + d];
#pragma omp simd
        for (int64_t r = 0; r < kRows; ++r) acc[u][r] += x_jd * a_d[r];
      }
    }
    for (int64_t u = 0; u < kKeys; ++u)
#pragma omp simd
      for (int64_t r = 0; r < kRows; ++r) St[(j0 + u) * kRows + r] = scale * acc[u][r];
  }
}

// out_r = sum_{j < n} W[j][r] x_j for the group's rows r: x [n, >= ld] rows ldx apart and out
// [kRows, ld], ld a multiple of kBlock.
// Scalar math: out_r[d] = sum_j W[j][r] x_j[d], summed over j in order.
template <class scalar_t>
void combine(scalar_t* out, const scalar_t* W, SliceRows<scalar_t> x, int64_t ld, int64_t n) {
  for (int64_t d0 = 0; d0 < ld; d0 += kBlock) {
    scalar_t acc[kRows][kBlock] = {};
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t* x_j = x.p + j * x.ld + d0;
#pragma GCC unroll 16
      for (int64_t r = 0; r < kRows; ++r) {
        const scalar_t w = W[j * kRows + r];
#pragma omp simd
        for (int64_t l = 0; l < kBlock; ++l) acc[r][l] += w * x_j[l];
      }
    }
    for (int64_t r = 0; r < kRows; ++r) std::copy(acc[r], acc[r] + kBlock, out + r * ld + d0);
  }
}

// y_j += sum_r W[j][r] a_r for the keys j < n (a multiple of kKeys) and the group's rows a_r: y
// [n, ld], a [kRows, >= ld] rows a.ld apart. Each y_j's sum is a chain of kRows dependent adds, so
// kOuterKeys keys go side by side (independent chains that overlap).
// Scalar math: y_j[d] += W[j][0] a_0[d], then W[j][1] a_1[d], ... (rows in order).
constexpr int64_t kOuterKeys = 4;
static_assert(kKeys % kOuterKeys == 0);
template <class scalar_t>
void add_outer(scalar_t* y, const scalar_t* W, SliceRows<scalar_t> a, int64_t ld, int64_t n) {
  for (int64_t d0 = 0; d0 < ld; d0 += kBlock) {
    scalar_t a_r[kRows][kBlock];
    for (int64_t r = 0; r < kRows; ++r) std::copy(a.p + r * a.ld + d0, a.p + r * a.ld + d0 + kBlock, a_r[r]);
    for (int64_t j0 = 0; j0 < n; j0 += kOuterKeys) {
      scalar_t acc[kOuterKeys][kBlock];  // the keys' blocks, in registers while the rows add to them
      for (int64_t u = 0; u < kOuterKeys; ++u)
#pragma omp simd
        for (int64_t l = 0; l < kBlock; ++l) acc[u][l] = y[(j0 + u) * ld + d0 + l];
#pragma GCC unroll 16
      for (int64_t r = 0; r < kRows; ++r)
#pragma GCC unroll 4
        for (int64_t u = 0; u < kOuterKeys; ++u) {
          const scalar_t w = W[(j0 + u) * kRows + r];
#pragma omp simd
          for (int64_t l = 0; l < kBlock; ++l) acc[u][l] += w * a_r[r][l];
        }
      for (int64_t u = 0; u < kOuterKeys; ++u)
#pragma omp simd
        for (int64_t l = 0; l < kBlock; ++l) y[(j0 + u) * ld + d0 + l] = acc[u][l];
    }
  }
}

// The causal mask on a group's scores: St[j][r] = -inf for j > i0 + r (keys j < i0 + kRows;
// the keys before i0 are visible to every row).
template <class scalar_t>
void mask_group(scalar_t* St, int64_t i0) {
  using V = simd::Vec<scalar_t>;
  constexpr int64_t W = simd::lanes<scalar_t>;
  V lane;  // lane l of vector v holds row r = v W + l
  for (int64_t l = 0; l < W; ++l) lane[l] = scalar_t(l);
  const V inf = simd::splat(std::numeric_limits<scalar_t>::infinity());
  for (int64_t u = 1; u < kRows; ++u)
    for (int64_t v = 0; v < kRows / W; ++v) {
      scalar_t* p = St + (i0 + u) * kRows + v * W;
      simd::store(p, lane + scalar_t(v * W) < scalar_t(u) ? -inf : simd::load(p));
    }
}

// e^x lane by lane: exp_f32's vector form for f32 (the same bits as fast_exp per value), the C
// library's exp for f64.
template <class scalar_t>
[[gnu::always_inline]] inline simd::Vec<scalar_t> exp_lanes(simd::Vec<scalar_t> x) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return exp_f32(x);
  } else {
    for (int64_t l = 0; l < simd::lanes<scalar_t>; ++l) x[l] = std::exp(x[l]);
    return x;
  }
}

// The forward softmax of a masked group, in place: St[j][r] becomes e_rj = exp(S_rj - m_r), and
// lse[r] = m_r + log l_r, inv_l[r] = 1 / l_r, so P_{i0+r, j} = e_rj inv_l[r] (the caller scales the
// rows of e V, one multiply per output value instead of one per probability).
// Scalar math: m_r = max_j S_rj;  e_rj = exp(S_rj - m_r);  l_r = sum_j e_rj (double, j in order);
//              lse_r = m_r + log l_r;  inv_l_r = 1 / l_r
template <class scalar_t>
void softmax_group(scalar_t* St, scalar_t* lse, scalar_t* inv_l, int64_t n) {
  scalar_t m[kRows];
  double l[kRows] = {};
  std::fill(m, m + kRows, -std::numeric_limits<scalar_t>::infinity());
  for (int64_t j = 0; j < n; ++j)
#pragma omp simd
    for (int64_t r = 0; r < kRows; ++r) m[r] = std::max(m[r], St[j * kRows + r]);
  for (int64_t j = 0; j < n; ++j)
#pragma omp simd
    for (int64_t r = 0; r < kRows; ++r) {
      St[j * kRows + r] = fast_exp(St[j * kRows + r] - m[r]);
      l[r] += double(St[j * kRows + r]);
    }
  for (int64_t r = 0; r < kRows; ++r) {
    lse[r] = scalar_t(double(m[r]) + std::log(l[r]));
    inv_l[r] = scalar_t(1.0 / l[r]);
  }
}

// The backward's softmax step for a masked group, in place: St[j][r] becomes P_{i0+r, j} and dPt[j][r]
// (dP) becomes dS.
// Scalar math: P_rj = exp(S_rj - lse_r);  dS_rj = P_rj (dP_rj - D_r)  (0 where masked)
template <class scalar_t>
void probabilities_group(scalar_t* St, scalar_t* dPt, const scalar_t* lse, const scalar_t* D, int64_t n) {
  using V = simd::Vec<scalar_t>;
  constexpr int64_t W = simd::lanes<scalar_t>, NV = kRows / W;
  V lse_v[NV], D_v[NV];
  for (int64_t v = 0; v < NV; ++v) {
    lse_v[v] = simd::load(lse + v * W);
    D_v[v] = simd::load(D + v * W);
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t v = 0; v < NV; ++v) {
      scalar_t* S_j = St + j * kRows + v * W;
      scalar_t* dP_j = dPt + j * kRows + v * W;
      const V P = exp_lanes<scalar_t>(simd::load(S_j) - lse_v[v]);
      simd::store(S_j, P);
      simd::store(dP_j, P * (simd::load(dP_j) - D_v[v]));
    }
}

// Asks for the cache lines of slice bh's rows of x (T rows of hd values) ahead of their use: the
// next slice's inputs while this one computes, and this slice's outputs before their stores. In
// training, a layer's attention inputs and gradient buffers come from memory (its backward runs
// long after its forward), and a slice's rows lie a whole row of the packed projection apart: with
// the caches flushed before each call, these prefetches take about a fifth off a call at [8, 2, 64,
// 16]. Inputs get a low-locality hint, since the current slice's buffers fill most of L1.
template <bool kWrite, class scalar_t>
void prefetch_slice(const Heads<scalar_t>& x, int64_t bh, int64_t H, int64_t T, int64_t hd) {
  const int64_t b = bh / H, h = bh % H;
  const int64_t bytes = hd * int64_t(sizeof(scalar_t));
  for (int64_t t = 0; t < T; ++t) {
    const char* row = reinterpret_cast<const char*>(x.row(b, h, t));
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(row + off, kWrite, kWrite ? 3 : 1);
  }
}

// Work per (batch, head) slice is ~T^2 hd: slices per thread chunk so a chunk is worth a thread.
int64_t slice_grain(int64_t T, int64_t hd) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(T * T * hd, 1)); }

// Per (b, h) slice, rows i = 0..T-1 of q, k, v [T, hd]:
//   S_ij = scale q_i . k_j  (j <= i; j > i is masked)
//   lse_i = m_i + log sum_{j<=i} exp(S_ij - m_i),  m_i = max_{j<=i} S_ij
//   P_ij = exp(S_ij - m_i) / sum_j exp(S_ij - m_i) = exp(S_ij - lse_i)
//   O_i = sum_{j<=i} P_ij v_j
// logits (optional, [B, H, T, T] contiguous) gets S_ij, and -inf for j > i.
template <class scalar_t>
void causal_attention_forward(const Heads<scalar_t>& O, scalar_t* lse, scalar_t* logits, const Heads<const scalar_t>& q,
                              const Heads<const scalar_t>& k, const Heads<const scalar_t>& v, int64_t B, int64_t H,
                              int64_t T, int64_t hd, double scale) {
  const SliceDims dims(T, hd);
  const int64_t Tp = dims.Tp, hdp = dims.hdp;
  parallel_for(0, B * H, slice_grain(T, hd), [&](int64_t bh0, int64_t bh1) {
    std::vector<scalar_t> qt = buffer<scalar_t>(hd * Tp), k_rows, v_rows, St = buffer<scalar_t>(Tp * kRows),
                          O_rows = buffer<scalar_t>(kRows * hdp), lse_r = buffer<scalar_t>(kRows),
                          inv_l = buffer<scalar_t>(kRows);
    for (int64_t bh = bh0; bh < bh1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      if (bh + 1 < bh1)
        for (const Heads<const scalar_t>* x : {&q, &k, &v}) prefetch_slice<false>(*x, bh + 1, H, T, hd);
      prefetch_slice<true>(O, bh, H, T, hd);
      copy_slice<scalar_t>(nullptr, qt.data(), q, b, h, dims);
      const SliceRows<scalar_t> k_r = slice_rows(k_rows, k, b, h, dims), v_r = slice_rows(v_rows, v, b, h, dims);
      for (int64_t i0 = 0; i0 < T; i0 += kRows) {
        const int64_t n = i0 + kRows, rows = std::min(kRows, T - i0);  // keys j < n; rows i0 + r < T
        scores(St.data(), qt.data() + i0, Tp, k_r.p, k_r.ld, n, hd, scalar_t(scale));
        mask_group(St.data(), i0);
        if (logits)
          for (int64_t r = 0; r < rows; ++r) {
            scalar_t* row = logits + (bh * T + i0 + r) * T;
            for (int64_t j = 0; j < T; ++j)
              row[j] = j < n ? St[size_t(j * kRows + r)] : -std::numeric_limits<scalar_t>::infinity();
          }
        softmax_group(St.data(), lse_r.data(), inv_l.data(), n);
        combine(O_rows.data(), St.data(), v_r, hdp, n);  // e V
        for (int64_t r = 0; r < rows; ++r) {
          lse[bh * T + i0 + r] = lse_r[size_t(r)];
          const scalar_t* e_v = O_rows.data() + r * hdp;
          scalar_t* O_i = O.row(b, h, i0 + r);
          scale_row(O_i, e_v, hd, inv_l[size_t(r)]);  // O_i = sum_j e_ij v_j / l_i
        }
      }
    }
  });
}

// The backward of causal_attention_forward, with dO the gradient of O:
//   P_ij = exp(S_ij - lse_i)                   recomputed from q, k and the saved lse
//   dV = P^T dO:        dv_j = sum_{i>=j} P_ij dO_i
//   dP = dO V^T:        dP_ij = dO_i . v_j
//   softmax backward:   dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij') = P_ij (dP_ij - D_i),
//                       D_i = sum_j P_ij (dO_i . v_j) = dO_i . O_i
//   S = scale q k^T:    dq_i = scale sum_{j<=i} dS_ij k_j,  dk_j = sum_{i>=j} dS_ij (scale q_i)
// Masked entries (j > i) have P_ij = 0, so they add nothing anywhere. dk and dv sum over i in order.
template <class scalar_t>
void causal_attention_backward(const Heads<scalar_t>& dq, const Heads<scalar_t>& dk, const Heads<scalar_t>& dv,
                               const Heads<const scalar_t>& dO, const Heads<const scalar_t>& q,
                               const Heads<const scalar_t>& k, const Heads<const scalar_t>& v,
                               const Heads<const scalar_t>& O, const scalar_t* lse, int64_t B, int64_t H, int64_t T,
                               int64_t hd, double scale) {
  const SliceDims dims(T, hd);
  const int64_t Tp = dims.Tp, hdp = dims.hdp;
  const scalar_t s = scalar_t(scale);
  parallel_for(0, B * H, slice_grain(T, hd), [&](int64_t bh0, int64_t bh1) {
    std::vector<scalar_t> qt = buffer<scalar_t>(hd * Tp), dOt = buffer<scalar_t>(hd * Tp),
                          sq_rows = buffer<scalar_t>(Tp * hdp), dO_rows, k_rows, v_rows,
                          dk_rows = buffer<scalar_t>(Tp * hdp), dv_rows = buffer<scalar_t>(Tp * hdp),
                          Pt = buffer<scalar_t>(Tp * kRows), dSt = buffer<scalar_t>(Tp * kRows),
                          dq_rows = buffer<scalar_t>(kRows * hdp), lse_r = buffer<scalar_t>(kRows),
                          D = buffer<scalar_t>(kRows);
    for (int64_t bh = bh0; bh < bh1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      if (bh + 1 < bh1)
        for (const Heads<const scalar_t>* x : {&dO, &q, &k, &v, &O}) prefetch_slice<false>(*x, bh + 1, H, T, hd);
      for (const Heads<scalar_t>* x : {&dq, &dk, &dv}) prefetch_slice<true>(*x, bh, H, T, hd);
      copy_slice<scalar_t>(sq_rows.data(), qt.data(), q, b, h, dims, s);  // scale q_i, and q^T
      copy_slice<scalar_t>(nullptr, dOt.data(), dO, b, h, dims);
      const SliceRows<scalar_t> dO_r = slice_rows(dO_rows, dO, b, h, dims), k_r = slice_rows(k_rows, k, b, h, dims),
                                v_r = slice_rows(v_rows, v, b, h, dims);
      std::fill(dk_rows.begin(), dk_rows.end(), scalar_t(0));
      std::fill(dv_rows.begin(), dv_rows.end(), scalar_t(0));
      for (int64_t i0 = 0; i0 < T; i0 += kRows) {
        const int64_t n = i0 + kRows, rows = std::min(kRows, T - i0);  // keys j < n; rows i0 + r < T
        std::fill(lse_r.begin(), lse_r.end(), scalar_t(0));
        // D_r = dO_r . O_r in double (0 for rows past T).
        for (int64_t r = 0; r < kRows; ++r)
          D[size_t(r)] = r < rows ? scalar_t(dot_double(dO_r.p + (i0 + r) * dO_r.ld, O.row(b, h, i0 + r), hd)) : 0;
        for (int64_t r = 0; r < rows; ++r) lse_r[size_t(r)] = lse[bh * T + i0 + r];
        scores(Pt.data(), qt.data() + i0, Tp, k_r.p, k_r.ld, n, hd, s);             // S
        scores(dSt.data(), dOt.data() + i0, Tp, v_r.p, v_r.ld, n, hd, scalar_t(1));  // dP
        mask_group(Pt.data(), i0);
        probabilities_group(Pt.data(), dSt.data(), lse_r.data(), D.data(), n);
        combine(dq_rows.data(), dSt.data(), k_r, hdp, n);
        for (int64_t r = 0; r < rows; ++r) {
          scalar_t* dq_i = dq.row(b, h, i0 + r);
          scale_row(dq_i, dq_rows.data() + r * hdp, hd, s);
        }
        // Rows past T have q = dO = 0, so they add nothing to dk, dv.
        add_outer(dk_rows.data(), dSt.data(), SliceRows<scalar_t>{sq_rows.data() + i0 * hdp, hdp}, hdp, n);
        add_outer(dv_rows.data(), Pt.data(), SliceRows<scalar_t>{dO_r.p + i0 * dO_r.ld, dO_r.ld}, hdp, n);
      }
      for (int64_t j = 0; j < T; ++j) {
        copy_row(dk.row(b, h, j), dk_rows.data() + j * hdp, hd);
        copy_row(dv.row(b, h, j), dv_rows.data() + j * hdp, hd);
      }
    }
  });
}

}  // namespace

Variable causal_attention(const Variable& q, const Variable& k, const Variable& v, double scale, Tensor* logits_out) {
  NL_CHECK(q.defined() && k.defined() && v.defined(), "causal_attention: q, k and v are required");
  NL_CHECK(q.dim() == 4, "causal_attention: q must be [B, H, T, head_dim], got shape ", to_string(q.shape()));
  NL_CHECK(k.shape() == q.shape() && v.shape() == q.shape(), "causal_attention: q, k and v must have one shape, got ",
           to_string(q.shape()), ", ", to_string(k.shape()), " and ", to_string(v.shape()));
  NL_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), "causal_attention: q, k and v have dtypes ",
           dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), " and ", dtype_name(v.dtype()));
  NL_CHECK(std::isfinite(scale), "causal_attention: scale must be finite, got ", scale);
  for (const Variable* x : {&q, &k, &v}) check_cpu(x->data(), "causal_attention");
  const Shape shape = q.shape();
  const int64_t B = shape[0], H = shape[1], T = shape[2], hd = shape[3];
  const Tensor tq = unit_last_stride(q.data()), tk = unit_last_stride(k.data()), tv = unit_last_stride(v.data());
  Tensor O = empty_heads_interleaved(shape, q.dtype());
  Tensor lse = empty({B, H, T}, q.dtype());
  Tensor logits = logits_out ? empty({B, H, T, T}, q.dtype()) : Tensor();
  NL_DISPATCH_FLOATING(q.dtype(), "causal_attention", [&] {
    causal_attention_forward<scalar_t>(heads_of<scalar_t>(O), lse.data<scalar_t>(),
                                       logits_out ? logits.data<scalar_t>() : nullptr, heads_of<const scalar_t>(tq),
                                       heads_of<const scalar_t>(tk), heads_of<const scalar_t>(tv), B, H, T, hd, scale);
  });
  if (logits_out) *logits_out = logits;
  return make_output("causal_attention", {q, k, v}, O, [tq, tk, tv, O, lse, scale](const std::vector<Tensor>& g,
                                                                                   const Node& n) {
    const Tensor dO = unit_last_stride(g[0]);
    const Shape& shape = tq.shape();
    auto [dq, dk, dv] = gradient_tensors(tq, tk, tv);
    NL_DISPATCH_FLOATING(tq.dtype(), "causal_attention_backward", [&] {
      causal_attention_backward<scalar_t>(heads_of<scalar_t>(dq), heads_of<scalar_t>(dk), heads_of<scalar_t>(dv),
                                          heads_of<const scalar_t>(dO), heads_of<const scalar_t>(tq),
                                          heads_of<const scalar_t>(tk), heads_of<const scalar_t>(tv),
                                          heads_of<const scalar_t>(O), lse.data<scalar_t>(), shape[0], shape[1],
                                          shape[2], shape[3], scale);
    });
    return std::vector<Tensor>{n.needs_input_grad(0) ? dq : Tensor(), n.needs_input_grad(1) ? dk : Tensor(),
                               n.needs_input_grad(2) ? dv : Tensor()};
  });
}

}  // namespace normlab
