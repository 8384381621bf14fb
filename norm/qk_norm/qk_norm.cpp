#include "norm/qk_norm/qk_norm.h"

#include "autograd/ops.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/rms_norm/rms_norm.h"
#include "norm/scale_norm/scale_norm.h"

namespace normlab {

const char* qk_norm_kind_name(QKNormKind kind) {
  switch (kind) {
    case QKNormKind::layer: return "layer";
    case QKNormKind::rms: return "rms";
    case QKNormKind::l2: return "l2";
  }
  NL_FAIL("QKNorm: unknown kind ", int(kind), " (expected layer, rms or l2)");
}

QKNormKind parse_qk_norm_kind(const std::string& name) {
  for (QKNormKind k : {QKNormKind::layer, QKNormKind::rms, QKNormKind::l2})
    if (name == qk_norm_kind_name(k)) return k;
  NL_FAIL("QKNorm: unknown kind '", name, "' (expected layer, rms or l2)");
}

double qk_norm_henry_g0(int64_t seq_len) {
  NL_CHECK(seq_len >= 2, "qk_norm_henry_g0: the sequence length must be >= 2, got ", seq_len);
  const double L = double(seq_len);
  return std::log2(L * L - L);
}

L2Norm::L2Norm(int64_t N_, double eps_) : N(N_), eps(eps_) {
  check_features(N, "L2Norm");
  check_eps(eps, "L2Norm");
}

Variable L2Norm::forward(const Variable& x) {
  rows_of(x.data(), N, "L2Norm");
  return scale_norm(x, Variable(), eps);  // g = 1: x / max(||x||, eps)
}

QKNorm::QKNorm(int64_t head_dim_, QKNormKind kind_, double eps_, DType dtype_, std::optional<double> g0)
    : head_dim(head_dim_), kind(kind_), eps(eps_), dtype(dtype_) {
  check_features(head_dim, "QKNorm", "head_dim");
  check_eps(eps, "QKNorm");
  auto make_norm = [&]() -> std::shared_ptr<NormLayer> {
    switch (kind) {
      case QKNormKind::layer: return std::make_shared<LayerNorm>(head_dim, eps, true, true, dtype);
      case QKNormKind::rms: return std::make_shared<RMSNorm>(head_dim, eps, true, false, dtype);
      case QKNormKind::l2: return std::make_shared<L2Norm>(head_dim, eps);
    }
    NL_FAIL("QKNorm: unknown kind ", int(kind), " (expected layer, rms or l2)");
  };
  q_norm = register_module("q_norm", make_norm());
  k_norm = register_module("k_norm", make_norm());
  if (kind == QKNormKind::l2) {
    const double g_init = g0.value_or(std::sqrt(double(head_dim)));
    NL_CHECK(std::isfinite(g_init) && g_init > 0, "QKNorm: g0 must be a finite number > 0, got ", g_init);
    g = register_parameter("g", full({1}, g_init, dtype));
  } else {
    inv_sqrt_d_ = Variable(full({1}, 1.0 / std::sqrt(double(head_dim)), dtype));
  }
}

std::pair<Variable, Variable> QKNorm::forward(const Variable& q, const Variable& k) {
  NL_CHECK(q.defined() && k.defined(), "QKNorm: q and k are required");
  NL_CHECK(q.dtype() == dtype && k.dtype() == dtype, "QKNorm: q and k have dtypes ", dtype_name(q.dtype()), " and ",
           dtype_name(k.dtype()), " but the module's is ", dtype_name(dtype));
  return {q_norm->forward(q), k_norm->forward(k)};
}

Variable QKNorm::logit_scale() const { return kind == QKNormKind::l2 ? g : inv_sqrt_d_; }

std::pair<Variable, Variable> QKNorm::attention_inputs(const Variable& q, const Variable& k) {
  auto [q_hat, k_hat] = forward(q, k);
  if (kind == QKNormKind::l2) return {q_hat * g, k_hat};
  return {q_hat, k_hat};
}

double QKNorm::attention_scale() const { return kind == QKNormKind::l2 ? 1.0 : 1.0 / std::sqrt(double(head_dim)); }

Variable QKNorm::attention_logits(const Variable& q, const Variable& k) {
  NL_CHECK(q.defined() && k.defined() && q.dim() >= 2 && k.dim() >= 2,
           "QKNorm::attention_logits: q and k need at least 2 dims [..., T, head_dim]");
  auto [q_in, k_in] = attention_inputs(q, k);
  return matmul(q_in, transpose(k_in, -2, -1)) * attention_scale();
}

}  // namespace normlab
