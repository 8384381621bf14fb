// Causal self-attention as one node. The forward keeps each row's logsumexp instead of the
// [T, T] probabilities, and the backward rebuilds them from q, k and it (flash attention's
// recomputation): per (batch, head) slice, the memory kept for backward is O(T hd), not O(T^2).
#include <cmath>
#include <limits>
#include <vector>

#include "autograd/ops.h"
#include "framework/fast_math.h"
#include "framework/parallel.h"

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

// xt = x^T: the [hd, T] transpose of one slice's rows x_0..x_{T-1}, so the loops over keys
// (j) below run over contiguous memory.
template <class scalar_t>
void transpose_slice(scalar_t* xt, const Heads<const scalar_t>& x, int64_t b, int64_t h, int64_t T, int64_t hd) {
  for (int64_t j = 0; j < T; ++j) {
    const scalar_t* xj = x.row(b, h, j);
    for (int64_t d = 0; d < hd; ++d) xt[d * T + j] = xj[d];
  }
}

// s_j = scale * (a . x_j) for j = 0..i, from xt = x^T [hd, T].
// Scalar math: s_j = scale * sum_d a_d x_j[d], summed over d in order.
template <class scalar_t>
void causal_row_dots(scalar_t* s, const scalar_t* a, const scalar_t* xt, int64_t i, int64_t T, int64_t hd,
                     scalar_t scale) {
  std::fill(s, s + i + 1, scalar_t(0));
  for (int64_t d = 0; d < hd; ++d) {
    const scalar_t a_d = a[d];
    const scalar_t* xt_d = xt + d * T;
    for (int64_t j = 0; j <= i; ++j) s[j] += a_d * xt_d[j];
  }
  for (int64_t j = 0; j <= i; ++j) s[j] *= scale;
}

