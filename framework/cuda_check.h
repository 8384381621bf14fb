// CUDA_CHECK and normlab's stream, for code compiled with the CUDA runtime headers (.cu files
// and CUDA-only .cpp files; only built when NORMLAB_WITH_CUDA is defined).
#pragma once

#include <cuda_runtime_api.h>

#include "framework/error.h"

// CUDA_CHECK(call): throws normlab::Error "CUDA error <name> (<description>) in <call>" with
// the file and line when call does not return cudaSuccess.
#define CUDA_CHECK(call)                                                                         \
  do {                                                                                           \
    const cudaError_t normlab_cuda_status = (call);                                              \
    if (normlab_cuda_status != cudaSuccess) [[unlikely]]                                         \
      ::normlab::detail::fail_located(__FILE__, __LINE__,                                        \
                                      ::normlab::detail::concat("CUDA error ", cudaGetErrorName(normlab_cuda_status), \
                                                        " (", cudaGetErrorString(normlab_cuda_status), ") in ", #call)); \
  } while (0)

namespace normlab {

// The stream every normlab kernel and copy runs on: one per process, created on first use
// (non-blocking with respect to the legacy default stream).
cudaStream_t cuda_stream();

}  // namespace normlab
