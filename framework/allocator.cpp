#include "framework/allocator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "framework/error.h"

namespace normlab {

namespace {

constexpr size_t kMinArena = size_t(2) << 20;
constexpr size_t kMaxArena = size_t(64) << 20;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

// `bytes` of fresh memory with every page faulted in now, in one call (MADV_POPULATE_WRITE, on
// kernels from 5.14) instead of one page fault per 4 KiB on first use, then one write per page
// from user space (which alone faults the pages in on older kernels): on a virtual machine with shadow page tables the
// first user access to a page still traps to the hypervisor after the populate (about 5 us a
// page on the development VM, which made a first step 3-4x slower than later ones).
// Null when the OS has no memory. (Transparent huge pages, asked for with MADV_HUGEPAGE, made
// the first step slower on the development machine, a VM, and later steps no faster.)
char* map_arena(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  char* base = static_cast<char*>(p);
#ifdef MADV_POPULATE_WRITE
  if (madvise(base, bytes, MADV_POPULATE_WRITE) != 0 && errno != EINVAL)
    return base;  // out of memory now: pages fault in on first use instead
#endif
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  for (size_t i = 0; i < bytes; i += page) static_cast<volatile char*>(base)[i] = 0;
  return base;
}

}  // namespace

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

std::vector<std::pair<void*, size_t>> BlockCache::take_all() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::pair<void*, size_t>> out;
  for (auto& [size, blocks] : free_)
    for (void* p : blocks) out.emplace_back(p, size);
  free_.clear();
  stats_.bytes_cached = 0;
  return out;
}

void BlockCache::put_back(void* ptr, size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_[size].push_back(ptr);
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

// Blocks come from the newest arena with room, so no arena's tail is given up. A new arena
// is half as large as what is mapped (2 MiB to 64 MiB) or the block's size, whichever is
// larger: besides a reservation, at most a third of the mapped memory waits to be carved.
void* CpuAllocator::carve(size_t size) {
  std::lock_guard<std::mutex> lock(arena_mutex_);
  for (auto a = arenas_.rbegin(); a != arenas_.rend(); ++a)
    if (a->size - a->used >= size) {
      a->used += size;
      return a->base + a->used - size;
    }
  const size_t grown = std::clamp(round_up(mapped_ / 2, kMinArena), kMinArena, kMaxArena);
  const size_t bytes = std::max(round_up(size, kMinArena), grown);
  if (!map(bytes)) return nullptr;
  arenas_.back().used = size;
  return arenas_.back().base;
}

bool CpuAllocator::map(size_t bytes) {
  char* base = map_arena(bytes);
  if (!base) return false;
  arenas_.push_back({base, bytes, 0});
  mapped_ += bytes;
  ++maps_;
  return true;
}

void CpuAllocator::reserve(size_t nbytes) {
  std::lock_guard<std::mutex> lock(arena_mutex_);
  size_t room = 0;
  for (const Arena& a : arenas_) room += a.size - a.used;
  if (room < nbytes) map(round_up(nbytes - room, kMinArena));
}

void* CpuAllocator::allocate(size_t nbytes) {
  const size_t size = size_class(nbytes);
  if (void* p = cache_.take(size)) return p;
  void* p = carve(size);
  if (!p) {
    empty_cache();
    p = carve(size);
  }
  NL_CHECK(p != nullptr, "out of memory allocating ", nbytes, " bytes");
  cache_.add_new(size);
  return p;
}

void CpuAllocator::deallocate(void* ptr, size_t nbytes) {
  if (ptr) cache_.put(ptr, size_class(nbytes));
}

void CpuAllocator::empty_cache() {
  std::vector<std::pair<void*, size_t>> blocks = cache_.take_all();
  std::lock_guard<std::mutex> lock(arena_mutex_);
  // Arenas by address, and the bytes each has cached.
  std::vector<size_t> order(arenas_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return arenas_[a].base < arenas_[b].base; });
  auto arena_of = [&](const void* p) {
    const auto it = std::upper_bound(order.begin(), order.end(), static_cast<const char*>(p),
                                     [&](const char* q, size_t i) { return q < arenas_[i].base; });
    return *(it - 1);
  };
  std::vector<size_t> cached(arenas_.size(), 0);
  for (const auto& [p, size] : blocks) cached[arena_of(p)] += size;
  for (const auto& [p, size] : blocks)
    if (cached[arena_of(p)] != arenas_[arena_of(p)].used) cache_.put_back(p, size);
  std::vector<Arena> kept;
  for (size_t i = 0; i < arenas_.size(); ++i) {
    if (cached[i] == arenas_[i].used) {
      munmap(arenas_[i].base, arenas_[i].size);
      mapped_ -= arenas_[i].size;
    } else {
      kept.push_back(arenas_[i]);
    }
  }
  arenas_ = std::move(kept);
}

AllocatorStats CpuAllocator::stats() const {
  AllocatorStats s = cache_.stats();
  std::lock_guard<std::mutex> lock(arena_mutex_);
  s.os_allocations = maps_;  // the blocks themselves come from arenas
  s.bytes_mapped = mapped_;
  return s;
}

void CpuAllocator::reset_peak() { cache_.reset_peak(); }

}  // namespace normlab
