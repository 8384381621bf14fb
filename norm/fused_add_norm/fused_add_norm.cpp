#include "norm/fused_add_norm/fused_add_norm.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/fused_add_norm/fused_add_norm_cuda.h"
#endif

namespace normlab {

namespace {

// Runs f(i0, i1) on consecutive blocks of at most row_grain(N) rows, the blocks in parallel,
// so that a fused kernel does all its steps on one block while it is in cache. The kernels
// that f calls run serially inside (parallel_for does not nest).
template <class F>
void for_row_blocks(int64_t M, int64_t N, const F& f) {
  const int64_t grain = row_grain(N);
  parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t i0 = r0; i0 < r1; i0 += grain) f(i0, std::min(r1, i0 + grain));
  });
}

// Forward of a fused pair: h = x + r on a block, then norm_rows(i0, i1) normalizes its rows of h.
template <class T, class F>
void add_then_norm(T* h, const T* x, const T* r, int64_t M, int64_t N, const F& norm_rows) {
  for_row_blocks(M, N, [&](int64_t i0, int64_t i1) {
    for (int64_t k = i0 * N; k < i1 * N; ++k) h[k] = T(to_math(x[k]) + to_math(r[k]));
    norm_rows(i0, i1);
  });
}

// Checks that x and r are non-empty with one shape and dtype; returns the number of rows.
int64_t rows_of_pair(const Tensor& x, const Tensor& r, const char* who) {
  NL_CHECK(x.defined() && x.dim() >= 1, who, ": the input needs at least 1 dim");
  NL_CHECK(r.defined(), who, ": the residual r is undefined");
  NL_CHECK(r.shape() == x.shape(), who, ": the residual r has shape ", to_string(r.shape()), " but x has ",
           to_string(x.shape()));
  NL_CHECK(r.dtype() == x.dtype(), who, ": the residual r has dtype ", dtype_name(r.dtype()), " but x has ",
           dtype_name(x.dtype()));
  return rows_of(x, x.size(-1), who);
}

Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : Tensor(); }

// {h, y} as Variables, recorded (when a graph is) by the node make_node() builds over `inputs`,
// with outputs (h, y), or y alone when the sum is not kept (h is then a value outside the graph).
template <class MakeNode>
std::pair<Variable, Variable> record_sum_and_norm(std::vector<Variable> inputs, const Tensor& h, const Tensor& y,
                                                  bool keep_sum, const MakeNode& make_node) {
  if (!keep_sum) return {Variable(h), record(std::move(inputs), {y}, make_node)[0]};
  std::vector<Variable> hy = record(std::move(inputs), {h, y}, make_node);
  return {hy[0], hy[1]};
}

// The gradients reaching a node of outputs (h, y) or (y): {dh, dy}, dh undefined for the latter.
std::pair<Tensor, Tensor> sum_and_norm_grads(const std::vector<Tensor>& grad_outputs) {
  if (grad_outputs.size() == 1) return {Tensor(), grad_outputs[0]};
  return {grad_outputs[0], grad_outputs[1]};
}

// The operands of a fused backward, checked and contiguous, with h's rows M and features N.
struct BackwardArgs {
  Tensor dh, dy, h, gamma;  // dh and gamma may be undefined
  int64_t M, N;
};
BackwardArgs backward_args(const Tensor& dh, const Tensor& dy, const Tensor& h, const Tensor& gamma,
                           const char* who) {
  NL_CHECK(dy.shape() == h.shape(), who, ": dy has shape ", to_string(dy.shape()), " but h has ",
           to_string(h.shape()));
  NL_CHECK(!dh.defined() || dh.shape() == h.shape(), who, ": dh has shape ", to_string(dh.shape()), " but h has ",
           to_string(h.shape()));
  const int64_t N = h.size(-1);
  return {contiguous_or_undefined(dh), dy.contiguous(), h.contiguous(), contiguous_or_undefined(gamma),
          h.numel() / N, N};
}

}  // namespace

template <class T>
void add_layer_norm_forward(T* h, T* y, math_t<T>* mean, math_t<T>* rstd, const T* x, const T* r, const T* gamma,
                            const T* beta, int64_t M, int64_t N, double eps) {
  add_then_norm(h, x, r, M, N, [&](int64_t i0, int64_t i1) {
    layer_norm_forward_cpu<T>(y + i0 * N, mean + i0, rstd + i0, h + i0 * N, gamma, beta, i1 - i0, N, eps);
  });
}

