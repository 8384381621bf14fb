// Parity of normlab's LayerNorm and BatchNorm (training) with oneDNN 2.6 in f32: forward (y,
// mean, and oneDNN's variance converted to rstd) and backward (dx, dgamma, dbeta), relative error
// max|diff| / max|normlab| <= 1e-5 on several shapes, odd sizes, single rows and large means
// (see check_parity for how large means are compared).
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <functional>
#include <map>

#include "norm/batch_norm/batch_norm_onednn.h"
#include "norm/layer_norm/layer_norm_onednn.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

constexpr double kTol = 1e-5;
constexpr double kEps = 1e-5;

// rstd = 1 / sqrt(variance + eps) (f32), from oneDNN's saved variance.
Tensor rstd_of(const Tensor& variance, double eps) {
  const Tensor v = variance.to(DType::f64).reshape({-1});
  Tensor r = empty(v.shape(), DType::f64);
  for (int64_t i = 0; i < v.numel(); ++i) r.set({i}, 1.0 / std::sqrt(v.at({i}) + eps));
  return r.reshape(variance.shape()).to(DType::f32);
}

// The worst relative error per quantity over a suite's cases; each case checked against kTol.
struct Worst {
  std::map<std::string, double> err;
  void check(const std::string& what, const std::string& name, const Tensor& onednn, const Tensor& ref) {
    const double e = max_rel_diff(onednn, ref);
    BOOST_CHECK_MESSAGE(e <= kTol, name << ": " << what << " rel err " << e);
    err[what] = std::max(err[what], e);
  }
  void print(const char* layer) const {
    std::printf("%s onednn parity worst rel err:", layer);
    for (const auto& [what, e] : err) std::printf(" %s %.1e", what.c_str(), e);
    std::printf("\n");
  }
};

// The forward and backward of one norm in both implementations, f32.
struct Impl {
  // (x, gamma, beta) -> y, mean, rstd (normlab) or y, mean, variance (oneDNN)
  std::function<NormStatsOnednn(const Tensor&, const Tensor&, const Tensor&)> forward, forward_onednn;
  // (dy, x, gamma, beta, mean, variance) -> dx, dgamma, dbeta
  std::function<NormGrads(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const Tensor&)>
      backward, backward_onednn;
};

