// matmul: oneDNN (f32) against the reference, the reference (f64) against a naive triple loop,
// strided and broadcast views as inputs, bit-identical results for any thread count, errors,
// and the primitive cache.
#include <boost/test/unit_test.hpp>

#include <cstdio>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "framework/matmul.h"
#include "framework/parallel.h"
#include "framework/tensor.h"
#include "test_util.h"

using namespace normlab;

namespace {

// max|x - ref| / max|ref| over the whole tensor (the floor keeps all-zero results comparable).
double max_rel_err(const Tensor& x, const Tensor& ref) {
  BOOST_REQUIRE(x.shape() == ref.shape());
  const std::vector<double> xv = x.to_vector<double>(), rv = ref.to_vector<double>();
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < xv.size(); ++i) {
    err = std::max(err, std::abs(xv[i] - rv[i]));
    scale = std::max(scale, std::abs(rv[i]));
  }
  return err / scale;
}

bool bit_identical(const Tensor& x, const Tensor& y) {
  if (x.shape() != y.shape() || x.dtype() != y.dtype()) return false;
  const Tensor xc = x.contiguous(), yc = y.contiguous();
  return std::memcmp(xc.raw_data(), yc.raw_data(), size_t(x.numel()) * x.element_size()) == 0;
}

// Naive triple loop in double over the broadcast shapes (independent of matmul_ref's code).
Tensor naive_matmul(const Tensor& a, const Tensor& b) {
  const int64_t M = a.shape()[a.dim() - 2], K = a.shape().back(), N = b.shape().back();
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(a_batch, b_batch, "naive_matmul");
  Shape a_full = batch, b_full = batch, out = batch;
  a_full.insert(a_full.end(), {M, K});
  b_full.insert(b_full.end(), {K, N});
  out.insert(out.end(), {M, N});
  const std::vector<double> av = a.expand(a_full).to_vector<double>(), bv = b.expand(b_full).to_vector<double>();
  std::vector<double> cv(size_t(shape_numel(out)));
  for (int64_t p = 0; p < shape_numel(batch); ++p)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += av[size_t((p * M + i) * K + k)] * bv[size_t((p * K + k) * N + j)];
        cv[size_t((p * M + i) * N + j)] = s;
      }
  return from_vector(cv, out, DType::f64);
}

// Runs f with the OpenMP thread count set to n, then restores it.
template <class F>
auto with_threads(int n, const F& f) {
  const int saved = num_threads();
  set_num_threads(n);
  auto result = f();
  set_num_threads(saved);
  return result;
}

// Checks that f throws normlab::Error whose message contains every one of `parts`.
void check_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  const std::string msg = normlab::testing::error_of(f);
  BOOST_TEST(!msg.empty(), "expected a normlab::Error");
  for (const std::string& part : parts)
    BOOST_TEST(normlab::testing::contains(msg, part), "'" << part << "' in: " << msg);
}

struct Case {
  Shape a, b;
};

// f32 shapes: tiny, odd, K-large, batched, broadcast batch dims, and ones big enough to be cut
// into batch blocks and row/column blocks with ragged last blocks.
const std::vector<Case> kCases = {
    {{1, 1}, {1, 1}},
    {{7, 13}, {13, 5}},
    {{64, 32}, {32, 96}},
    {{1, 4096}, {4096, 8}},
    {{8, 4096}, {4096, 8}},
    {{3, 1}, {1, 4}},
    {{8, 64, 64}, {8, 64, 32}},
    {{2, 1, 5, 7}, {3, 7, 4}},
    {{5, 7}, {4, 3, 7, 2}},
    {{4, 1, 6}, {6, 9}},
    {{100, 33, 65}, {100, 65, 47}},
    {{300, 200}, {200, 170}},
    {{250, 300}, {300, 390}},
    {{2, 3, 40, 24}, {1, 3, 24, 56}},
};

}  // namespace

// The suite is a namespace named matmul, hence normlab::matmul in the tests.
BOOST_AUTO_TEST_SUITE(matmul)

BOOST_AUTO_TEST_CASE(onednn_matches_reference_f32) {
  Generator gen(1);
  double worst = 0;
  for (const Case& c : kCases) {
    const Tensor a = randn(c.a, gen), b = randn(c.b, gen);
    const Tensor y = normlab::matmul(a, b), ref = matmul_ref(a, b);
    BOOST_TEST_CONTEXT(to_string(c.a) << " x " << to_string(c.b)) {
      BOOST_TEST(y.dtype() == DType::f32);
      BOOST_TEST(y.is_contiguous());
      BOOST_TEST(to_string(y.shape()) == to_string(ref.shape()));
      BOOST_TEST(max_rel_err(y, ref) <= 1e-5);
      worst = std::max(worst, max_rel_err(y, ref));
    }
  }
  std::printf("matmul f32, oneDNN vs reference over %zu shapes: worst relative error %.3e\n", kCases.size(), worst);
}

