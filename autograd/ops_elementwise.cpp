// Elementwise ops and their gradients.
#include <cmath>
#include <numbers>

#include "autograd/activation_math.h"
#include "autograd/ops.h"
#include "framework/elementwise.h"
#include "framework/fast_math.h"
#include "framework/tensor_ops.h"

namespace normlab {

namespace {

enum class Saves { input, output };

// y = f(x); backward: dx = df(s, dy) with s the saved input or output.
template <class F, class DF>
Variable unary_op(const char* name, const Variable& x, Saves saves, const F& f, const DF& df) {
  Tensor y = map_unary(x.data(), name, f);
  Tensor s = saves == Saves::input ? x.data() : y;
  return make_output(name, {x}, y, [s, df, name](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{map_binary(s, g[0], name, df)};
  });
}

}  // namespace

Variable to_dtype(const Variable& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  const DType from = x.dtype();
  return make_output("to_dtype", {x}, x.data().to(dtype), [from](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0].to(from)};
  });
}

Variable add(const Variable& a, const Variable& b) {
  const Shape sa = a.shape(), sb = b.shape();
  return make_output("add", {a, b}, add(a.data(), b.data()), [sa, sb](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{sum_to(g[0], sa), sum_to(g[0], sb)};
  });
}

Variable sub(const Variable& a, const Variable& b) {
  const Shape sa = a.shape(), sb = b.shape();
  return make_output("sub", {a, b}, sub(a.data(), b.data()), [sa, sb](const std::vector<Tensor>& g, const Node& n) {
    return std::vector<Tensor>{sum_to(g[0], sa), n.needs_input_grad(1) ? sum_to(neg(g[0]), sb) : Tensor()};
  });
}

Variable mul(const Variable& a, const Variable& b) {
  const Tensor ta = a.data(), tb = b.data();
  return make_output("mul", {a, b}, mul(ta, tb), [ta, tb](const std::vector<Tensor>& g, const Node& n) {
    return std::vector<Tensor>{n.needs_input_grad(0) ? sum_to(mul(g[0], tb), ta.shape()) : Tensor(),
                               n.needs_input_grad(1) ? sum_to(mul(g[0], ta), tb.shape()) : Tensor()};
  });
}

// y = a / b: da = dy / b, db = -dy * a / b^2 = -dy * y / b.
Variable div(const Variable& a, const Variable& b) {
  const Tensor ta = a.data(), tb = b.data();
  Tensor y = div(ta, tb);
  return make_output("div", {a, b}, y, [ta, tb, y](const std::vector<Tensor>& g, const Node& n) {
    const Tensor da = div(g[0], tb);
    return std::vector<Tensor>{n.needs_input_grad(0) ? sum_to(da, ta.shape()) : Tensor(),
                               n.needs_input_grad(1) ? sum_to(neg(mul(da, y)), tb.shape()) : Tensor()};
  });
}

Variable neg(const Variable& x) {
  return make_output("neg", {x}, neg(x.data()), [](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{neg(g[0])};
  });
}

Variable add_scalar(const Variable& x, double s) {
  return make_output("add_scalar", {x}, add_scalar(x.data(), s), [](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0]};
  });
}

Variable mul_scalar(const Variable& x, double s) {
  return make_output("mul_scalar", {x}, mul_scalar(x.data(), s), [s](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{mul_scalar(g[0], s)};
  });
}

Variable pow(const Variable& x, double p) {
  return unary_op("pow", x, Saves::input,
      [p](auto v) { return std::pow(v, decltype(v)(p)); },
      [p](auto v, auto g) { using T = decltype(v); return g * T(p) * std::pow(v, T(p - 1)); });
}

Variable exp(const Variable& x) {
  return unary_op("exp", x, Saves::output, [](auto v) { return fast_exp(v); }, [](auto y, auto g) { return g * y; });
}

Variable log(const Variable& x) {
  return unary_op("log", x, Saves::input, [](auto v) { return std::log(v); }, [](auto v, auto g) { return g / v; });
}

Variable sqrt(const Variable& x) {
  return unary_op("sqrt", x, Saves::output, [](auto v) { return std::sqrt(v); },
                  [](auto y, auto g) { return g / (decltype(y)(2) * y); });
}

// y = x^(-1/2): dy/dx = -1/2 x^(-3/2) = -1/2 y^3.
Variable rsqrt(const Variable& x) {
  return unary_op("rsqrt", x, Saves::output, [](auto v) { return decltype(v)(1) / std::sqrt(v); },
                  [](auto y, auto g) { return decltype(y)(-0.5) * g * y * y * y; });
}

Variable tanh(const Variable& x) {
  return unary_op("tanh", x, Saves::output, [](auto v) { return std::tanh(v); },
                  [](auto y, auto g) { return g * (decltype(y)(1) - y * y); });
}

Variable relu(const Variable& x) {
  return unary_op("relu", x, Saves::output, [](auto v) { return v > 0 ? v : decltype(v)(0); },
                  [](auto y, auto g) { return y > 0 ? g : decltype(y)(0); });
}

// GELU (tanh form) and SiLU: the formulas and derivatives are in autograd/activation_math.h.
// GELU saves its derivative, so backward is one product.
Variable gelu(const Variable& x) {
  GeluAndDerivative r = gelu_with_derivative(x.data());
  return make_output("gelu", {x}, std::move(r.y), [d = std::move(r.d)](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{mul(g[0], d)};
  });
}

Variable silu(const Variable& x) {
  return unary_op("silu", x, Saves::input, [](auto v) { return silu_value(v); },
                  [](auto v, auto g) { return silu_backward(v, g); });
}

Variable swiglu(const Variable& gate, const Variable& up) { return mul(silu(gate), up); }

}  // namespace normlab
