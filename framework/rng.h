// Counter-based random numbers (Philox4x32-10). Element i of a draw depends only on
// (seed, offset + i), so results are identical for any thread count, and the whole state
// is two integers (saved in checkpoints).
#pragma once

#include <array>
#include <cstdint>

namespace normlab {

std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t key);

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed, offset_ = offset; }

  // Reserves `n` counters and returns the first; draws use counters [first, first + n).
  uint64_t advance(uint64_t n) {
    const uint64_t first = offset_;
    offset_ += n;
    return first;
  }
  // Uniform in [0, 1) with 53 random bits, for counter c.
  double uniform_at(uint64_t c) const;
  // Standard normal (Box-Muller), for counter c.
  double normal_at(uint64_t c) const;

 private:
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

}  // namespace normlab
