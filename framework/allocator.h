// Caching CPU allocator: 64-byte aligned blocks kept in size-class free lists, so a training
// step allocates from the OS only in its first step. New blocks are carved from arenas mapped
// in growing sizes and pre-faulted when mapped: a first step pays a few large populates
// instead of a page fault per 4 KiB. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace normlab {

struct AllocatorStats {
  size_t bytes_in_use = 0;     // handed out and not yet returned
  size_t peak_bytes_in_use = 0;
  size_t bytes_cached = 0;     // returned, kept for reuse
  size_t os_allocations = 0;   // calls that reached the OS
  size_t cache_hits = 0;
  size_t bytes_mapped = 0;     // CpuAllocator: arenas held from the OS (in use, cached or not yet carved)
};

// The bookkeeping both caching allocators share: free lists per size class and statistics,
// behind one mutex. The owner gets memory from its OS (aligned_alloc, cudaMalloc) only when
// take() finds no cached block.
class BlockCache {
 public:
  // A cached block of `size` bytes (a size class), counted as in use; null when none.
  void* take(size_t size);
  // Counts a block of `size` bytes just obtained from the OS as in use.
  void add_new(size_t size);
  // Caches a block that is no longer in use.
  void put(void* ptr, size_t size);
  // Hands every cached block to `release` (e.g. std::free) and forgets them.
  template <class Release>
  void release_all(Release release) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) release(p);
    free_.clear();
    stats_.bytes_cached = 0;
  }
  // Takes every cached block out of the cache (forgotten by it), with its size.
  std::vector<std::pair<void*, size_t>> take_all();
  // Caches again a block take_all() returned.
  void put_back(void* ptr, size_t size);
  bool empty() const;  // no cached blocks
  AllocatorStats stats() const;
  void reset_peak();

 private:
  void count_in_use(size_t size);  // with mutex_ held
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

class CpuAllocator {
 public:
  static constexpr size_t kAlignment = 64;
  static CpuAllocator& instance();

  // Returns a block of at least `nbytes` (rounded up to its size class).
  void* allocate(size_t nbytes);
  void deallocate(void* ptr, size_t nbytes);
  // Maps and faults in arenas now so that blocks of `nbytes` in all can be carved later
  // without the OS (a no-op when the arenas have that much room). A Trainer reserves what its
  // first step will take, which then runs as fast as later ones.
  void reserve(size_t nbytes);
  // Gives back to the OS every arena whose blocks are all cached (none in use); the blocks of
  // the other arenas stay cached.
  void empty_cache();
  AllocatorStats stats() const;
  void reset_peak();
  static size_t size_class(size_t nbytes);

  ~CpuAllocator();

 private:
  struct Arena {
    char* base;
    size_t size, used;  // used: carved into blocks so far
  };
  CpuAllocator() = default;
  // `size` bytes from an arena with room, or from a new one (null when the OS has no memory).
  void* carve(size_t size);
  bool map(size_t bytes);  // a new arena, with arena_mutex_ held; false when the OS refuses
  BlockCache cache_;
  mutable std::mutex arena_mutex_;
  std::vector<Arena> arenas_;  // in the order they were mapped
  size_t mapped_ = 0, maps_ = 0;
};

}  // namespace normlab
