// One table of op cases, each checked against central finite differences in f64 (ggml's
// test-backend-ops pattern). Shapes include size-1 and odd dims and broadcasting.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <functional>
#include <tuple>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "test_util.h"

using namespace normlab;

namespace {

enum class Domain { normal, positive, spread };  // spread: values far apart (no ties, away from kinks)

struct OpCase {
  std::string name;
  std::vector<Shape> shapes;
  std::function<Variable(const std::vector<Variable>&)> fn;
  Domain domain = Domain::normal;
};

Tensor make_input(const Shape& s, Domain d, Generator& gen) {
  switch (d) {
    case Domain::positive: return uniform(s, gen, 0.5, 2.0, DType::f64);
    case Domain::spread: {
      // A shuffled ramp with distinct values at least 0.1 apart, none near 0.
      Tensor t = empty(s, DType::f64);
      double* p = t.data<double>();
      const int64_t n = t.numel();
      for (int64_t i = 0; i < n; ++i) p[i] = (i % 2 ? 1 : -1) * (0.3 + 0.1 * double(i));
      for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[int64_t(gen.uniform_at(gen.advance(1)) * double(i + 1))]);
      return t;
    }
    default: return randn(s, gen, DType::f64);
  }
}

Tensor tokens(const Shape& s, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  Tensor u = uniform(s, gen, 0.0, double(vocab), DType::f64);
  Tensor t = empty(s, DType::i64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int64_t>()[i] = int64_t(u.data<double>()[i]);
  return t;
}

std::vector<OpCase> op_cases() {
  using V = const std::vector<Variable>&;
  const Tensor tok = tokens({2, 5}, 7, 3);
  Tensor tok_ignored = tokens({3, 4}, 6, 4);
  tok_ignored.set({1, 2}, -100);
  tok_ignored.set({0, 0}, -100);
  return {
      {"add", {{3, 4}, {3, 4}}, [](V x) { return add(x[0], x[1]); }},
      {"add_broadcast", {{2, 3, 5}, {3, 1}}, [](V x) { return add(x[0], x[1]); }},
      {"add_broadcast_both", {{4, 1}, {1, 5}}, [](V x) { return add(x[0], x[1]); }},
      {"sub_broadcast", {{1}, {3, 7}}, [](V x) { return sub(x[0], x[1]); }},
      {"mul_broadcast", {{2, 1, 3}, {4, 1}}, [](V x) { return mul(x[0], x[1]); }},
      {"div_broadcast", {{3, 5}, {5}}, [](V x) { return div(x[0], x[1]); }, Domain::positive},
      {"neg", {{7}}, [](V x) { return neg(x[0]); }},
      {"add_scalar", {{2, 3}}, [](V x) { return x[0] + 2.5; }},
      {"mul_scalar", {{1, 3}}, [](V x) { return x[0] * -1.75; }},
      {"rsub_scalar", {{3}}, [](V x) { return 1.0 - x[0]; }},
      {"pow", {{3, 5}}, [](V x) { return pow(x[0], 2.7); }, Domain::positive},
      {"pow_integer", {{9}}, [](V x) { return pow(x[0], 3.0); }},
      {"exp", {{3, 5}}, [](V x) { return exp(x[0]); }},
      {"log", {{3, 5}}, [](V x) { return log(x[0]); }, Domain::positive},
      {"sqrt", {{1, 7}}, [](V x) { return sqrt(x[0]); }, Domain::positive},
      {"rsqrt", {{7, 1}}, [](V x) { return rsqrt(x[0]); }, Domain::positive},
      {"tanh", {{4, 3}}, [](V x) { return tanh(x[0]); }},
      {"relu", {{5, 3}}, [](V x) { return relu(x[0]); }, Domain::spread},
      {"gelu", {{5, 3}}, [](V x) { return gelu(x[0]); }},
      {"silu", {{5, 3}}, [](V x) { return silu(x[0]); }},
      {"swiglu", {{3, 4}, {3, 4}}, [](V x) { return swiglu(x[0], x[1]); }},
      {"sum_all", {{3, 5}}, [](V x) { return sum(x[0]); }},
      {"sum_dim", {{3, 1, 5}}, [](V x) { return sum(x[0], {2}); }},
      {"sum_dims_keepdim", {{2, 3, 5}}, [](V x) { return sum(x[0], {0, 2}, true); }},
      {"sum_leading", {{4, 3, 5}}, [](V x) { return sum(x[0], {0, 1}); }},
      {"mean_dim", {{3, 7}}, [](V x) { return mean(x[0], {-1}, true); }},
      {"mean_all", {{1, 5}}, [](V x) { return mean(x[0]); }},
      {"max_dim", {{3, 7}}, [](V x) { return max(x[0], 1); }, Domain::spread},
      {"max_dim0_keepdim", {{5, 3, 2}}, [](V x) { return max(x[0], 0, true); }, Domain::spread},
      {"matmul_2d", {{3, 5}, {5, 4}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_1x1", {{1, 1}, {1, 1}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_batched", {{2, 3, 5}, {2, 5, 1}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_broadcast_batch", {{2, 1, 3, 4}, {3, 4, 5}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_nd_by_2d", {{2, 3, 4}, {4, 7}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_transposed", {{5, 3}, {4, 5}}, [](V x) { return matmul(transpose(x[0], 0, 1), transpose(x[1], 0, 1)); }},
      {"linear", {{2, 3, 5}, {4, 5}, {4}}, [](V x) { return linear(x[0], x[1], x[2]); }},
      {"linear_no_bias", {{3, 5}, {1, 5}}, [](V x) { return linear(x[0], x[1]); }},
      {"linear_1d_input", {{5}, {3, 5}, {3}}, [](V x) { return linear(x[0], x[1], x[2]); }},
      {"linear_1x1", {{1, 1}, {1, 1}, {1}}, [](V x) { return linear(x[0], x[1], x[2]); }},
      {"linear_strided_input", {{5, 3}, {4, 5}, {4}}, [](V x) { return linear(transpose(x[0], 0, 1), x[1], x[2]); }},
      {"linear_gelu", {{2, 3, 4}, {7, 4}, {7}}, [](V x) { return linear_gelu(x[0], x[1], x[2]); }},
      {"linear_gelu_no_bias", {{3, 1}, {5, 1}}, [](V x) { return linear_gelu(x[0], x[1]); }},
      {"linear_swiglu", {{2, 3, 3}, {5, 3}, {5}, {5, 3}, {5}},
       [](V x) { return linear_swiglu(x[0], x[1], x[2], x[3], x[4]); }},
      {"linear_swiglu_no_bias", {{3, 2}, {3, 2}, {3, 2}},
       [](V x) { return linear_swiglu(x[0], x[1], Variable(), x[2], Variable()); }},
      {"reshape", {{2, 3, 4}}, [](V x) { return reshape(x[0], {4, -1}) * reshape(x[0], {4, 6}); }},
      {"view", {{6, 1}}, [](V x) { return view(x[0], {2, 3}); }},
      {"transpose", {{2, 3, 5}}, [](V x) { return transpose(x[0], 0, 2) * 2.0; }},
      {"permute", {{2, 3, 5}}, [](V x) { return permute(x[0], {1, 2, 0}); }},
      {"slice_step", {{7, 3}}, [](V x) { return slice(x[0], 0, 1, 7, 2); }},
      {"narrow", {{3, 9}}, [](V x) { return narrow(x[0], -1, 2, 5); }},
      {"concat", {{2, 3}, {2, 1}, {2, 4}}, [](V x) { return concat({x[0], x[1], x[2]}, 1); }},
      {"split", {{7, 2}}, [](V x) { auto p = split(x[0], 3, 0); return concat({p[2], p[0] * 2.0}, 0); }},
      {"softmax", {{3, 7}}, [](V x) { return softmax(x[0]); }},
      {"softmax_single", {{4, 1}}, [](V x) { return softmax(x[0]); }},
      {"log_softmax", {{2, 3, 5}}, [](V x) { return log_softmax(x[0]); }},
      {"causal_mask_softmax", {{2, 4, 4}}, [](V x) { return softmax(causal_mask(x[0])); }},
      {"causal_mask_rect", {{3, 5}}, [](V x) { return causal_mask(x[0], 0.0); }},
      {"embedding", {{7, 3}}, [tok](V x) { return embedding(x[0], tok); }},
      {"cross_entropy", {{2, 5, 7}}, [tok](V x) { return cross_entropy(x[0], tok); }},
      {"cross_entropy_ignore_zloss", {{3, 4, 6}}, [tok_ignored](V x) { return cross_entropy(x[0], tok_ignored, -100, 1e-2); }},
      {"dropout", {{4, 9}}, [](V x) {
         Generator g(77);  // the same mask on every call
         return dropout(x[0], 0.3, true, g);
       }},
      {"attention", {{2, 4, 3}, {2, 4, 3}, {2, 4, 3}}, [](V x) {
         Variable s = matmul(x[0], transpose(x[1], -1, -2)) * (1.0 / std::sqrt(3.0));
         return matmul(softmax(causal_mask(s)), x[2]);
       }},
      // causal_attention: q, k, v [B, H, T, hd].
      {"causal_attention", {{2, 2, 5, 3}, {2, 2, 5, 3}, {2, 2, 5, 3}}, [](V x) {
         return causal_attention(x[0], x[1], x[2], 0.7);
       }},
      {"causal_attention_T1", {{2, 1, 1, 4}, {2, 1, 1, 4}, {2, 1, 1, 4}}, [](V x) {
         return causal_attention(x[0], x[1], x[2], 0.5);
       }},
      {"causal_attention_hd1_H3", {{1, 3, 7, 1}, {1, 3, 7, 1}, {1, 3, 7, 1}}, [](V x) {
         return causal_attention(x[0], x[1], x[2], 1.3);
       }},
      {"causal_attention_hd17", {{1, 1, 5, 17}, {1, 1, 5, 17}, {1, 1, 5, 17}}, [](V x) {
         return causal_attention(x[0], x[1], x[2], 1.0 / std::sqrt(17.0));
       }},
      // The model's layout: one [B, T, 3 H hd] projection split into strided head views.
      {"causal_attention_qkv_views", {{1, 5, 3 * 2 * 3}}, [](V x) {
         auto heads = [](const Variable& t) { return transpose(reshape(t, {1, 5, 2, 3}), 1, 2); };
         const auto p = split(x[0], 2 * 3, -1);
         return causal_attention(heads(p[0]), heads(p[1]), heads(p[2]), 0.6);
       }},
      // Two sequences of the packed layout (q, k and v's gradients written into one buffer).
      {"causal_attention_qkv_views_B2", {{2, 5, 3 * 2 * 3}}, [](V x) {
         auto heads = [](const Variable& t) { return transpose(reshape(t, {2, 5, 2, 3}), 1, 2); };
         const auto p = split(x[0], 2 * 3, -1);
         return causal_attention(heads(p[0]), heads(p[1]), heads(p[2]), 0.6);
       }},
      // q and k the same view (not side by side: separate gradient tensors, summed by the engine).
      {"causal_attention_q_is_k", {{1, 2, 5, 3}, {1, 2, 5, 3}}, [](V x) {
         return causal_attention(x[0], x[0], x[1], 0.6);
       }},
      // A non-unit stride over head_dim (copied by the op).
      {"causal_attention_strided_hd", {{2, 2, 4, 6}, {2, 2, 4, 6}, {2, 2, 4, 6}}, [](V x) {
         return causal_attention(transpose(x[0], -1, -2), transpose(x[1], -1, -2), transpose(x[2], -1, -2), 0.8);
       }},
      {"causal_attention_T17", {{1, 1, 17, 2}, {1, 1, 17, 2}, {1, 1, 17, 2}}, [](V x) {
         return causal_attention(x[0], x[1], x[2], 0.9);  // two groups of query rows
       }},
  };
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ops_gradcheck)

BOOST_AUTO_TEST_CASE(every_op_matches_finite_differences) {
  std::printf("%-28s %14s %14s %8s\n", "op", "max rel err", "max abs err", "checked");
  uint64_t seed = 100;
  for (const OpCase& c : op_cases()) {
    BOOST_TEST_CONTEXT("op " << c.name) {
      Generator gen(seed++);
      std::vector<Variable> inputs;
      for (const Shape& s : c.shapes) inputs.emplace_back(make_input(s, c.domain, gen), true);
      const GradcheckResult r = gradcheck(c.fn, inputs);
      std::printf("%-28s %14.3e %14.3e %8lld\n", c.name.c_str(), r.max_rel_error, r.max_abs_error, (long long)r.checked);
      BOOST_TEST(r.ok, r.report());
      BOOST_TEST(r.max_rel_error < 1e-6, r.report());
      BOOST_TEST(r.checked > 0);
    }
  }
}

// The fused linear ops against the ops they replace, in f32 at a toy transformer's FFN shape:
// the same values bit for bit, and gradients equal to rounding.
BOOST_AUTO_TEST_CASE(fused_linear_ops_match_the_composed_ops) {
  Generator gen(9);
  const int64_t B = 4, T = 16, D = 32, F = 128;
  const Tensor x0 = randn({B, T, D}, gen), dy = randn({B, T, F}, gen);
  const Tensor w0 = mul_scalar(randn({F, D}, gen), 0.2), b0 = randn({F}, gen);
  const Tensor w1 = mul_scalar(randn({F, D}, gen), 0.2), b1 = randn({F}, gen);
  using Fn = std::function<Variable(const std::vector<Variable>&)>;
  struct Pair {
    const char* name;
    Fn fused, composed;
  };
  auto affine = [](const Variable& x, const Variable& w, const Variable& b) {
    return matmul(x, transpose(w, 0, 1)) + b;
  };
  const Pair pairs[] = {
      {"linear", [](auto& v) { return linear(v[0], v[1], v[2]); }, [&](auto& v) { return affine(v[0], v[1], v[2]); }},
      {"linear_gelu", [](auto& v) { return linear_gelu(v[0], v[1], v[2]); },
       [&](auto& v) { return gelu(affine(v[0], v[1], v[2])); }},
      {"linear_swiglu", [](auto& v) { return linear_swiglu(v[0], v[1], v[2], v[3], v[4]); },
       [&](auto& v) { return swiglu(affine(v[0], v[1], v[2]), affine(v[0], v[3], v[4])); }},
  };
  for (const Pair& p : pairs) {
    std::vector<Tensor> outs, grads[2];
    for (int k = 0; k < 2; ++k) {
      std::vector<Variable> v;
      for (const Tensor& t : {x0, w0, b0, w1, b1}) v.emplace_back(t.clone(), true);
      const Variable y = (k == 0 ? p.fused : p.composed)(v);
      y.backward(dy);
      outs.push_back(y.data());
      for (size_t i = 0; i < v.size(); ++i) grads[k].push_back(v[i].grad().defined() ? v[i].grad() : Tensor());
    }
    BOOST_TEST_CONTEXT(p.name) {
      BOOST_TEST(outs[0].to_vector<float>() == outs[1].to_vector<float>(), boost::test_tools::per_element());
      for (size_t i = 0; i < grads[0].size(); ++i) {
        BOOST_TEST_REQUIRE(grads[0][i].defined() == grads[1][i].defined());
        if (!grads[0][i].defined()) continue;
        const std::vector<double> a = grads[0][i].to_vector<double>(), c = grads[1][i].to_vector<double>();
        double worst = 0, scale = 0;
        for (size_t j = 0; j < a.size(); ++j) {
          worst = std::max(worst, std::abs(a[j] - c[j]));
          scale = std::max(scale, std::abs(c[j]));
        }
        BOOST_TEST(worst <= 1e-6 * scale, "input " << i << ": max difference " << worst << " of max " << scale);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(gradcheck_catches_a_wrong_gradient) {
  // A deliberately wrong backward (2x instead of 3x^2) must be reported with its element.
  auto wrong_cube = [](const std::vector<Variable>& x) {
    const Tensor t = x[0].data();
    return make_output("wrong_cube", {x[0]}, mul(mul(t, t), t), [t](const std::vector<Tensor>& g, const Node&) {
      return std::vector<Tensor>{mul(g[0], mul_scalar(t, 2.0))};
    });
  };
  Generator gen(5);
  Variable x(uniform({4}, gen, 1.0, 2.0, DType::f64), true);
  const GradcheckResult r = gradcheck(wrong_cube, {x});
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.max_rel_error > 0.1);
  BOOST_TEST(r.input == 0);
  BOOST_TEST(r.report().find("FAILED") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(gradcheck_probes_large_inputs) {
  GradcheckOptions o;
  o.max_full_elements = 10;
  Generator gen(6);
  Variable a(randn({6, 5}, gen, DType::f64), true), b(randn({5, 4}, gen, DType::f64), true);
  const GradcheckResult r = gradcheck([](const std::vector<Variable>& x) { return tanh(matmul(x[0], x[1])); }, {a, b}, o);
  BOOST_TEST(r.ok, r.report());
  BOOST_TEST(r.probe);
  BOOST_TEST(r.checked == 2 * o.probes);
  BOOST_TEST(r.max_rel_error < 1e-6, r.report());
}

BOOST_AUTO_TEST_CASE(two_point_stencil) {
  // The plain central difference (L(x+h) - L(x-h)) / 2h also meets the bound at h = 1e-6.
  Generator gen(7);
  Variable a(randn({3, 4}, gen, DType::f64), true), b(randn({4, 2}, gen, DType::f64), true);
  GradcheckOptions o;
  o.stencil = 2;
  o.eps = 1e-6;
  const GradcheckResult r = gradcheck([](const std::vector<Variable>& x) { return gelu(matmul(x[0], x[1])); }, {a, b}, o);
  BOOST_TEST(r.ok, r.report());
  BOOST_TEST(r.max_rel_error < 1e-6, r.report());
  BOOST_TEST(r.checked == 20);
}

BOOST_AUTO_TEST_CASE(gradcheck_needs_f64) {
  Variable x(ones({2}, DType::f32), true);
  try {
    gradcheck([](const std::vector<Variable>& v) { return v[0] * 2.0; }, {x});
    BOOST_FAIL("expected an error");
  } catch (const Error& e) {
    BOOST_TEST(std::string(e.what()).find("f32") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---- causal_attention against the ops it fuses ----

namespace {

// S = scale q k^T, masked, softmax, times v: the composed ops the fused op replaces.
Variable composed_attention(const Variable& q, const Variable& k, const Variable& v, double scale) {
  return matmul(softmax(causal_mask(matmul(q, transpose(k, -1, -2)) * scale)), v);
}

// O, the logits and dq, dk, dv for the seed dO, of the fused op or the composed ops.
struct AttentionRun {
  Tensor O, logits, dq, dk, dv;
};

AttentionRun run_attention(bool fused, const std::vector<Tensor>& qkv, const Tensor& dO, double scale) {
  Variable q(qkv[0], true), k(qkv[1], true), v(qkv[2], true);
  AttentionRun r;
  Variable O;
  if (fused) {
    O = causal_attention(q, k, v, scale, &r.logits);
  } else {
    r.logits = causal_mask(matmul(q, transpose(k, -1, -2)) * scale).data();
    O = composed_attention(q, k, v, scale);
  }
  O.backward(dO);
  r.O = O.data();
  r.dq = q.grad();
  r.dk = k.grad();
  r.dv = v.grad();
  return r;
}

// max |a - b| / max(max |b|, 1) over finite entries; infinite entries must match exactly.
double scaled_diff(const Tensor& a, const Tensor& b) {
  BOOST_REQUIRE(a.shape() == b.shape());
  const std::vector<double> x = a.to(DType::f64).to_vector<double>(), y = b.to(DType::f64).to_vector<double>();
  double diff = 0, size = 1;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isinf(y[i])) {
      BOOST_TEST(x[i] == y[i]);
      continue;
    }
    diff = std::max(diff, std::abs(x[i] - y[i]));
    size = std::max(size, std::abs(y[i]));
  }
  return diff / size;
}

std::vector<Tensor> random_inputs(const Shape& s, Generator& gen, DType dtype) {
  return {randn(s, gen, DType::f64).to(dtype), randn(s, gen, DType::f64).to(dtype),
          randn(s, gen, DType::f64).to(dtype), randn(s, gen, DType::f64).to(dtype)};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(causal_attention_op)

BOOST_AUTO_TEST_CASE(equals_the_composed_ops_forward_logits_and_gradients) {
  const Shape shapes[] = {{2, 2, 64, 16}, {1, 3, 33, 5}, {3, 1, 1, 4}, {1, 2, 7, 1}, {1, 2, 40, 33}, {1, 1, 1024, 8}};
  for (DType dtype : {DType::f64, DType::f32}) {
    const double tol = dtype == DType::f64 ? 1e-12 : 2e-6;
    double worst = 0;
    for (const Shape& s : shapes) {
      BOOST_TEST_CONTEXT(dtype_name(dtype) << " " << to_string(s)) {
        Generator gen(uint64_t(s[2] * 100 + s[3]));
        const std::vector<Tensor> in = random_inputs(s, gen, dtype);
        const double scale = 1.5 / std::sqrt(double(s[3]));
        const AttentionRun f = run_attention(true, {in[0], in[1], in[2]}, in[3], scale);
        const AttentionRun c = run_attention(false, {in[0], in[1], in[2]}, in[3], scale);
        BOOST_TEST(f.O.dtype() == dtype);
        BOOST_TEST(f.dq.dtype() == dtype);
        for (auto [name, a, b] : {std::tuple{"O", f.O, c.O}, std::tuple{"logits", f.logits, c.logits},
                                  std::tuple{"dq", f.dq, c.dq}, std::tuple{"dk", f.dk, c.dk},
                                  std::tuple{"dv", f.dv, c.dv}}) {
          const double d = scaled_diff(a, b);
          worst = std::max(worst, d);
          BOOST_TEST(d < tol, name << ": " << d);
        }
      }
    }
    std::printf("causal_attention vs composed ops, %s: max scaled difference %.1e\n", dtype_name(dtype), worst);
  }
}

BOOST_AUTO_TEST_CASE(output_and_gradients_are_stored_heads_interleaved) {
  // O and the gradient reaching q are [B, H, T, hd] views of [B, T, H, hd] storage, so their
  // [B, T, H hd] views are free.
  Generator gen(3);
  Tensor dq_seen;
  auto spy = [&dq_seen](const Variable& x) {  // identity; keeps the gradient it is given
    return make_output("spy", {x}, x.data(), [&dq_seen](const std::vector<Tensor>& g, const Node&) {
      dq_seen = g[0];
      return std::vector<Tensor>{g[0]};
    });
  };
  const std::vector<Tensor> in = random_inputs({2, 3, 5, 4}, gen, DType::f32);
  Variable q(in[0], true);
  const Variable O = causal_attention(spy(q), Variable(in[1]), Variable(in[2]), 0.5);
  BOOST_TEST(O.data().transpose(1, 2).is_contiguous());
  O.backward(in[3]);
  BOOST_REQUIRE(dq_seen.defined());
  BOOST_TEST(dq_seen.transpose(1, 2).is_contiguous());
}

BOOST_AUTO_TEST_CASE(bit_identical_for_any_thread_count) {
  const int threads = num_threads();
  for (DType dtype : {DType::f32, DType::f64}) {
    Generator gen(9);
    const std::vector<Tensor> in = random_inputs({3, 4, 64, 16}, gen, dtype);
    std::vector<AttentionRun> runs;
    for (int n : {1, 2, 3}) {
      set_num_threads(n);
      runs.push_back(run_attention(true, {in[0], in[1], in[2]}, in[3], 0.25));
    }
    set_num_threads(threads);
    for (size_t i = 1; i < runs.size(); ++i)
      for (auto [a, b] : {std::pair{runs[0].O, runs[i].O}, std::pair{runs[0].logits, runs[i].logits},
                          std::pair{runs[0].dq, runs[i].dq}, std::pair{runs[0].dk, runs[i].dk},
                          std::pair{runs[0].dv, runs[i].dv}})
        BOOST_TEST((a.to(DType::f64).to_vector<double>() == b.to(DType::f64).to_vector<double>()));
  }
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  using normlab::testing::contains;
  using normlab::testing::error_of;
  Generator gen(4);
  const Variable a(randn({1, 2, 3, 4}, gen)), b(randn({1, 2, 4, 4}, gen)), c(randn({2, 3, 4}, gen));
  BOOST_TEST(contains(error_of([&] { causal_attention(c, c, c, 1.0); }),
                      "q must be [B, H, T, head_dim], got shape [2, 3, 4]"));
  BOOST_TEST(contains(error_of([&] { causal_attention(a, b, a, 1.0); }), "one shape, got [1, 2, 3, 4], [1, 2, 4, 4]"));
  BOOST_TEST(contains(error_of([&] { causal_attention(a, a, Variable(randn({1, 2, 3, 4}, gen, DType::f64)), 1.0); }),
                      "dtypes f32, f32 and f64"));
  BOOST_TEST(contains(error_of([&] { causal_attention(a, a, a, NAN); }), "scale must be finite"));
}

BOOST_AUTO_TEST_SUITE_END()