// sum_j x_j in double, over 8 lanes combined in a fixed order (vectorizes; deterministic).
template <class scalar_t>
double lane_sum(const scalar_t* x, int64_t n) {
  double acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += double(x[j + l]);
  double tail = 0;
  for (; j < n; ++j) tail += double(x[j]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
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
  const scalar_t s = scalar_t(scale);
  parallel_for(0, B * H, slice_grain(T, hd), [&](int64_t bh0, int64_t bh1) {
    const size_t rows = static_cast<size_t>(T), cols = static_cast<size_t>(hd);
    std::vector<scalar_t> kt(cols * rows), S(rows), o(cols);
    for (int64_t bh = bh0; bh < bh1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      transpose_slice(kt.data(), k, b, h, T, hd);
      for (int64_t i = 0; i < T; ++i) {
        causal_row_dots(S.data(), q.row(b, h, i), kt.data(), i, T, hd, s);
        if (logits) {
          scalar_t* row = logits + (bh * T + i) * T;
          std::copy(S.begin(), S.begin() + i + 1, row);
          std::fill(row + i + 1, row + T, -std::numeric_limits<scalar_t>::infinity());
        }
        scalar_t m = S[0];
        for (int64_t j = 1; j <= i; ++j) m = std::max(m, S[size_t(j)]);
        // Scalar math: P_ij = exp(S_ij - m_i) / l_i,  l_i = sum_j exp(S_ij - m_i)
        for (int64_t j = 0; j <= i; ++j) S[size_t(j)] = fast_exp(S[size_t(j)] - m);
        const double l = lane_sum(S.data(), i + 1);
        lse[bh * T + i] = scalar_t(double(m) + std::log(l));
        const scalar_t inv_l = scalar_t(1.0 / l);
        for (int64_t j = 0; j <= i; ++j) S[size_t(j)] *= inv_l;
        // Scalar math: O_i[d] = sum_{j<=i} P_ij v_j[d], summed over j in order.
        std::fill(o.begin(), o.end(), scalar_t(0));
        for (int64_t j = 0; j <= i; ++j) {
          const scalar_t P_ij = S[size_t(j)];
          const scalar_t* v_j = v.row(b, h, j);
          for (int64_t d = 0; d < hd; ++d) o[size_t(d)] += P_ij * v_j[d];
        }
        std::copy(o.begin(), o.end(), O.row(b, h, i));
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
//   S = scale q k^T:    dq_i = scale sum_{j<=i} dS_ij k_j,  dk_j = scale sum_{i>=j} dS_ij q_i
// Masked entries (j > i) have P_ij = 0, so they add nothing anywhere.
template <class scalar_t>
void causal_attention_backward(const Heads<scalar_t>& dq, const Heads<scalar_t>& dk, const Heads<scalar_t>& dv,
                               const Heads<const scalar_t>& dO, const Heads<const scalar_t>& q,
                               const Heads<const scalar_t>& k, const Heads<const scalar_t>& v,
                               const Heads<const scalar_t>& O, const scalar_t* lse, int64_t B, int64_t H, int64_t T,
                               int64_t hd, double scale) {
  const scalar_t s = scalar_t(scale);
  parallel_for(0, B * H, slice_grain(T, hd), [&](int64_t bh0, int64_t bh1) {
    const size_t rows = static_cast<size_t>(T), cols = static_cast<size_t>(hd);
    std::vector<scalar_t> kt(cols * rows), vt(cols * rows), P(rows), dP(rows), dq_i(cols);
    for (int64_t bh = bh0; bh < bh1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      transpose_slice(kt.data(), k, b, h, T, hd);
      transpose_slice(vt.data(), v, b, h, T, hd);
      for (int64_t j = 0; j < T; ++j) {
        std::fill(dk.row(b, h, j), dk.row(b, h, j) + hd, scalar_t(0));
        std::fill(dv.row(b, h, j), dv.row(b, h, j) + hd, scalar_t(0));
      }
      for (int64_t i = 0; i < T; ++i) {
        const scalar_t* q_i = q.row(b, h, i);
        const scalar_t* dO_i = dO.row(b, h, i);
        const scalar_t* O_i = O.row(b, h, i);
        causal_row_dots(P.data(), q_i, kt.data(), i, T, hd, s);  // S_i
        const scalar_t lse_i = lse[bh * T + i];
        // Scalar math: P_ij = exp(S_ij - lse_i)
        for (int64_t j = 0; j <= i; ++j) P[size_t(j)] = fast_exp(P[size_t(j)] - lse_i);
        causal_row_dots(dP.data(), dO_i, vt.data(), i, T, hd, scalar_t(1));
        double D_i = 0;
        for (int64_t d = 0; d < hd; ++d) D_i += double(dO_i[d]) * double(O_i[d]);
        // Scalar math: dS_ij = P_ij (dP_ij - D_i), kept in dP
        const scalar_t D = scalar_t(D_i);
        for (int64_t j = 0; j <= i; ++j) dP[size_t(j)] = P[size_t(j)] * (dP[size_t(j)] - D);
        const scalar_t* dS = dP.data();
        // Scalar math: dq_i = scale sum_j dS_ij k_j;  dk_j += scale dS_ij q_i;  dv_j += P_ij dO_i
        std::fill(dq_i.begin(), dq_i.end(), scalar_t(0));
        for (int64_t j = 0; j <= i; ++j) {
          const scalar_t* k_j = k.row(b, h, j);
          const scalar_t dS_ij = dS[j], sdS_ij = s * dS[j], P_ij = P[size_t(j)];
          scalar_t* dk_j = dk.row(b, h, j);
          scalar_t* dv_j = dv.row(b, h, j);
          for (int64_t d = 0; d < hd; ++d) {
            dq_i[size_t(d)] += dS_ij * k_j[d];
            dk_j[d] += sdS_ij * q_i[d];
            dv_j[d] += P_ij * dO_i[d];
          }
        }
        scalar_t* dq_row = dq.row(b, h, i);
        for (int64_t d = 0; d < hd; ++d) dq_row[d] = s * dq_i[size_t(d)];
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
    Tensor dq = empty_heads_interleaved(shape, tq.dtype()), dk = empty_heads_interleaved(shape, tq.dtype()),
           dv = empty_heads_interleaved(shape, tq.dtype());
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