// h = x + r, so dL/dx = dL/dr = dL/dh (total) = dh + dh_norm, where dh_norm is layer_norm's
// dx from dy (see layer_norm_backward):  dh_total = dh + rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// dgamma, dbeta: layer_norm's, from dy and h.
template <class T>
void add_layer_norm_backward(T* dh_total, T* dgamma, T* dbeta, const T* dh, const T* dy, const T* h, const T* gamma,
                             const math_t<T>* mean, const math_t<T>* rstd, int64_t M, int64_t N) {
  // One pass: dx of the norm plus dh into dh_total, and the dgamma/dbeta partials.
  layer_norm_backward_cpu<T>(dh_total, dgamma, dbeta, dy, h, gamma, mean, rstd, M, N, dh);
}

template <class T>
void add_rms_norm_forward(T* h, T* y, math_t<T>* rrms, const T* x, const T* r, const T* gamma, int64_t M, int64_t N,
                          double eps, bool unit_offset) {
  add_then_norm(h, x, r, M, N, [&](int64_t i0, int64_t i1) {
    rms_norm_forward_cpu<T>(y + i0 * N, rrms + i0, h + i0 * N, gamma, i1 - i0, N, eps, unit_offset);
  });
}

// h = x + r, so dL/dx = dL/dr = dh + dh_norm, where dh_norm is rms_norm's dx from dy
// (see rms_norm_backward):  dh_total = dh + rrms * (dxhat - xhat * mean(dxhat * xhat))
// dgamma: rms_norm's, from dy and h.
template <class T>
void add_rms_norm_backward(T* dh_total, T* dgamma, const T* dh, const T* dy, const T* h, const T* gamma,
                           const math_t<T>* rrms, int64_t M, int64_t N, bool unit_offset) {
  // One pass: dx of the norm plus dh into dh_total, and the dgamma partials.
  rms_norm_backward_cpu<T>(dh_total, dgamma, dy, h, gamma, rrms, M, N, unit_offset, dh);
}

template void add_layer_norm_forward<float>(float*, float*, float*, float*, const float*, const float*, const float*,
                                            const float*, int64_t, int64_t, double);
template void add_layer_norm_forward<double>(double*, double*, double*, double*, const double*, const double*,
                                             const double*, const double*, int64_t, int64_t, double);
template void add_layer_norm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                             const float*, const float*, const float*, int64_t, int64_t);
template void add_layer_norm_backward<double>(double*, double*, double*, const double*, const double*,
                                              const double*, const double*, const double*, const double*, int64_t,
                                              int64_t);
template void add_rms_norm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                          int64_t, double, bool);
template void add_rms_norm_forward<double>(double*, double*, double*, const double*, const double*, const double*,
                                           int64_t, int64_t, double, bool);
template void add_rms_norm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                           const float*, int64_t, int64_t, bool);
template void add_rms_norm_backward<double>(double*, double*, const double*, const double*, const double*,
                                            const double*, const double*, int64_t, int64_t, bool);
#define NL_INSTANTIATE_LOW_PRECISION(T)                                                                               \
  template void add_layer_norm_forward<T>(T*, T*, float*, float*, const T*, const T*, const T*, const T*, int64_t,    \
                                          int64_t, double);                                                           \
  template void add_layer_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const float*,          \
                                           const float*, int64_t, int64_t);                                           \
  template void add_rms_norm_forward<T>(T*, T*, float*, const T*, const T*, const T*, int64_t, int64_t, double,       \
                                        bool);                                                                        \
  template void add_rms_norm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, const float*, int64_t,       \
                                         int64_t, bool);
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_LOW_PRECISION)
#undef NL_INSTANTIATE_LOW_PRECISION

AddLayerNormStats add_layer_norm_forward(const Tensor& x_in, const Tensor& r_in, const Tensor& gamma_in,
                                         const Tensor& beta_in, double eps) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.defined() && x_in.device().type == DeviceType::cuda)
    return add_layer_norm_forward_cuda(x_in, r_in, gamma_in, beta_in, eps);
#endif
  check_eps(eps, "add_layer_norm");
  const int64_t M = rows_of_pair(x_in, r_in, "add_layer_norm");
  const int64_t N = x_in.size(-1);
  check_vector(gamma_in, N, x_in.dtype(), "add_layer_norm", "gamma");
  check_vector(beta_in, N, x_in.dtype(), "add_layer_norm", "beta");
  const Tensor x = x_in.contiguous(), r = r_in.contiguous();
  const Tensor gamma = contiguous_or_undefined(gamma_in), beta = contiguous_or_undefined(beta_in);
  const DType sd = norm_stat_dtype(x.dtype());
  AddLayerNormStats out{empty(x.shape(), x.dtype()), empty(x.shape(), x.dtype()), empty(leading_shape(x), sd),
                        empty(leading_shape(x), sd)};
  dispatch_norm_dtype(x.dtype(), "add_layer_norm", [&]<class scalar_t>(scalar_t) {
    using S = math_t<scalar_t>;
    add_layer_norm_forward<scalar_t>(out.h.data<scalar_t>(), out.y.data<scalar_t>(), out.mean.data<S>(),
                                     out.rstd.data<S>(), x.data<scalar_t>(), r.data<scalar_t>(),
                                     ptr_or_null<scalar_t>(gamma), ptr_or_null<scalar_t>(beta), M, N, eps);
  });
  return out;
}

