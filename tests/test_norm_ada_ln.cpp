// AdaLN / adaLN-Zero: the modulated output against the formula, adaLN-Zero blocks start as
// the identity (and still receive gradient), gradcheck of x, the conditioning c and the
// modulation weight and bias on hard inputs and shapes, parameter names, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>

#include "autograd/ops.h"
#include "norm/ada_ln/ada_ln.h"
#include "norm/layer_norm/layer_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

void randomize_modulation(AdaLN& m, Generator& gen) {
  m.modulation->weight.data().copy_from(randn(m.modulation->weight.shape(), gen, DType::f64, 0.0, 0.5));
  m.modulation->bias.data().copy_from(randn(m.modulation->bias.shape(), gen, DType::f64, 0.0, 0.5));
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(ca.raw_data(), cb.raw_data(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ada_ln_suite)

BOOST_AUTO_TEST_CASE(forward_matches_the_formula) {
  Generator gen(1);
  const int64_t B = 2, T = 3, N = 5, C = 4;
  for (bool zero : {false, true}) {
    AdaLN m(N, C, zero, gen, DType::f64);
    randomize_modulation(m, gen);
    const Tensor x = randn({B, T, N}, gen, DType::f64, 1.0, 2.0), c = randn({B, C}, gen, DType::f64);
    const Tensor xhat = layer_norm_forward(x, Tensor(), Tensor(), 1e-6).y;
    const Tensor W = m.modulation->weight.data(), bias = m.modulation->bias.data();
    // mod[b, o] = sum_k W[o, k] silu(c[b, k]) + bias[o]
    auto mod = [&](int64_t b, int64_t o) {
      double s = bias.at({o});
      for (int64_t k = 0; k < C; ++k) {
        const double ck = c.at({b, k});
        s += W.at({o, k}) * ck / (1 + std::exp(-ck));
      }
      return s;
    };
    const AdaLNOutput out = zero ? m.forward_gated(Variable(x), Variable(c))
                                 : AdaLNOutput{m.forward(Variable(x), Variable(c)), Variable()};
    BOOST_CHECK(out.y.shape() == x.shape());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < N; ++j)
          BOOST_CHECK_CLOSE(out.y.data().at({b, t, j}), xhat.at({b, t, j}) * (1 + mod(b, N + j)) + mod(b, j), 1e-10);
    if (zero) {
      BOOST_CHECK(out.gate.shape() == (Shape{B, 1, N}));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < N; ++j) BOOST_CHECK_CLOSE(out.gate.data().at({b, 0, j}), mod(b, 2 * N + j), 1e-10);
    }
  }
}

BOOST_AUTO_TEST_CASE(ada_ln_zero_block_is_the_identity_at_init) {
  Generator gen(2);
  const int64_t N = 6, C = 3;
  AdaLN m(N, C, true, gen, DType::f64);
  BOOST_CHECK_EQUAL(max_abs(m.modulation->weight.data()), 0.0);
  BOOST_CHECK_EQUAL(max_abs(m.modulation->bias.data()), 0.0);
  Linear f(N, N, true, gen, DType::f64);  // the block's sublayer
  auto x = leaf(randn({2, 4, N}, gen, DType::f64, 0.5, 3.0));
  auto c = leaf(randn({2, C}, gen, DType::f64));
  const AdaLNOutput out = m.forward_gated(x, c);
  // y = LN(x) exactly (scale = shift = 0), gate = 0, so x + gate * f(y) = x.
  BOOST_CHECK_LT(max_rel_diff(out.y.data(), layer_norm_forward(x.data(), Tensor(), Tensor(), 1e-6).y), 1e-15);
  BOOST_CHECK_EQUAL(max_abs(out.gate.data()), 0.0);
  Variable block = x + out.gate * f.forward(out.y);
  BOOST_CHECK_EQUAL(max_abs(sub(block.data(), x.data())), 0.0);
  // The gate's bias still gets gradient (sum of f(y)), so training moves the block off identity.
  block.backward(ones(block.shape(), DType::f64));
  const Tensor dbias = m.modulation->bias.grad();
  BOOST_REQUIRE(dbias.defined());
  BOOST_CHECK_GT(max_abs(dbias.narrow(0, 2 * N, N)), 1e-3);
  BOOST_CHECK_EQUAL(max_abs(dbias.narrow(0, 0, 2 * N)), 0.0);  // shift/scale feed only the gated branch
  BOOST_CHECK_LT(max_rel_diff(x.grad(), ones(x.shape(), DType::f64)), 1e-15);
}

BOOST_AUTO_TEST_CASE(gradcheck_x_c_and_the_modulation) {
  Generator gen(3);
  double worst = 0;
  const int64_t C = 3;
  const Shape shapes[] = {{2, 3, 5}, {3, 4}, {2, 2, 1}, {1, 7}, {2, 2, 2, 3}};
  for (bool zero : {false, true}) {
    for (const Shape& s : shapes) {
      for (Input in : all_inputs) {
        for (double eps : {1e-6, 1e-2}) {
          AdaLN m(s.back(), C, zero, gen, DType::f64, eps);
          randomize_modulation(m, gen);
          auto x = leaf(make_input(s, in, gen));
          auto c = leaf(randn({s[0], C}, gen, DType::f64));
          GradcheckOptions opt;
          if (in == Input::near_constant) opt.eps = 1e-6;  // the row's spread is ~1e-3
          // x ~ 1e4 is stored to ~2e-12: a larger step keeps that rounding, divided by the step, below atol.
          if (in == Input::large_mean) opt.eps = 1e-3;
          // adaLN-Zero is checked through y + gate * y, so the gate's path is covered (a block's
          // residual x would only add an identity, and 1e4-sized outputs for large-mean x).
          worst = std::max(worst, expect_gradcheck(std::string(zero ? "ada_ln_zero " : "ada_ln ") + to_string(s) +
                                                       " " + input_name(in) + " eps=" + std::to_string(eps),
                                                   [&m, zero](const std::vector<Variable>& v) {
                                                     if (!zero) return m.forward(v[0], v[1]);
                                                     const AdaLNOutput o = m.forward_gated(v[0], v[1]);
                                                     return o.y + o.gate * o.y;
                                                   },
                                                   {x, c, m.modulation->weight, m.modulation->bias}, opt));
        }
      }
    }
  }
  std::printf("ada_ln worst gradcheck rel err %.1e\n", worst);
}

