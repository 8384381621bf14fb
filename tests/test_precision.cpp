// Mixed precision of the toy model (experiments/precision.h): round_to stores values and
// gradients in bf16 or fp16 exactly as the formats' conversions do; the loss scaler skips a
// step whose fp16 gradients overflow, halves its scale and lets the run go on; a bf16 and an
// fp16 model learn the copy task; the f32 path is the model it always was.
#include <boost/test/unit_test.hpp>

#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "autograd/ops.h"
#include "experiments/train.h"
#include "framework/tensor_ops.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"

using namespace normlab;
using namespace normlab::testing;

BOOST_AUTO_TEST_SUITE(precision)

namespace {

// Values across both formats' ranges: random normals at several scales, the fp16 overflow and
// subnormal boundaries, infinities and a NaN; 1000 of them, so the vector path and a tail run.
std::vector<float> hard_values() {
  std::vector<float> v;
  Generator gen(7);
  const std::vector<double> r = randn({900}, gen, DType::f64).to_vector<double>();
  for (size_t i = 0; i < r.size(); ++i) v.push_back(float(r[i] * std::pow(10.0, double(int(i % 18) - 9))));
  for (float f : {65504.f, 65519.f, 65520.f, 1e5f, 6.1035156e-5f, 6.0e-5f, 5.9604645e-8f, 2.9802322e-8f, 1e-8f,
                  0.f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(), 3e38f})
    for (float s : {1.f, -1.f}) v.push_back(f * s);
  while (v.size() < 1003) v.push_back(float(v.size()) / 7.f);
  return v;
}

bool same_float_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) || (a != a && b != b); }

}  // namespace

BOOST_AUTO_TEST_CASE(round_to_is_the_formats_conversion_both_ways) {
  const std::vector<float> v = hard_values();
  const Tensor x = from_vector<float>(v, {int64_t(v.size())});
  for (Precision p : {Precision::bf16, Precision::fp16}) {
    Variable xv(x, true);
    const Variable y = round_to(xv, p);
    y.backward(x);  // the gradient takes the same rounding
    const std::vector<float> got = y.data().to_vector<float>(), grad = xv.grad().to_vector<float>();
    int wrong = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      const float want = p == Precision::bf16 ? float(bf16(v[i])) : float(f16(v[i]));
      wrong += !same_float_bits(got[i], want) || !same_float_bits(grad[i], want);
    }
    BOOST_TEST(wrong == 0, to_string(p) << ": " << wrong << " values rounded wrongly");
    // A strided view takes the elementwise path, with the same results.
    const Tensor strided = x.narrow(0, 0, 1000).view({500, 2}).transpose(0, 1);
    const std::vector<float> a = round_to(strided, p).contiguous().to_vector<float>();
    const std::vector<float> b = round_to(strided.contiguous(), p).to_vector<float>();
    BOOST_TEST(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  }
  BOOST_TEST(round_to(from_vector<float>({65520.f}, {1}), Precision::fp16).to_vector<float>()[0] ==
             std::numeric_limits<float>::infinity());
  BOOST_TEST(round_to(from_vector<float>({1e-8f}, {1}), Precision::fp16).to_vector<float>()[0] == 0.0f);
  BOOST_TEST(round_to(from_vector<float>({1e-8f}, {1}), Precision::bf16).to_vector<float>()[0] > 0.0f);
  // f32 is the identity: the same variable, no node.
  const Variable x32(x, true);
  BOOST_TEST(round_to(x32, Precision::f32).data().raw_data() == x.raw_data());
  BOOST_TEST(contains(error_of([&] { (void)round_to(x.to(DType::f64), Precision::bf16); }), "f64"));
}

BOOST_AUTO_TEST_CASE(loss_scaler_halves_on_overflow_and_grows_after_an_interval) {
  LossScaler s;
  BOOST_TEST(s.scale() == 65536.0);
  BOOST_TEST(!s.update(false));
  BOOST_TEST(s.scale() == 32768.0);
  for (int64_t i = 1; i < LossScaler::kGrowthInterval; ++i) BOOST_TEST_REQUIRE(s.update(true));
  BOOST_TEST(s.scale() == 32768.0);
  BOOST_TEST(s.update(true));
  BOOST_TEST(s.scale() == 65536.0);
  BOOST_TEST(s.good_steps() == 0);
  LossScaler low(LossScaler::kMinScale, 0);
  BOOST_TEST(!low.update(false));
  BOOST_TEST(low.scale() == LossScaler::kMinScale);
}

