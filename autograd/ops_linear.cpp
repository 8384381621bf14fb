// Linear layers as single nodes: x W^T + b, and with GELU or SwiGLU after it. One node in
// place of the reshape, transpose, matmul, reshape and bias add (and activation) a composed
// layer records; the products are framework/matmul's.
//
// Notation: x [..., K] seen as rows X [M, K]; W [N, K]; b [N]; p = X W^T + b [M, N], the
// pre-activation. The activations are the elementwise ops' kernels, so the values are the
// composed layer's; linear_gelu saves gelu'(p) for backward, linear_swiglu the pre-activations.
#include "autograd/activation_math.h"
#include "autograd/ops.h"
#include "framework/elementwise.h"
#include "framework/matmul.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"

namespace normlab {

namespace {

// Checks x [..., K], W [N, K] and b [N] (when defined) and returns x as rows [M, K].
Tensor input_rows(const Variable& x, const Variable& w, const Variable& b, const char* op) {
  NL_CHECK(x.defined() && w.defined(), op, ": input or weight is undefined");
  NL_CHECK(w.dim() == 2, op, ": weight must be [out, in], got shape ", to_string(w.shape()));
  NL_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), op, ": input shape ", to_string(x.shape()),
           " does not end in in_features=", w.size(1), " (weight ", to_string(w.shape()), ")");
  NL_CHECK(x.dtype() == w.dtype(), op, ": input is ", dtype_name(x.dtype()), " but weight is ",
           dtype_name(w.dtype()));
  if (b.defined())
    NL_CHECK(b.dim() == 1 && b.size(0) == w.size(0) && b.dtype() == w.dtype(), op, ": bias must be ",
             dtype_name(w.dtype()), " [", w.size(0), "], got ", dtype_name(b.dtype()), " ", to_string(b.shape()));
  check_cpu(x.data(), op);
  return x.data().reshape({-1, w.size(1)});
}

Shape output_shape(const Variable& x, int64_t n) {
  Shape s = x.shape();
  s.back() = n;
  return s;
}

// p += b (b_j added to every row of p [M, N]).
void add_bias(Tensor& p, const Tensor& b) {
  const int64_t N = p.size(1), total = p.numel();
  const Tensor bc = b.contiguous();
  NL_DISPATCH_FLOATING(p.dtype(), "linear", [&] {
    scalar_t* pp = p.data<scalar_t>();
    const scalar_t* bp = bc.data<scalar_t>();
    parallel_for(0, N == 0 ? 0 : total / N, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(N, 1)),
                 [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < N; ++j) pp[r * N + j] += bp[j];
    });
  });
}

// p = X W^T + b, a fresh contiguous [M, N].
Tensor pre_activation(const Tensor& x_rows, const Tensor& w, const Tensor& b) {
  Tensor p = matmul(x_rows, w.transpose(0, 1));
  if (b.defined()) add_bias(p, b);
  return p;
}

// The gradients of a linear map p = X W^T + b from dp [M, N]:
//   dX = dp W,  dW = dp^T X,  db = sum over rows of dp (in double, rows in order)
// Each is computed only when `needs` says so; dx comes back in x's shape.
struct LinearGrads {
  Tensor dx, dw, db;
};
LinearGrads linear_backward(const Tensor& dp, const Tensor& x_rows, const Tensor& w, const Shape& x_shape,
                            bool need_dx, bool need_dw, bool need_db) {
  LinearGrads g;
  if (need_dx) g.dx = matmul(dp, w).reshape(x_shape);
  if (need_dw) g.dw = matmul(dp.transpose(0, 1), x_rows);
  if (need_db) g.db = sum(dp, {0});
  return g;
}

// Input lists: {x, W} or {x, W, b}.
std::vector<Variable> inputs_of(const Variable& x, const Variable& w, const Variable& b) {
  return b.defined() ? std::vector<Variable>{x, w, b} : std::vector<Variable>{x, w};
}

std::vector<Tensor> grads_of(LinearGrads g, bool has_bias) {
  std::vector<Tensor> out{std::move(g.dx), std::move(g.dw)};
  if (has_bias) out.push_back(std::move(g.db));
  return out;
}

}  // namespace

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  const Tensor x_rows = input_rows(x, weight, bias, "linear");
  const Tensor w = weight.data();
  Tensor y = pre_activation(x_rows, w, bias.defined() ? bias.data() : Tensor());
  const Shape x_shape = x.shape();
  const bool has_bias = bias.defined();
  return make_output("linear", inputs_of(x, weight, bias), y.reshape(output_shape(x, w.size(0))),
                     [x_rows, w, x_shape, has_bias](const std::vector<Tensor>& g, const Node& n) {
    const Tensor dy = g[0].reshape({-1, w.size(0)}).contiguous();
    return grads_of(linear_backward(dy, x_rows, w, x_shape, n.needs_input_grad(0), n.needs_input_grad(1),
                                    has_bias && n.needs_input_grad(2)),
                    has_bias);
  });
}

