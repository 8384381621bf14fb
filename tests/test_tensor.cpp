// Tensor, views, factories, RNG, allocator, parallel_for and error messages.
#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <limits>

#include "framework/allocator.h"
#include "framework/fast_math.h"
#include "framework/parallel.h"
#include "framework/tensor.h"
#include "framework/tensor_ops.h"
#include "test_util.h"

using namespace normlab;
using normlab::testing::contains;
using normlab::testing::error_of;


BOOST_AUTO_TEST_SUITE(tensor)

BOOST_AUTO_TEST_CASE(factories_and_element_access) {
  Tensor z = zeros({2, 3});
  BOOST_TEST(z.numel() == 6);
  BOOST_TEST(z.dim() == 2);
  BOOST_TEST(z.is_contiguous());
  BOOST_TEST(z.strides() == Shape({3, 1}));
  BOOST_TEST(z.dtype() == DType::f32);
  BOOST_TEST(ones({4}, DType::f64).at({3}) == 1.0);
  BOOST_TEST(full({2, 2}, 2.5).at({1, 1}) == 2.5);
  Tensor a = arange(0, 5, 1, DType::f64);
  BOOST_TEST(a.to_vector<double>() == std::vector<double>({0, 1, 2, 3, 4}), boost::test_tools::per_element());
  BOOST_TEST(arange(1, 2, 0.25).numel() == 4);
  Tensor s = full({}, 7.0);
  BOOST_TEST(s.dim() == 0);
  BOOST_TEST(s.item() == 7.0);
  z.set({1, 2}, 4.0);
  BOOST_TEST(z.at({1, 2}) == 4.0);
  BOOST_TEST(reinterpret_cast<uintptr_t>(z.raw_data()) % 64 == 0);
}

BOOST_AUTO_TEST_CASE(views_share_storage) {
  Tensor t = arange(0, 24, 1, DType::f64).reshape({2, 3, 4});
  BOOST_TEST(t.at({1, 2, 3}) == 23.0);
  Tensor tr = t.transpose(0, 2);  // [4, 3, 2]
  BOOST_TEST(tr.shape() == Shape({4, 3, 2}));
  BOOST_TEST(!tr.is_contiguous());
  BOOST_TEST(tr.at({3, 2, 1}) == 23.0);
  BOOST_TEST(tr.storage() == t.storage());
  Tensor p = t.permute({2, 0, 1});
  BOOST_TEST(p.at({3, 1, 0}) == t.at({1, 0, 3}));
  Tensor sl = t.slice(2, 1, 4, 2);  // columns 1, 3
  BOOST_TEST(sl.shape() == Shape({2, 3, 2}));
  BOOST_TEST(sl.at({1, 1, 1}) == t.at({1, 1, 3}));
  Tensor nw = t.narrow(1, 1, 2);
  BOOST_TEST(nw.at({0, 0, 0}) == 4.0);
  Tensor sel = t.select(0, 1);
  BOOST_TEST(sel.shape() == Shape({3, 4}));
  BOOST_TEST(sel.at({0, 0}) == 12.0);
  BOOST_TEST(t.slice(0, -1, 2).at({0, 0, 0}) == 12.0);  // negative start
  sl.set({0, 0, 0}, -1.0);
  BOOST_TEST(t.at({0, 0, 1}) == -1.0);  // writes through the view
  Tensor ex = arange(0, 3, 1, DType::f64).reshape({3, 1}).expand({2, 3, 4});
  BOOST_TEST(ex.strides() == Shape({0, 1, 0}));
  BOOST_TEST(ex.at({1, 2, 3}) == 2.0);
  BOOST_TEST(t.unsqueeze(1).shape() == Shape({2, 1, 3, 4}));
  BOOST_TEST(t.unsqueeze(-1).shape() == Shape({2, 3, 4, 1}));
  BOOST_TEST(t.unsqueeze(0).squeeze(0).shape() == t.shape());
}