// small() at a learning rate where it learns the copy task within 300 steps.
TrainConfig learning(Precision p) {
  TrainConfig c = small();
  c.model.precision = p;
  c.steps = 300;
  c.eval_every = 100;
  c.optim.lr = 1e-2;
  c.optim.warmup = 20;
  return c;
}

BOOST_AUTO_TEST_CASE(bf16_and_fp16_models_learn_the_copy_task) {
  std::vector<double> final_loss;
  for (Precision p : {Precision::f32, Precision::bf16, Precision::fp16}) {
    Trainer t(learning(p));
    t.run(0, false);
    const double chance = t.data().chance_loss();
    BOOST_TEST_MESSAGE(to_string(p) << ": eval loss " << t.history().eval_loss.back() << " vs chance " << chance
                                    << ", " << t.history().skipped_step.size() << " steps skipped");
    BOOST_TEST(!t.diverged(), to_string(p));
    BOOST_TEST(t.history().eval_loss.back() < 0.5 * chance, to_string(p));
    if (p != Precision::fp16) BOOST_TEST(t.history().skipped_step.empty());
    final_loss.push_back(t.history().loss.back());
  }
  // The low precisions compute other numbers than f32 (the rounding is not a no-op).
  BOOST_TEST(final_loss[1] != final_loss[0]);
  BOOST_TEST(final_loss[2] != final_loss[0]);
}

// A first scale of 2^40 overflows the fp16 logit gradients (about 1/tokens each, times 2^40):
// the scaler skips those steps without touching the parameters, halving the scale each time,
// until the gradients fit; then the run trains as usual.
BOOST_AUTO_TEST_CASE(the_loss_scaler_skips_overflowing_steps_and_recovers) {
  TrainConfig c = learning(Precision::fp16);
  c.loss_scale = 0x1p40;
  c.steps = 60;
  Trainer t(c);
  const std::vector<std::pair<std::string, Variable>> params = t.model().named_parameters();
  std::vector<Tensor> initial;
  for (const auto& [name, p] : params) initial.push_back(p.data().clone());
  t.train_step();
  BOOST_TEST(t.history().skipped_step == std::vector<int64_t>{1});
  BOOST_TEST(t.loss_scaler().scale() == 0x1p39);
  for (size_t i = 0; i < params.size(); ++i) BOOST_TEST(same_bits(params[i].second.data(), initial[i]), params[i].first);
  t.run(0, false);
  const std::vector<int64_t>& skipped = t.history().skipped_step;
  BOOST_TEST_MESSAGE(skipped.size() << " steps skipped; scale now " << t.loss_scaler().scale());
  BOOST_TEST(!t.diverged());
  BOOST_TEST_REQUIRE(skipped.size() >= 8u);  // 2^40 -> at most 2^32 before 65504 holds the gradients
  for (size_t i = 0; i < skipped.size(); ++i) BOOST_TEST(skipped[i] == int64_t(i) + 1);  // the first steps in a row
  BOOST_TEST(t.loss_scaler().scale() == std::ldexp(1.0, 40 - int(skipped.size())));
  BOOST_TEST(t.history().loss.back() < 0.8 * t.history().loss.front());  // it trains once the scale fits
  // The same run at a first scale that fits skips nothing and starts from the same loss.
  c.loss_scale = 0x1p8;
  Trainer fits(c);
  fits.run(0, false);
  BOOST_TEST(fits.history().skipped_step.empty());
  BOOST_TEST(same_bits(fits.history().loss.front(), t.history().loss.front()));
}

BOOST_AUTO_TEST_CASE(precision_errors_name_the_value) {
  TrainConfig c = small();
  c.model.precision = Precision::bf16;
  c.model.dtype = DType::f64;
  BOOST_TEST(contains(error_of([&] { check(c); }), "needs dtype f32, got dtype f64"));
  c = small();
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "precision", "fp8"); }), "fp8"));
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "loss_scale", "3"); check(c); }), "power of two"));
  BOOST_TEST(contains(unused_reason(c, "loss_scale"), "precision is f32"));
  set_config_value(c, "precision", "fp16");
  BOOST_TEST(unused_reason(c, "loss_scale").empty());
}

BOOST_AUTO_TEST_SUITE_END()