// Inputs are mean + N(0, 1). In f32, oneDNN accumulates the statistics in f32: its y drifts from
// the exact (f64) result by ~1e-7 * mean (1e-5 at a mean of 100 for BatchNorm), while normlab
// (double accumulation) stays within ~6e-8 at any mean. So the forward is compared with oneDNN
// for means up to 10, and for larger means both are compared with the f64 result, normlab held to
// 1e-6. The backward is compared given the same statistics (oneDNN's) at every mean.
void check_parity(const char* layer, const Impl& impl, const std::vector<Shape>& shapes, int64_t channel_dim,
                  uint64_t seed) {
  Generator gen(seed);
  Worst worst;
  double normlab_vs_f64 = 0;
  std::map<double, double> onednn_vs_f64;
  for (const Shape& s : shapes) {
    for (double mean : {0.0, 10.0, 100.0, 1e3, 1e4}) {
      const int64_t C = channel_dim < 0 ? s.back() : s[size_t(channel_dim)];
      const std::string name = std::string(layer) + " " + to_string(s) + " mean " + std::to_string(mean);
      const Tensor x = randn(s, gen, DType::f32, mean, 1.0), dy = randn(s, gen);
      const Tensor gamma = randn({C}, gen, DType::f32, 1.0, 0.5), beta = randn({C}, gen);
      const NormStatsOnednn ref = impl.forward(x, gamma, beta);  // variance holds rstd here
      const NormStatsOnednn dnn = impl.forward_onednn(x, gamma, beta);
      if (mean <= 10) {
        worst.check("y", name, dnn.y, ref.y);
        worst.check("mean", name, dnn.mean, ref.mean);
        worst.check("rstd", name, rstd_of(dnn.variance, kEps), ref.variance);
      } else {
        const Tensor exact = impl.forward(x.to(DType::f64), gamma.to(DType::f64), beta.to(DType::f64)).y;
        normlab_vs_f64 = std::max(normlab_vs_f64, max_rel_diff(ref.y, exact));
        onednn_vs_f64[mean] = std::max(onednn_vs_f64[mean], max_rel_diff(dnn.y, exact));
        BOOST_CHECK_MESSAGE(max_rel_diff(ref.y, exact) <= 1e-6, name << ": normlab f32 y vs f64 rel err "
                                                                     << max_rel_diff(ref.y, exact));
      }
      const Tensor rstd = rstd_of(dnn.variance, kEps);
      const NormGrads gref = impl.backward(dy, x, gamma, beta, dnn.mean, rstd);
      const NormGrads gdnn = impl.backward_onednn(dy, x, gamma, beta, dnn.mean, dnn.variance);
      worst.check("dx", name, gdnn.dx, gref.dx);
      worst.check("dgamma", name, gdnn.dgamma, gref.dgamma);
      worst.check("dbeta", name, gdnn.dbeta, gref.dbeta);
    }
  }
  worst.print(layer);
  std::printf("%s f32 y vs f64 at means 1e2..1e4: normlab %.1e; oneDNN", layer, normlab_vs_f64);
  for (const auto& [mean, e] : onednn_vs_f64) std::printf(" %.0e at %.0e", e, mean);
  std::printf("\n");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(onednn_parity_suite)

BOOST_AUTO_TEST_CASE(layer_norm_forward_and_backward) {
  Impl impl;
  impl.forward = [](const Tensor& x, const Tensor& g, const Tensor& b) {
    const LayerNormStats s = layer_norm_forward(x, g, b, kEps);
    return NormStatsOnednn{s.y, s.mean, s.rstd};
  };
  impl.forward_onednn = [](const Tensor& x, const Tensor& g, const Tensor& b) {
    return layer_norm_forward_onednn(x, g, b, kEps);
  };
  impl.backward = [](const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor&, const Tensor& mean,
                     const Tensor& rstd) { return layer_norm_backward(dy, x, g, mean, rstd, true, true, true); };
  impl.backward_onednn = [](const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& b, const Tensor& mean,
                            const Tensor& var) { return layer_norm_backward_onednn(dy, x, g, b, mean, var, kEps); };
  // Odd sizes, a single row (M = 1), a single feature, and rows of 1000.
  check_parity("layer_norm", impl, {{4, 7}, {1, 64}, {33, 128}, {2, 3, 17}, {5, 1}, {17, 1000}}, -1, 1);
}

BOOST_AUTO_TEST_CASE(batch_norm_training_forward_and_backward) {
  Impl impl;
  impl.forward = [](const Tensor& x, const Tensor& g, const Tensor& b) {
    const BatchNormStats s = batch_norm_forward(x, g, b, Tensor(), Tensor(), true, 0.1, kEps);
    return NormStatsOnednn{s.y, s.mean, s.rstd};
  };
  impl.forward_onednn = [](const Tensor& x, const Tensor& g, const Tensor& b) {
    return batch_norm_forward_onednn(x, g, b, kEps);
  };
  impl.backward = [](const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor&, const Tensor& mean,
                     const Tensor& rstd) {
    return batch_norm_backward(dy, x, g, mean, rstd, true, true, true, true);
  };
  impl.backward_onednn = [](const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& b, const Tensor& mean,
                            const Tensor& var) {
    return batch_norm_backward_onednn(dy, x, g, b, mean, var, kEps);
  };
  // (N, C) and (N, C, L): odd N, N = 1 with L > 1, a single channel, many samples.
  check_parity("batch_norm", impl, {{7, 5}, {3, 5}, {257, 16}, {5, 3, 11}, {1, 4, 9}, {16, 8, 32}, {3, 1, 101}}, 1,
               2);
}

BOOST_AUTO_TEST_CASE(without_affine_and_bad_input) {
  Generator gen(3);
  const Tensor x = randn({6, 10}, gen), dy = randn({6, 10}, gen);
  const LayerNormStats ref = layer_norm_forward(x, Tensor(), Tensor(), kEps);
  const NormStatsOnednn dnn = layer_norm_forward_onednn(x, Tensor(), Tensor(), kEps);
  BOOST_CHECK_LE(max_rel_diff(dnn.y, ref.y), kTol);
  const NormGrads gdnn = layer_norm_backward_onednn(dy, x, Tensor(), Tensor(), dnn.mean, dnn.variance, kEps);
  BOOST_CHECK(!gdnn.dgamma.defined() && !gdnn.dbeta.defined());
  BOOST_CHECK_LE(max_rel_diff(gdnn.dx, layer_norm_backward(dy, x, Tensor(), ref.mean, ref.rstd, true, false, false).dx),
                 kTol);
  const BatchNormStats bref = batch_norm_forward(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, kEps);
  BOOST_CHECK_LE(max_rel_diff(batch_norm_forward_onednn(x, Tensor(), Tensor(), kEps).y, bref.y), kTol);

  BOOST_CHECK(contains(error_of([&] { layer_norm_forward_onednn(x.to(DType::f64), Tensor(), Tensor(), kEps); }),
                       "f32 only, x has dtype f64"));
  BOOST_CHECK(contains(error_of([&] { layer_norm_forward_onednn(x, randn({3}, gen), Tensor(), kEps); }),
                       "gamma must have shape [10], got [3]"));
  BOOST_CHECK(contains(error_of([&] { batch_norm_forward_onednn(randn({1, 4}, gen), Tensor(), Tensor(), kEps); }),
                       "more than one value per channel"));
  BOOST_CHECK(contains(error_of([&] { batch_norm_forward_onednn(x, Tensor(), Tensor(), 0.0); }),
                       "eps must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([&] { layer_norm_backward_onednn(dy, x, Tensor(), Tensor(), dnn.mean, zeros({5}), kEps); }),
                       "mean and variance must have shape [6]"));
}

BOOST_AUTO_TEST_SUITE_END()
