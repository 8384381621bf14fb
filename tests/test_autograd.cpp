// Engine tests: graph shapes, accumulation, grad mode, freed graphs, deep chains.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "autograd/ops.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "test_util.h"

using namespace normlab;
using normlab::testing::contains;
using normlab::testing::error_of;

namespace {
Variable leaf(std::vector<double> v, Shape s) { return Variable(from_vector(v, s, DType::f64), true); }
}  // namespace

BOOST_AUTO_TEST_SUITE(engine)

BOOST_AUTO_TEST_CASE(diamond_graph) {
  // y = (2x) * (3x) = 6 x^2 -> dy/dx = 12 x; both branches meet in one node.
  Variable x = leaf({1.5, -2.0}, {2});
  Variable y = sum(mul(x * 2.0, x * 3.0));
  y.backward();
  BOOST_TEST(x.grad().at({0}) == 18.0);
  BOOST_TEST(x.grad().at({1}) == -24.0);
}

BOOST_AUTO_TEST_CASE(variable_used_twice) {
  Variable x = leaf({3.0}, {});
  Variable y = x * x + x;  // dy/dx = 2x + 1
  y.backward();
  BOOST_TEST(x.grad().item() == 7.0);
}

BOOST_AUTO_TEST_CASE(accumulates_over_two_backward_calls) {
  Variable x = leaf({2.0}, {});
  (x * 5.0).backward();
  (x * x).backward();
  BOOST_TEST(x.grad().item() == 9.0);
  x.zero_grad();
  BOOST_TEST(!x.grad().defined());
  (x * 5.0).backward();
  BOOST_TEST(x.grad().item() == 5.0);
}

BOOST_AUTO_TEST_CASE(no_grad_records_nothing) {
  Variable x = leaf({1.0, 2.0}, {2});
  Variable y;
  {
    NoGradGuard guard;
    BOOST_TEST(!grad_enabled());
    y = sum(x * x);
  }
  BOOST_TEST(grad_enabled());
  BOOST_TEST(!y.requires_grad());
  BOOST_TEST(y.is_leaf());
  BOOST_TEST(contains(error_of([&] { y.backward(); }), "does not require grad"));
}

BOOST_AUTO_TEST_CASE(retain_graph_and_freed_graph) {
  Variable x = leaf({2.0}, {});
  Variable y = exp(x) * x;
  y.backward({}, /*retain_graph=*/true);
  y.backward();
  const double once = std::exp(2.0) * 3.0;  // d/dx x e^x = (1 + x) e^x
  BOOST_TEST(std::abs(x.grad().item() - 2 * once) < 1e-12);
  const std::string msg = error_of([&] { y.backward(); });
  BOOST_TEST(contains(msg, "already freed"), msg);
  BOOST_TEST(contains(msg, "retain_graph"), msg);
}

BOOST_AUTO_TEST_CASE(detach_stops_gradient) {
  Variable x = leaf({4.0}, {});
  Variable y = x * x.detach();  // only the first factor carries gradient
  y.backward();
  BOOST_TEST(x.grad().item() == 4.0);
  BOOST_TEST(x.detach().data().storage() == x.data().storage());
}

BOOST_AUTO_TEST_CASE(non_scalar_needs_seed) {
  Variable x = leaf({1.0, 2.0, 3.0}, {3});
  Variable y = x * 2.0;
  const std::string msg = error_of([&] { y.backward(); });
  BOOST_TEST(contains(msg, "[3]"), msg);
  BOOST_TEST(contains(msg, "seed"), msg);
  const std::string bad_seed = error_of([&] { y.backward(ones({2}, DType::f64)); });
  BOOST_TEST(contains(bad_seed, "[2]"), bad_seed);
  BOOST_TEST(contains(bad_seed, "[3]"), bad_seed);
  y.backward(from_vector({1.0, 0.0, -1.0}, {3}, DType::f64));
  BOOST_TEST(x.grad().at({0}) == 2.0);
  BOOST_TEST(x.grad().at({2}) == -2.0);
}

BOOST_AUTO_TEST_CASE(unused_output_of_multi_output_node) {
  Variable x = leaf({1, 2, 3, 4, 5}, {5});
  auto parts = split(x, {2, 3}, 0);
  sum(parts[1] * 3.0).backward();  // parts[0] gets no gradient: the engine feeds zeros
  const std::vector<double> g = x.grad().to_vector<double>();
  BOOST_TEST(g == std::vector<double>({0, 0, 3, 3, 3}), boost::test_tools::per_element());
}