BOOST_AUTO_TEST_CASE(reshape_view_and_contiguous) {
  Tensor t = arange(0, 12, 1, DType::f64).reshape({3, 4});
  Tensor v = t.view({2, -1});
  BOOST_TEST(v.shape() == Shape({2, 6}));
  BOOST_TEST(v.storage() == t.storage());
  Tensor tr = t.transpose(0, 1);  // [4, 3], not viewable as [12]
  BOOST_TEST(contains(error_of([&] { tr.view({12}); }), "reshape"));
  Tensor r = tr.reshape({12});  // copies
  BOOST_TEST(r.storage() != t.storage());
  BOOST_TEST(r.to_vector<double>() == std::vector<double>({0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}),
             boost::test_tools::per_element());
  // A transposed view that is still splittable: [4, 3] -> [2, 2, 3] is a view.
  BOOST_TEST(tr.view({2, 2, 3}).storage() == t.storage());
  Tensor c = tr.contiguous();
  BOOST_TEST(c.is_contiguous());
  BOOST_TEST(c.at({3, 2}) == 11.0);
  BOOST_TEST(t.contiguous().storage() == t.storage());
  BOOST_TEST(t.clone().storage() != t.storage());
  BOOST_TEST(contains(error_of([&] { t.view({5, -1}); }), "[5, -1]"));
  BOOST_TEST(contains(error_of([&] { t.reshape({-1, -1}); }), "only one dim"));
}

BOOST_AUTO_TEST_CASE(transposing_copies_match_element_access) {
  // Tiled transposing copies: odd sizes past one tile, batched planes, a dtype change.
  Generator gen(3);
  const Tensor x = randn({3, 37, 70}, gen, DType::f64);
  for (const Tensor& view : {x.transpose(1, 2), x.permute({2, 0, 1}), x.transpose(0, 2).slice(1, 1, 37, 3)}) {
    const Tensor c = view.contiguous();
    const Tensor f = view.to(DType::f32);
    BOOST_TEST(c.is_contiguous());
    bool same = true;
    for (int64_t i = 0; i < c.size(0); ++i)
      for (int64_t j = 0; j < c.size(1); ++j)
        for (int64_t k = 0; k < c.size(2); ++k) {
          same = same && c.at({i, j, k}) == view.at({i, j, k});
          same = same && f.at({i, j, k}) == double(float(view.at({i, j, k})));
        }
    BOOST_TEST(same, "view of shape " << to_string(view.shape()));
  }
}

BOOST_AUTO_TEST_CASE(dtype_conversion) {
  Tensor d = from_vector<double>({1.5, -2.25, 1e-3, 3.0}, {2, 2});
  Tensor f = d.to(DType::f32);
  BOOST_TEST(f.dtype() == DType::f32);
  BOOST_TEST(f.at({0, 1}) == -2.25);
  Tensor b = d.to(DType::bf16);
  BOOST_TEST(b.element_size() == 2u);
  BOOST_TEST(b.at({0, 0}) == 1.5);  // exactly representable
  BOOST_TEST(std::abs(b.at({1, 0}) - 1e-3) < 1e-3 * 0x1p-8);
  Tensor i = from_vector<int64_t>({3, -4}, {2});
  BOOST_TEST(i.to(DType::f64).at({1}) == -4.0);
  BOOST_TEST(contains(error_of([&] { (void)d.data<float>(); }), "f64"));
}

// f16's integer conversions against the compiler's IEEE binary16 (_Float16, round to nearest
// even): every half to float, and floats across every exponent (a stride through all bit patterns,
// plus the halfway points around 65504, the subnormal boundary and the tiny values that flush).
BOOST_AUTO_TEST_CASE(f16_conversion_matches_ieee_half) {
  int wrong = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    f16 x;
    x.bits = uint16_t(h);
    _Float16 ref = std::bit_cast<_Float16>(uint16_t(h));
    const float a = float(x), b = float(ref);
    wrong += !(std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) || (std::isnan(a) && std::isnan(b)));
  }
  BOOST_TEST(wrong == 0, wrong << " halves widen wrongly");
  auto check = [&](float f) {
    const uint16_t got = f16(f).bits, want = std::bit_cast<uint16_t>(_Float16(f));
    const bool nan = std::isnan(f) && (got & 0x7c00u) == 0x7c00u && (got & 0x3ffu) != 0;
    if (got != want && !nan) ++wrong;
  };
  for (uint64_t u = 0; u <= 0xffffffffu; u += 65521) check(std::bit_cast<float>(uint32_t(u)));
  for (float f : {65504.f, 65519.f, 65519.996f, 65520.f, 65536.f, 1e-8f, 2.9802322e-8f, 2.9802326e-8f,
                  5.9604645e-8f, 6.1035156e-5f, 6.1035153e-5f, 6.0975552e-5f, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f}) {
    check(f);
    check(-f);
  }
  BOOST_TEST(wrong == 0, wrong << " floats narrow wrongly");
  BOOST_TEST(float(f16(1e-8f)) == 0.0f);  // the seeds' fp16 pitfall: eps 1e-8 underflows
  BOOST_TEST(float(f16(1e-5f)) > 0.0f);
  BOOST_TEST(std::isinf(float(f16(70000.f))));
}

