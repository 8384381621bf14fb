// Caching CPU allocator: 64-byte aligned blocks kept in size-class free lists, so a training
// step allocates from the OS only in its first step. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace normlab {

struct AllocatorStats {
  size_t bytes_in_use = 0;     // handed out and not yet returned
  size_t peak_bytes_in_use = 0;
  size_t bytes_cached = 0;     // returned, kept for reuse
  size_t os_allocations = 0;   // calls that reached the OS
  size_t cache_hits = 0;
};

class CpuAllocator {
 public:
  static constexpr size_t kAlignment = 64;
  static CpuAllocator& instance();

  // Returns a block of at least `nbytes` (rounded up to its size class).
  void* allocate(size_t nbytes);
  void deallocate(void* ptr, size_t nbytes);
  void empty_cache();  // gives every cached block back to the OS
  AllocatorStats stats() const;
  void reset_peak();
  static size_t size_class(size_t nbytes);

  ~CpuAllocator();

 private:
  CpuAllocator() = default;
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

}  // namespace normlab
