// framework/cuda.h and framework/cuda_ops.h in a build without CUDA: no device is available,
// cpu <-> cpu copies work, everything that needs a GPU throws saying the build has no CUDA.
#include <cstring>

#include "framework/cuda.h"
#include "framework/cuda_ops.h"

namespace normlab {

namespace {
constexpr const char* kNoCuda = "normlab was built without CUDA";
[[noreturn]] void no_cuda(const char* what) { NL_FAIL(what, ": ", kNoCuda, " (reconfigure with -DNORMLAB_CUDA=ON)"); }
}  // namespace

bool cuda_available() { return false; }
std::string cuda_unavailable_reason() { return kNoCuda; }
int cuda_device_count() { return 0; }
std::string cuda_device_name(int) { no_cuda("cuda_device_name"); }
void cuda_synchronize() { no_cuda("cuda_synchronize"); }

CudaAllocator& CudaAllocator::instance() {
  static CudaAllocator* a = new CudaAllocator();
  return *a;
}
void* CudaAllocator::allocate(size_t) { no_cuda("CudaAllocator::allocate"); }
void CudaAllocator::deallocate(void* ptr, size_t) {
  if (ptr) no_cuda("CudaAllocator::deallocate");
}
void CudaAllocator::empty_cache() {}
AllocatorStats CudaAllocator::stats() const { return {}; }
void CudaAllocator::reset_peak() {}

void cuda_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (dst_device.type != DeviceType::cpu || src_device.type != DeviceType::cpu) no_cuda("cuda_memcpy");
  if (nbytes) std::memcpy(dst, src, nbytes);
}

Tensor to_device(const Tensor& t, Device device) {
  NL_CHECK(t.defined(), "to_device: tensor is undefined");
  Tensor out = empty(t.shape(), t.dtype(), device);  // throws for a cuda device
  out.copy_from(t);
  return out;
}

void copy_cuda(Tensor&, const Tensor&) { no_cuda("copy_cuda"); }
void fill_cuda(Tensor&, double) { no_cuda("fill_cuda"); }
Tensor binary_cuda(const Tensor&, const Tensor&, BinaryOp, const char* name) { no_cuda(name); }
void binary_inplace_cuda(Tensor&, const Tensor&, BinaryOp, const char* name) { no_cuda(name); }
Tensor scalar_cuda(const Tensor&, double, ScalarOp, const char* name) { no_cuda(name); }
Tensor sum_cuda(const Tensor&, const std::vector<bool>&, const Shape&, double, const char* name) { no_cuda(name); }

}  // namespace normlab
