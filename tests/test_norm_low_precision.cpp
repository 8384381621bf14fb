// Low-precision storage (bf16 and f16) for the CPU norms (LayerNorm, RMSNorm, ScaleNorm, DyT,
// GroupNorm, InstanceNorm, BatchNorm), each case run for both types: the simd conversions against
// the scalar ones; each output (y, dx and the parameters' gradients) is the f32 kernel's on the
// inputs widened to f32, rounded once to the storage type (same bits), with the statistics kept in
// f32 (same bits as the f32 kernel's); the same outputs against the f64 kernel on the same widened
// values, within the bound of one rounding; add_layer_norm and add_rms_norm (h = x + r rounded,
// then the norm of h); the same bits for any thread count; the autograd nodes and Modules; bad
// input; f16's range: results past 65504 become infinity while the f32 statistics stay finite.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <vector>

#include <boost/mpl/list.hpp>

#include "framework/matmul.h"
#include "framework/parallel.h"
#include "framework/simd.h"
#include "norm/batch_norm/batch_norm.h"
#include "norm/dyt/dyt.h"
#include "norm/fused_add_norm/fused_add_norm.h"
#include "norm/group_norm/group_norm.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/rms_norm/rms_norm.h"
#include "norm/scale_norm/scale_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

constexpr DType kF32 = DType::f32, kF64 = DType::f64;

// The storage types every case runs for.
using LowPrecisionTypes = boost::mpl::list<bf16, f16>;

// One rounding to storage type S moves a value v by at most unit |v| (bf16: 8 significant bits;
// f16: 11), plus `tiny` where the result is subnormal (f16's subnormals are 2^-24 apart; bf16's,
// 2^-133, lie far below any bound here); |v| >= overflow rounds to infinity.
template <class S> struct Rounding;
template <> struct Rounding<bf16> {
  static constexpr double unit = 0x1p-8, tiny = 0, overflow = 0x1.ffp+127;
};
template <> struct Rounding<f16> {
  static constexpr double unit = 0x1p-11, tiny = 0x1p-25, overflow = 65520;
};

// The inputs of the cases: the four hard kinds (rounded to S: at 1e4 the bf16 step is 64 and the
// f16 step 8, so the large-mean rows round to a few distinct values, and the near-constant rows at
// 3 to constant or nearly constant rows) and a large mean whose spread survives the rounding.
struct LowInput {
  std::string name;
  Tensor x;  // in the storage type
};
std::vector<LowInput> low_inputs(const Shape& s, DType d, Generator& gen) {
  std::vector<LowInput> out;
  for (Input k : all_inputs) out.push_back({input_name(k), make_input(s, k, gen).to(d)});
  out.push_back({"1e4 + 300 N(0, 1)", randn(s, gen, kF64, 1e4, 300.0).to(d)});
  return out;
}

// The bound of an output in S against the f64 result r on the same widened inputs, elementwise:
// the f32 kernel is within 2e-6 * scale of r (the fast kernels' bound against the reference,
// tests/test_norm_layer_norm.cpp; scale is max|r|, or for dx the size of the terms it cancels
// when larger), and rounding to S moves a value v by at most unit |v| + tiny (Rounding):
//   |out - r| <= unit (|r| + 2e-6 scale) + tiny + 2e-6 scale  <  unit |r| + tiny + 4e-6 scale.
// An infinite output (f16 past 65504) passes when r, moved by at most the bound, reaches the
// overflow threshold with the same sign. Returns the worst |out - r| / bound (<= 1 passes).
template <class S>
double worst_over_bound(const Tensor& out, const Tensor& ref, double scale) {
  using R = Rounding<S>;
  const std::vector<double> o = out.to(kF64).to_vector<double>(), r = ref.to(kF64).to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < o.size(); ++i) {
    const double bound = R::unit * std::abs(r[i]) + R::tiny + 4e-6 * scale;
    if (std::isinf(o[i])) {
      const bool reaches = std::abs(r[i]) + bound >= R::overflow && (o[i] > 0) == (r[i] > 0);
      worst = std::max(worst, reaches ? 0.0 : HUGE_VAL);
    } else {
      worst = std::max(worst, std::abs(o[i] - r[i]) / bound);
    }
  }
  return worst;
}

// One output of a case: the result in the storage type, the f32 kernel's on the widened inputs,
// the f64 result, and the scale of its bound (at least max|f64|; dx: the size of the terms it
// cancels, when larger).
struct Output {
  const char* name;
  Tensor out, f32, f64;
  double scale = 0;
};

// Checks each output: dtype S and the same bits as the f32 kernel's rounded to S, and within
// worst_over_bound of the f64 result. Returns the worst ratio to the bound.
template <class S>
double check_outputs(const std::vector<Output>& outs, const std::string& label) {
  constexpr DType d = dtype_v<S>;
  double worst = 0;
  for (const Output& o : outs) {
    BOOST_CHECK_MESSAGE(o.out.dtype() == d, label << " " << o.name << ": dtype " << o.out.dtype());
    BOOST_CHECK_MESSAGE(same_bits(o.out, o.f32.to(d)),
                        label << " " << o.name << ": not the f32 kernel's result rounded to " << d);
    const double w = worst_over_bound<S>(o.out, o.f64, std::max(o.scale, max_abs(o.f64.to(kF64))));
    BOOST_CHECK_MESSAGE(w <= 1.0, label << " " << o.name << ": " << w << " x the " << d << " bound against f64");
    worst = std::max(worst, w);
  }
  return worst;
}

// Checks that a saved statistic is f32 with the bits of the f32 kernel's on the widened input.
void check_stat_bits(const Tensor& s, const Tensor& s32, const std::string& label, const char* name) {
  BOOST_CHECK_MESSAGE(s.dtype() == kF32, label << " " << name << ": dtype " << s.dtype() << ", expected f32");
  BOOST_CHECK_MESSAGE(same_bits(s, s32), label << " " << name << ": not the f32 kernel's");
}