BOOST_AUTO_TEST_CASE(rng_is_seeded_and_thread_count_independent) {
  Generator g1(42), g2(42), g3(43);
  const auto a = randn({1000}, g1, DType::f64).to_vector<double>();
  const auto b = randn({1000}, g2, DType::f64).to_vector<double>();
  const auto c = randn({1000}, g3, DType::f64).to_vector<double>();
  BOOST_TEST(a == b, boost::test_tools::per_element());
  BOOST_TEST(a != c);
  double m = 0, v = 0;
  for (double x : a) m += x / 1000;
  for (double x : a) v += (x - m) * (x - m) / 1000;
  BOOST_TEST(std::abs(m) < 0.1);
  BOOST_TEST(std::abs(v - 1) < 0.1);
  // Same numbers with one thread and with several.
  const int threads = num_threads();
  set_num_threads(1);
  Generator s1(7);
  const auto one = uniform({100000}, s1, -1, 1, DType::f32).to_vector<float>();
  set_num_threads(std::max(2, threads));
  Generator s2(7);
  const auto many = uniform({100000}, s2, -1, 1, DType::f32).to_vector<float>();
  set_num_threads(threads);
  BOOST_TEST(one == many);
  // Consecutive draws continue the stream; set_state replays it.
  Generator g(9);
  randn({10}, g);
  BOOST_TEST(g.offset() == 10u);
  const auto next = randn({5}, g, DType::f64).to_vector<double>();
  Generator h(0);
  h.set_state(9, 10);
  BOOST_TEST(randn({5}, h, DType::f64).to_vector<double>() == next, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(caching_allocator_reuses_blocks) {
  auto& alloc = CpuAllocator::instance();
  { Tensor warm = empty({1000, 37}); }
  const AllocatorStats before = alloc.stats();
  for (int i = 0; i < 10; ++i) {
    Tensor t = empty({1000, 37});
    BOOST_TEST(reinterpret_cast<uintptr_t>(t.raw_data()) % CpuAllocator::kAlignment == 0);
  }
  const AllocatorStats after = alloc.stats();
  BOOST_TEST(after.os_allocations == before.os_allocations);
  BOOST_TEST(after.cache_hits >= before.cache_hits + 10);
  BOOST_TEST(CpuAllocator::size_class(1) == 64u);
  BOOST_TEST(CpuAllocator::size_class(5000) >= 5000u);
  BOOST_TEST(CpuAllocator::size_class(5000) <= 5000u * 5 / 4);
}

// reserve() maps faulted-in arenas the next blocks come from without the OS; empty_cache()
// gives back an arena once none of its blocks is in use, and keeps it while one is.
BOOST_AUTO_TEST_CASE(allocator_reserves_arenas_and_gives_free_ones_back) {
  auto& alloc = CpuAllocator::instance();
  alloc.empty_cache();
  const size_t before = alloc.stats().bytes_mapped;
  alloc.reserve(before + (size_t(9) << 20));  // more than the arenas could have room for
  const AllocatorStats reserved = alloc.stats();
  BOOST_TEST(reserved.bytes_mapped >= before + (size_t(9) << 20));
  Tensor kept = empty({1000});
  kept.fill_(3.0);
  {
    std::vector<Tensor> blocks;
    for (int i = 0; i < 16; ++i) blocks.push_back(empty({128 * 1024}));  // 512 KiB each
    BOOST_TEST(alloc.stats().os_allocations == reserved.os_allocations);
  }
  alloc.empty_cache();  // the reserved arena holds `kept`: it stays
  BOOST_TEST(alloc.stats().bytes_mapped == reserved.bytes_mapped);
  BOOST_TEST(kept.to_vector<float>() == std::vector<float>(1000, 3.0f), boost::test_tools::per_element());
  kept = Tensor();
  alloc.empty_cache();
  BOOST_TEST(alloc.stats().bytes_mapped <= before);
}

BOOST_AUTO_TEST_CASE(parallel_for_covers_the_range_once) {
  std::vector<int> hits(10007, 0);
  parallel_for(0, int64_t(hits.size()), 100, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
  });
  BOOST_TEST(std::count(hits.begin(), hits.end(), 1) == int64_t(hits.size()));
  BOOST_TEST(contains(error_of([] { set_num_threads(0); }), "0"));
}

BOOST_AUTO_TEST_CASE(elementwise_and_reductions) {
  Tensor a = arange(0, 6, 1, DType::f64).reshape({2, 3});
  Tensor b = from_vector<double>({10, 20, 30}, {3});
  BOOST_TEST(add(a, b).at({1, 2}) == 35.0);
  BOOST_TEST(mul(a.transpose(0, 1), from_vector<double>({2, 3}, {2})).at({2, 1}) == 15.0);
  BOOST_TEST(sum(a).item() == 15.0);
  BOOST_TEST(sum(a, {0}).to_vector<double>() == std::vector<double>({3, 5, 7}), boost::test_tools::per_element());
  BOOST_TEST(sum(a, {1}, true).shape() == Shape({2, 1}));
  BOOST_TEST(mean(a, {-1}).at({1}) == 4.0);
  auto [v, i] = max(from_vector<double>({1, 5, 5, 2}, {2, 2}), 1);
  BOOST_TEST(v.at({0}) == 5.0);
  BOOST_TEST(i.at({1}) == 0.0);  // first maximum
  BOOST_TEST(sum_to(ones({4, 2, 3}, DType::f64), {2, 1}).at({1, 0}) == 12.0);
  Tensor sm = softmax_lastdim(from_vector<double>({1000, 1000, -1e9}, {3}));
  BOOST_TEST(std::abs(sm.at({0}) - 0.5) < 1e-15);
  BOOST_TEST(cat({a, a}, 0).shape() == Shape({4, 3}));
  BOOST_TEST(max_abs(from_vector<double>({1, -7, 3}, {3})) == 7.0);
  Tensor f = from_vector<float>({1, 2, 3}, {3});
  BOOST_TEST(all_finite(f));
  f.set({1}, std::numeric_limits<double>::quiet_NaN());
  BOOST_TEST(!all_finite(f));
  f.set({1}, -std::numeric_limits<double>::infinity());
  BOOST_TEST(!all_finite(f));
}

BOOST_AUTO_TEST_CASE(exp_f32_is_within_two_ulp) {
  auto ulps = [](float a, float b) { return std::abs(int64_t(std::bit_cast<int32_t>(a)) - std::bit_cast<int32_t>(b)); };
  int64_t worst = 0, count = 0;
  for (float x = -87.33f; x <= 88.37f; x += 1e-3f + 1e-4f * std::abs(x), ++count)
    worst = std::max(worst, ulps(exp_f32(x), float(std::exp(double(x)))));
  BOOST_TEST(count > 40000);
  BOOST_TEST(worst <= 2);
  BOOST_TEST(exp_f32(0.0f) == 1.0f);
  BOOST_TEST(exp_f32(-100.0f) == 0.0f);
  BOOST_TEST(exp_f32(-std::numeric_limits<float>::infinity()) == 0.0f);
  BOOST_TEST(std::isinf(exp_f32(100.0f)));
  BOOST_TEST(std::isnan(exp_f32(std::numeric_limits<float>::quiet_NaN())));
}

BOOST_AUTO_TEST_CASE(tanh_f32_is_within_a_few_ulp) {
  auto ulps = [](float a, float b) { return std::abs(int64_t(std::bit_cast<int32_t>(a)) - std::bit_cast<int32_t>(b)); };
  int64_t worst = 0, count = 0;
  for (float x = -12.0f; x <= 12.0f; x += 1e-4f + 1e-4f * std::abs(x), ++count)
    worst = std::max(worst, ulps(tanh_f32(x), float(std::tanh(double(x)))));
  std::printf("tanh_f32: worst %lld ulp over %lld points in [-12, 12]\n", (long long)worst, (long long)count);
  BOOST_TEST(count > 40000);
  BOOST_TEST(worst <= 4);
  BOOST_TEST(tanh_f32(0.0f) == 0.0f);
  BOOST_TEST(tanh_f32(1e-20f) == 1e-20f);
  BOOST_TEST(tanh_f32(100.0f) == 1.0f);
  BOOST_TEST(tanh_f32(-std::numeric_limits<float>::infinity()) == -1.0f);
  BOOST_TEST(std::isnan(tanh_f32(std::numeric_limits<float>::quiet_NaN())));
}

BOOST_AUTO_TEST_CASE(bad_input_names_the_values) {
  Tensor a = zeros({2, 3}), b = zeros({4, 5}), d = zeros({2, 3}, DType::f64);
  const std::string shape_msg = error_of([&] { add(a, b); });
  BOOST_TEST(contains(shape_msg, "[2, 3]"), shape_msg);
  BOOST_TEST(contains(shape_msg, "[4, 5]"), shape_msg);
  const std::string dtype_msg = error_of([&] { mul(a, d); });
  BOOST_TEST(contains(dtype_msg, "f32"), dtype_msg);
  BOOST_TEST(contains(dtype_msg, "f64"), dtype_msg);
  BOOST_TEST(contains(error_of([&] { a.transpose(0, 5); }), "dim 5"));
  BOOST_TEST(contains(error_of([&] { a.at({2, 0}); }), "[2, 0]"));
  BOOST_TEST(contains(error_of([&] { a.narrow(1, 2, 2); }), "[2, 4)"));
  BOOST_TEST(contains(error_of([&] { cat({a, b}, 0); }), "[4, 5]"));
  BOOST_TEST(contains(error_of([] { empty({-2}); }), "-2"));
  BOOST_TEST(contains(error_of([&] { sum(zeros({2}, DType::i64)); }), "i64"));
  try {
    add(a, b);
  } catch (const std::runtime_error&) {  // normlab::Error is a std::runtime_error
    return;
  }
  BOOST_FAIL("expected an error");
}

// f16 tensors: conversions through the scalar f16 (to nearest even; past 65504 to infinity, below
// 2^-25 to zero), element access and fill.
BOOST_AUTO_TEST_CASE(f16_tensor_conversion) {
  const Tensor d = from_vector<double>({1.5, -2.25, 1e-3, 65504.0, 70000.0, 1e-8}, {2, 3});
  const Tensor h = d.to(DType::f16);
  BOOST_TEST(h.dtype() == DType::f16);
  BOOST_TEST(h.element_size() == 2u);
  BOOST_TEST(h.at({0, 0}) == 1.5);  // exactly representable
  BOOST_TEST(std::abs(h.at({0, 2}) - 1e-3) <= 1e-3 * 0x1p-11);
  BOOST_TEST(h.at({1, 0}) == 65504.0);
  BOOST_TEST(std::isinf(h.at({1, 1})));
  BOOST_TEST(h.at({1, 2}) == 0.0);
  // To f32 and bf16 and back: each value is the f16's, exactly, then rounded once.
  const Tensor f = h.to(DType::f32);
  for (int64_t k = 0; k < 6; ++k) BOOST_TEST(f.at({k / 3, k % 3}) == h.at({k / 3, k % 3}));
  BOOST_TEST(f.to(DType::f16).to_vector<double>() == h.to_vector<double>(), boost::test_tools::per_element());
  BOOST_TEST(h.to(DType::bf16).at({0, 1}) == -2.25);
  Tensor z = zeros({3}, DType::f16);
  z.fill_(0.1);
  BOOST_TEST(z.at({2}) == double(float(f16(0.1f))));
}

BOOST_AUTO_TEST_SUITE_END()
