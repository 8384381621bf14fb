// Matmul, softmax, causal masking, embedding, cross-entropy and dropout, with gradients.
#include <cmath>

#include "autograd/ops.h"
#include "framework/elementwise.h"
#include "framework/matmul.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"

namespace normlab {

// y = a @ b: da = dy @ b^T, db = a^T @ dy, each summed over broadcast batch dims.
Variable matmul(const Variable& a, const Variable& b) {
  if (a.dim() > 2 && b.dim() == 2) {  // fold a's batch dims into its rows: one 2-D product
    Shape out = a.shape();
    out.back() = b.size(1);
    NL_CHECK(a.size(-1) == b.size(0), "matmul: shapes ", to_string(a.shape()), " and ", to_string(b.shape()),
             " do not match (inner dims ", a.size(-1), " and ", b.size(0), ")");
    return reshape(matmul(reshape(a, {-1, a.size(-1)}), b), out);
  }
  const Tensor ta = a.data(), tb = b.data();
  return make_output("matmul", {a, b}, matmul(ta, tb), [ta, tb](const std::vector<Tensor>& g, const Node& n) {
    return std::vector<Tensor>{
        n.needs_input_grad(0) ? sum_to(matmul(g[0], tb.transpose(-1, -2)), ta.shape()) : Tensor(),
        n.needs_input_grad(1) ? sum_to(matmul(ta.transpose(-1, -2), g[0]), tb.shape()) : Tensor()};
  });
}

Variable softmax(const Variable& x) {
  Tensor y = softmax_lastdim(x.data());
  return make_output("softmax", {x}, y, [y](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{softmax_lastdim_backward(g[0], y)};
  });
}

Variable log_softmax(const Variable& x) {
  Tensor y = log_softmax_lastdim(x.data());
  return make_output("log_softmax", {x}, y, [y](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{log_softmax_lastdim_backward(g[0], y)};
  });
}

namespace {

// Copy of x with out[..., i, j] = fill where j > i + (Lk - Lq).
Tensor causal_fill(const Tensor& x, double fill) {
  NL_CHECK(x.dim() >= 2, "causal_mask: expected at least 2 dims (..., L_q, L_k), got shape ", to_string(x.shape()));
  check_cpu(x, "causal_mask");
  Tensor out = x.clone();
  const int64_t lq = x.size(-2), lk = x.size(-1);
  const int64_t mats = lq * lk == 0 ? 0 : x.numel() / (lq * lk);
  NL_DISPATCH_FLOATING(x.dtype(), "causal_mask", [&] {
    scalar_t* p = out.data<scalar_t>();
    const scalar_t f = scalar_t(fill);
    parallel_for(0, mats * lq, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = r % lq;
        for (int64_t j = std::max<int64_t>(0, i + (lk - lq) + 1); j < lk; ++j) p[r * lk + j] = f;
      }
    });
  });
  return out;
}

}  // namespace

Variable causal_mask(const Variable& x, double fill) {
  return make_output("causal_mask", {x}, causal_fill(x.data(), fill), [](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{causal_fill(g[0], 0.0)};
  });
}

Variable embedding(const Variable& weight, const Tensor& indices) {
  NL_CHECK(weight.dim() == 2, "embedding: weight must be [V, D], got shape ", to_string(weight.shape()));
  check_cpu(weight.data(), "embedding");
  check_cpu(indices, "embedding");
  NL_CHECK(indices.dtype() == DType::i64, "embedding: indices must be i64, got ", dtype_name(indices.dtype()));
  const int64_t V = weight.size(0), D = weight.size(1);
  const Tensor idx = indices.contiguous();
  const int64_t* ip = idx.data<int64_t>();
  const int64_t T = idx.numel();
  for (int64_t t = 0; t < T; ++t)
    NL_CHECK(ip[t] >= 0 && ip[t] < V, "embedding: index ", ip[t], " at position ", t, " is out of range for ", V, " rows");
  Shape out_shape = indices.shape();
  out_shape.push_back(D);
  Tensor y = empty(out_shape, weight.dtype());
  const Tensor w = weight.data().contiguous();
  NL_DISPATCH_FLOATING(w.dtype(), "embedding", [&] {
    const scalar_t* wp = w.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    parallel_for(0, T, 64, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) std::copy(wp + ip[t] * D, wp + ip[t] * D + D, yp + t * D);
    });
  });
  // Backward: dW[idx[t]] += dy[t]. Threads split the D columns, and each walks the tokens
  // in order, so the sums are the same for any thread count.
  return make_output("embedding", {weight}, y, [idx, V, D](const std::vector<Tensor>& g, const Node&) {
    const Tensor dy = g[0].contiguous();
    Tensor dw = zeros({V, D}, dy.dtype());
    const int64_t* ip = idx.data<int64_t>();
    const int64_t T = idx.numel();
    NL_DISPATCH_FLOATING(dy.dtype(), "embedding_backward", [&] {
      const scalar_t* gp = dy.data<scalar_t>();
      scalar_t* dp = dw.data<scalar_t>();
      parallel_for(0, D, 16, [&](int64_t b, int64_t e) {
        for (int64_t t = 0; t < T; ++t)
          for (int64_t d = b; d < e; ++d) dp[ip[t] * D + d] += gp[t * D + d];
      });
    });
    return std::vector<Tensor>{dw};
  });
}

