// Many parameters' tensors as one index space, so that an optimizer update or a gradient
// norm is one parallel pass over every parameter instead of one small loop per tensor
// (the multi-tensor apply of apex and PyTorch's foreach optimizers).
//
// Span k holds up to four contiguous arrays of n_k elements of one dtype (a parameter, its
// gradient and its state buffers); its elements are the flat indices [offset_k, offset_k + n_k).
// for_each cuts the flat index space among the threads and hands each piece of a span to the
// callback: elementwise updates give the same bits however the space is cut. for_each_block
// visits fixed blocks of each span (block b of span k is its elements [b B, (b + 1) B)), each
// whole in one thread, so per-block partial sums do not depend on the thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "framework/dtype.h"
#include "framework/elementwise.h"
#include "framework/parallel.h"

namespace normlab {

struct TensorSpan {
  std::array<void*, 4> ptr{};  // contiguous arrays of `numel` elements of `dtype`
  int64_t numel = 0;
  DType dtype = DType::f32;
  int64_t tag = 0;     // the caller's: a parameter group, say
  bool first = false;  // the caller's: a parameter's first update, say
};

class FlatSpans {
 public:
  void clear() {
    spans_.clear();
    offsets_.assign(1, 0);
  }
  void add(const TensorSpan& s) {
    spans_.push_back(s);
    offsets_.push_back(offsets_.back() + s.numel);
  }
  size_t size() const { return spans_.size(); }
  const TensorSpan& operator[](size_t k) const { return spans_[k]; }
  int64_t numel() const { return offsets_.back(); }

  // f(span, i0, i1) for pieces [i0, i1) of spans (indices within the span) covering every
  // element once, in parallel.
  template <class F>
  void for_each(const F& f) const {
    parallel_for(0, numel(), kElementwiseGrain, [&](int64_t a, int64_t b) {
      for (size_t k = span_at(a); a < b; ++k) {
        const int64_t e = std::min(b, offsets_[k + 1]);
        if (e > a) f(spans_[k], a - offsets_[k], e - offsets_[k]);
        a = e;
      }
    });
  }

  // Blocks of `block` elements in all spans (each span's last block may be shorter).
  int64_t num_blocks(int64_t block) const {
    int64_t n = 0;
    for (const TensorSpan& s : spans_) n += (s.numel + block - 1) / block;
    return n;
  }

  // f(span, block number, i0, i1) for every block, each whole in one thread, in parallel.
  // Blocks are numbered span by span, in order. A block belongs to the thread whose share of the flat index space holds its first element.
  template <class F>
  void for_each_block(int64_t block, const F& f) const {
    std::vector<int64_t> first(spans_.size() + 1, 0);  // number of span k's first block
    for (size_t k = 0; k < spans_.size(); ++k) first[k + 1] = first[k] + (spans_[k].numel + block - 1) / block;
    parallel_for(0, numel(), block, [&](int64_t a, int64_t b) {
      for (size_t k = span_at(a); k < spans_.size() && offsets_[k] < b; ++k) {
        const int64_t n = spans_[k].numel;
        // Blocks of span k that start in [a, b).
        const int64_t b0 = std::max<int64_t>(0, (a - offsets_[k] + block - 1) / block);
        for (int64_t j = b0; j * block < n && offsets_[k] + j * block < b; ++j)
          f(spans_[k], first[k] + j, j * block, std::min(n, (j + 1) * block));
      }
    });
  }

 private:
  // The span holding flat index i (i < numel()): the last span whose offset is <= i, which is
  // never empty.
  size_t span_at(int64_t i) const {
    return size_t(std::upper_bound(offsets_.begin(), offsets_.end(), i) - offsets_.begin()) - 1;
  }

  std::vector<TensorSpan> spans_;
  std::vector<int64_t> offsets_{0};  // offsets_[k]: flat index of span k's first element
};

}  // namespace normlab
