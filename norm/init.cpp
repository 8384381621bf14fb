#include "norm/init.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string_view>

#include "framework/parallel.h"

namespace normlab {

// ---- DeepNorm constants ----

static void check_layers(int64_t n, const char* who, const char* what) {
  NL_CHECK(n >= 1, who, ": the number of ", what, " layers must be >= 1, got ", n);
}

DeepNormConstants deepnorm_encoder_only(int64_t N) {
  check_layers(N, "deepnorm_encoder_only", "encoder");
  return {std::pow(2.0 * double(N), 0.25), std::pow(8.0 * double(N), -0.25)};
}

DeepNormConstants deepnorm_decoder_only(int64_t M) {
  check_layers(M, "deepnorm_decoder_only", "decoder");
  return {std::pow(2.0 * double(M), 0.25), std::pow(8.0 * double(M), -0.25)};
}

DeepNormEncoderDecoder deepnorm_encoder_decoder(int64_t N, int64_t M) {
  check_layers(N, "deepnorm_encoder_decoder", "encoder");
  check_layers(M, "deepnorm_encoder_decoder", "decoder");
  const double n4m = std::pow(double(N), 4.0) * double(M);
  return {{0.81 * std::pow(n4m, 1.0 / 16), 0.87 * std::pow(n4m, -1.0 / 16)},
          {std::pow(3.0 * double(M), 0.25), std::pow(12.0 * double(M), -0.25)}};
}

// ---- In-place initialisers ----

static void check_target(const Tensor& t, const char* who) {
  NL_CHECK(t.defined(), who, ": the tensor is undefined");
  NL_CHECK(is_floating(t.dtype()), who, ": the tensor must have a floating dtype, got ", dtype_name(t.dtype()));
}

static void check_positive(double v, const char* who, const char* what) {
  NL_CHECK(std::isfinite(v) && v > 0, who, ": ", what, " must be a finite number > 0, got ", v);
}

Fans fans_of(const Shape& shape, const char* who) {
  NL_CHECK(shape.size() >= 2, who, ": needs a tensor of at least 2 dims ([out, in, ...]), got shape ",
           to_string(shape));
  int64_t receptive = 1;
  for (size_t d = 2; d < shape.size(); ++d) receptive *= shape[d];
  return {shape[1] * receptive, shape[0] * receptive};
}

void normal_(Tensor& t, double std, Generator& gen, double mean) {
  check_target(t, "normal_");
  check_positive(std, "normal_", "std");
  NL_CHECK(std::isfinite(mean), "normal_: mean must be finite, got ", mean);
  t.copy_from(randn(t.shape(), gen, t.dtype(), mean, std));
}

// Standard normal CDF Phi(x) and its inverse on (0, 0.5]: Acklam's rational approximation
// (relative error 1.2e-9) refined by one Halley step on Phi(x) - q, which brings it to
// double precision. Working in the lower half keeps q's relative precision in the tails.
static double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::numbers::sqrt2); }

static double normal_lower_quantile(double q) {
  if (q <= 0) return -std::numeric_limits<double>::infinity();
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01,  -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  double x;
  if (q < 0.02425) {
    const double r = std::sqrt(-2 * std::log(q));
    x = (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) /
        ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1);
  } else {
    const double s = q - 0.5, r = s * s;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * s /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double e = normal_cdf(x) - q;
  const double u = e * std::sqrt(2 * std::numbers::pi) * std::exp(0.5 * x * x);
  return x - u / (1 + 0.5 * x * u);
}

void trunc_normal_(Tensor& t, double std, Generator& gen) { trunc_normal_(t, std, gen, -2 * std, 2 * std); }

