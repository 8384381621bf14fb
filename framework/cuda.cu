// framework/cuda.h on the CUDA runtime: availability (asked once), normlab's stream, the
// caching device allocator and copies between devices.
#include "framework/cuda.h"

#include <cuda_runtime.h>

#include <cstring>
#include <exception>
#include <mutex>

#include "framework/cuda_check.h"

namespace normlab {

namespace {

struct Availability {
  int count = 0;
  std::string reason;  // "" when count > 0
};

// Asks the runtime once. Without a GPU or a driver cudaGetDeviceCount returns an error; the
// answer, whatever it is, is cached and nothing here throws.
const Availability& availability() {
  static const Availability a = [] {
    Availability r;
    try {
      int n = 0;
      const cudaError_t status = cudaGetDeviceCount(&n);
      if (status != cudaSuccess) {
        r.reason = detail::concat(cudaGetErrorString(status), " (", cudaGetErrorName(status), ")");
        (void)cudaGetLastError();  // clear the error so later calls do not report it
        n = 0;
      } else if (n <= 0) {
        r.reason = "no CUDA-capable device is detected";
        n = 0;
      }
      r.count = n;
    } catch (const std::exception& e) {
      r = {0, detail::concat("the CUDA runtime failed: ", e.what())};
    } catch (...) {
      r = {0, "the CUDA runtime failed with an unknown error"};
    }
    return r;
  }();
  return a;
}

void require_cuda(const char* what) {
  NL_CHECK(cuda_available(), what, ": CUDA is not available: ", cuda_unavailable_reason());
}

}  // namespace

bool cuda_available() { return availability().count > 0; }
std::string cuda_unavailable_reason() { return availability().reason; }
int cuda_device_count() { return availability().count; }

std::string cuda_device_name(int device) {
  require_cuda("cuda_device_name");
  NL_CHECK(device >= 0 && device < cuda_device_count(), "cuda_device_name: device ", device,
           " does not exist (", cuda_device_count(), " CUDA device(s))");
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

cudaStream_t cuda_stream() {
  // Created once and never destroyed: kernels may still be queued while static objects are
  // torn down, and the runtime frees its streams at exit.
  static const cudaStream_t stream = [] {
    require_cuda("cuda_stream");
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  }();
  return stream;
}

void cuda_synchronize() {
  require_cuda("cuda_synchronize");
  CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
}

// ---------------------------------------------------------------------------------------------
// CudaAllocator: size classes and bookkeeping as CpuAllocator's. Every kernel and copy runs on
// the one stream, so a block freed here and handed out again is only touched by work queued
// after the work that used it before.

CudaAllocator& CudaAllocator::instance() {
  // Never destroyed: tensors with static lifetime may return blocks after main() ends.
  static CudaAllocator* a = new CudaAllocator();
  return *a;
}

void* CudaAllocator::allocate(size_t nbytes) {
  const size_t size = CpuAllocator::size_class(nbytes);
  if (void* p = cache_.take(size)) return p;
  require_cuda("CudaAllocator::allocate");
  void* p = nullptr;
  cudaError_t status = cudaMalloc(&p, size);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    empty_cache();
    status = cudaMalloc(&p, size);
  }
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    NL_FAIL("out of memory on cuda:0 allocating ", nbytes, " bytes (", cudaGetErrorString(status), "; ",
            cache_.stats().bytes_in_use, " bytes in use by normlab)");
  }
  cache_.add_new(size);
  return p;
}

void CudaAllocator::deallocate(void* ptr, size_t nbytes) {
  if (ptr) cache_.put(ptr, CpuAllocator::size_class(nbytes));
}

void CudaAllocator::empty_cache() {
  if (cache_.empty()) return;
  // Queued kernels may still read cached blocks' last contents: finish them first.
  CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
  cache_.release_all([](void* p) { CUDA_CHECK(cudaFree(p)); });
}

AllocatorStats CudaAllocator::stats() const { return cache_.stats(); }

void CudaAllocator::reset_peak() { cache_.reset_peak(); }

// ---------------------------------------------------------------------------------------------
// Copies

void cuda_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  const bool dst_cuda = dst_device.type == DeviceType::cuda, src_cuda = src_device.type == DeviceType::cuda;
  if (!dst_cuda && !src_cuda) {
    if (nbytes) std::memcpy(dst, src, nbytes);
    return;
  }
  if (nbytes == 0) return;
  const cudaMemcpyKind kind = dst_cuda && src_cuda ? cudaMemcpyDeviceToDevice
                              : dst_cuda           ? cudaMemcpyHostToDevice
                                                   : cudaMemcpyDeviceToHost;
  const cudaStream_t stream = cuda_stream();
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

Tensor to_device(const Tensor& t, Device device) {
  NL_CHECK(t.defined(), "to_device: tensor is undefined");
  const Tensor src = t.contiguous();  // on its own device
  Tensor out = empty(t.shape(), t.dtype(), device);
  cuda_memcpy(out.raw_data(), device, src.raw_data(), src.device(), size_t(src.numel()) * src.element_size());
  return out;
}

}  // namespace normlab
