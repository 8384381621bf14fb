// The same seed gives the same numbers, whatever the thread count: a forward and backward
// pass through attention, an MLP and cross-entropy, in f32, at 1 and 2+ threads.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>

#include "autograd/module.h"
#include "autograd/ops.h"
#include "framework/parallel.h"

using namespace normlab;

namespace {

struct Snapshot {
  double loss;
  std::vector<std::vector<float>> grads;
};

Snapshot run_step(uint64_t seed) {
  constexpr int64_t B = 4, T = 33, D = 48, V = 37;
  Generator gen(seed);
  Embedding tok(V, D, gen);
  Linear qkv(D, 3 * D, false, gen), up(D, 4 * D, true, gen), down(4 * D, D, true, gen), head(D, V, false, gen);
  Tensor tokens = empty({B, T}, DType::i64), targets = empty({B, T}, DType::i64);
  const Tensor u = uniform({2, B, T}, gen, 0.0, double(V), DType::f64);
  for (int64_t i = 0; i < B * T; ++i) {
    tokens.data<int64_t>()[i] = int64_t(u.data<double>()[i]);
    targets.data<int64_t>()[i] = int64_t(u.data<double>()[B * T + i]);
  }
  Variable x = tok.forward(tokens);
  auto qkv_parts = split(qkv.forward(x), D, -1);
  Variable s = matmul(qkv_parts[0], transpose(qkv_parts[1], -1, -2)) * (1.0 / std::sqrt(double(D)));
  x = x + matmul(softmax(causal_mask(s)), qkv_parts[2]);
  x = x + down.forward(gelu(up.forward(x)));
  Variable loss = cross_entropy(head.forward(x), targets, -100, 1e-4);
  loss.backward();
  Snapshot snap{loss.item(), {}};
  for (const Module* m : std::initializer_list<const Module*>{&tok, &qkv, &up, &down, &head})
    for (const auto& [name, p] : m->named_parameters()) snap.grads.push_back(p.grad().to_vector<float>());
  return snap;
}

}  // namespace

BOOST_AUTO_TEST_CASE(same_numbers_for_any_thread_count) {
  const int threads = num_threads();
  set_num_threads(1);
  const Snapshot one = run_step(11);
  set_num_threads(3);  // uneven splits of every parallel loop
  const Snapshot many = run_step(11);
  const Snapshot again = run_step(11);
  set_num_threads(threads);
  BOOST_TEST(std::isfinite(one.loss));
  BOOST_TEST(std::memcmp(&one.loss, &many.loss, sizeof(double)) == 0);
  BOOST_TEST(std::memcmp(&many.loss, &again.loss, sizeof(double)) == 0);
  BOOST_REQUIRE(one.grads.size() == many.grads.size());
  for (size_t i = 0; i < one.grads.size(); ++i) {
    BOOST_TEST(one.grads[i] == many.grads[i]);
    BOOST_TEST(many.grads[i] == again.grads[i]);
  }
  BOOST_TEST(run_step(12).loss != one.loss);  // a different seed gives a different run
}