// bf16 and f16 storage: y, the gate, dx and dc are the f32 module's results on the widened
// inputs, each rounded once; the parameters' gradients are the f32 path's, bit for bit.
BOOST_AUTO_TEST_CASE(low_precision_storage_is_the_f32_result_rounded_once) {
  for (DType low : {DType::bf16, DType::f16}) {
    Generator gen(3);
    const int64_t B = 2, T = 5, N = 24, C = 6;
    AdaLN m(N, C, true, gen, DType::f32);
    randomize_modulation(m, gen);
    const Tensor x = randn({B, T, N}, gen, DType::f32, 3.0, 2.0).to(low);
    const Tensor c = randn({B, C}, gen, DType::f32).to(low);
    const Tensor dy = randn({B, T, N}, gen, DType::f32).to(low), dgate = randn({B, 1, N}, gen, DType::f32).to(low);
    auto run = [&](const Tensor& xs, const Tensor& cs, const Tensor& dys, const Tensor& dgs) {
      for (Variable p : m.parameters()) p.zero_grad();
      Variable xv(xs, true), cv(cs, true);
      const AdaLNOutput out = m.forward_gated(xv, cv);
      backward({out.y, out.gate}, {dys, dgs});
      return std::vector<Tensor>{out.y.data(), out.gate.data(), xv.grad(), cv.grad(), m.modulation->weight.grad().clone(),
                                 m.modulation->bias.grad().clone()};
    };
    const std::vector<Tensor> got = run(x, c, dy, dgate);
    const std::vector<Tensor> ref = run(x.to(DType::f32), c.to(DType::f32), dy.to(DType::f32), dgate.to(DType::f32));
    BOOST_TEST(got[0].dtype() == low);
    for (size_t i = 0; i < 4; ++i) BOOST_TEST(same_bits(got[i], ref[i].to(low)), dtype_name(low) << " output " << i);
    for (size_t i = 4; i < 6; ++i) BOOST_TEST(same_bits(got[i], ref[i]), dtype_name(low) << " parameter gradient " << i);
  }
  Generator gen(4);
  AdaLN f64(8, 3, false, gen, DType::f64);
  const Tensor x = randn({2, 8}, gen, DType::f32).to(DType::bf16), c = randn({2, 3}, gen, DType::f32).to(DType::bf16);
  BOOST_TEST(contains(error_of([&] { (void)f64.forward(Variable(x), Variable(c)); }), "need an f32 module"));
}

BOOST_AUTO_TEST_CASE(parameter_names_and_shapes) {
  Generator gen(4);
  for (bool zero : {false, true}) {
    AdaLN m(8, 5, zero, gen);
    const auto params = m.named_parameters();
    BOOST_REQUIRE_EQUAL(params.size(), 2u);
    BOOST_CHECK_EQUAL(params[0].first, "modulation.weight");
    BOOST_CHECK_EQUAL(params[1].first, "modulation.bias");
    BOOST_CHECK(params[0].second.shape() == (Shape{zero ? 24 : 16, 5}));
    BOOST_CHECK(params[1].second.shape() == (Shape{zero ? 24 : 16}));
    BOOST_CHECK_EQUAL(max_abs(params[0].second.data()) == 0.0, zero);
  }
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(5);
  AdaLN m(4, 3, false, gen), mz(4, 3, true, gen);
  const Variable x(randn({2, 5, 4}, gen)), c(randn({2, 3}, gen));
  BOOST_CHECK(contains(error_of([&] { m.forward(x, Variable(randn({2, 2}, gen))); }),
                       "conditioning c of shape [B, 3], got [2, 2]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(x, Variable(randn({3}, gen))); }), "got [3]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({3, 5, 4}, gen)), c); }),
                       "with B = 2 (c's batch), got [3, 5, 4]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({4}, gen)), c); }), "got [4]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({2, 5, 3}, gen)), c); }),
                       "last dim of the input to be 4, got shape [2, 5, 3]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(empty({2, 0, 4})), c); }), "empty"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({2, 4}, gen, DType::f64)), c); }),
                       "x has dtype f64, c f32, the module f32"));
  BOOST_CHECK(contains(error_of([&] { m.forward_gated(x, c); }), "only adaLN-Zero (zero = true) has a gate"));
  BOOST_CHECK(error_of([&] { mz.forward_gated(x, c); }).empty());
  BOOST_CHECK(contains(error_of([&] { AdaLN(0, 3, false, gen); }), "feature size must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([&] { AdaLN(4, 0, false, gen); }), "cond_dim must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([&] { AdaLN(4, 3, false, gen, DType::f32, 0.0); }),
                       "eps must be a finite number > 0, got 0"));
}

BOOST_AUTO_TEST_SUITE_END()
