#include "experiments/precision.h"

#include <algorithm>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "autograd/ops.h"
#include "framework/elementwise.h"
#include "framework/enum_names.h"
#include "framework/parallel.h"

namespace normlab {

constexpr EnumNames<Precision, 3> kPrecisionNames{
    {{Precision::f32, "f32"}, {Precision::bf16, "bf16"}, {Precision::fp16, "fp16"}}};

const char* to_string(Precision p) { return enum_name(kPrecisionNames, p); }
Precision parse_precision(const std::string& name) { return parse_enum(kPrecisionNames, name, "precision"); }

namespace {

float round_bf16(float v) { return float(bf16(v)); }
float round_fp16(float v) { return float(f16(v)); }

// n contiguous floats rounded through fp16: eight at a time with F16C's conversions (round to
// nearest even, as f16(float)), the tail through f16.
void round_fp16_row(float* out, const float* in, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) out[i] = round_fp16(in[i]);
}

}  // namespace

Tensor round_to(const Tensor& x, Precision p) {
  if (p == Precision::f32) return x;
  NL_CHECK(x.dtype() == DType::f32, "round_to: ", to_string(p), " rounding takes f32 tensors, got ",
           dtype_name(x.dtype()));
  if (!x.is_contiguous() || x.device() != Device::cpu())
    return map_unary(x, "round_to", [p](auto v) {
      return decltype(v)(p == Precision::bf16 ? round_bf16(float(v)) : round_fp16(float(v)));
    });
  Tensor out = empty(x.shape(), DType::f32);
  const float* in = x.data<float>();
  float* o = out.data<float>();
  parallel_for(0, x.numel(), kElementwiseGrain, [&](int64_t i0, int64_t i1) {
    if (p == Precision::fp16) {
      round_fp16_row(o + i0, in + i0, i1 - i0);
    } else {
      for (int64_t i = i0; i < i1; ++i) o[i] = round_bf16(in[i]);
    }
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