// With a = lo/std, b = hi/std and Z = Phi(b) - Phi(a): p = Phi(a) + u Z for u uniform in
// [0, 1), x = std * Phi^-1(p). The upper half uses 1 - p = Phi(-b) + (1 - u) Z and
// x = -std * Phi^-1(1 - p), so both tails keep full precision.
void trunc_normal_(Tensor& t, double std, Generator& gen, double lo, double hi) {
  check_target(t, "trunc_normal_");
  check_positive(std, "trunc_normal_", "std");
  NL_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo < hi, "trunc_normal_: needs finite bounds lo < hi, got lo=",
           lo, " hi=", hi);
  const double a = lo / std, b = hi / std;
  const double Phi_a = normal_cdf(a), Phi_neg_b = normal_cdf(-b);
  const double Z = a >= 0 ? normal_cdf(-a) - Phi_neg_b : normal_cdf(b) - Phi_a;
  NL_CHECK(Z > 0, "trunc_normal_: [", lo, ", ", hi, "] holds no probability mass of N(0, ", std,
           "^2) in double precision");
  Tensor values = empty(t.shape(), DType::f64);
  double* v = values.data<double>();
  const int64_t n = values.numel();
  const uint64_t first = gen.advance(uint64_t(n));
  parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double u = gen.uniform_at(first + uint64_t(i));
      const double p = Phi_a + u * Z;
      const double z = p <= 0.5 ? normal_lower_quantile(p) : -normal_lower_quantile(Phi_neg_b + (1 - u) * Z);
      v[i] = std::clamp(std * z, lo, hi);
    }
  });
  t.copy_from(values);
}

// gain * sqrt(k / (fan_in + fan_out)): the xavier std (k = 2) or uniform bound (k = 6).
static double xavier_scale(const Shape& shape, double gain, double k, const char* who) {
  check_positive(gain, who, "gain");
  const Fans f = fans_of(shape, who);
  return gain * std::sqrt(k / double(f.in + f.out));
}

double xavier_normal_std(const Shape& shape, double gain) { return xavier_scale(shape, gain, 2.0, "xavier_normal_"); }

double xavier_uniform_bound(const Shape& shape, double gain) {
  return xavier_scale(shape, gain, 6.0, "xavier_uniform_");
}

void xavier_normal_(Tensor& t, double gain, Generator& gen) {
  check_target(t, "xavier_normal_");
  normal_(t, xavier_normal_std(t.shape(), gain), gen);
}

void xavier_uniform_(Tensor& t, double gain, Generator& gen) {
  check_target(t, "xavier_uniform_");
  const double bound = xavier_uniform_bound(t.shape(), gain);
  t.copy_from(uniform(t.shape(), gen, -bound, bound, t.dtype()));
}

// ---- DeepNorm init ----

static bool has_suffix(const std::string& name, std::string_view suffix) {
  if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  return name.size() == suffix.size() || name[name.size() - suffix.size() - 1] == '.';
}

DeepNormRole deepnorm_role(const std::string& name) {
  for (std::string_view s : {"attn.q.weight", "attn.k.weight"})
    if (has_suffix(name, s)) return DeepNormRole::qk;
  for (std::string_view s : {"attn.v.weight", "attn.out.weight", "ffn.up.weight", "ffn.gate.weight", "ffn.down.weight"})
    if (has_suffix(name, s)) return DeepNormRole::scaled;
  return DeepNormRole::other;
}

DeepNormInitResult deepnorm_init(Module& m, double beta, Generator& gen, const DeepNormRoleFn& role) {
  check_positive(beta, "deepnorm_init", "beta");
  NL_CHECK(role != nullptr, "deepnorm_init: the role function is empty");
  DeepNormInitResult result;
  std::string seen;
  for (auto& [name, p] : m.named_parameters()) {
    const DeepNormRole r = role(name);
    if (r == DeepNormRole::other) {
      if (seen.size() < 200) seen += (seen.empty() ? "" : ", ") + name;
      continue;
    }
    NL_CHECK(p.dim() >= 2, "deepnorm_init: parameter '", name, "' has shape ", to_string(p.shape()),
             "; xavier init needs a matrix");
    xavier_normal_(p.data(), r == DeepNormRole::scaled ? beta : 1.0, gen);
    (r == DeepNormRole::scaled ? result.scaled : result.qk).push_back(name);
  }
  NL_CHECK(!result.scaled.empty(), "deepnorm_init: no parameter has the scaled role (expected names ending in "
           "attn.v.weight, attn.out.weight or ffn.{up,gate,down}.weight); other parameters: ",
           seen.empty() ? "(none)" : seen);
  return result;
}

}  // namespace normlab