// Calls f(shape, input, variant, gen) for every kernel shape, input in S and variant 0..2 (the
// test's parameter sets), drawing from one generator; f returns its worst ratio to the bound. Prints
// the worst of all.
template <class S, class F>
void for_each_case(const char* name, uint64_t seed, const F& f) {
  Generator gen(seed);
  double worst = 0;
  for (const Shape& s : kernel_shapes)
    for (const LowInput& in : low_inputs(s, dtype_v<S>, gen))
      for (int variant = 0; variant < 3; ++variant) worst = std::max(worst, f(s, in, variant, gen));
  std::printf("%s %s: worst error against f64 %.3f x the bound %g |ref| + %g + 4e-6 scale\n", name,
              dtype_name(dtype_v<S>), worst, Rounding<S>::unit, Rounding<S>::tiny);
}

// {run(f32), run(f64)}: the f32 kernel's and the f64 kernel's results on the inputs widened
// to run's dtype.
template <class F>
auto on_widened(const F& run) {
  return std::array<decltype(run(kF32)), 2>{run(kF32), run(kF64)};
}

// The scale of dgamma's bound for a norm that subtracts a mean: dgamma sums dy xhat over `count`
// elements a feature, and xhat = (x - mean) rstd carries the rounding of the f32 mean, up to
// 2^-24 |mean| rstd, which the f64 result does not: in a near-constant or large-mean row that
// term is far larger than 2^-24 |dgamma| (its error stays below 4e-6 this scale). f16 keeps the
// spread of such rows (at 3 its step is 2^-9, bf16's 2^-6), so there it shows past one rounding.
double dgamma_scale(const Tensor& dy, const Tensor& mean, const Tensor& rstd, int64_t count) {
  const std::vector<double> m = mean.to_vector<double>(), r = rstd.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < m.size(); ++i) worst = std::max(worst, std::abs(m[i]) * r[i]);
  return max_abs(dy.to(kF64)) * double(count) * worst;
}

// A parameter ~ N(mean, std) of n values in dtype d.
Tensor param(DType d, int64_t n, Generator& gen, double mean, double std) {
  return randn({n}, gen, kF64, mean, std).to(d);
}

// A kernel shape [M, F] as GroupNorm's [M, C, S]: [M, 8, F / 8] where 8 divides F, else [M, F, 1]
// (tests/test_norm_group_norm.cpp).
Shape channel_shape(const Shape& s) {
  return s[1] % 8 == 0 ? Shape{s[0], 8, s[1] / 8} : Shape{s[0], s[1], 1};
}

// Checks that each pair, a Module's or node's result and the Tensor-level function's, has the same bits.
void check_same_bits(const std::vector<std::pair<Tensor, Tensor>>& pairs, const std::string& name) {
  for (size_t i = 0; i < pairs.size(); ++i)
    BOOST_CHECK_MESSAGE(same_bits(pairs[i].first, pairs[i].second), name << " output " << i);
}