BOOST_AUTO_TEST_CASE(reference_f32_matches_naive) {
  Generator gen(2);
  for (const Case& c : {kCases[1], kCases[7], kCases[12]}) {
    const Tensor a = randn(c.a, gen), b = randn(c.b, gen);
    BOOST_TEST(max_rel_err(matmul_ref(a, b), naive_matmul(a, b)) <= 1e-7);
  }
}

BOOST_AUTO_TEST_CASE(empty_and_zero_k) {
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor y0 = normlab::matmul(zeros({0, 3}, dt), zeros({3, 4}, dt));
    BOOST_TEST(to_string(y0.shape()) == "[0, 4]");
    const Tensor yk = normlab::matmul(zeros({2, 5, 0}, dt), zeros({0, 3}, dt));
    BOOST_TEST(to_string(yk.shape()) == "[2, 5, 3]");
    BOOST_TEST(max_rel_err(yk, zeros({2, 5, 3}, DType::f64)) == 0.0);
  }
}

// Views go through oneDNN with their own strides where it can take them, else as copies.
BOOST_AUTO_TEST_CASE(strided_views_as_inputs) {
  Generator gen(3);
  const int64_t M = 37, K = 29, N = 23;
  struct View {
    const char* name;
    Tensor a, b;
  };
  const Tensor b_plain = randn({K, N}, gen), a_plain = randn({M, K}, gen);
  const Tensor q = randn({2, 3, 8, 16}, gen), k = randn({2, 3, 8, 16}, gen);
  const std::vector<View> views = {
      {"a transposed", randn({K, M}, gen).transpose(0, 1), b_plain},
      {"b transposed", a_plain, randn({N, K}, gen).transpose(0, 1)},
      {"both transposed", randn({K, M}, gen).transpose(0, 1), randn({N, K}, gen).transpose(0, 1)},
      {"a row slice", randn({M + 9, K}, gen).narrow(0, 4, M), b_plain},
      {"a column slice (padded rows)", randn({M, K + 5}, gen).narrow(1, 2, K), b_plain},
      {"b column slice", a_plain, randn({K, N + 7}, gen).narrow(1, 3, N)},
      {"a column step 2", randn({M, 2 * K}, gen).slice(1, 0, 2 * K, 2), b_plain},
      {"b row step 3", a_plain, randn({3 * K, N}, gen).slice(0, 1, 3 * K, 3)},
      {"a rows broadcast (stride 0)", randn({1, K}, gen).expand({M, K}), b_plain},
      {"b columns broadcast (stride 0)", a_plain, randn({K, 1}, gen).expand({K, N})},
      {"batch broadcast by expand", randn({1, M, K}, gen).expand({4, M, K}), randn({4, K, N}, gen)},
      {"both batch-broadcast by expand", randn({M, K}, gen).expand({3, M, K}), randn({1, K, N}, gen).expand({3, K, N})},
      {"batch dim permuted", randn({M, 4, K}, gen).permute({1, 0, 2}), randn({4, K, N}, gen)},
      {"attention q @ k^T", q, k.transpose(-1, -2)},
      {"attention sliced heads", q.slice(1, 0, 3, 2), k.slice(1, 1, 3).transpose(-1, -2)},
      {"batched transposed a, big", randn({6, 96, 80}, gen).transpose(1, 2), randn({6, 96, 72}, gen)},
      // Big enough to be cut into several units: a transposed a is cut by rows, a transposed b
      // is copied (tiled transpose) and cut into a grid.
      {"big: a transposed", randn({400, 300}, gen).transpose(0, 1), randn({400, 200}, gen)},
      {"big: b transposed (x @ w^T)", randn({300, 200}, gen), randn({170, 200}, gen).transpose(0, 1)},
      {"big: both transposed", randn({400, 300}, gen).transpose(0, 1), randn({170, 400}, gen).transpose(0, 1)},
      {"big: batched b transposed", randn({2, 300, 200}, gen), randn({2, 170, 200}, gen).transpose(1, 2)},
      {"big: broadcast b transposed", randn({3, 300, 200}, gen), randn({170, 200}, gen).transpose(0, 1)},
  };
  for (const View& v : views) {
    BOOST_TEST_CONTEXT(v.name << ": " << to_string(v.a.shape()) << " x " << to_string(v.b.shape())) {
      BOOST_TEST(max_rel_err(normlab::matmul(v.a, v.b), matmul_ref(v.a, v.b)) <= 1e-5);
      BOOST_TEST(max_rel_err(matmul_ref(v.a, v.b), naive_matmul(v.a, v.b)) <= 1e-7);
      // f64 through the same views
      const Tensor a64 = v.a.to(DType::f64), b64 = v.b.to(DType::f64);
      BOOST_TEST(max_rel_err(normlab::matmul(a64, b64), naive_matmul(v.a, v.b)) <= 1e-12);
    }
  }
}

