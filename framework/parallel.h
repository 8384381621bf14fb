// parallel_for on OpenMP. Work is split into contiguous chunks of at least `grain` items;
// each chunk is processed by one thread, so per-item results never depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#include <omp.h>

namespace normlab {

int num_threads();
void set_num_threads(int n);

template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (n <= grain || omp_in_parallel() || omp_get_max_threads() == 1) {
    f(begin, end);
    return;
  }
  const int64_t max_chunks = (n + grain - 1) / grain;
#pragma omp parallel
  {
    const int64_t nt = std::min<int64_t>(omp_get_num_threads(), max_chunks);
    const int64_t tid = omp_get_thread_num();
    if (tid < nt) {
      const int64_t chunk = (n + nt - 1) / nt;
      const int64_t b = begin + tid * chunk;
      const int64_t e = std::min(end, b + chunk);
      if (b < e) f(b, e);
    }
  }
}

}  // namespace normlab