AddLayerNormGrads add_layer_norm_backward(const Tensor& dh, const Tensor& dy, const Tensor& h, const Tensor& gamma,
                                          const Tensor& mean, const Tensor& rstd,
                                          bool want_dh_total, bool want_dgamma, bool want_dbeta) {
#ifdef NORMLAB_WITH_CUDA
  if (h.defined() && h.device().type == DeviceType::cuda)
    return add_layer_norm_backward_cuda(dh, dy, h, gamma, mean, rstd, want_dh_total, want_dgamma, want_dbeta);
#endif
  const BackwardArgs a = backward_args(dh, dy, h, gamma, "add_layer_norm_backward");
  AddLayerNormGrads g;
  if (want_dh_total) g.dh_total = empty(h.shape(), h.dtype());
  if (want_dgamma) g.dgamma = empty({a.N}, h.dtype());
  if (want_dbeta) g.dbeta = empty({a.N}, h.dtype());
  check_stat(mean, a.M, h.dtype(), "add_layer_norm_backward", "mean");
  check_stat(rstd, a.M, h.dtype(), "add_layer_norm_backward", "rstd");
  dispatch_norm_dtype(h.dtype(), "add_layer_norm_backward", [&]<class scalar_t>(scalar_t) {
    using S = math_t<scalar_t>;
    add_layer_norm_backward<scalar_t>(ptr_or_null<scalar_t>(g.dh_total), ptr_or_null<scalar_t>(g.dgamma),
                                      ptr_or_null<scalar_t>(g.dbeta), ptr_or_null<scalar_t>(a.dh),
                                      a.dy.data<scalar_t>(), a.h.data<scalar_t>(), ptr_or_null<scalar_t>(a.gamma),
                                      mean.contiguous().data<S>(), rstd.contiguous().data<S>(), a.M, a.N);
  });
  return g;
}

AddRMSNormStats add_rms_norm_forward(const Tensor& x_in, const Tensor& r_in, const Tensor& gamma_in, double eps,
                                     bool unit_offset) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.defined() && x_in.device().type == DeviceType::cuda)
    return add_rms_norm_forward_cuda(x_in, r_in, gamma_in, eps, unit_offset);
#endif
  check_eps(eps, "add_rms_norm");
  const int64_t M = rows_of_pair(x_in, r_in, "add_rms_norm");
  const int64_t N = x_in.size(-1);
  check_vector(gamma_in, N, x_in.dtype(), "add_rms_norm", "gamma");
  const Tensor x = x_in.contiguous(), r = r_in.contiguous();
  const Tensor gamma = contiguous_or_undefined(gamma_in);
  AddRMSNormStats out{empty(x.shape(), x.dtype()), empty(x.shape(), x.dtype()),
                      empty(leading_shape(x), norm_stat_dtype(x.dtype()))};
  dispatch_norm_dtype(x.dtype(), "add_rms_norm", [&]<class scalar_t>(scalar_t) {
    add_rms_norm_forward<scalar_t>(out.h.data<scalar_t>(), out.y.data<scalar_t>(), out.rrms.data<math_t<scalar_t>>(),
                                   x.data<scalar_t>(), r.data<scalar_t>(), ptr_or_null<scalar_t>(gamma), M, N, eps,
                                   unit_offset);
  });
  return out;
}

AddRMSNormGrads add_rms_norm_backward(const Tensor& dh, const Tensor& dy, const Tensor& h, const Tensor& gamma,
                                      const Tensor& rrms, bool unit_offset, bool want_dh_total, bool want_dgamma) {
#ifdef NORMLAB_WITH_CUDA
  if (h.defined() && h.device().type == DeviceType::cuda)
    return add_rms_norm_backward_cuda(dh, dy, h, gamma, rrms, unit_offset, want_dh_total, want_dgamma);
#endif
  const BackwardArgs a = backward_args(dh, dy, h, gamma, "add_rms_norm_backward");
  AddRMSNormGrads g;
  if (want_dh_total) g.dh_total = empty(h.shape(), h.dtype());
  if (want_dgamma) g.dgamma = empty({a.N}, h.dtype());
  check_stat(rrms, a.M, h.dtype(), "add_rms_norm_backward", "rrms");
  dispatch_norm_dtype(h.dtype(), "add_rms_norm_backward", [&]<class scalar_t>(scalar_t) {
    add_rms_norm_backward<scalar_t>(ptr_or_null<scalar_t>(g.dh_total), ptr_or_null<scalar_t>(g.dgamma),
                                    ptr_or_null<scalar_t>(a.dh), a.dy.data<scalar_t>(), a.h.data<scalar_t>(),
                                    ptr_or_null<scalar_t>(a.gamma), rrms.contiguous().data<math_t<scalar_t>>(), a.M,
                                    a.N, unit_offset);
  });
  return g;
}

