#include "framework/parallel.h"

#include "framework/error.h"

namespace normlab {

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  NL_CHECK(n >= 1, "set_num_threads: thread count must be >= 1, got ", n);
  omp_set_num_threads(n);
}

}  // namespace normlab
