// CUDA device support: availability, device tensors, copies between devices, the caching
// device allocator, CUDA_CHECK, the basic elementwise ops and sums on device, and a backward
// pass on device tensors. Cases that need a GPU report "skipped: <reason>" and return when
// there is none; the first case runs everywhere.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "autograd/ops.h"
#include "autograd/variable.h"
#include "framework/cuda.h"
#include "framework/matmul.h"
#include "framework/rng.h"
#include "framework/tensor.h"
#include "framework/tensor_ops.h"
#include "test_util.h"

#ifdef NORMLAB_WITH_CUDA
#include "framework/cuda_check.h"
#endif

using namespace normlab;
using normlab::testing::contains;
using normlab::testing::error_of;

namespace {

const Device kCuda = Device::cuda(0);

// True when a GPU is present; otherwise logs why the case is skipped.
bool have_gpu() {
  if (cuda_available()) return true;
  BOOST_TEST(!cuda_unavailable_reason().empty());
  BOOST_TEST_MESSAGE("skipped: " << cuda_unavailable_reason());
  return false;
}

// Bitwise equality of two tensors' values (any devices, same dtype and shape).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ca = a.to(Device::cpu()).contiguous(), cb = b.to(Device::cpu()).contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), size_t(ca.numel()) * ca.element_size()) == 0;
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  BOOST_REQUIRE(va.size() == vb.size());
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::abs(va[i] - vb[i]) / std::max(1.0, std::abs(vb[i])));
  return m;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_framework)

// Runs on every machine: without a GPU (or without CUDA in the build) the answer is a clear
// "no", a device tensor is refused with the reason, and cpu -> cpu copies still work.
BOOST_AUTO_TEST_CASE(availability_and_cpu_copies) {
  Generator gen(3);
  const Tensor x = randn({3, 4}, gen);
  const Tensor xt = x.transpose(0, 1);
  const Tensor y = to_device(xt, Device::cpu());
  BOOST_TEST(y.is_contiguous());
  BOOST_TEST(y.device() == Device::cpu());
  BOOST_TEST(y.storage() != x.storage());
  BOOST_TEST(same_bits(y, xt));
  BOOST_TEST(x.to(Device::cpu()).storage() == x.storage());

  if (cuda_available()) {
    BOOST_TEST(cuda_unavailable_reason().empty());
    BOOST_TEST(cuda_device_count() >= 1);
    BOOST_TEST_MESSAGE("GPU: " << cuda_device_name(0));
    return;
  }
  const std::string reason = cuda_unavailable_reason();
  BOOST_TEST(!reason.empty());
#ifndef NORMLAB_WITH_CUDA
  BOOST_TEST(reason == "normlab was built without CUDA");
#endif
  BOOST_TEST(cuda_device_count() == 0);
  const std::string e = error_of([] { empty({2, 3}, DType::f32, Device::cuda()); });
  BOOST_TEST(contains(e, "device cuda:0 is not available: " + reason), e);
  BOOST_TEST(contains(error_of([] { ones({2}, DType::f32, Device::cuda()); }), "cuda:0 is not available"));
  BOOST_TEST(contains(error_of([&] { x.to(Device::cuda()); }), "cuda:0 is not available"));
  BOOST_TEST(!error_of([] { cuda_synchronize(); }).empty());
  BOOST_TEST(CudaAllocator::instance().stats().bytes_in_use == 0u);
}

#ifdef NORMLAB_WITH_CUDA
// CUDA_CHECK needs no GPU: a failing runtime call throws with the file, the line and the call.
BOOST_AUTO_TEST_CASE(cuda_check_throws_with_file_and_line) {
  const int line = __LINE__ + 1;
  const std::string e = error_of([] { CUDA_CHECK(cudaSetDevice(-1)); });
  (void)cudaGetLastError();
  BOOST_TEST(contains(e, "CUDA error "), e);
  BOOST_TEST(contains(e, "cudaSetDevice(-1)"), e);
  BOOST_TEST(contains(e, "test_cuda_framework.cpp"), e);
  BOOST_TEST(contains(e, std::to_string(line)), e);
}
#endif

