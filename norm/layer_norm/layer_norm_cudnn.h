// cuDNN's layer normalization (graph/backend API: CUDNN_LAYER_NORM, forward training and
// backward), a parity peer and benchmark baseline for layer_norm_cuda. Built when
// NORMLAB_WITH_CUDNN is defined. Plain C++: the cuDNN types stay in the .cu file.
#pragma once

#include <memory>

#include "norm/layer_norm/layer_norm.h"

namespace normlab {

// The forward and backward execution plans of one shape (M rows of N, x in f32 or bf16; scale,
// bias, their gradients, mean and inverse std in f32), built on first use and kept, so timing
// a call measures the kernel, not plan building. All pointers are device pointers on normlab's
// stream.
class CudnnLayerNorm {
 public:
  CudnnLayerNorm(int64_t M, int64_t N, DType dtype, double eps);
  ~CudnnLayerNorm();
  CudnnLayerNorm(const CudnnLayerNorm&) = delete;
  CudnnLayerNorm& operator=(const CudnnLayerNorm&) = delete;

  void forward(void* y, float* mean, float* rstd, const void* x, const float* gamma, const float* beta);
  void backward(void* dx, float* dgamma, float* dbeta, const void* dy, const void* x, const float* gamma,
                const float* mean, const float* rstd);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Tensor level, for parity tests: x [..., N] on CUDA in f32 or bf16, gamma and beta [N] of x's
// dtype (cuDNN needs both). mean, rstd, dgamma and dbeta come back in f32; y and dx in x's dtype.
LayerNormStats layer_norm_forward_cudnn(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps);
LayerNormGrads layer_norm_backward_cudnn(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                         const Tensor& rstd, double eps);

}  // namespace normlab
