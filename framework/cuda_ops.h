// The CUDA side of the eager tensor ops (framework/tensor_ops.h) and of Tensor's copies and
// fills: tensor_ops.cpp and tensor.cpp call these when their inputs are on a CUDA device.
// f32, f64 and bf16 (bf16 computes in fp32); results are fresh contiguous tensors on the
// inputs' device. In a build without CUDA they throw (no CUDA tensor can exist there).
#pragma once

#include <vector>

#include "framework/tensor.h"

namespace normlab {

enum class BinaryOp { add, sub, mul, div };
enum class ScalarOp { add, mul };

// dst = src (same shape, any layouts, any of f32/f64/bf16/i64, both on the same CUDA device).
void copy_cuda(Tensor& dst, const Tensor& src);
// Every element of t (any layout) = value.
void fill_cuda(Tensor& t, double value);
// a op b with numpy broadcasting.
Tensor binary_cuda(const Tensor& a, const Tensor& b, BinaryOp op, const char* name);
// dst op= src in place (same shape; dst contiguous).
void binary_inplace_cuda(Tensor& dst, const Tensor& src, BinaryOp op, const char* name);
// a op s.
Tensor scalar_cuda(const Tensor& a, double s, ScalarOp op, const char* name);
// scale * (sum of x over `reduced` dims), shaped out_shape. Deterministic: fixed-size block
// partials and a second pass in a fixed order; fp32 accumulation for f32/bf16, fp64 for f64.
Tensor sum_cuda(const Tensor& x, const std::vector<bool>& reduced, const Shape& out_shape, double scale,
                const char* name);

}  // namespace normlab