// to_dtype: values converted (rounded once when narrowing); the gradient converted back to the
// input's dtype; f64 -> f32 -> f64 passes the gradient through exactly when it fits f32.
BOOST_AUTO_TEST_CASE(to_dtype_converts_values_and_gradients) {
  Variable x(from_vector<double>({1.0 + 0x1p-30, -2.5, 1e-3}, {3}), true);
  const Variable y = to_dtype(x, DType::f32);
  BOOST_TEST(y.dtype() == DType::f32);
  BOOST_TEST(y.data().at({0}) == 1.0);  // rounded to f32
  y.backward(from_vector<float>({0.5f, 2.0f, -1.0f}, {3}));
  BOOST_TEST(x.grad().dtype() == DType::f64);
  BOOST_TEST(x.grad().to_vector<double>() == (std::vector<double>{0.5, 2.0, -1.0}), boost::test_tools::per_element());
  Variable h(from_vector<float>({65519.0f, 70000.0f}, {2}), true);
  const Variable hf = to_dtype(h, DType::f16);
  BOOST_TEST(hf.data().at({0}) == 65504.0);
  BOOST_TEST(std::isinf(hf.data().at({1})));
  BOOST_TEST(to_dtype(x, DType::f64).data().raw_data() == x.data().raw_data());  // already f64: x itself
}

BOOST_AUTO_TEST_CASE(several_roots) {
  Variable x = leaf({2.0}, {});
  Variable a = x * 3.0, b = x * x;
  backward({a, b}, {Tensor(), Tensor()});
  BOOST_TEST(x.grad().item() == 7.0);
}

BOOST_AUTO_TEST_CASE(chain_of_100000_ops) {
  // Backward and destruction of a 100,000-node chain must not recurse.
  Variable x = leaf({1.0}, {});
  Variable y = x;
  for (int i = 0; i < 100000; ++i) y = y * 1.00001;
  y.backward();
  BOOST_TEST(std::abs(x.grad().item() - std::pow(1.00001, 100000)) < 1e-6);
  Variable z = x;
  for (int i = 0; i < 100000; ++i) z = z + 1.0;
  z = Variable();  // destroys the whole graph without backward
  BOOST_TEST(!z.defined());
}

BOOST_AUTO_TEST_CASE(gradient_shapes_follow_inputs) {
  // Broadcast inputs get gradients summed back to their own shapes.
  Variable a = Variable(ones({2, 3}, DType::f64), true);
  Variable b = Variable(ones({3}, DType::f64), true);
  Variable c = Variable(ones({2, 1}, DType::f64), true);
  sum((a + b) * c).backward();
  BOOST_TEST(a.grad().shape() == Shape({2, 3}));
  BOOST_TEST(b.grad().shape() == Shape({3}));
  BOOST_TEST(c.grad().shape() == Shape({2, 1}));
  BOOST_TEST(b.grad().at({0}) == 2.0);
  BOOST_TEST(c.grad().at({1, 0}) == 6.0);
}

BOOST_AUTO_TEST_CASE(only_leaves_change_requires_grad) {
  Variable x = leaf({1.0}, {});
  Variable y = x * 2.0;
  BOOST_TEST(contains(error_of([&] { y.set_requires_grad(false); }), "mul_scalar"));
  BOOST_TEST(contains(error_of([] { Variable(zeros({2}, DType::i64), true); }), "i64"));
}

BOOST_AUTO_TEST_CASE(dropout_masks_scales_and_is_seeded) {
  Variable x(ones({200, 100}, DType::f64), true);
  Generator g1(5), g2(5);
  Variable y = dropout(x, 0.25, true, g1);
  const std::vector<double> v = y.data().to_vector<double>();
  const auto zeros_count = std::count(v.begin(), v.end(), 0.0);
  const auto kept = std::count(v.begin(), v.end(), 1.0 / 0.75);
  BOOST_TEST(zeros_count + kept == 20000);
  BOOST_TEST(std::abs(double(zeros_count) / 20000 - 0.25) < 0.02);
  BOOST_TEST(dropout(x, 0.25, true, g2).data().to_vector<double>() == v);  // same seed, same mask
  sum(y).backward();
  BOOST_TEST(x.grad().to_vector<double>() == v);  // dL/dx = mask / (1 - p)
  BOOST_TEST(dropout(x, 0.25, false, g1).same(x));  // eval: identity
  BOOST_TEST(dropout(x, 0.0, true, g1).same(x));
  BOOST_TEST(contains(error_of([&] { dropout(x, 1.0, true, g1); }), "1"));
}