BOOST_AUTO_TEST_CASE(round_trip_copies) {
  if (!have_gpu()) return;
  Generator gen(7);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    const Tensor x = randn({37, 129}, gen, dt);
    const Tensor d = x.to(kCuda);
    BOOST_TEST(d.device() == kCuda);
    BOOST_TEST(same_bits(d.to(Device::cpu()), x));
    // A transposed source is made contiguous on its device before the transfer.
    const Tensor dt_t = to_device(d.transpose(0, 1), Device::cpu());
    BOOST_TEST(same_bits(dt_t, x.transpose(0, 1).contiguous()));
    const Tensor ht = to_device(x.transpose(0, 1), kCuda);
    BOOST_TEST(ht.is_contiguous());
    BOOST_TEST(same_bits(ht, x.transpose(0, 1).contiguous()));
    // Into a non-contiguous device destination, and device -> device.
    Tensor dst = zeros({129, 37}, dt, kCuda).transpose(0, 1);
    dst.copy_from(x);
    BOOST_TEST(same_bits(dst, x));
    BOOST_TEST(same_bits(to_device(d, kCuda), x));
    // dtype conversion on the device matches the cpu's.
    BOOST_TEST(same_bits(d.to(DType::f32), x.to(DType::f32)));
    BOOST_TEST(same_bits(x.to(DType::f64).to(kCuda).to(dt), x));
  }
  // Element access and printing copy through the host.
  Tensor s = full({2, 2}, 1.5, DType::f32, kCuda);
  s.set({1, 0}, -2.0);
  BOOST_TEST(s.at({1, 0}) == -2.0);
  BOOST_TEST(sum(s).item() == 2.5);
  cuda_synchronize();
}

BOOST_AUTO_TEST_CASE(allocator_caches_blocks) {
  if (!have_gpu()) return;
  CudaAllocator& a = CudaAllocator::instance();
  { Tensor t = empty({1000, 3}, DType::f32, kCuda); }
  const AllocatorStats before = a.stats();
  Tensor t = empty({1000, 3}, DType::f32, kCuda);
  const AllocatorStats after = a.stats();
  BOOST_TEST(after.os_allocations == before.os_allocations);
  BOOST_TEST(after.cache_hits == before.cache_hits + 1);
  BOOST_TEST(after.bytes_in_use >= before.bytes_in_use + 12000);
  BOOST_TEST(reinterpret_cast<uintptr_t>(t.raw_data()) % 256 == 0u);
}

BOOST_AUTO_TEST_CASE(cpu_kernels_refuse_device_tensors) {
  if (!have_gpu()) return;
  const Tensor d = ones({3, 4}, DType::f32, kCuda);
  BOOST_TEST(contains(error_of([&] { softmax_lastdim(d); }), "only a cpu kernel"));
  BOOST_TEST(contains(error_of([&] { max(d, 1); }), "only a cpu kernel"));
  BOOST_TEST(contains(error_of([&] { matmul(d, d.transpose(0, 1)); }), "cpu"));
  const std::string e = error_of([&] { add(d, ones({3, 4})); });
  BOOST_TEST(contains(e, "different devices"), e);
  BOOST_TEST(contains(e, "cuda:0"), e);
  BOOST_TEST(contains(e, "cpu"), e);
  BOOST_TEST(max_abs(d) == 1.0);
  BOOST_TEST(all_finite(d));
}

BOOST_AUTO_TEST_CASE(elementwise_ops_match_cpu) {
  if (!have_gpu()) return;
  Generator gen(11);
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor a = randn({6, 33}, gen, dt), b = randn({6, 33}, gen, dt);
    const Tensor row = randn({33}, gen, dt), col = add_scalar(randn({6, 1}, gen, dt), 3.0);
    const Tensor da = a.to(kCuda), db = b.to(kCuda), drow = row.to(kCuda), dcol = col.to(kCuda);
    BOOST_TEST(same_bits(add(da, db), add(a, b)));
    BOOST_TEST(same_bits(sub(da, db), sub(a, b)));
    BOOST_TEST(same_bits(mul(da, db), mul(a, b)));
    BOOST_TEST(same_bits(div(da, dcol), div(a, col)));
    BOOST_TEST(same_bits(mul(da, drow), mul(a, row)));
    BOOST_TEST(same_bits(add(drow, da), add(row, a)));
    BOOST_TEST(same_bits(mul(da.transpose(0, 1), db.transpose(0, 1)), mul(a.transpose(0, 1), b.transpose(0, 1))));
    BOOST_TEST(same_bits(mul_scalar(da, 0.3), mul_scalar(a, 0.3)));
    BOOST_TEST(same_bits(add_scalar(da, -1.7), add_scalar(a, -1.7)));
    BOOST_TEST(same_bits(neg(da), neg(a)));
    Tensor acc = da.clone();
    add_(acc, db.transpose(0, 1).contiguous().transpose(0, 1));
    BOOST_TEST(same_bits(acc, add(a, b)));
    BOOST_TEST(same_bits(zeros({2, 3}, dt, kCuda), zeros({2, 3}, dt)));
    BOOST_TEST(same_bits(ones({5}, dt, kCuda), ones({5}, dt)));
    Tensor f = zeros({4, 6}, dt, kCuda);
    f.slice(1, 1, 6, 2).fill_(2.5);
    Tensor fc = zeros({4, 6}, dt);
    fc.slice(1, 1, 6, 2).fill_(2.5);
    BOOST_TEST(same_bits(f, fc));
  }
  // bf16 computes in fp32 and rounds once, as a cpu computation in f32 rounded to bf16.
  const Tensor a = randn({7, 19}, gen, DType::bf16), b = randn({7, 19}, gen, DType::bf16);
  const Tensor a32 = a.to(DType::f32), b32 = b.to(DType::f32);
  BOOST_TEST(same_bits(add(a.to(kCuda), b.to(kCuda)), add(a32, b32).to(DType::bf16)));
  BOOST_TEST(same_bits(mul(a.to(kCuda), b.to(kCuda)), mul(a32, b32).to(DType::bf16)));
  BOOST_TEST(same_bits(mul_scalar(a.to(kCuda), 0.1), mul_scalar(a32, 0.1).to(DType::bf16)));
  BOOST_TEST(same_bits(full({3}, 0.1, DType::bf16, kCuda), full({3}, 0.1, DType::bf16)));
}