// Transposed and padded layouts reach oneDNN's fast implementations, not its "ref:" one.
BOOST_AUTO_TEST_CASE(transposes_use_fast_onednn) {
  matmul_cache_clear();
  Generator gen(4);
  const Tensor at = randn({48, 40}, gen).transpose(0, 1), bt = randn({24, 48}, gen).transpose(0, 1);
  normlab::matmul(at, randn({48, 24}, gen));
  normlab::matmul(randn({40, 48}, gen), bt);
  normlab::matmul(at, bt);
  normlab::matmul(randn({40, 50}, gen).narrow(1, 1, 48), randn({48, 30}, gen).narrow(1, 2, 24));
  normlab::matmul(randn({2, 3, 16, 8}, gen), randn({2, 3, 16, 8}, gen).transpose(-1, -2));
  BOOST_TEST(matmul_cache_stats().ref_impls == 0);
}

BOOST_AUTO_TEST_CASE(f64_matches_naive) {
  Generator gen(5);
  for (const Case& c : kCases) {
    if (shape_numel(c.a) * c.b.back() > 2'000'000) continue;  // keep the naive loop fast
    const Tensor a = randn(c.a, gen, DType::f64), b = randn(c.b, gen, DType::f64);
    const Tensor y = normlab::matmul(a, b);
    BOOST_TEST_CONTEXT(to_string(c.a) << " x " << to_string(c.b)) {
      BOOST_TEST(y.dtype() == DType::f64);
      BOOST_TEST(max_rel_err(y, naive_matmul(a, b)) <= 1e-12);
      BOOST_TEST(bit_identical(y, matmul_ref(a, b)));
    }
  }
}

// Same inputs, bit-identical outputs for 1, 2, 3 and 8 threads. The oneDNN cases include shapes
// for which oneDNN's own threading splits K (a transposed, K large; M = 1).
BOOST_AUTO_TEST_CASE(deterministic_across_thread_counts) {
  Generator gen(6);
  struct Det {
    const char* name;
    Tensor a, b;
  };
  std::vector<Det> cases = {
      {"64x32 @ 32x96", randn({64, 32}, gen), randn({32, 96}, gen)},
      {"8x64x64 @ 8x64x32", randn({8, 64, 64}, gen), randn({8, 64, 32}, gen)},
      {"1x4096 @ 4096x8", randn({1, 4096}, gen), randn({4096, 8}, gen)},
      {"(4096x8)^T @ 4096x8", randn({4096, 8}, gen).transpose(0, 1), randn({4096, 8}, gen)},
      {"(16384x32)^T @ 16384x32", randn({16384, 32}, gen).transpose(0, 1), randn({16384, 32}, gen)},
      {"32x16384 @ 16384x32 padded", randn({32, 16400}, gen).narrow(1, 0, 16384), randn({16384, 32}, gen)},
      {"256x512 @ 512x384", randn({256, 512}, gen), randn({512, 384}, gen)},
      {"2x1x40x24 @ 3x24x56", randn({2, 1, 40, 24}, gen), randn({3, 24, 56}, gen)},
      {"300x200 @ (170x200)^T", randn({300, 200}, gen), randn({170, 200}, gen).transpose(0, 1)},
      {"(400x300)^T @ 400x200", randn({400, 300}, gen).transpose(0, 1), randn({400, 200}, gen)},
  };
  const size_t n_f32 = cases.size();
  for (size_t i = 0; i < n_f32; ++i) cases.push_back({"f64", cases[i].a.to(DType::f64), cases[i].b.to(DType::f64)});
  for (const Det& c : cases) {
    BOOST_TEST_CONTEXT(c.name << " " << dtype_name(c.a.dtype())) {
      // The cache is cleared so that primitives are also created under each thread count.
      const auto run = [&] {
        matmul_cache_clear();
        return normlab::matmul(c.a, c.b);
      };
      const Tensor y1 = with_threads(1, run);
      for (int n : {2, 3, 8}) {
        const Tensor yn = with_threads(n, run);
        BOOST_TEST(bit_identical(y1, yn), "threads 1 vs " << n);
      }
      if (c.a.dtype() == DType::f32) BOOST_TEST(max_rel_err(y1, matmul_ref(c.a, c.b)) <= 1e-5);
    }
  }
}