// checkpoint(f, x) against f(x): the same output and the same gradients, bit for bit, for a
// function that reads a parameter twice, draws dropout masks and updates a buffer in place
// (once: the recomputation leaves it as it found it), also into gradients that already hold
// a value, and nested one checkpoint inside another.
// run_parts: each part's gradients of the listed leaves are kept apart and added in part order
// (x.grad = 1 + 2 + 3 + 4 from four parts, exactly, at 1, 2 and 3 threads); a leaf not listed
// gets its part's gradient directly; when parts throw, the lowest part's error comes out.
BOOST_AUTO_TEST_CASE(run_parts_sums_each_parts_gradients_in_order) {
  const int saved = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    Variable x = leaf({0.5, 0.25}, {2});
    std::vector<Variable> own(4);
    run_parts(4, {x}, [&](int64_t k) {
      own[size_t(k)] = leaf({1.0, 1.0}, {2});
      sum(mul_scalar(x, double(k + 1)) * own[size_t(k)]).backward();
    });
    BOOST_TEST(x.grad().at({0}) == 10.0);
    BOOST_TEST(x.grad().at({1}) == 10.0);
    for (int64_t k = 0; k < 4; ++k) BOOST_TEST(own[size_t(k)].grad().at({0}) == 0.5 * double(k + 1));
    // Added to what grad() held before.
    run_parts(2, {x}, [&](int64_t) { sum(x).backward(); });
    BOOST_TEST(x.grad().at({0}) == 12.0);
    Variable y = leaf({1.0}, {1});
    const std::string error = error_of([&] {
      run_parts(3, {y}, [&](int64_t k) {
        sum(y).backward();
        if (k >= 1) NL_FAIL("part ", k, " failed");
      });
    });
    BOOST_TEST(contains(error, "part 1 failed"));
  }
  set_num_threads(saved);
  BOOST_TEST(contains(error_of([] { run_parts(0, {}, [](int64_t) {}); }), "parts must be >= 1, got 0"));
}

BOOST_AUTO_TEST_CASE(checkpoint_gives_the_stored_graphs_numbers) {
  Generator init(3);
  const Tensor x0 = randn({4, 6}, init, DType::f64), w0 = randn({6, 6}, init, DType::f64);
  const Tensor b0 = randn({6}, init, DType::f64), prior = randn({6, 6}, init, DType::f64);
  struct Run {
    Tensor y, dx, dw, db, buffer;
    uint64_t offset;
  };
  auto run = [&](int mode) {  // 0: stored graph, 1: checkpoint, 2: a checkpoint inside a checkpoint
    Variable x(x0.clone(), true), w(w0.clone(), true), b(b0.clone(), true);
    w.set_grad(prior.clone());
    Tensor buffer = zeros({1}, DType::f64);
    Generator gen(9);
    CheckpointFn inner = [&](const Variable& h) { return dropout(tanh(matmul(h, w) + b), 0.3, true, gen); };
    CheckpointFn f = [&](const Variable& h) {
      add_(buffer, ones({1}, DType::f64));
      const Variable u = mode == 2 ? checkpoint(inner, h, {{w, b}, &gen, {}}) : inner(h);
      return matmul(u, w) * h;
    };
    Variable y = mode == 0 ? f(x) : checkpoint(f, x, {{w, b}, &gen, {buffer}});
    BOOST_TEST(y.requires_grad());
    sum(y * y).backward();
    return Run{y.data(), x.grad(), w.grad(), b.grad(), buffer, gen.offset()};
  };
  const Run stored = run(0);
  for (int mode : {1, 2}) {
    const Run r = run(mode);
    for (const auto& [a, c] : {std::pair{stored.y, r.y}, {stored.dx, r.dx}, {stored.dw, r.dw}, {stored.db, r.db}})
      BOOST_TEST(a.to_vector<double>() == c.to_vector<double>(), "mode " << mode);
    BOOST_TEST(r.buffer.item() == 1.0);
    BOOST_TEST(r.offset == stored.offset);
  }
}