// y = gelu(p):  dp = dy * gelu'(p) (gelu' saved by forward), then the linear map's gradients.
Variable linear_gelu(const Variable& x, const Variable& weight, const Variable& bias) {
  const Tensor x_rows = input_rows(x, weight, bias, "linear_gelu");
  const Tensor w = weight.data();
  GeluAndDerivative r = gelu_with_derivative(matmul(x_rows, w.transpose(0, 1)), bias.defined() ? bias.data() : Tensor());
  const Shape x_shape = x.shape();
  const bool has_bias = bias.defined();
  return make_output("linear_gelu", inputs_of(x, weight, bias), r.y.reshape(output_shape(x, w.size(0))),
                     [x_rows, w, d = std::move(r.d), x_shape, has_bias](const std::vector<Tensor>& g, const Node& n) {
    const Tensor dp = mul(g[0].reshape(d.shape()), d);
    return grads_of(linear_backward(dp, x_rows, w, x_shape, n.needs_input_grad(0), n.needs_input_grad(1),
                                    has_bias && n.needs_input_grad(2)),
                    has_bias);
  });
}

// y = silu(a) * u, a = X Wa^T + ba (gate), u = X Wu^T + bu (up):
//   du = dy * silu(a);  da = silu'(a) * (dy * u);  dX = da Wa + du Wu;  then each map's dW, db.
Variable linear_swiglu(const Variable& x, const Variable& gate_weight, const Variable& gate_bias,
                       const Variable& up_weight, const Variable& up_bias) {
  const Tensor x_rows = input_rows(x, gate_weight, gate_bias, "linear_swiglu");
  input_rows(x, up_weight, up_bias, "linear_swiglu");
  NL_CHECK(gate_weight.shape() == up_weight.shape(), "linear_swiglu: gate weight ", to_string(gate_weight.shape()),
           " and up weight ", to_string(up_weight.shape()), " differ");
  NL_CHECK(gate_bias.defined() == up_bias.defined(), "linear_swiglu: give both biases or neither");
  const bool has_bias = gate_bias.defined();
  const Tensor wa = gate_weight.data(), wu = up_weight.data();
  const Tensor a = pre_activation(x_rows, wa, has_bias ? gate_bias.data() : Tensor());
  const Tensor u = pre_activation(x_rows, wu, has_bias ? up_bias.data() : Tensor());
  const Tensor s = map_unary(a, "linear_swiglu", [](auto v) { return silu_value(v); });
  std::vector<Variable> inputs{x, gate_weight, up_weight};
  if (has_bias) inputs.insert(inputs.end(), {gate_bias, up_bias});
  const Shape x_shape = x.shape();
  return make_output("linear_swiglu", std::move(inputs), mul(s, u).reshape(output_shape(x, wa.size(0))),
                     [x_rows, wa, wu, a, u, x_shape, has_bias](const std::vector<Tensor>& g, const Node& n) {
    const Tensor dy = g[0].reshape(a.shape());
    const Tensor du = mul(dy, map_unary(a, "linear_swiglu_backward", [](auto v) { return silu_value(v); }));
    const Tensor da = map_binary(a, mul(dy, u), "linear_swiglu_backward",
                                 [](auto v, auto ds) { return silu_backward(v, ds); });
    const bool need_dx = n.needs_input_grad(0);
    LinearGrads ga = linear_backward(da, x_rows, wa, x_shape, need_dx, n.needs_input_grad(1),
                                     has_bias && n.needs_input_grad(3));
    LinearGrads gu = linear_backward(du, x_rows, wu, x_shape, need_dx, n.needs_input_grad(2),
                                     has_bias && n.needs_input_grad(4));
    std::vector<Tensor> out{need_dx ? add(ga.dx, gu.dx) : Tensor(), std::move(ga.dw), std::move(gu.dw)};
    if (has_bias) out.insert(out.end(), {std::move(ga.db), std::move(gu.db)});
    return out;
  });
}

}  // namespace normlab