// y = norm.forward(x) on a leaf x; checks that y's node is a NodeT whose saved statistics
// (stats(node)) are f32, then runs y.backward(dy). Returns {y, x's gradient}.
template <class NodeT, class Stats>
std::pair<Tensor, Tensor> run_node(const Tensor& x, const Tensor& dy, NormLayer& norm, const Stats& stats) {
  const Variable xv(x, true);
  const Variable y = norm.forward(xv);
  auto* node = dynamic_cast<NodeT*>(y.grad_fn().get());
  BOOST_REQUIRE(node);
  for (const Tensor& t : stats(*node)) BOOST_CHECK(t.dtype() == kF32);
  y.backward(dy);
  return {y.data(), xv.grad()};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(norm_low_precision_suite)

BOOST_AUTO_TEST_CASE_TEMPLATE(simd_conversions_match_the_scalar_ones, S, LowPrecisionTypes) {
  // Widening: every bit pattern, against the scalar float(S) (NaNs too: both make them quiet).
  std::vector<S> all(65536);
  for (uint32_t b = 0; b < 65536; ++b) all[b].bits = uint16_t(b);
  int bad_widen = 0;
  for (size_t j = 0; j < all.size(); j += simd::lanes<float>) {
    const simd::Vec<float> v = simd::Full{}(all.data() + j);
    for (int64_t l = 0; l < simd::lanes<float>; ++l) {
      const float f = v[l], want = float(all[j + size_t(l)]);
      bad_widen += std::memcmp(&f, &want, 4) != 0;
    }
  }
  BOOST_CHECK_EQUAL(bad_widen, 0);
  // Narrowing, against the scalar S(float): ties to even both ways, just above and below a tie, the
  // largest finite floats, infinities, NaNs (signalling too), zeros, subnormals, a sweep of low
  // halves; f16's range: 65504 and the halfway point 65520 above it (which rounds to infinity), the
  // smallest normal 2^-14, the subnormals down to 2^-24 and the halfway point 2^-25 below it (which
  // rounds to zero), and 1e-8; and a stride through every bit pattern. Through Full and a Part tail of 5.
  std::vector<uint32_t> bits{0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf808000u, 0xbf818000u,
                             0x7f7fffffu, 0x7f7f7fffu, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
                             0xffa00000u, 0x00000000u, 0x80000000u, 0x00008000u, 0x00018000u, 0x007fffffu,
                             0x00000001u, 0x80008001u, 0x3f801000u, 0x3f803000u, 0x3f801001u, 0x477fe000u,
                             0x477fefffu, 0x477ff000u, 0xc77ff000u, 0x38800000u, 0x387fc000u, 0x33800000u,
                             0x33000000u, 0x33000001u, 0x33c00000u, 0x322bcc77u};
  for (uint32_t low = 0; low < 65536; low += 257) bits.push_back(0x40490000u | low);
  for (uint64_t u = 0; u <= 0xffffffffu; u += 65521) bits.push_back(uint32_t(u));
  while (bits.size() % size_t(simd::lanes<float>) != 0) bits.push_back(0x3f800000u + uint32_t(bits.size()));
  int bad_narrow = 0;
  for (size_t j = 0; j < bits.size(); j += simd::lanes<float>) {
    simd::Vec<float> v;
    std::memcpy(&v, bits.data() + j, sizeof v);
    S full[simd::lanes<float>], part[simd::lanes<float>];
    for (S& b : part) b.bits = 0xffff;
    simd::Full{}.store(full, v);
    simd::Part{5}.store(part, v);
    for (int64_t l = 0; l < simd::lanes<float>; ++l) {
      float f;
      std::memcpy(&f, bits.data() + j + size_t(l), 4);
      const uint16_t want = S(f).bits;
      bad_narrow += full[l].bits != want;
      bad_narrow += part[l].bits != (l < 5 ? want : uint16_t(0xffff));
    }
  }
  BOOST_CHECK_EQUAL(bad_narrow, 0);
  // A Part load fills the lanes past n with zeros.
  const simd::Vec<float> tail = simd::Part{3}(all.data() + S(1.0f).bits);
  BOOST_CHECK(tail[0] == 1.0f && tail[3] == 0.0f && tail[15] == 0.0f);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(layer_norm_is_the_f32_kernel_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  const double eps = 1e-5;
  // Variants: gamma and beta, gamma alone, neither.
  for_each_case<S>("layer_norm", 41, [&](const Shape& s, const LowInput& in, int variant, Generator& gen) {
    const bool has_gamma = variant < 2, has_beta = variant == 0;
    const std::string label = to_string(s) + " " + in.name + (has_beta ? "" : has_gamma ? " no bias" : " no affine");
    const int64_t N = s[1];
    const Tensor gamma = has_gamma ? param(kLow, N, gen, 1.0, 0.5) : Tensor();
    const Tensor beta = has_beta ? param(kLow, N, gen, 0.0, 1.0) : Tensor();
    const Tensor dy = randn(s, gen, kF64).to(kLow);
    const LayerNormStats st = layer_norm_forward(in.x, gamma, beta, eps);
    const LayerNormGrads g = layer_norm_backward(dy, in.x, gamma, st.mean, st.rstd, true, has_gamma, has_beta);
    // The f32 kernel and the f64 one on the same widened values.
    Tensor x_[2], dy_[2], gamma_[2], beta_[2];
    LayerNormStats st_[2];
    LayerNormGrads g_[2];
    for (int v = 0; v < 2; ++v) {
      const DType d = v == 0 ? kF32 : kF64;
      x_[v] = in.x.to(d), dy_[v] = dy.to(d);
      gamma_[v] = has_gamma ? gamma.to(d) : Tensor(), beta_[v] = has_beta ? beta.to(d) : Tensor();
      st_[v] = layer_norm_forward(x_[v], gamma_[v], beta_[v], eps);
      g_[v] = layer_norm_backward(dy_[v], x_[v], gamma_[v], st_[v].mean, st_[v].rstd, true, has_gamma, has_beta);
    }
    check_stat_bits(st.mean, st_[0].mean, label, "mean");
    check_stat_bits(st.rstd, st_[0].rstd, label, "rstd");
    // dx cancels terms of size |dy| rstd (|gamma| + 1).
    const double g_max = has_gamma ? max_abs(gamma_[1]) : 1.0;
    const double dx_scale = max_abs(dy_[1]) * max_abs(st_[1].rstd) * (g_max + 1);
    std::vector<Output> outs{{"y", st.y, st_[0].y, st_[1].y}, {"dx", g.dx, g_[0].dx, g_[1].dx, dx_scale}};
    if (has_gamma)
      outs.push_back(
          {"dgamma", g.dgamma, g_[0].dgamma, g_[1].dgamma, dgamma_scale(dy_[1], st_[1].mean, st_[1].rstd, s[0])});
    if (has_beta) outs.push_back({"dbeta", g.dbeta, g_[0].dbeta, g_[1].dbeta});
    return check_outputs<S>(outs, "layer_norm " + label);
  });
}

BOOST_AUTO_TEST_CASE_TEMPLATE(rms_norm_is_the_f32_kernel_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  const double eps = 1e-6;
  // Variants: weight, unit offset, no weight.
  for_each_case<S>("rms_norm", 42, [&](const Shape& s, const LowInput& in, int variant, Generator& gen) {
    const bool unit_offset = variant == 1, has_weight = variant != 2;
    const std::string label =
        to_string(s) + " " + in.name + (unit_offset ? " unit_offset" : "") + (has_weight ? "" : " no weight");
    const int64_t N = s[1];
    const Tensor gamma = has_weight ? param(kLow, N, gen, unit_offset ? 0.0 : 1.0, 0.5) : Tensor();
    const Tensor dy = randn(s, gen, kF64).to(kLow);
    const RMSNormStats st = rms_norm_forward(in.x, gamma, eps, unit_offset);
    const RMSNormGrads g = rms_norm_backward(dy, in.x, gamma, st.rrms, unit_offset, true, has_weight);
    Tensor x_[2], dy_[2], gamma_[2];
    RMSNormStats st_[2];
    RMSNormGrads g_[2];
    for (int v = 0; v < 2; ++v) {
      const DType d = v == 0 ? kF32 : kF64;
      x_[v] = in.x.to(d), dy_[v] = dy.to(d), gamma_[v] = has_weight ? gamma.to(d) : Tensor();
      st_[v] = rms_norm_forward(x_[v], gamma_[v], eps, unit_offset);
      g_[v] = rms_norm_backward(dy_[v], x_[v], gamma_[v], st_[v].rrms, unit_offset, true, has_weight);
    }
    check_stat_bits(st.rrms, st_[0].rrms, label, "rrms");
    // dx cancels terms of size |dy| rrms |g| (tests/test_norm_rms_norm.cpp).
    const double g_max = has_weight ? max_abs(gamma_[1]) + (unit_offset ? 1.0 : 0.0) : 1.0;
    const double dx_scale = max_abs(dy_[1]) * max_abs(st_[1].rrms) * g_max;
    std::vector<Output> outs{{"y", st.y, st_[0].y, st_[1].y}, {"dx", g.dx, g_[0].dx, g_[1].dx, dx_scale}};
    if (has_weight) outs.push_back({"dgamma", g.dgamma, g_[0].dgamma, g_[1].dgamma});
    return check_outputs<S>(outs, "rms_norm " + label);
  });
}

BOOST_AUTO_TEST_CASE_TEMPLATE(scale_norm_is_the_f32_kernel_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  // Variants: a gain, no gain, a gain with eps = 100 (the rows of a norm below it clamp).
  for_each_case<S>("scale_norm", 47, [&](const Shape& s, const LowInput& in, int variant, Generator& gen) {
    const bool has_g = variant != 1;
    const double eps = variant == 2 ? 100.0 : 1e-5;
    const std::string label =
        to_string(s) + " " + in.name + (has_g ? "" : " no gain") + (variant == 2 ? " eps 100" : "");
    const Tensor g = has_g ? param(kLow, 1, gen, 1.7, 0.5) : Tensor();
    const Tensor dy = randn(s, gen, kF64).to(kLow);
    const ScaleNormStats st = scale_norm_forward(in.x, g, eps);
    const ScaleNormGrads gr = scale_norm_backward(dy, in.x, g, st.norm, eps, true, has_g);
    const auto w = on_widened([&](DType d) {
      const Tensor xd = in.x.to(d), gd = has_g ? g.to(d) : Tensor();
      const ScaleNormStats sd = scale_norm_forward(xd, gd, eps);
      return std::pair{sd, scale_norm_backward(dy.to(d), xd, gd, sd.norm, eps, true, has_g)};
    });
    check_stat_bits(st.norm, w[0].first.norm, label, "norm");
    // dx cancels terms of size |g| |dy| / d; dg sums |dy| |xhat| <= |dy| over every row
    // (tests/test_norm_scale_norm.cpp).
    double min_d = 1e300;
    for (double v : w[1].first.norm.template to_vector<double>()) min_d = std::min(min_d, std::max(v, eps));
    const double dy_max = max_abs(dy.to(kF64)), dx_scale = dy_max * (has_g ? max_abs(g.to(kF64)) : 1.0) / min_d;
    std::vector<Output> outs{{"y", st.y, w[0].first.y, w[1].first.y},
                                 {"dx", gr.dx, w[0].second.dx, w[1].second.dx, dx_scale}};
    if (has_g) outs.push_back({"dg", gr.dg, w[0].second.dg, w[1].second.dg, dy_max * double(s[0])});
    return check_outputs<S>(outs, "scale_norm " + label);
  });
}

BOOST_AUTO_TEST_CASE_TEMPLATE(dyt_is_the_f32_kernel_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  // Variants: tanh with alpha 0.5, the identity ablation, tanh with alpha 1.5 (more rows saturate).
  for_each_case<S>("dyt", 48, [&](const Shape& s, const LowInput& in, int variant, Generator& gen) {
    const bool identity = variant == 1;
    const std::string label = to_string(s) + " " + in.name + (identity ? " identity" : "") +
                              (variant == 2 ? " alpha 1.5" : "");
    const int64_t M = s[0], N = s[1];
    const Tensor alpha = full({1}, variant == 2 ? 1.5 : 0.5, kLow);
    const Tensor gamma = param(kLow, N, gen, 1.0, 0.5), beta = param(kLow, N, gen, 0.0, 1.0);
    const Tensor dy = randn(s, gen, kF64).to(kLow);
    const Tensor y = dyt_forward(in.x, alpha, gamma, beta, identity);
    const DyTGrads g = dyt_backward(dy, in.x, alpha, gamma, identity, true, true, true, true);
    const auto w = on_widened([&](DType d) {
      const Tensor xd = in.x.to(d), ad = alpha.to(d), gd = gamma.to(d);
      return std::pair{dyt_forward(xd, ad, gd, beta.to(d), identity),
                       dyt_backward(dy.to(d), xd, ad, gd, identity, true, true, true, true)};
    });
    // dalpha sums du * x over every element: its scale is the size of those terms
    // (tests/test_norm_dyt.cpp).
    const double dalpha_scale = max_abs(dy.to(kF64)) * max_abs(gamma.to(kF64)) * max_abs(in.x.to(kF64)) *
                                alpha.item() * double(M * N);
    const std::vector<Output> outs{{"y", y, w[0].first, w[1].first},
                                       {"dx", g.dx, w[0].second.dx, w[1].second.dx},
                                       {"dalpha", g.dalpha, w[0].second.dalpha, w[1].second.dalpha, dalpha_scale},
                                       {"dgamma", g.dgamma, w[0].second.dgamma, w[1].second.dgamma},
                                       {"dbeta", g.dbeta, w[0].second.dbeta, w[1].second.dbeta}};
    return check_outputs<S>(outs, "dyt " + label);
  });
}

BOOST_AUTO_TEST_CASE_TEMPLATE(group_norm_is_the_f32_kernel_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  const double eps = 1e-5;
  // Variants: gamma and beta in 4 groups (1 where 8 does not divide F), gamma alone with one group
  // per channel (InstanceNorm), neither in one group (LayerNorm over (C, *)).
  for_each_case<S>("group_norm", 49, [&](const Shape& s, const LowInput& in, int variant, Generator& gen) {
    const bool has_gamma = variant < 2, has_beta = variant == 0;
    const Tensor x = in.x.reshape(channel_shape(s));
    const int64_t C = x.size(1), G = variant == 1 ? C : variant == 2 || C != 8 ? 1 : 4;
    const std::string label = to_string(x.shape()) + " G=" + std::to_string(G) + " " + in.name +
                              (has_beta ? "" : has_gamma ? " no bias" : " no affine");
    const Tensor gamma = has_gamma ? param(kLow, C, gen, 1.0, 0.5) : Tensor();
    const Tensor beta = has_beta ? param(kLow, C, gen, 0.0, 1.0) : Tensor();
    const Tensor dy = randn(x.shape(), gen, kF64).to(kLow);
    const GroupNormStats st = group_norm_forward(x, gamma, beta, G, eps);
    const GroupNormGrads g = group_norm_backward(dy, x, gamma, st.mean, st.rstd, true, has_gamma, has_beta);
    const auto w = on_widened([&](DType d) {
      const Tensor xd = x.to(d), gd = has_gamma ? gamma.to(d) : Tensor();
      const GroupNormStats sd = group_norm_forward(xd, gd, has_beta ? beta.to(d) : Tensor(), G, eps);
      return std::pair{sd, group_norm_backward(dy.to(d), xd, gd, sd.mean, sd.rstd, true, has_gamma, has_beta)};
    });
    check_stat_bits(st.mean, w[0].first.mean, label, "mean");
    check_stat_bits(st.rstd, w[0].first.rstd, label, "rstd");
    // dx cancels terms of size |dy| rstd (|gamma| + 1), as LayerNorm's.
    const double g_max = has_gamma ? max_abs(gamma.to(kF64)) : 1.0;
    const double dx_scale = max_abs(dy.to(kF64)) * max_abs(w[1].first.rstd) * (g_max + 1);
    std::vector<Output> outs{{"y", st.y, w[0].first.y, w[1].first.y},
                                 {"dx", g.dx, w[0].second.dx, w[1].second.dx, dx_scale}};
    if (has_gamma)
      outs.push_back({"dgamma", g.dgamma, w[0].second.dgamma, w[1].second.dgamma,
                      dgamma_scale(dy, w[1].first.mean, w[1].first.rstd, x.numel() / C)});
    if (has_beta) outs.push_back({"dbeta", g.dbeta, w[0].second.dbeta, w[1].second.dbeta});
    return check_outputs<S>(outs, "group_norm " + label);
  });
}

BOOST_AUTO_TEST_CASE_TEMPLATE(batch_norm_is_the_f32_kernel_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  const double eps = 1e-5, momentum = 0.25;
  // Variants: training on [N, C] with gamma, beta and running statistics (the fast column kernels);
  // training on [N, C, L] without affine or running statistics (L > 1: the (N, C, L) kernels, down
  // the samples for short L, along rows for long L); eval on [N, C] with gamma alone. Training needs N L > 1; eval stands in where it is not.
  for_each_case<S>("batch_norm", 50, [&](const Shape& s, const LowInput& in, int variant, Generator& gen) {
    const Tensor x = variant == 1 ? in.x.reshape(channel_shape(s)) : in.x;
    const int64_t C = x.size(1);
    const bool training = variant < 2 && x.numel() / C > 1, has_gamma = variant != 1, has_beta = variant == 0;
    const bool has_running = variant != 1 || !training;
    const std::string label = to_string(x.shape()) + " " + in.name + (training ? " training" : " eval") +
                              (has_beta ? "" : has_gamma ? " no bias" : " no affine");
    const Tensor gamma = has_gamma ? param(kLow, C, gen, 1.0, 0.5) : Tensor();
    const Tensor beta = has_beta ? param(kLow, C, gen, 0.0, 1.0) : Tensor();
    const Tensor rm = has_running ? param(kLow, C, gen, 0.0, 1.0) : Tensor();
    const Tensor rv = has_running ? uniform({C}, gen, 0.5, 2.0, kF64).to(kLow) : Tensor();
    const Tensor dy = randn(x.shape(), gen, kF64).to(kLow);
    // The running statistics are updated in place: each run gets its own copy, in its dtype.
    auto copy = [](const Tensor& t, DType d) { return t.defined() ? t.to(d).clone() : Tensor(); };
    auto run = [&](DType d) {
      const Tensor xd = x.to(d), gd = has_gamma ? gamma.to(d) : Tensor(), rmd = copy(rm, d), rvd = copy(rv, d);
      const BatchNormStats st =
          batch_norm_forward(xd, gd, has_beta ? beta.to(d) : Tensor(), rmd, rvd, training, momentum, eps);
      const BatchNormGrads g =
          batch_norm_backward(dy.to(d), xd, gd, st.mean, st.rstd, training, true, has_gamma, has_beta);
      return std::tuple{st, g, rmd, rvd};
    };
    const auto [st, g, rm16, rv16] = run(kLow);
    const auto w = on_widened(run);
    check_stat_bits(st.mean, std::get<0>(w[0]).mean, label, "mean");
    check_stat_bits(st.rstd, std::get<0>(w[0]).rstd, label, "rstd");
    // dx cancels terms of size |dy| rstd (|gamma| + 1), as LayerNorm's.
    const double g_max = has_gamma ? max_abs(gamma.to(kF64)) : 1.0;
    const double dx_scale = max_abs(dy.to(kF64)) * max_abs(std::get<0>(w[1]).rstd) * (g_max + 1);
    std::vector<Output> outs{{"y", st.y, std::get<0>(w[0]).y, std::get<0>(w[1]).y},
                                 {"dx", g.dx, std::get<1>(w[0]).dx, std::get<1>(w[1]).dx, dx_scale}};
    if (has_gamma)
      outs.push_back({"dgamma", g.dgamma, std::get<1>(w[0]).dgamma, std::get<1>(w[1]).dgamma,
                      dgamma_scale(dy, std::get<0>(w[1]).mean, std::get<0>(w[1]).rstd, x.numel() / C)});
    if (has_beta) outs.push_back({"dbeta", g.dbeta, std::get<1>(w[0]).dbeta, std::get<1>(w[1]).dbeta});
    if (has_running && training) {
      outs.push_back({"running_mean", rm16, std::get<2>(w[0]), std::get<2>(w[1])});
      outs.push_back({"running_var", rv16, std::get<3>(w[0]), std::get<3>(w[1])});
    }
    return check_outputs<S>(outs, "batch_norm " + label);
  });
}

BOOST_AUTO_TEST_CASE_TEMPLATE(fused_add_norms_are_the_f32_kernels_rounded_once, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  // h = x + r in f32, rounded to S (as the unfused add); then the norm of that h, as above.
  Generator gen(46);
  for (const Shape& s : std::vector<Shape>{{3, 7}, {64, 128}, {300, 17}}) {
    const std::string label = to_string(s);
    const int64_t N = s[1];
    const Tensor x = randn(s, gen, kF64, 2.0, 1.0).to(kLow), r = randn(s, gen, kF64).to(kLow);
    const Tensor dh = randn(s, gen, kF64).to(kLow), dy = randn(s, gen, kF64).to(kLow);
    const Tensor gamma = param(kLow, N, gen, 1.0, 0.5), beta = param(kLow, N, gen, 0.0, 1.0);
    const Tensor gamma32 = gamma.to(kF32), beta32 = beta.to(kF32);
    const AddLayerNormStats a = add_layer_norm_forward(x, r, gamma, beta, 1e-5);
    const AddLayerNormGrads g = add_layer_norm_backward(dh, dy, a.h, gamma, a.mean, a.rstd, true, true, true);
    const AddRMSNormStats ar = add_rms_norm_forward(x, r, gamma, 1e-6, true);
    const AddRMSNormGrads gr = add_rms_norm_backward(dh, dy, ar.h, gamma, ar.rrms, true, true, true);
    // The f32 kernels on the widened values.
    const Tensor h32 = add_layer_norm_forward(x.to(kF32), r.to(kF32), gamma32, beta32, 1e-5).h;
    BOOST_CHECK_MESSAGE(same_bits(a.h, h32.to(kLow)) && same_bits(ar.h, h32.to(kLow)), label << " h");
    const Tensor hw = a.h.to(kF32);
    const LayerNormStats ln = layer_norm_forward(hw, gamma32, beta32, 1e-5);
    const AddLayerNormGrads g32 = add_layer_norm_backward(dh.to(kF32), dy.to(kF32), hw, gamma32, ln.mean, ln.rstd,
                                                          true, true, true);
    const RMSNormStats rms = rms_norm_forward(hw, gamma32, 1e-6, true);
    const AddRMSNormGrads gr32 = add_rms_norm_backward(dh.to(kF32), dy.to(kF32), hw, gamma32, rms.rrms, true, true,
                                                       true);
    check_stat_bits(a.mean, ln.mean, label, "add_layer_norm mean");
    check_stat_bits(a.rstd, ln.rstd, label, "add_layer_norm rstd");
    check_stat_bits(ar.rrms, rms.rrms, label, "add_rms_norm rrms");
    const std::pair<Tensor, Tensor> outs[] = {{a.y, ln.y},
                                              {g.dh_total, g32.dh_total},
                                              {g.dgamma, g32.dgamma},
                                              {g.dbeta, g32.dbeta},
                                              {ar.y, rms.y},
                                              {gr.dh_total, gr32.dh_total},
                                              {gr.dgamma, gr32.dgamma}};
    for (size_t i = 0; i < std::size(outs); ++i)
      BOOST_CHECK_MESSAGE(same_bits(outs[i].first, outs[i].second.to(kLow)), label << " output " << i);
  }
  // The Modules' forward_add (one fused node) in S: the norm of the rounded sum.
  const Tensor x = randn({4, 16}, gen, kF64).to(kLow), r = randn({4, 16}, gen, kF64).to(kLow);
  LayerNorm ln(16, 1e-5, true, true, kLow);
  RMSNorm rms(16, 1e-6, true, false, kLow);
  const auto [h, y] = ln.forward_add(Variable(x), Variable(r));
  const auto [h2, y2] = rms.forward_add(Variable(x), Variable(r));
  BOOST_CHECK(same_bits(y.data(), ln.forward(h).data()));
  BOOST_CHECK(same_bits(y2.data(), rms.forward(h2).data()));
}

BOOST_AUTO_TEST_CASE_TEMPLATE(same_bits_for_any_thread_count, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  // Several parallel chunks and dgamma blocks at 2 threads; N = 32 and 128 take the unrolled loops.
  for (const Shape& s : std::vector<Shape>{{1001, 32}, {300, 17}, {37, 128}}) {
    Generator gen(43);
    const int64_t N = s[1];
    const Tensor x = randn(s, gen, kF64).to(kLow), dy = randn(s, gen, kF64).to(kLow);
    const Tensor gamma = param(kLow, N, gen, 1.0, 0.5), beta = param(kLow, N, gen, 0.0, 1.0);
    const Tensor g = param(kLow, 1, gen, 1.7, 0.5);
    // GroupNorm: [M, 8, N / 8] in 4 groups, or [M, N, 1] in one.
    const Tensor xc = x.reshape(channel_shape(s)), dyc = dy.reshape(xc.shape());
    const Tensor gc = param(kLow, xc.size(1), gen, 1.0, 0.5), bc = param(kLow, xc.size(1), gen, 0.0, 1.0);
    auto run = [&](int threads) {
      const int prev = num_threads();
      set_num_threads(threads);
      const LayerNormStats ln = layer_norm_forward(x, gamma, beta, 1e-5);
      const LayerNormGrads lg = layer_norm_backward(dy, x, gamma, ln.mean, ln.rstd, true, true, true);
      const RMSNormStats rms = rms_norm_forward(x, gamma, 1e-6);
      const RMSNormGrads rg = rms_norm_backward(dy, x, gamma, rms.rrms, false, true, true);
      const ScaleNormStats sn = scale_norm_forward(x, g, 1e-5);
      const ScaleNormGrads sg = scale_norm_backward(dy, x, g, sn.norm, 1e-5, true, true);
      const Tensor dyt_y = dyt_forward(x, g, gamma, beta);
      const DyTGrads dg = dyt_backward(dy, x, g, gamma, false, true, true, true, true);
      const GroupNormStats gn = group_norm_forward(xc, gc, bc, xc.size(1) == 8 ? 4 : 1, 1e-5);
      const GroupNormGrads gg = group_norm_backward(dyc, xc, gc, gn.mean, gn.rstd, true, true, true);
      const Tensor rm = zeros({N}, kLow), rv = ones({N}, kLow);  // updated in place
      const BatchNormStats bn = batch_norm_forward(x, gamma, beta, rm, rv, true, 0.1, 1e-5);
      const BatchNormGrads bg = batch_norm_backward(dy, x, gamma, bn.mean, bn.rstd, true, true, true, true);
      set_num_threads(prev);
      return std::vector<Tensor>{ln.y,     ln.mean,   ln.rstd,  lg.dx,   lg.dgamma, lg.dbeta, rms.y,
                                 rms.rrms, rg.dx,     rg.dgamma, sn.y,    sn.norm,   sg.dx,    sg.dg,
                                 dyt_y,    dg.dx,     dg.dalpha, dg.dgamma, dg.dbeta, gn.y,    gn.mean,
                                 gn.rstd,  gg.dx,     gg.dgamma, gg.dbeta, bn.y,     bn.mean,   bn.rstd,
                                 rm,       rv,        bg.dx,     bg.dgamma, bg.dbeta};
    };
    const std::vector<Tensor> one = run(1), two = run(2);
    std::vector<std::pair<Tensor, Tensor>> pairs;
    for (size_t i = 0; i < one.size(); ++i) pairs.emplace_back(one[i], two[i]);
    check_same_bits(pairs, to_string(s));
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(modules_and_nodes_run_on_low_precision, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  Generator gen(44);
  const Shape s{6, 24};
  const Tensor x = randn(s, gen, kF64, 2.0, 1.0).to(kLow), dy = randn(s, gen, kF64).to(kLow);
  {
    LayerNorm ln(24, 1e-5, true, true, kLow);
    ln.weight.data().copy_from(param(kLow, 24, gen, 1.0, 0.5));
    ln.bias.data().copy_from(param(kLow, 24, gen, 0.0, 1.0));
    const auto [y, dx] = run_node<LayerNormNode>(x, dy, ln, [](const LayerNormNode& n) {
      return std::vector<Tensor>{n.mean, n.rstd};
    });
    const LayerNormStats st = layer_norm_forward(x, ln.weight.data(), ln.bias.data(), 1e-5);
    const LayerNormGrads g = layer_norm_backward(dy, x, ln.weight.data(), st.mean, st.rstd, true, true, true);
    check_same_bits({{y, st.y}, {dx, g.dx}, {ln.weight.grad(), g.dgamma}, {ln.bias.grad(), g.dbeta}}, "LayerNorm");
  }
  {
    RMSNorm rms(24, 1e-6, true, true, kLow);
    rms.weight.data().copy_from(param(kLow, 24, gen, 0.0, 0.5));
    const auto [y, dx] = run_node<RMSNormNode>(x, dy, rms, [](const RMSNormNode& n) {
      return std::vector<Tensor>{n.rrms};
    });
    const RMSNormStats st = rms_norm_forward(x, rms.weight.data(), 1e-6, true);
    const RMSNormGrads g = rms_norm_backward(dy, x, rms.weight.data(), st.rrms, true, true, true);
    check_same_bits({{y, st.y}, {dx, g.dx}, {rms.weight.grad(), g.dgamma}}, "RMSNorm");
  }
  {
    ScaleNorm sn(24, 1e-5, kLow);
    const auto [y, dx] = run_node<ScaleNormNode>(x, dy, sn, [](const ScaleNormNode& n) {
      return std::vector<Tensor>{n.norm};
    });
    const ScaleNormStats st = scale_norm_forward(x, sn.g.data(), 1e-5);
    const ScaleNormGrads g = scale_norm_backward(dy, x, sn.g.data(), st.norm, 1e-5, true, true);
    check_same_bits({{y, st.y}, {dx, g.dx}, {sn.g.grad(), g.dg}}, "ScaleNorm");
  }
  {
    DyT dyt_module(24, 0.5, false, kLow);
    dyt_module.weight.data().copy_from(param(kLow, 24, gen, 1.0, 0.5));
    dyt_module.bias.data().copy_from(param(kLow, 24, gen, 0.0, 1.0));
    const auto [y, dx] = run_node<DyTNode>(x, dy, dyt_module, [](const DyTNode&) { return std::vector<Tensor>{}; });
    const Tensor alpha = dyt_module.alpha.data(), gamma = dyt_module.weight.data();
    const DyTGrads g = dyt_backward(dy, x, alpha, gamma, false, true, true, true, true);
    check_same_bits({{y, dyt_forward(x, alpha, gamma, dyt_module.bias.data())},
                     {dx, g.dx},
                     {dyt_module.alpha.grad(), g.dalpha},
                     {dyt_module.weight.grad(), g.dgamma},
                     {dyt_module.bias.grad(), g.dbeta}},
                    "DyT");
  }
  for (const int64_t G : {2, 6}) {  // GroupNorm, and InstanceNorm (one group per channel)
    std::unique_ptr<GroupNorm> gn = G == 6 ? std::make_unique<InstanceNorm>(6, 1e-5, true, kLow)
                                           : std::make_unique<GroupNorm>(G, 6, 1e-5, true, kLow);
    gn->weight.data().copy_from(param(kLow, 6, gen, 1.0, 0.5));
    gn->bias.data().copy_from(param(kLow, 6, gen, 0.0, 1.0));
    const Tensor xc = x.reshape({6, 6, 4}), dyc = dy.reshape({6, 6, 4});
    const auto [y, dx] = run_node<GroupNormNode>(xc, dyc, *gn, [](const GroupNormNode& n) {
      return std::vector<Tensor>{n.mean, n.rstd};
    });
    const GroupNormStats st = group_norm_forward(xc, gn->weight.data(), gn->bias.data(), G, 1e-5);
    const GroupNormGrads g = group_norm_backward(dyc, xc, gn->weight.data(), st.mean, st.rstd, true, true, true);
    check_same_bits({{y, st.y}, {dx, g.dx}, {gn->weight.grad(), g.dgamma}, {gn->bias.grad(), g.dbeta}},
                    "GroupNorm G=" + std::to_string(G));
  }
  {
    BatchNorm bn(24, 1e-5, 0.1, true, kLow);
    bn.weight.data().copy_from(param(kLow, 24, gen, 1.0, 0.5));
    bn.bias.data().copy_from(param(kLow, 24, gen, 0.0, 1.0));
    const Tensor rm = bn.running_mean().clone(), rv = bn.running_var().clone();
    const auto [y, dx] = run_node<BatchNormNode>(x, dy, bn, [](const BatchNormNode& n) {
      return std::vector<Tensor>{n.mean, n.rstd};
    });
    const BatchNormStats st = batch_norm_forward(x, bn.weight.data(), bn.bias.data(), rm, rv, true, 0.1, 1e-5);
    const BatchNormGrads g = batch_norm_backward(dy, x, bn.weight.data(), st.mean, st.rstd, true, true, true, true);
    check_same_bits({{y, st.y},
                     {dx, g.dx},
                     {bn.weight.grad(), g.dgamma},
                     {bn.bias.grad(), g.dbeta},
                     {bn.running_mean(), rm},
                     {bn.running_var(), rv}},
                    "BatchNorm");
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(bad_input_is_named, S, LowPrecisionTypes) {
  constexpr DType kLow = dtype_v<S>;
  const std::string low = dtype_name(kLow);
  Generator gen(45);
  const Tensor x = randn({2, 4}, gen, kF64).to(kLow);
  BOOST_CHECK(contains(error_of([&] { layer_norm_forward(x, randn({4}, gen), Tensor(), 1e-5); }),
                       "gamma has dtype f32 but the input has " + low));
  BOOST_CHECK(contains(error_of([&] { rms_norm_forward(x, randn({4}, gen), 1e-6); }),
                       "gamma has dtype f32 but the input has " + low));
  const LayerNormStats st = layer_norm_forward(x, Tensor(), Tensor(), 1e-5);
  BOOST_CHECK(contains(error_of([&] {
                         layer_norm_backward(x, x, Tensor(), st.mean.to(kLow), st.rstd, true, false, false);
                       }),
                       "mean has dtype " + low + ", expected f32 for a " + low + " input"));
  const RMSNormStats rs = rms_norm_forward(x, Tensor(), 1e-6);
  BOOST_CHECK(contains(error_of([&] { rms_norm_backward(x, x, Tensor(), rs.rrms.to(kF64), false, true, false); }),
                       "rrms has dtype f64, expected f32 for a " + low + " input"));
  const ScaleNormStats sn = scale_norm_forward(x, Tensor(), 1e-5);
  BOOST_CHECK(contains(error_of([&] { scale_norm_backward(x, x, Tensor(), sn.norm.to(kLow), 1e-5, true, false); }),
                       "norm has dtype " + low + ", expected f32 for a " + low + " input"));
  BOOST_CHECK(contains(error_of([&] { scale_norm_forward(x, randn({1}, gen), 1e-5); }),
                       "g has dtype f32 but the input has " + low));
  const GroupNormStats gs = group_norm_forward(x, Tensor(), Tensor(), 2, 1e-5);
  BOOST_CHECK(contains(error_of([&] { group_norm_backward(x, x, Tensor(), gs.mean, gs.rstd.to(kLow), true, false,
                                                          false); }),
                       "rstd has dtype " + low + ", expected f32 for a " + low + " input"));
  BOOST_CHECK(contains(error_of([&] {
                         batch_norm_forward(x, Tensor(), Tensor(), zeros({4}), ones({4}, kLow), true, 0.1, 1e-5);
                       }),
                       "running_mean has dtype f32 but the input has " + low));
}

// f16's range (largest finite 65504, smallest subnormal 2^-24). Inputs whose squares pass 65504
// normalize without overflow, since they widen to f32 before squaring. A result past 65504 (or
// rather, at or past the halfway point 65520) is infinity in the f16 output, as the f32 kernel's
// finite result rounded to f16, while the statistics, kept in f32, stay finite. An eps of 1e-8
// (zero in f16) stays 1e-8 in the f32 math of the kernels. Ops without f16 kernels refuse it by name.
BOOST_AUTO_TEST_CASE(f16_results_past_65504_are_infinite_and_the_statistics_finite) {
  constexpr DType kH = DType::f16;
  auto all_finite = [](const Tensor& t) {
    const std::vector<double> v = t.to_vector<double>();
    return std::all_of(v.begin(), v.end(), [](double e) { return std::isfinite(e); });
  };
  // Large inputs: sums of squares of ~1e10, far past f16's range.
  const Tensor x = from_vector({60000.0, -60000.0, 30000.0, -30000.0, 0.0, 65504.0, -65504.0, 1000.0}, {2, 4}, kH);
  const LayerNormStats ln = layer_norm_forward(x, Tensor(), Tensor(), 1e-5);
  const RMSNormStats rms = rms_norm_forward(x, Tensor(), 1e-6);
  BOOST_CHECK(all_finite(ln.y) && all_finite(ln.mean) && all_finite(ln.rstd));
  BOOST_CHECK(all_finite(rms.y) && all_finite(rms.rrms));
  BOOST_CHECK(same_bits(ln.y, layer_norm_forward(x.to(kF32), Tensor(), Tensor(), 1e-5).y.to(kH)));
  BOOST_CHECK(same_bits(rms.y, rms_norm_forward(x.to(kF32), Tensor(), 1e-6).y.to(kH)));

  // An output past 65504: gamma = 60000 takes xhat = +-1.34 to +-80498 (infinity in f16) and
  // xhat = +-0.45 to +-26833 (finite).
  const Tensor x2 = from_vector({1.0, 2.0, 3.0, 4.0}, {1, 4}, kH), gamma = full({4}, 60000.0, kH);
  const LayerNormStats big = layer_norm_forward(x2, gamma, Tensor(), 1e-5);
  const std::vector<double> y = big.y.to_vector<double>();
  BOOST_CHECK(std::isinf(y[0]) && y[0] < 0 && std::isinf(y[3]) && y[3] > 0);
  BOOST_CHECK(std::isfinite(y[1]) && std::isfinite(y[2]));
  BOOST_CHECK(all_finite(big.mean) && all_finite(big.rstd));
  const Tensor y32 = layer_norm_forward(x2.to(kF32), gamma.to(kF32), Tensor(), 1e-5).y;
  BOOST_CHECK(all_finite(y32));
  BOOST_CHECK(same_bits(big.y, y32.to(kH)));

  // A gradient past 65504, with eps 1e-8 on a constant row: var = 0, so rstd = 1/sqrt(eps) = 1e4
  // (f16(1e-8) is 0 and would make it infinite), and dx = rstd (dy - mean(dy)) = +-1e6: infinity.
  BOOST_CHECK(float(f16(1e-8f)) == 0.0f);
  const Tensor x3 = full({1, 4}, 3.0, kH), dy = from_vector({100.0, -100.0, 100.0, -100.0}, {1, 4}, kH);
  const LayerNormStats c = layer_norm_forward(x3, Tensor(), Tensor(), 1e-8);
  BOOST_CHECK(all_finite(c.y));
  BOOST_CHECK_CLOSE(c.rstd.item(), 1e4, 1e-3);
  const LayerNormGrads g = layer_norm_backward(dy, x3, Tensor(), c.mean, c.rstd, true, false, false);
  const std::vector<double> dx = g.dx.to_vector<double>();
  BOOST_CHECK(std::isinf(dx[0]) && dx[0] > 0 && std::isinf(dx[1]) && dx[1] < 0);
  const Tensor x3f = x3.to(kF32);
  const LayerNormStats c32 = layer_norm_forward(x3f, Tensor(), Tensor(), 1e-8);
  const Tensor dx32 = layer_norm_backward(dy.to(kF32), x3f, Tensor(), c32.mean, c32.rstd, true, false, false).dx;
  BOOST_CHECK(all_finite(dx32));
  BOOST_CHECK(same_bits(g.dx, dx32.to(kH)));

  // Ops without f16 kernels (matmul, the CUDA norms) refuse it, naming the dtype.
  BOOST_CHECK(contains(error_of([&] { normlab::matmul(x, x.transpose(0, 1)); }), "f16"));
}

BOOST_AUTO_TEST_SUITE_END()
