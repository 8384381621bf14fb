// CUDA device support: availability, the stream, a caching device allocator, and copies
// between host and device. Every function exists in every build; in a build without CUDA
// (NORMLAB_WITH_CUDA undefined) cuda_available() is false and the others throw
// normlab::Error saying the build has no CUDA. CUDA_CHECK and the stream handle are in
// framework/cuda_check.h, which needs the CUDA runtime headers.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "framework/allocator.h"
#include "framework/tensor.h"

namespace normlab {

// True when this build has CUDA and at least one device answers (never throws).
bool cuda_available();
// Why cuda_available() is false: "normlab was built without CUDA", or the runtime's reason
// (e.g. "no CUDA-capable device is detected"); "" when it is true.
std::string cuda_unavailable_reason();
int cuda_device_count();                    // 0 without CUDA or devices
std::string cuda_device_name(int device = 0);  // e.g. "NVIDIA H100 80GB HBM3"
// Waits for all work on normlab's stream.
void cuda_synchronize();

// Caching allocator on cudaMalloc (never managed memory): blocks are kept per size class and
// reused, so a training step reaches cudaMalloc only in its first step. Blocks are 256-byte
// aligned. Used by Storage for Device::cuda tensors.
// Size classes are CpuAllocator::size_class's. Thread-safe.
class CudaAllocator {
 public:
  static CudaAllocator& instance();
  void* allocate(size_t nbytes);
  void deallocate(void* ptr, size_t nbytes);
  void empty_cache();  // cudaFree of every cached block
  AllocatorStats stats() const;
  void reset_peak();

 private:
  CudaAllocator() = default;
  BlockCache cache_;
};

// A copy of t (any layout, any device) on `device`, contiguous. Host <-> device copies go
// through normlab's stream and are complete when the function returns. A non-contiguous
// source is made contiguous on its own device first.
Tensor to_device(const Tensor& t, Device device);

// Copies nbytes between two buffers on any devices (cpu <-> cuda, cuda <-> cuda, cpu <-> cpu)
// through normlab's stream; complete when it returns.
void cuda_memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

}  // namespace normlab
