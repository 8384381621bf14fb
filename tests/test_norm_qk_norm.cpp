// QKNorm: each kind (layer, rms, l2) against its formula, separate q and k parameters and
// their names, the logit scale (learnable g for l2, 1/sqrt(head_dim) otherwise), gradcheck of
// q, k, every weight and the temperature through the attention logits on hard inputs, and
// bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "autograd/ops.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/qk_norm/qk_norm.h"
#include "norm/rms_norm/rms_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

constexpr QKNormKind all_kinds[] = {QKNormKind::layer, QKNormKind::rms, QKNormKind::l2};

// Gives every parameter of m random values (so q's and k's differ and a gradcheck sees them).
void randomize_parameters(QKNorm& m, Generator& gen) {
  for (auto& [name, p] : m.named_parameters()) {
    const double mean = name == "g" ? 2.0 : (name.ends_with("weight") ? 1.0 : 0.0);
    p.data().copy_from(randn(p.shape(), gen, p.dtype(), mean, 0.5));
  }
}

// Checks that QKNorm(6, kind) has child modules of type Norm, q_hat = reference(q, q_norm),
// k_hat = reference(k, k_norm), and logits = q_hat k_hat^T / sqrt(6).
template <class Norm, class Reference>
void check_kind_matches(QKNormKind kind, const Variable& q, const Variable& k, Generator& gen,
                        const Reference& reference) {
  QKNorm m(6, kind, 1e-6, DType::f64);
  randomize_parameters(m, gen);
  auto* qn = dynamic_cast<Norm*>(m.q_norm.get());
  auto* kn = dynamic_cast<Norm*>(m.k_norm.get());
  BOOST_REQUIRE(qn && kn);
  auto [q_hat, k_hat] = m.forward(q, k);
  BOOST_CHECK_LT(max_rel_diff(q_hat.data(), reference(q, *qn).data()), 1e-15);
  BOOST_CHECK_LT(max_rel_diff(k_hat.data(), reference(k, *kn).data()), 1e-15);
  BOOST_CHECK_CLOSE(m.logit_scale().item(), 1 / std::sqrt(6.0), 1e-12);
  BOOST_CHECK(!m.logit_scale().requires_grad());
  const Tensor want = mul_scalar(matmul(q_hat, transpose(k_hat, -2, -1)).data(), 1 / std::sqrt(6.0));
  BOOST_CHECK_LT(max_rel_diff(m.attention_logits(q, k).data(), want), 1e-14);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(qk_norm_suite)

BOOST_AUTO_TEST_CASE(l2_kind_gives_unit_rows_and_logits_bounded_by_g) {
  Generator gen(1);
  QKNorm m(8, QKNormKind::l2, 1e-6, DType::f64);
  BOOST_CHECK_CLOSE(m.logit_scale().item(), std::sqrt(8.0), 1e-12);
  BOOST_CHECK(m.logit_scale().requires_grad());
  const Variable q(randn({2, 3, 5, 8}, gen, DType::f64, 0.5, 3.0)), k(randn({2, 3, 4, 8}, gen, DType::f64));
  auto [q_hat, k_hat] = m.forward(q, k);
  for (int64_t t = 0; t < 5; ++t) {
    double ss = 0, dot = 0;
    for (int64_t j = 0; j < 8; ++j) ss += q_hat.data().at({1, 2, t, j}) * q_hat.data().at({1, 2, t, j});
    BOOST_CHECK_CLOSE(ss, 1.0, 1e-10);
    double qn = 0;
    for (int64_t j = 0; j < 8; ++j) qn += q.data().at({1, 2, t, j}) * q.data().at({1, 2, t, j});
    for (int64_t j = 0; j < 8; ++j) dot += q.data().at({1, 2, t, j}) / std::sqrt(qn) * k_hat.data().at({1, 2, 0, j});
    BOOST_CHECK_CLOSE(m.attention_logits(q, k).data().at({1, 2, t, 0}), std::sqrt(8.0) * dot, 1e-10);
  }
  const Tensor logits = m.attention_logits(q, k).data();
  BOOST_CHECK(logits.shape() == (Shape{2, 3, 5, 4}));
  BOOST_CHECK_LE(max_abs(logits), std::sqrt(8.0) * (1 + 1e-12));
  // Henry et al.'s init from the sequence length: log2(L^2 - L).
  BOOST_CHECK_CLOSE(qk_norm_henry_g0(16), std::log2(240.0), 1e-12);
  BOOST_CHECK_CLOSE(QKNorm(8, QKNormKind::l2, 1e-6, DType::f32, qk_norm_henry_g0(16)).g.item(), std::log2(240.0),
                    1e-5);
}

BOOST_AUTO_TEST_CASE(layer_and_rms_kinds_match_their_norms_with_the_constant_scale) {
  Generator gen(2);
  const Variable q(randn({2, 3, 6}, gen, DType::f64, 1.0, 2.0)), k(randn({2, 4, 6}, gen, DType::f64));
  check_kind_matches<LayerNorm>(QKNormKind::layer, q, k, gen, [](const Variable& x, const LayerNorm& n) {
    return layer_norm(x, n.weight, n.bias, 1e-6);
  });
  check_kind_matches<RMSNorm>(QKNormKind::rms, q, k, gen, [](const Variable& x, const RMSNorm& n) {
    return rms_norm(x, n.weight, 1e-6);
  });
}

BOOST_AUTO_TEST_CASE(parameters_are_named_per_kind_and_separate_for_q_and_k) {
  auto names = [](QKNormKind kind) {
    std::vector<std::string> out;
    for (auto& [n, p] : QKNorm(4, kind).named_parameters()) out.push_back(n);
    return out;
  };
  BOOST_CHECK((names(QKNormKind::layer) ==
               std::vector<std::string>{"q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias"}));
  BOOST_CHECK((names(QKNormKind::rms) == std::vector<std::string>{"q_norm.weight", "k_norm.weight"}));
  BOOST_CHECK((names(QKNormKind::l2) == std::vector<std::string>{"g"}));
  BOOST_CHECK_EQUAL(qk_norm_kind_name(QKNormKind::rms), "rms");
  BOOST_CHECK(parse_qk_norm_kind("l2") == QKNormKind::l2);

  // q's weight gets q's gradient only.
  Generator gen(3);
  QKNorm m(4, QKNormKind::rms, 1e-6, DType::f64);
  const Variable q(randn({3, 4}, gen, DType::f64)), k(randn({2, 4}, gen, DType::f64));
  sum(m.forward(q, k).first).backward();
  auto* qn = dynamic_cast<RMSNorm*>(m.q_norm.get());
  auto* kn = dynamic_cast<RMSNorm*>(m.k_norm.get());
  BOOST_CHECK(qn->weight.grad().defined());
  BOOST_CHECK(!kn->weight.grad().defined());
}

BOOST_AUTO_TEST_CASE(gradcheck_q_k_weights_and_temperature_through_the_logits) {
  Generator gen(4);
  double worst = 0;
  // (q shape, k shape): 4-D heads with Tq != Tk, head_dim 1, and a single query row.
  const std::pair<Shape, Shape> shapes[] = {{{2, 2, 3, 5}, {2, 2, 4, 5}}, {{3, 1}, {2, 1}}, {{1, 7}, {3, 7}}};
  for (QKNormKind kind : all_kinds) {
    for (const auto& [sq, sk] : shapes) {
      for (Input in : all_inputs) {
        for (double eps : {1e-6, 1e-2}) {
          QKNorm m(sq.back(), kind, eps, DType::f64);
          randomize_parameters(m, gen);
          std::vector<Variable> inputs{leaf(make_input(sq, in, gen)), leaf(randn(sk, gen, DType::f64))};
          for (const Variable& p : m.parameters()) inputs.push_back(p);
          GradcheckOptions opt;
          // LayerNorm of a near-constant row sees only its ~1e-3 spread (rms and l2 see its ~3 mean).
          if (in == Input::near_constant && kind == QKNormKind::layer) opt.eps = 1e-6;
          // x ~ 1e4 is stored to ~2e-12: a larger step keeps that rounding, divided by the step, below atol.
          if (in == Input::large_mean) opt.eps = 1e-3;
          worst = std::max(worst, expect_gradcheck(std::string("qk_norm ") + qk_norm_kind_name(kind) + " " +
                                                       to_string(sq) + " " + input_name(in) +
                                                       " eps=" + std::to_string(eps),
                                                   [&m](const std::vector<Variable>& v) {
                                                     return m.attention_logits(v[0], v[1]);
                                                   },
                                                   inputs, opt));
        }
      }
    }
  }
  std::printf("qk_norm worst gradcheck rel err %.1e\n", worst);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(5);
  QKNorm m(4, QKNormKind::l2);
  BOOST_CHECK(contains(error_of([] { QKNorm(0); }), "head_dim must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([] { QKNorm(4, QKNormKind::rms, 0.0); }), "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { QKNorm(4, QKNormKind::l2, -1.0); }), "got -1"));
  BOOST_CHECK(contains(error_of([] { QKNorm(4, QKNormKind(7)); }), "unknown kind 7 (expected layer, rms or l2)"));
  BOOST_CHECK(contains(error_of([] { parse_qk_norm_kind("batch"); }), "unknown kind 'batch'"));
  BOOST_CHECK(contains(error_of([] { QKNorm(4, QKNormKind::l2, 1e-6, DType::f32, 0.0); }),
                       "g0 must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([] { qk_norm_henry_g0(1); }), "sequence length must be >= 2, got 1"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({2, 5}, gen)), Variable(randn({2, 4}, gen))); }),
                       "last dim of the input to be 4, got shape [2, 5]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(randn({2, 4}, gen)), Variable(randn({3, 3}, gen))); }),
                       "got shape [3, 3]"));
  BOOST_CHECK(contains(error_of([&] { m.forward(Variable(empty({0, 4})), Variable(randn({2, 4}, gen))); }), "empty"));
  BOOST_CHECK(contains(error_of([&] {
                         m.forward(Variable(randn({2, 4}, gen, DType::f64)), Variable(randn({2, 4}, gen, DType::f64)));
                       }),
                       "q and k have dtypes f64 and f64 but the module's is f32"));
  BOOST_CHECK(contains(error_of([&] { m.attention_logits(Variable(randn({4}, gen)), Variable(randn({2, 4}, gen))); }),
                       "need at least 2 dims"));
}

BOOST_AUTO_TEST_SUITE_END()
