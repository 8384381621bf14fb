#include "framework/allocator.h"

#include <bit>
#include <cstdlib>
#include <new>

#include "framework/error.h"

namespace normlab {

CpuAllocator& CpuAllocator::instance() {
  // Never destroyed: tensors with static lifetime may return blocks after main() ends.
  static CpuAllocator* a = new CpuAllocator();
  return *a;
}

CpuAllocator::~CpuAllocator() { empty_cache(); }

// Size classes: multiples of 64 B up to 4 KiB, then four classes per power of two
// (at most 25% waste), so blocks of similar size are reused.
size_t CpuAllocator::size_class(size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  if (nbytes <= 4096) return (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  const size_t p = std::bit_floor(nbytes);
  const size_t quarter = p / 4;
  return (nbytes + quarter - 1) / quarter * quarter;
}

void* CpuAllocator::allocate(size_t nbytes) {
  const size_t size = size_class(nbytes);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      stats_.bytes_cached -= size;
      stats_.bytes_in_use += size;
      stats_.cache_hits++;
      if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
      return p;
    }
  }
  void* p = std::aligned_alloc(kAlignment, size);
  if (!p) {
    empty_cache();
    p = std::aligned_alloc(kAlignment, size);
  }
  NL_CHECK(p != nullptr, "out of memory allocating ", nbytes, " bytes");
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.os_allocations++;
  stats_.bytes_in_use += size;
  if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  return p;
}

void CpuAllocator::deallocate(void* ptr, size_t nbytes) {
  if (!ptr) return;
  const size_t size = size_class(nbytes);
  std::lock_guard<std::mutex> lock(mutex_);
  free_[size].push_back(ptr);
  stats_.bytes_in_use -= size;
  stats_.bytes_cached += size;
}

void CpuAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [size, blocks] : free_)
    for (void* p : blocks) std::free(p);
  free_.clear();
  stats_.bytes_cached = 0;
}

AllocatorStats CpuAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CpuAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

}  // namespace normlab