// grad_outputs: (dh, dy), or (dy) without h. x and r both receive dh_total (the engine copies a
// shared gradient).
std::vector<Tensor> AddLayerNormNode::backward(const std::vector<Tensor>& grad_outputs) {
  const bool has_gamma = gamma.defined();
  const size_t gamma_slot = 2, beta_slot = has_gamma ? 3 : 2;
  const bool want_dh_total = needs_input_grad(0) || needs_input_grad(1);
  const auto [dh, dy] = sum_and_norm_grads(grad_outputs);
  AddLayerNormGrads g = add_layer_norm_backward(dh, dy, h, gamma, mean, rstd, want_dh_total,
                                                has_gamma && needs_input_grad(gamma_slot),
                                                has_beta && needs_input_grad(beta_slot));
  std::vector<Tensor> out{needs_input_grad(0) ? g.dh_total : Tensor(), needs_input_grad(1) ? g.dh_total : Tensor()};
  if (has_gamma) out.push_back(g.dgamma);
  if (has_beta) out.push_back(g.dbeta);
  return out;
}

void AddLayerNormNode::release() {
  h = gamma = mean = rstd = Tensor();
  Node::release();
}

std::vector<Tensor> AddRMSNormNode::backward(const std::vector<Tensor>& grad_outputs) {
  const bool has_gamma = gamma.defined();
  const bool want_dh_total = needs_input_grad(0) || needs_input_grad(1);
  const auto [dh, dy] = sum_and_norm_grads(grad_outputs);
  AddRMSNormGrads g = add_rms_norm_backward(dh, dy, h, gamma, rrms, unit_offset, want_dh_total,
                                            has_gamma && needs_input_grad(2));
  std::vector<Tensor> out{needs_input_grad(0) ? g.dh_total : Tensor(), needs_input_grad(1) ? g.dh_total : Tensor()};
  if (has_gamma) out.push_back(g.dgamma);
  return out;
}

void AddRMSNormNode::release() {
  h = gamma = rrms = Tensor();
  Node::release();
}

std::pair<Variable, Variable> add_layer_norm(const Variable& x, const Variable& r, const Variable& gamma,
                                             const Variable& beta, double eps, bool keep_sum) {
  AddLayerNormStats s = add_layer_norm_forward(x.data(), data_or_undefined(r), data_or_undefined(gamma),
                                               data_or_undefined(beta), eps);
  return record_sum_and_norm(defined_inputs({x, r, gamma, beta}), s.h, s.y, keep_sum, [&] {
    return std::make_shared<AddLayerNormNode>(s.h, data_or_undefined(gamma), s.mean, s.rstd, beta.defined());
  });
}

std::pair<Variable, Variable> add_rms_norm(const Variable& x, const Variable& r, const Variable& gamma, double eps,
                                           bool unit_offset, bool keep_sum) {
  AddRMSNormStats s = add_rms_norm_forward(x.data(), data_or_undefined(r), data_or_undefined(gamma), eps, unit_offset);
  return record_sum_and_norm(defined_inputs({x, r, gamma}), s.h, s.y, keep_sum, [&] {
    return std::make_shared<AddRMSNormNode>(s.h, data_or_undefined(gamma), s.rrms, unit_offset);
  });
}

std::pair<Variable, Variable> add_layer_norm(const Variable& x, const Variable& r, const LayerNorm& norm,
                                             bool keep_sum) {
  rows_of(x.data(), norm.N, "LayerNorm");
  return add_layer_norm(x, r, norm.weight, norm.bias, norm.eps, keep_sum);
}

std::pair<Variable, Variable> add_rms_norm(const Variable& x, const Variable& r, const RMSNorm& norm, bool keep_sum) {
  rows_of(x.data(), norm.N, "RMSNorm");
  return add_rms_norm(x, r, norm.weight, norm.eps, norm.unit_offset, keep_sum);
}

std::pair<Variable, Variable> LayerNorm::forward_add(const Variable& x, const Variable& r, bool keep_sum) {
  return add_layer_norm(x, r, *this, keep_sum);
}

std::pair<Variable, Variable> RMSNorm::forward_add(const Variable& x, const Variable& r, bool keep_sum) {
  return add_rms_norm(x, r, *this, keep_sum);
}

}  // namespace normlab
