// BatchNorm through cuDNN 9's batch normalization (cudnnBatchNormalizationForwardTraining,
// ForwardInference and Backward, CUDNN_BATCHNORM_SPATIAL): a parity peer of the CUDA kernels
// in batch_norm_cuda.h. f32 and f64 tensors on the GPU; x [N, C] or [N, C, L] is handed to
// cuDNN as NCHW [N, C, L, 1]. cuDNN saves the batch mean and the inverse standard deviation
// (its "inverse variance" is 1 / sqrt(var + eps), i.e. rstd), and updates the running
// statistics as running = (1 - momentum) running + momentum batch with the unbiased variance.
// Built only with cuDNN (NORMLAB_WITH_CUDNN).
#pragma once

#include "norm/batch_norm/batch_norm.h"

namespace normlab {

// Training: y and the batch mean/rstd [C]; running_mean/running_var (both or neither) are
// updated in place. gamma/beta may be undefined (ones/zeros are passed to cuDNN).
BatchNormStats batch_norm_forward_training_cudnn(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                                 const Tensor& running_mean, const Tensor& running_var,
                                                 double momentum, double eps);
// Inference with the running statistics: y.
Tensor batch_norm_forward_inference_cudnn(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& running_mean, const Tensor& running_var, double eps);
// The training backward from the saved mean and rstd: dx, dgamma, dbeta (all three).
BatchNormGrads batch_norm_backward_cudnn(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                                         const Tensor& rstd, double eps);

}  // namespace normlab