// Per token t with logits x (V values) and target c:
//   lse = log sum_j exp(x_j);  loss_t = lse - x_c + z * lse^2
//   dloss_t/dx_j = p_j - [j == c] + 2 z lse p_j,  p = softmax(x)
// The loss is the mean over the n tokens whose target is not ignore_index.
Variable cross_entropy(const Variable& logits, const Tensor& targets, int64_t ignore_index, double z_loss) {
  NL_CHECK(logits.dim() >= 1, "cross_entropy: logits need a class dim, got shape ", to_string(logits.shape()));
  check_cpu(logits.data(), "cross_entropy");
  check_cpu(targets, "cross_entropy");
  NL_CHECK(targets.dtype() == DType::i64, "cross_entropy: targets must be i64, got ", dtype_name(targets.dtype()));
  Shape expect = logits.shape();
  expect.pop_back();
  NL_CHECK(targets.shape() == expect, "cross_entropy: targets shape ", to_string(targets.shape()),
           " does not match logits shape ", to_string(logits.shape()), " (expected ", to_string(expect), ")");
  NL_CHECK(std::isfinite(z_loss) && z_loss >= 0, "cross_entropy: z_loss must be finite and >= 0, got ", z_loss);
  const int64_t V = logits.size(-1), T = targets.numel();
  const Tensor x = logits.data().contiguous(), tgt = targets.contiguous();
  const int64_t* tp = tgt.data<int64_t>();
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (tp[t] == ignore_index) continue;
    NL_CHECK(tp[t] >= 0 && tp[t] < V, "cross_entropy: target ", tp[t], " at position ", t,
             " is out of range for ", V, " classes");
    n++;
  }
  Tensor lse = empty({T}, DType::f64);
  double total = 0;
  NL_DISPATCH_FLOATING(x.dtype(), "cross_entropy", [&] {
    const scalar_t* xp = x.data<scalar_t>();
    double* lp = lse.data<double>();
    parallel_for(0, T, std::max<int64_t>(1, 4096 / std::max<int64_t>(V, 1)), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) lp[t] = log_sum_exp(xp + t * V, V);
    });
    for (int64_t t = 0; t < T; ++t)  // in order: deterministic
      if (tp[t] != ignore_index) total += lp[t] - double(xp[t * V + tp[t]]) + z_loss * lp[t] * lp[t];
  });
  const double inv_n = n > 0 ? 1.0 / double(n) : 0.0;
  Tensor loss = full({}, total * inv_n, logits.dtype());
  return make_output("cross_entropy", {logits}, loss, [x, tgt, lse, ignore_index, z_loss, inv_n, V](const std::vector<Tensor>& g, const Node&) {
    Tensor dx = empty(x.shape(), x.dtype());
    const int64_t T = tgt.numel();
    const int64_t* tp = tgt.data<int64_t>();
    const double* lp = lse.data<double>();
    const double scale = g[0].item() * inv_n;
    NL_DISPATCH_FLOATING(x.dtype(), "cross_entropy_backward", [&] {
      const scalar_t* xp = x.data<scalar_t>();
      scalar_t* dp = dx.data<scalar_t>();
      parallel_for(0, T, std::max<int64_t>(1, 4096 / std::max<int64_t>(V, 1)), [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          scalar_t* drow = dp + t * V;
          if (tp[t] == ignore_index) {
            std::fill(drow, drow + V, scalar_t(0));
            continue;
          }
          const double coef = scale * (1.0 + 2.0 * z_loss * lp[t]);
          for (int64_t j = 0; j < V; ++j) drow[j] = scalar_t(coef * std::exp(double(xp[t * V + j]) - lp[t]));
          drow[tp[t]] -= scalar_t(scale);
        }
      });
    });
    return std::vector<Tensor>{dx};
  });
}

Variable dropout(const Variable& x, double p, bool training, Generator& gen) {
  NL_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0) return x;
  const Tensor keep = uniform(x.shape(), gen, 0.0, 1.0, x.dtype());
  const double scale = 1.0 / (1.0 - p);
  const Tensor mask = map_unary(keep, "dropout", [p, scale](auto u) { return u >= decltype(u)(p) ? decltype(u)(scale) : decltype(u)(0); });
  return make_output("dropout", {x}, mul(x.data(), mask), [mask](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{mul(g[0], mask)};
  });
}

}  // namespace normlab