BOOST_AUTO_TEST_CASE(sums_match_cpu_and_are_deterministic) {
  if (!have_gpu()) return;
  Generator gen(5);
  const Tensor x64 = randn({(1 << 20) + 7}, gen, DType::f64);
  BOOST_TEST(max_rel_diff(sum(x64.to(kCuda)), sum(x64)) < 1e-12);
  const Tensor x32 = x64.to(DType::f32);
  const Tensor s1 = sum(x32.to(kCuda)), s2 = sum(x32.to(kCuda));
  BOOST_TEST(same_bits(s1, s2));
  BOOST_TEST(std::abs(s1.item() - sum(x32).item()) < 1e-4 * std::max(1.0, std::abs(sum(x32).item())) + 1e-2);
  BOOST_TEST(same_bits(sum(x64.to(kCuda)), sum(x64.to(kCuda))));
  const Tensor xb = x32.to(DType::bf16);
  BOOST_TEST(same_bits(sum(xb.to(kCuda)), sum(xb.to(kCuda))));
  BOOST_TEST(std::abs(sum(xb.to(kCuda)).item() - sum(xb.to(DType::f64)).item()) < 2.0);
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor t = randn({3, 4, 5}, gen, dt);
    const Tensor d = t.to(kCuda);
    const double tol = dt == DType::f32 ? 1e-5 : 1e-12;
    BOOST_TEST(max_rel_diff(sum(d, {0, 2}, true), sum(t, {0, 2}, true)) < tol);
    BOOST_TEST(max_rel_diff(sum(d, {1}), sum(t, {1})) < tol);
    BOOST_TEST(max_rel_diff(mean(d, {2}), mean(t, {2})) < tol);
    BOOST_TEST(max_rel_diff(mean(d), mean(t)) < tol);
    BOOST_TEST(max_rel_diff(sum_to(d, {4, 1}), sum_to(t, {4, 1})) < tol);
    BOOST_TEST(max_rel_diff(sum(d.transpose(0, 2)), sum(t)) < tol);
    BOOST_TEST(sum(zeros({0, 3}, dt, kCuda), {0}).to_vector<double>() == std::vector<double>(3, 0.0));
  }
}

BOOST_AUTO_TEST_CASE(backward_on_device) {
  if (!have_gpu()) return;
  Generator gen(9);
  const Tensor x0 = randn({4, 5}, gen, DType::f64), w0 = randn({5}, gen, DType::f64), r0 = randn({4, 5}, gen, DType::f64);
  // loss = sum((x * w + x) * r) * 0.5; x is used twice, so the engine adds two gradients.
  auto run = [&](Device dev) {
    Variable x(x0.to(dev), true), w(w0.to(dev), true);
    const Variable r(r0.to(dev));
    const Variable loss = mul_scalar(sum(mul(add(mul(x, w), x), r)), 0.5);
    BOOST_TEST(loss.data().device() == dev);
    loss.backward();
    // A second backward through a fresh graph accumulates into the leaves' grads (add_).
    mul_scalar(sum(mul(x, r)), 1.0).backward();
    BOOST_TEST(x.grad().device() == dev);
    BOOST_TEST(w.grad().device() == dev);
    return std::vector<Tensor>{loss.data().to(Device::cpu()), x.grad().to(Device::cpu()), w.grad().to(Device::cpu())};
  };
  const auto cpu = run(Device::cpu()), gpu = run(kCuda);
  for (size_t i = 0; i < cpu.size(); ++i) BOOST_TEST(max_rel_diff(gpu[i], cpu[i]) < 1e-12);
}

BOOST_AUTO_TEST_SUITE_END()
