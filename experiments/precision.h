// Mixed precision of the toy model: the format its activations, matmul operands and gradients
// are stored in, while the parameters stay f32 master weights and every kernel computes in f32.
//
//   f32    everything f32 (the default)
//   bf16   storage rounded to bfloat16 (8 exponent bits: f32's range, 8 significant bits)
//   fp16   storage rounded to IEEE half (5 exponent bits: finite up to 65504, subnormal down to
//          2^-24), trained with dynamic loss scaling (LossScaler)
//
// Rounding points (model.cpp): the embeddings' sum; every linear layer's weight, bias and output
// (the activation of linear_gelu / linear_swiglu included) and the inputs of the q/k/v projection,
// the FFN and the head; every residual sum (the stream is stored after each residual add, and a
// norm reads the stored sum: the fused add+norm nodes run as an add, then the norm) and every
// norm's output; q and k after qk_norm; the attention's output; the logits. The gradient reaching
// each of those points is rounded the same way. Between them a kernel reads rounded values and
// computes in f32 (a norm's statistics and eps, the attention's softmax, a matmul's accumulation,
// the cross-entropy), as fp32-accumulating low-precision kernels do. The values are those of
// low-precision storage; the tensors themselves stay f32, so memory and speed are f32's.
#pragma once

#include <cstdint>
#include <string>

#include "autograd/variable.h"

namespace normlab {

enum class Precision { f32, bf16, fp16 };
const char* to_string(Precision p);  // "f32", "bf16", "fp16"
Precision parse_precision(const std::string& name);

// x with every element rounded (to nearest even) to p's format and held in f32; its backward
// rounds the gradient the same way. The identity for Precision::f32. x must be f32.
Variable round_to(const Variable& x, Precision p);
// The same on a tensor, outside the graph.
Tensor round_to(const Tensor& x, Precision p);

// Dynamic loss scaling for fp16 (the schedule of PyTorch's GradScaler): the loss is multiplied
// by scale() before backward, so that small gradients stay above fp16's subnormal range; the
// gradients are divided by it again before clipping and the update. A step whose gradients hold
// an inf or NaN (an fp16 overflow) is skipped and halves the scale; kGrowthInterval steps in a
// row without one double it. Powers of two only, so scaling and unscaling are exact.
class LossScaler {
 public:
  static constexpr double kInitialScale = 65536.0;  // 2^16
  static constexpr int64_t kGrowthInterval = 2000;
  static constexpr double kMinScale = 0x1p-24;

  LossScaler() = default;
  LossScaler(double scale, int64_t good_steps) : scale_(scale), good_steps_(good_steps) {}

  double scale() const { return scale_; }
  int64_t good_steps() const { return good_steps_; }  // steps since the last skip or growth
  // Records a step's outcome: finite gradients count toward growth; non-finite ones halve
  // the scale (not below kMinScale). Returns whether the step may update the parameters.
  bool update(bool gradients_finite);

 private:
  double scale_ = kInitialScale;
  int64_t good_steps_ = 0;
};

}  // namespace normlab
