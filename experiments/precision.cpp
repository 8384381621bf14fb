#include "experiments/precision.h"

#include <algorithm>

#include "autograd/ops.h"
#include "framework/elementwise.h"
#include "framework/enum_names.h"
#include "framework/parallel.h"
#include "framework/simd.h"

namespace normlab {

constexpr EnumNames<Precision, 3> kPrecisionNames{
    {{Precision::f32, "f32"}, {Precision::bf16, "bf16"}, {Precision::fp16, "fp16"}}};

const char* to_string(Precision p) { return enum_name(kPrecisionNames, p); }
Precision parse_precision(const std::string& name) { return parse_enum(kPrecisionNames, name, "precision"); }

namespace {

// out = in rounded through storage type S, over n contiguous floats: the norm kernels' row
// narrowing and widening (simd.h), bit for bit S(float) and back.
template <class S>
void round_row(float* out, const float* in, int64_t n) {
  simd::row_for<float>(n, [&](int64_t j, auto at) { at.store(out + j, simd::widen<S>(simd::narrow<S>(at(in + j)))); });
}

}  // namespace

Tensor round_to(const Tensor& x, Precision p) {
  if (p == Precision::f32) return x;
  NL_CHECK(x.dtype() == DType::f32, "round_to: ", to_string(p), " rounding takes f32 tensors, got ",
           dtype_name(x.dtype()));
  if (!x.is_contiguous() || x.device() != Device::cpu())
    return map_unary(x, "round_to", [p](auto v) {
      return decltype(v)(p == Precision::bf16 ? float(bf16(float(v))) : float(f16(float(v))));
    });
  Tensor out = empty(x.shape(), DType::f32);
  const float* in = x.data<float>();
  float* o = out.data<float>();
  parallel_for(0, x.numel(), kElementwiseGrain, [&](int64_t i0, int64_t i1) {
    if (p == Precision::fp16) round_row<f16>(o + i0, in + i0, i1 - i0);
    else round_row<bf16>(o + i0, in + i0, i1 - i0);
  });
  return out;
}

Variable round_to(const Variable& x, Precision p) {
  if (p == Precision::f32 || !x.defined()) return x;
  return make_output("round_to", {x}, round_to(x.data(), p), [p](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{round_to(g[0], p)};
  });
}

bool LossScaler::update(bool gradients_finite) {
  if (!gradients_finite) {
    scale_ = std::max(kMinScale, scale_ * 0.5);
    good_steps_ = 0;
    return false;
  }
  if (++good_steps_ == kGrowthInterval) {
    scale_ *= 2.0;
    good_steps_ = 0;
  }
  return true;
}

}  // namespace normlab
