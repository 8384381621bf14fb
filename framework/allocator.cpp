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

void* BlockCache::take(size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = free_.find(size);
  if (it == free_.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  stats_.bytes_cached -= size;
  stats_.cache_hits++;
  count_in_use(size);
  return p;
}

void BlockCache::add_new(size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.os_allocations++;
  count_in_use(size);
}

void BlockCache::count_in_use(size_t size) {
  stats_.bytes_in_use += size;
  if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

void BlockCache::put(void* ptr, size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_[size].push_back(ptr);
  stats_.bytes_in_use -= size;
  stats_.bytes_cached += size;
}

bool BlockCache::empty() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_.bytes_cached == 0;
}

AllocatorStats BlockCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void BlockCache::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

void* CpuAllocator::allocate(size_t nbytes) {
  const size_t size = size_class(nbytes);
  if (void* p = cache_.take(size)) return p;
  void* p = std::aligned_alloc(kAlignment, size);
  if (!p) {
    empty_cache();
    p = std::aligned_alloc(kAlignment, size);
  }
  NL_CHECK(p != nullptr, "out of memory allocating ", nbytes, " bytes");
  cache_.add_new(size);
  return p;
}

void CpuAllocator::deallocate(void* ptr, size_t nbytes) {
  if (ptr) cache_.put(ptr, size_class(nbytes));
}

void CpuAllocator::empty_cache() {
  cache_.release_all([](void* p) { std::free(p); });
}

AllocatorStats CpuAllocator::stats() const { return cache_.stats(); }

void CpuAllocator::reset_peak() { cache_.reset_peak(); }

}  // namespace normlab
