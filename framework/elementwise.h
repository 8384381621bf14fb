// Elementwise maps over tensors with numpy broadcasting. The functor is a generic lambda
// applied to scalar_t values (float or double); results are fresh contiguous tensors.
// These are CPU kernels: a tensor on another device is refused with an Error (the CUDA
// versions of the basic ops are in framework/cuda_ops.h, dispatched from tensor_ops.cpp).
#pragma once

#include <array>

#include "framework/strided.h"
#include "framework/tensor.h"

namespace normlab {

inline constexpr int64_t kElementwiseGrain = 1 << 14;

template <class F>
Tensor map_unary(const Tensor& x, const char* op, const F& f) {
  NL_CHECK(x.defined(), op, ": input tensor is undefined");
  check_cpu(x, op);
  Tensor out = empty(x.shape(), x.dtype());
  NL_DISPATCH_FLOATING(x.dtype(), op, [&] {
    scalar_t* o = out.data<scalar_t>();
    const scalar_t* p = static_cast<const scalar_t*>(x.storage()->data()) + x.offset();
    for_each_strided<2>(x.shape(), {out.strides(), x.strides()}, kElementwiseGrain,
                        [&](std::array<int64_t, 2> off, int64_t n, std::array<int64_t, 2> inc) {
      scalar_t* oo = o + off[0];
      const scalar_t* pp = p + off[1];
      if (inc[1] == 1) {
        for (int64_t i = 0; i < n; ++i) oo[i] = f(pp[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) oo[i] = f(pp[i * inc[1]]);
      }
    });
  });
  return out;
}

template <class F>
Tensor map_binary(const Tensor& a, const Tensor& b, const char* op, const F& f) {
  NL_CHECK(a.defined() && b.defined(), op, ": input tensor is undefined");
  check_cpu(a, op);
  check_cpu(b, op);
  NL_CHECK(a.dtype() == b.dtype(), op, ": dtypes ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()),
           " differ (shapes ", to_string(a.shape()), " and ", to_string(b.shape()), ")");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  const Tensor ea = a.expand(shape), eb = b.expand(shape);
  Tensor out = empty(shape, a.dtype());
  NL_DISPATCH_FLOATING(a.dtype(), op, [&] {
    scalar_t* o = out.data<scalar_t>();
    const scalar_t* pa = static_cast<const scalar_t*>(a.storage()->data()) + a.offset();
    const scalar_t* pb = static_cast<const scalar_t*>(b.storage()->data()) + b.offset();
    for_each_strided<3>(shape, {out.strides(), ea.strides(), eb.strides()}, kElementwiseGrain,
                        [&](std::array<int64_t, 3> off, int64_t n, std::array<int64_t, 3> inc) {
      scalar_t* oo = o + off[0];
      const scalar_t* xa = pa + off[1];
      const scalar_t* xb = pb + off[2];
      if (inc[1] == 1 && inc[2] == 1) {
        for (int64_t i = 0; i < n; ++i) oo[i] = f(xa[i], xb[i]);
      } else if (inc[1] == 1 && inc[2] == 0) {
        const scalar_t vb = xb[0];
        for (int64_t i = 0; i < n; ++i) oo[i] = f(xa[i], vb);
      } else {
        for (int64_t i = 0; i < n; ++i) oo[i] = f(xa[i * inc[1]], xb[i * inc[2]]);
      }
    });
  });
  return out;
}

}  // namespace normlab