// Without grad mode, or with nothing requiring grad, checkpoint is f(x): no node. A graph
// kept by retain_graph recomputes on each backward and accumulates as the stored graph does.
BOOST_AUTO_TEST_CASE(checkpoint_records_only_with_grad) {
  Variable x = leaf({1.0, -2.0}, {2});
  const CheckpointFn square = [](const Variable& h) { return h * h; };
  {
    NoGradGuard no_grad;
    BOOST_TEST(!checkpoint(square, x).requires_grad());
  }
  BOOST_TEST(!checkpoint(square, x.detach()).requires_grad());
  Variable y = sum(checkpoint(square, x));
  y.backward(Tensor(), true);
  y.backward();
  BOOST_TEST(x.grad().to_vector<double>() == (std::vector<double>{4.0, -8.0}));
  BOOST_TEST(contains(error_of([&] { y.backward(); }), "already freed"));
}

BOOST_AUTO_TEST_CASE(forward_values_match_their_formulas) {
  // gelu is the tanh form, silu is x * sigmoid(x), in f64 and (to f32 rounding) in f32.
  std::vector<double> xs;
  for (double v = -12; v <= 12; v += 0.37) xs.push_back(v);
  const Shape shape{int64_t(xs.size())};
  const Variable x64(from_vector(xs, shape, DType::f64)), x32(from_vector(xs, shape, DType::f32));
  const Tensor g64 = gelu(x64).data(), g32 = gelu(x32).data(), s64 = silu(x64).data();
  for (size_t i = 0; i < xs.size(); ++i) {
    const double v = xs[i];
    const double gelu_ref = 0.5 * v * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
    BOOST_TEST(std::abs(g64.at({int64_t(i)}) - gelu_ref) <= 1e-15 * std::max(1.0, std::abs(v)));
    BOOST_TEST(std::abs(g32.at({int64_t(i)}) - gelu_ref) <= 2e-7 * std::max(1.0, std::abs(v)));
    BOOST_TEST(std::abs(s64.at({int64_t(i)}) - v / (1 + std::exp(-v))) <= 1e-15 * std::max(1.0, std::abs(v)));
  }
  // cross_entropy with z-loss against a hand computation over two tokens (one ignored).
  const Variable logits(from_vector<double>({1, 2, 3, 0.5, -1, 4}, {3, 2}));
  const Tensor targets = from_vector<int64_t>({1, -100, 0}, {3});
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0)), lse2 = std::log(std::exp(-1.0) + std::exp(4.0));
  const double expect = ((lse0 - 2 + 0.1 * lse0 * lse0) + (lse2 + 1 + 0.1 * lse2 * lse2)) / 2;
  BOOST_TEST(std::abs(cross_entropy(logits, targets, -100, 0.1).item() - expect) < 1e-14);
}

BOOST_AUTO_TEST_CASE(op_errors_name_the_bad_values) {
  Variable logits(zeros({2, 3, 5}, DType::f64), true);
  Tensor targets = zeros({2, 3}, DType::i64);
  targets.set({1, 2}, 7);
  std::string msg = error_of([&] { cross_entropy(logits, targets); });
  BOOST_TEST(contains(msg, "target 7"), msg);
  msg = error_of([&] { cross_entropy(logits, zeros({3, 2}, DType::i64)); });
  BOOST_TEST(contains(msg, "[3, 2]"), msg);
  BOOST_TEST(contains(msg, "[2, 3, 5]"), msg);
  Variable table(zeros({4, 2}, DType::f64), true);
  msg = error_of([&] { embedding(table, from_vector<int64_t>({0, 4}, {2})); });
  BOOST_TEST(contains(msg, "index 4"), msg);
  msg = error_of([&] { matmul(Variable(zeros({2, 3})), Variable(zeros({4, 5}))); });
  BOOST_TEST(contains(msg, "[2, 3]"), msg);
  BOOST_TEST(contains(msg, "[4, 5]"), msg);
  msg = error_of([&] { add(Variable(zeros({2, 3})), Variable(zeros({2, 3}, DType::f64))); });
  BOOST_TEST(contains(msg, "f32"), msg);
  BOOST_TEST(contains(msg, "f64"), msg);
  msg = error_of([&] { split(Variable(zeros({5})), {2, 2}, 0); });
  BOOST_TEST(contains(msg, "[2, 2]"), msg);
}

BOOST_AUTO_TEST_SUITE_END()