BOOST_AUTO_TEST_CASE(bad_inputs) {
  const Tensor a23 = zeros({2, 3}), b45 = zeros({4, 5});
  check_error([&] { normlab::matmul(a23, b45); }, {"[2, 3]", "[4, 5]"});
  check_error([&] { matmul_ref(a23, b45); }, {"[2, 3]", "[4, 5]"});
  check_error([&] { normlab::matmul(zeros({3}), zeros({3, 4})); }, {"[3]", "[3, 4]"});
  check_error([&] { normlab::matmul(zeros({3, 4}), zeros({4})); }, {"[3, 4]", "[4]"});
  check_error([&] { normlab::matmul(zeros({2, 3, 4}), zeros({5, 4, 6})); }, {"[2, 3, 4]", "[5, 4, 6]"});
  check_error([&] { normlab::matmul(zeros({2, 3}), zeros({3, 4}, DType::f64)); }, {"f32", "f64", "[2, 3]", "[3, 4]"});
  check_error([&] { normlab::matmul(zeros({2, 3}, DType::f64), zeros({3, 4})); }, {"f64", "f32"});
  const Tensor i23 = empty({2, 3}, DType::i64), i34 = empty({3, 4}, DType::i64);
  check_error([&] { normlab::matmul(i23, i34); }, {"i64", "[2, 3]", "[3, 4]"});
  check_error([&] { normlab::matmul(empty({2, 3}, DType::bf16), empty({3, 4}, DType::bf16)); }, {"bf16"});
  check_error([&] { normlab::matmul(Tensor(), b45); }, {"undefined", "[4, 5]"});
  check_error([&] { matmul_onednn(zeros({2, 3}, DType::f64), zeros({3, 4}, DType::f64)); }, {"f64"});
  check_error([] { set_matmul_cache_capacity(0); }, {"0"});
}

BOOST_AUTO_TEST_CASE(primitive_cache_is_reused) {
  matmul_cache_clear();
  Generator gen(7);
  const Tensor a = randn({24, 40}, gen), b = randn({40, 56}, gen);
  normlab::matmul(a, b);
  const MatmulCacheStats s1 = matmul_cache_stats();
  BOOST_TEST(s1.size >= 1);
  BOOST_TEST(s1.misses == s1.size);
  // Same layout, new data (and new storage): hits only.
  for (int i = 0; i < 5; ++i) normlab::matmul(randn({24, 40}, gen), randn({40, 56}, gen));
  const MatmulCacheStats s2 = matmul_cache_stats();
  BOOST_TEST(s2.size == s1.size);
  BOOST_TEST(s2.misses == s1.misses);
  BOOST_TEST(s2.hits >= 5);
  // A new shape adds entries.
  normlab::matmul(randn({24, 41}, gen), randn({41, 56}, gen));
  BOOST_TEST(matmul_cache_size() > s2.size);
  matmul_cache_clear();
  BOOST_TEST(matmul_cache_size() == 0);
  BOOST_TEST(matmul_cache_stats().hits == 0);
}

BOOST_AUTO_TEST_CASE(primitive_cache_is_bounded) {
  matmul_cache_clear();
  const int64_t saved = matmul_cache_capacity();
  BOOST_TEST(saved == 1024);
  set_matmul_cache_capacity(3);
  Generator gen(8);
  for (int64_t k = 1; k <= 6; ++k) {
    const Tensor a = randn({3, k}, gen), b = randn({k, 2}, gen);
    BOOST_TEST(max_rel_err(normlab::matmul(a, b), matmul_ref(a, b)) <= 1e-5);
  }
  BOOST_TEST(matmul_cache_size() == 3);
  BOOST_TEST(matmul_cache_stats().evictions == 3);
  set_matmul_cache_capacity(saved);
  matmul_cache_clear();
}

// Several threads calling matmul at once (shared cache, per-thread streams and scratchpads).
BOOST_AUTO_TEST_CASE(concurrent_callers) {
  matmul_cache_clear();
  Generator gen(9);
  std::vector<std::pair<Tensor, Tensor>> inputs;
  for (const Case& c : kCases) inputs.emplace_back(randn(c.a, gen), randn(c.b, gen));
  std::vector<Tensor> expected;
  for (const auto& [a, b] : inputs) expected.push_back(normlab::matmul(a, b));
  matmul_cache_clear();  // so the threads also race to create primitives
  std::vector<std::vector<Tensor>> got(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep)
        for (size_t i = 0; i < inputs.size(); ++i) {
          const size_t j = (i + t) % inputs.size();
          Tensor y = normlab::matmul(inputs[j].first, inputs[j].second);
          if (rep == 2) got[t].push_back(std::move(y));
        }
    });
  for (std::thread& th : threads) th.join();
  for (size_t t = 0; t < got.size(); ++t)
    for (size_t i = 0; i < inputs.size(); ++i) BOOST_TEST(bit_identical(got[t][i], expected[(i + t) % inputs.size()]));
}

BOOST_AUTO_TEST_SUITE_END()
