// Optimizers: several steps of SGD (plain, momentum, nesterov, dampening, weight decay), Adam
// (l2 decay) and AdamW (decoupled, independent under a schedule) against recurrences written
// out here in double; learning-rate schedules against their closed forms; parameter groups;
// clipping by global norm; convergence on a convex quadratic; bit-exact save/load round
// trips; load errors; bad options.
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "framework/hdf5.h"
#include "framework/parallel.h"
#include "optim/optim.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;
namespace fs = std::filesystem;

namespace {

using Vec = std::vector<double>;

Variable param(const Vec& values, const Shape& shape, DType dtype = DType::f64) {
  return Variable(from_vector(values, shape, dtype), true);
}
Variable param(const Vec& values) { return param(values, {int64_t(values.size())}); }

void set_grad(Variable& p, const Vec& g) { p.set_grad(from_vector(g, p.shape(), p.dtype())); }

Vec values(const Variable& p) { return p.data().to_vector<double>(); }

// |got - expected| <= rel * max(|expected|, 1e-300) for every element.
void check_close(const Vec& got, const Vec& expected, double rel, const std::string& what) {
  BOOST_TEST_REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < got.size(); ++i)
    BOOST_TEST(std::abs(got[i] - expected[i]) <= rel * std::max(std::abs(expected[i]), 1e-300),
               what << " [" << i << "]: got " << got[i] << ", expected " << expected[i]);
}

// The gradients fed at step t (0-based) to a 4-element parameter: signs and sizes vary, one
// element gets a zero gradient at step 1.
Vec grads_at(int t) {
  const Vec base[] = {{0.5, -1.5, 2.0, 0.25}, {-0.3, 0.0, 1.0, 4.0}, {1.2, -0.7, -2.5, 0.1}, {0.05, 3.0, 0.6, -1.0},
                      {-2.0, 0.4, 0.3, 0.9}};
  return base[t % 5];
}
const Vec x0 = {1.0, -2.0, 0.5, 3.0};

// ---- References, written out from the formulas ----

struct SgdRef {
  double lr, momentum, dampening, wd;
  bool nesterov;
};
Vec sgd_reference(Vec x, int steps, SgdRef o) {
  Vec b(x.size(), 0.0);
  for (int t = 0; t < steps; ++t) {
    const Vec g = grads_at(t);
    for (size_t i = 0; i < x.size(); ++i) {
      const double gw = g[i] + o.wd * x[i];
      double d = gw;
      if (o.momentum != 0) {
        b[i] = t == 0 ? gw : o.momentum * b[i] + (1 - o.dampening) * gw;
        d = o.nesterov ? gw + o.momentum * b[i] : b[i];
      }
      x[i] = x[i] - o.lr * d;
    }
  }
  return x;
}

// mode: 0 l2, 1 decoupled, 2 independent. lrs[t] is the lr of step t + 1; peak the lr the
// optimizer was built with.
Vec adam_reference(Vec x, const Vec& lrs, double peak, double b1, double b2, double eps, double wd, int mode) {
  Vec m(x.size(), 0.0), v(x.size(), 0.0);
  for (size_t t = 0; t < lrs.size(); ++t) {
    const Vec g = grads_at(int(t));
    const double lr = lrs[t];
    const double step = double(t + 1);
    for (size_t i = 0; i < x.size(); ++i) {
      double gi = g[i];
      if (mode == 0) gi += wd * x[i];
      if (mode == 1) x[i] = x[i] - lr * wd * x[i];
      if (mode == 2) x[i] = x[i] - (lr / peak) * wd * x[i];
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      const double m_hat = m[i] / (1 - std::pow(b1, step));
      const double v_hat = v[i] / (1 - std::pow(b2, step));
      x[i] = x[i] - lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
  return x;
}

// Runs `steps` steps of `opt` on p with grads_at(t); lrs (when given) set before each step.
void run_steps(Optimizer& opt, Variable& p, int steps, const Vec& lrs = {}) {
  for (int t = 0; t < steps; ++t) {
    if (!lrs.empty()) opt.set_lr(lrs[size_t(t)]);
    set_grad(p, grads_at(t));
    opt.step();
    opt.zero_grad();
  }
}

std::vector<ParamGroup> one_group(const std::string& name, const Variable& p, double wd = 0.0) {
  return {ParamGroup{{{name, p}}, wd}};
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous() &&
         std::memcmp(a.raw_data(), b.raw_data(), size_t(a.numel()) * a.element_size()) == 0;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(optim_suite)

// ---------------------------------------------------------------------------------------------
// SGD

BOOST_AUTO_TEST_CASE(sgd_literal_values) {
  // x0 = 1, g = 1 every step, lr = 0.1, momentum 0.9:
  //   heavy ball: b = 1, 1.9, 2.71        x = 0.9, 0.71, 0.439
  //   nesterov:   d = 1.9, 2.71, 3.439    x = 0.81, 0.539, 0.1951
  for (bool nesterov : {false, true}) {
    Variable p = param({1.0});
    SGD opt(one_group("x", p), {.lr = 0.1, .momentum = 0.9, .nesterov = nesterov});
    const Vec expected = nesterov ? Vec{0.81, 0.539, 0.1951} : Vec{0.9, 0.71, 0.439};
    for (int t = 0; t < 3; ++t) {
      set_grad(p, {1.0});
      opt.step();
      BOOST_TEST(std::abs(p.data().item() - expected[size_t(t)]) <= 1e-15, "nesterov " << nesterov << " step "
                                                                              << t + 1 << ": " << p.data().item());
    }
    BOOST_TEST(opt.step_count() == 3);
  }
}

BOOST_AUTO_TEST_CASE(sgd_matches_the_recurrence) {
  const int steps = 5;
  const SgdRef cases[] = {
      {0.1, 0.0, 0.0, 0.0, false},   // plain
      {0.05, 0.9, 0.0, 0.0, false},  // momentum
      {0.05, 0.9, 0.0, 0.0, true},   // nesterov
      {0.05, 0.8, 0.3, 0.0, false},  // dampening
      {0.1, 0.0, 0.0, 0.2, false},   // plain + weight decay
      {0.05, 0.9, 0.0, 0.1, true},   // nesterov + weight decay
  };
  for (const SgdRef& c : cases) {
    Variable p = param(x0);
    SGD opt(one_group("x", p, c.wd),
            {.lr = c.lr, .momentum = c.momentum, .dampening = c.dampening, .nesterov = c.nesterov});
    run_steps(opt, p, steps);
    check_close(values(p), sgd_reference(x0, steps, c), 1e-14,
                "sgd momentum " + std::to_string(c.momentum) + " nesterov " + std::to_string(c.nesterov) + " wd " +
                    std::to_string(c.wd));
  }
}

BOOST_AUTO_TEST_CASE(sgd_skips_parameters_without_a_gradient) {
  // q has no gradient at steps 1 and 2: it is untouched, and its momentum starts at its first
  // update (b = g'), as it would for a fresh parameter.
  Variable p = param(x0), q = param({1.0, 2.0});
  SGD opt({ParamGroup{{{"p", p}, {"q", q}}, 0.0}}, {.lr = 0.1, .momentum = 0.5});
  for (int t = 0; t < 2; ++t) {
    set_grad(p, grads_at(t));
    opt.step();
    opt.zero_grad();
    BOOST_TEST(values(q) == (Vec{1.0, 2.0}), boost::test_tools::per_element());
  }
  set_grad(q, {1.0, -1.0});
  opt.step();  // q: b = g = (1, -1), x = (0.9, 2.1)
  set_grad(q, {1.0, -1.0});
  opt.step();  // q: b = 0.5 b + g = (1.5, -1.5), x = (0.75, 2.25)
  check_close(values(q), {0.75, 2.25}, 1e-15, "q");
  BOOST_TEST(opt.step_count() == 4);
}

// ---------------------------------------------------------------------------------------------
// Adam / AdamW

BOOST_AUTO_TEST_CASE(adam_first_step_literal) {
  // At t = 1, m_hat = g and v_hat = g^2, so x -= lr g / (|g| + eps): about lr * sign(g).
  Variable p = param({1.0, 1.0});
  Adam opt(one_group("x", p), {.lr = 0.1, .eps = 1e-8, .weight_decay_mode = WeightDecayMode::l2});
  set_grad(p, {2.0, -0.5});
  opt.step();
  check_close(values(p), {1.0 - 0.1 * 2.0 / (2.0 + 1e-8), 1.0 + 0.1 * 0.5 / (0.5 + 1e-8)}, 1e-15, "adam t=1");
  BOOST_TEST(std::abs(p.data().at({0}) - 0.9) < 1e-8);
  BOOST_TEST(std::abs(p.data().at({1}) - 1.1) < 1e-8);
  BOOST_TEST(std::string(opt.name()) == "adam");
}

BOOST_AUTO_TEST_CASE(adam_with_l2_decay_matches_the_recurrence) {
  const int steps = 5;
  Variable p = param(x0);
  Adam opt(one_group("x", p, 0.1),
           {.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay_mode = WeightDecayMode::l2});
  run_steps(opt, p, steps);
  check_close(values(p), adam_reference(x0, Vec(steps, 0.01), 0.01, 0.8, 0.95, 1e-6, 0.1, 0), 1e-13, "adam l2");
}

BOOST_AUTO_TEST_CASE(adamw_decoupled_matches_the_recurrence) {
  const int steps = 5;
  Variable p = param(x0);
  auto opt = make_adamw(one_group("x", p, 0.3), {.lr = 0.02, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8});
  BOOST_TEST(std::string(opt->name()) == "adamw");
  run_steps(*opt, p, steps);
  check_close(values(p), adam_reference(x0, Vec(steps, 0.02), 0.02, 0.9, 0.99, 1e-8, 0.3, 1), 1e-13,
              "adamw decoupled");
  // Decay changes the answer: the same run without it differs.
  BOOST_TEST(std::abs(values(p)[0] - adam_reference(x0, Vec(steps, 0.02), 0.02, 0.9, 0.99, 1e-8, 0.0, 1)[0]) > 1e-4);
}

BOOST_AUTO_TEST_CASE(adamw_independent_follows_the_schedule) {
  // lr from a warmup + cosine schedule; the decay is (lr / peak_lr) wd, not lr wd.
  const Schedule sched{.kind = ScheduleKind::cosine, .peak_lr = 0.05, .warmup = 2, .total = 6, .min_lr = 0.005};
  Vec lrs;
  for (int t = 1; t <= 6; ++t) lrs.push_back(sched.lr(t));
  Variable p = param(x0);
  auto opt = make_adamw(one_group("x", p, 0.2), {.lr = 0.05, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                                  .weight_decay_mode = WeightDecayMode::independent});
  run_steps(*opt, p, 6, lrs);
  BOOST_TEST(opt->peak_lr() == 0.05);
  BOOST_TEST(opt->lr() == lrs.back());
  const Vec independent = adam_reference(x0, lrs, 0.05, 0.9, 0.999, 1e-8, 0.2, 2);
  check_close(values(p), independent, 1e-13, "adamw independent");
  // Decoupled decay under the same lrs would give a different answer.
  const Vec decoupled = adam_reference(x0, lrs, 0.05, 0.9, 0.999, 1e-8, 0.2, 1);
  BOOST_TEST(std::abs(independent[3] - decoupled[3]) > 1e-3);
}

BOOST_AUTO_TEST_CASE(f32_parameters_match_the_double_recurrence) {
  const int steps = 4;
  {
    Variable p = param(x0, {2, 2}, DType::f32);
    auto opt = make_adamw(one_group("w", p, 0.1), {.lr = 0.01});
    run_steps(*opt, p, steps);
    BOOST_TEST((p.dtype() == DType::f32));
    check_close(values(p), adam_reference(x0, Vec(steps, 0.01), 0.01, 0.9, 0.999, 1e-8, 0.1, 1), 2e-6, "adamw f32");
  }
  {
    Variable p = param(x0, {4}, DType::f32);
    SGD opt(one_group("w", p, 0.05), {.lr = 0.05, .momentum = 0.9, .nesterov = true});
    run_steps(opt, p, steps);
    check_close(values(p), sgd_reference(x0, steps, {0.05, 0.9, 0.0, 0.05, true}), 2e-6, "sgd f32");
  }
}

BOOST_AUTO_TEST_CASE(updates_do_not_depend_on_the_thread_count) {
  Generator gen(7);
  const Tensor w0 = randn({300, 200}, gen, DType::f32);
  const Tensor g = randn({300, 200}, gen, DType::f32);
  std::vector<Tensor> results;
  const int saved = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    Variable p(w0.clone(), true);
    auto opt = make_adamw(one_group("w", p, 0.1), {.lr = 0.01});
    for (int t = 0; t < 3; ++t) {
      p.set_grad(g.clone());
      opt->step();
    }
    results.push_back(p.data());
  }
  set_num_threads(saved);
  BOOST_TEST(bit_equal(results[0], results[1]));
  BOOST_TEST(bit_equal(results[0], results[2]));
}

// The one-pass update over all parameters against one optimizer per parameter.
namespace {

struct OptCase {
  std::string label;
  std::function<std::unique_ptr<Optimizer>(std::vector<ParamGroup>)> make;
};

std::vector<OptCase> flat_cases() {
  return {
      {"sgd", [](auto g) { return std::make_unique<SGD>(std::move(g), SGDOptions{.lr = 0.05}); }},
      {"sgd momentum dampening",
       [](auto g) { return std::make_unique<SGD>(std::move(g), SGDOptions{.lr = 0.05, .momentum = 0.8, .dampening = 0.3}); }},
      {"sgd nesterov",
       [](auto g) { return std::make_unique<SGD>(std::move(g), SGDOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true}); }},
      {"adam", [](auto g) {
         return std::make_unique<Adam>(std::move(g), AdamOptions{.lr = 0.01, .weight_decay_mode = WeightDecayMode::l2});
       }},
      {"adamw", [](auto g) { return make_adamw(std::move(g), {.lr = 0.01, .beta1 = 0.8, .beta2 = 0.95}); }},
      {"adamw independent",
       [](auto g) { return make_adamw(std::move(g), {.lr = 0.01, .weight_decay_mode = WeightDecayMode::independent}); }},
  };
}

// Parameters of many sizes (around the parallel grain of 16384 elements and the norm's
// 32768-element blocks, empty, scalar), f32 and f64, in two groups.
NamedParameters flat_params(uint64_t seed) {
  Generator gen(seed);
  const std::vector<std::pair<Shape, DType>> specs = {
      {{300, 200}, DType::f32}, {{7}, DType::f32},      {{16385}, DType::f64}, {{}, DType::f64},
      {{0}, DType::f32},        {{3, 5}, DType::f64},  {{32769}, DType::f32}, {{40, 1000}, DType::f32},
      {{1}, DType::f32},        {{128, 32}, DType::f64}};
  NamedParameters ps;
  for (size_t k = 0; k < specs.size(); ++k) {
    std::string name = std::to_string(k);
    name.insert(name.begin(), 'p');
    ps.emplace_back(name, Variable(randn(specs[k].first, gen, specs[k].second), true));
  }
  return ps;
}

// Step t's gradients: p1 has none at step 1; p5's is a transposed (strided) view.
void set_flat_grads(NamedParameters& ps, int t) {
  Generator gen(uint64_t(1000 + t));
  for (auto& [name, p] : ps) {
    if (name == "p1" && t == 1) {
      p.zero_grad();
      continue;
    }
    if (name == "p5") p.set_grad(randn({5, 3}, gen, p.dtype()).transpose(0, 1));
    else p.set_grad(randn(p.shape(), gen, p.dtype()));
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(one_pass_update_matches_per_parameter_updates) {
  // The pass cuts every parameter at thread boundaries and finds each one's group, state and
  // first update: its bits must be those of each parameter updated alone, on one thread, by
  // an optimizer of its own (stepped every step, so that t and the bias corrections agree).
  const int saved = num_threads();
  for (const OptCase& c : flat_cases()) {
    set_num_threads(1);
    NamedParameters ref = flat_params(3);
    std::vector<std::unique_ptr<Optimizer>> alone;
    for (const auto& named : ref) alone.push_back(c.make(param_groups({named}, 0.1)));
    for (int t = 1; t <= 3; ++t) {
      set_flat_grads(ref, t);
      for (auto& opt : alone) {
        opt->set_lr(0.01 * t);
        opt->step();
      }
    }
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      NamedParameters ps = flat_params(3);
      auto opt = c.make(param_groups(ps, 0.1));
      BOOST_TEST_REQUIRE(opt->groups().size() == 2u);
      for (int t = 1; t <= 3; ++t) {
        set_flat_grads(ps, t);
        opt->set_lr(0.01 * t);
        opt->step();
      }
      for (size_t k = 0; k < ps.size(); ++k)
        BOOST_TEST(bit_equal(ps[k].second.data(), ref[k].second.data()),
                   c.label << " " << ps[k].first << " at " << threads << " threads");
    }
  }
  set_num_threads(saved);
}

BOOST_AUTO_TEST_CASE(grad_norm_sums_fixed_blocks_in_parameter_order) {
  // The order: per parameter, blocks of 32768 elements each summed from 0, the blocks' sums
  // added in order; then the parameters' sums in parameter order.
  NamedParameters ps = flat_params(8);
  set_flat_grads(ps, 2);
  std::vector<Variable> params;
  double expected = 0;
  for (auto& [name, p] : ps) {
    params.push_back(p);
    const std::vector<double> g = p.grad().to_vector<double>();
    double s = 0;
    for (size_t b = 0; b < g.size(); b += 32768) {
      double block = 0;
      for (size_t i = b; i < std::min(g.size(), b + 32768); ++i) block += g[i] * g[i];
      s += block;
    }
    expected += s;
  }
  const int saved = num_threads();
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    BOOST_TEST(grad_norm(params) == std::sqrt(expected), threads << " threads");
  }
  // Clipping scales every gradient (the strided one replaced by a contiguous copy) by the same factor.
  const std::vector<Tensor> before = [&] {
    std::vector<Tensor> v;
    for (const Variable& p : params) v.push_back(p.grad().defined() ? p.grad().contiguous().clone() : Tensor());
    return v;
  }();
  const double scale = 1.0 / std::sqrt(expected);
  BOOST_TEST(clip_grad_norm(params, 1.0) == std::sqrt(expected));
  set_num_threads(saved);
  for (size_t k = 0; k < params.size(); ++k) {
    if (!before[k].defined()) continue;
    BOOST_TEST(params[k].grad().is_contiguous());
    NL_DISPATCH_FLOATING(before[k].dtype(), "check", [&] {
      const scalar_t* g0 = before[k].data<scalar_t>();
      const scalar_t* g1 = params[k].grad().data<scalar_t>();
      bool same = true;
      for (int64_t i = 0; i < before[k].numel(); ++i) same = same && g1[i] == scalar_t(double(g0[i]) * scale);
      BOOST_TEST(same, ps[k].first);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Schedules

BOOST_AUTO_TEST_CASE(schedule_literal_values) {
  const Schedule lin{.kind = ScheduleKind::linear, .peak_lr = 1e-3, .warmup = 10, .total = 110, .min_lr = 1e-4};
  BOOST_TEST(std::abs(lin.lr(5) - 5e-4) < 1e-18);     // warmup: 1e-3 * 5 / 10
  BOOST_TEST(std::abs(lin.lr(10) - 1e-3) < 1e-18);    // warmup end
  BOOST_TEST(std::abs(lin.lr(60) - 5.5e-4) < 1e-18);  // halfway: 1e-3 - 9e-4 / 2
  BOOST_TEST(lin.lr(110) == 1e-4);
  BOOST_TEST(lin.lr(500) == 1e-4);
  Schedule cos = lin;
  cos.kind = ScheduleKind::cosine;
  BOOST_TEST(std::abs(cos.lr(60) - 5.5e-4) < 1e-18);  // cos(pi / 2) = 0
  BOOST_TEST(std::abs(cos.lr(35) - (1e-4 + 9e-4 * (1 + std::sqrt(0.5)) / 2)) < 1e-18);  // a quarter: cos(pi / 4)
  const Schedule isq{.kind = ScheduleKind::inverse_sqrt, .peak_lr = 1e-3, .warmup = 4};
  BOOST_TEST(std::abs(isq.lr(16) - 5e-4) < 1e-18);  // 1e-3 * sqrt(4 / 16)
  BOOST_TEST(std::abs(isq.lr(2) - 5e-4) < 1e-18);   // warmup: 1e-3 * 2 / 4
  const Schedule constant{.peak_lr = 3e-4};
  BOOST_TEST(constant.lr(1) == 3e-4);
  BOOST_TEST(constant.lr(1000000) == 3e-4);
}

BOOST_AUTO_TEST_CASE(schedules_match_their_closed_forms) {
  const double peak = 2e-3, lo = 2e-4;
  for (int64_t warmup : {int64_t(0), int64_t(1), int64_t(7)}) {
    const int64_t total = 57;
    const std::vector<int64_t> ts = {1, 2, std::max<int64_t>(warmup, 1), warmup + 1, (warmup + total) / 2, total - 1,
                                     total, total + 1, 3 * total};
    for (ScheduleKind kind :
         {ScheduleKind::constant, ScheduleKind::linear, ScheduleKind::cosine, ScheduleKind::inverse_sqrt}) {
      const Schedule s{.kind = kind, .peak_lr = peak, .warmup = warmup, .total = total, .min_lr = lo};
      for (int64_t t : ts) {
        double expected;
        const double u = double(t - warmup) / double(total - warmup);  // decay progress
        if (t <= warmup) {
          expected = peak * double(t) / double(warmup);
        } else if (kind == ScheduleKind::constant) {
          expected = peak;
        } else if (kind == ScheduleKind::linear) {
          expected = t >= total ? lo : peak - (peak - lo) * u;
        } else if (kind == ScheduleKind::cosine) {
          expected = t >= total ? lo : lo + 0.5 * (peak - lo) * (1 + std::cos(std::numbers::pi * u));
        } else {
          expected = peak / std::sqrt(double(t) / double(std::max<int64_t>(warmup, 1)));
        }
        BOOST_TEST(std::abs(s.lr(t) - expected) <= 1e-15 * peak,
                   to_string(kind) << " warmup " << warmup << " t " << t << ": " << s.lr(t) << " vs " << expected);
      }
      BOOST_TEST((parse_schedule_kind(to_string(kind)) == kind));
    }
  }
}

BOOST_AUTO_TEST_CASE(schedule_errors_name_the_value) {
  auto lr_of = [](Schedule s, int64_t t) { return error_of([&] { (void)s.lr(t); }); };
  const Schedule ok{.kind = ScheduleKind::linear, .peak_lr = 1e-3, .warmup = 10, .total = 100};
  BOOST_TEST(contains(lr_of(ok, 0), "t must be >= 1, got 0"));
  for (ScheduleKind kind : {ScheduleKind::linear, ScheduleKind::cosine}) {
    Schedule s = ok;
    s.kind = kind;
    s.total = 10;
    const std::string e = error_of([&] { s.check(); });
    BOOST_TEST(contains(e, "total > warmup, got total 10 and warmup 10"), e);
  }
  Schedule s = ok;
  s.min_lr = 2e-3;
  BOOST_TEST(contains(lr_of(s, 1), "min_lr 0.002 exceeds peak_lr 0.001"));
  s = ok;
  s.warmup = -3;
  BOOST_TEST(contains(lr_of(s, 1), "warmup must be >= 0, got -3"));
  s = ok;
  s.peak_lr = -1;
  BOOST_TEST(contains(lr_of(s, 1), "peak_lr must be finite and >= 0, got -1"));
  // constant and inverse_sqrt do not need total.
  BOOST_TEST(error_of([] { Schedule{.kind = ScheduleKind::inverse_sqrt, .warmup = 10}.check(); }).empty());
  BOOST_TEST(contains(error_of([] { parse_schedule_kind("step"); }), "'step'"));
}

// ---------------------------------------------------------------------------------------------
// Parameter groups

BOOST_AUTO_TEST_CASE(param_groups_decay_matrices_only) {
  const NamedParameters params = {
      {"embed.weight", param(Vec(6, 0.0), {3, 2})}, {"norm.gamma", param(Vec(2, 1.0), {2})},
      {"attn.q.weight", param(Vec(4, 0.0), {2, 2})}, {"attn.q.bias", param(Vec(2, 0.0), {2})},
      {"dyt.alpha", param({0.5}, {})},               {"conv", param(Vec(8, 0.0), {2, 2, 2})},
  };
  const auto groups = param_groups(params, 0.1);
  BOOST_TEST_REQUIRE(groups.size() == 2u);
  BOOST_TEST(groups[0].weight_decay == 0.1);
  BOOST_TEST(groups[1].weight_decay == 0.0);
  std::vector<std::string> decayed, plain;
  for (const auto& [n, p] : groups[0].params) decayed.push_back(n);
  for (const auto& [n, p] : groups[1].params) plain.push_back(n);
  BOOST_TEST(decayed == (std::vector<std::string>{"embed.weight", "attn.q.weight", "conv"}),
             boost::test_tools::per_element());
  BOOST_TEST(plain == (std::vector<std::string>{"norm.gamma", "attn.q.bias", "dyt.alpha"}),
             boost::test_tools::per_element());
  BOOST_TEST(groups[0].params[0].second.same(params[0].second));  // the same Variables, not copies

  // Only matrices: the empty no-decay group is dropped.
  const auto only = param_groups({params[0], params[2]}, 0.1);
  BOOST_TEST_REQUIRE(only.size() == 1u);
  BOOST_TEST(only[0].weight_decay == 0.1);

  // A custom rule: decay everything but the embedding.
  const auto custom = param_groups(params, 0.05, [](const std::string& name, const Variable&) {
    return name.rfind("embed.", 0) != 0;
  });
  BOOST_TEST_REQUIRE(custom.size() == 2u);
  BOOST_TEST(custom[0].params.size() == 5u);
  BOOST_TEST(custom[1].params.size() == 1u);
  BOOST_TEST(custom[1].params[0].first == "embed.weight");

  BOOST_TEST(contains(error_of([&] { param_groups(params, -0.1); }), "-0.1"));
}

BOOST_AUTO_TEST_CASE(groups_get_their_own_weight_decay) {
  // w (decayed) and b (not) with the same gradients: b moves as with no decay at all.
  Variable w = param(x0, {2, 2}), b = param(x0);
  auto opt = make_adamw(param_groups({{"w", w}, {"b", b}}, 0.3), {.lr = 0.02, .beta1 = 0.9, .beta2 = 0.99});
  for (int t = 0; t < 3; ++t) {
    set_grad(w, grads_at(t));
    set_grad(b, grads_at(t));
    opt->step();
  }
  check_close(values(w), adam_reference(x0, Vec(3, 0.02), 0.02, 0.9, 0.99, 1e-8, 0.3, 1), 1e-13, "w");
  check_close(values(b), adam_reference(x0, Vec(3, 0.02), 0.02, 0.9, 0.99, 1e-8, 0.0, 1), 1e-13, "b");
}

// ---------------------------------------------------------------------------------------------
// Clipping

BOOST_AUTO_TEST_CASE(clip_grad_norm_scales_to_max_norm) {
  Variable a = param({0, 0}), b = param({0}), none = param({0});
  set_grad(a, {3.0, 4.0});
  set_grad(b, {12.0});
  const std::vector<Variable> ps = {a, b, none};  // `none` has no gradient and is ignored
  BOOST_TEST(grad_norm(ps) == 13.0);
  BOOST_TEST(clip_grad_norm(ps, 6.5) == 13.0);  // the norm before clipping
  check_close(a.grad().to_vector<double>(), {1.5, 2.0}, 1e-15, "a");
  check_close(b.grad().to_vector<double>(), {6.0}, 1e-15, "b");
  BOOST_TEST(std::abs(grad_norm(ps) - 6.5) < 1e-14);
  BOOST_TEST(!none.grad().defined());

  // Below (and at) max_norm nothing changes, bit for bit.
  const Tensor ga = a.grad().clone(), gb = b.grad().clone();
  BOOST_TEST(std::abs(clip_grad_norm(ps, 100.0) - 6.5) < 1e-14);
  BOOST_TEST(bit_equal(a.grad(), ga));
  BOOST_TEST(bit_equal(b.grad(), gb));

  // f32 gradients.
  Variable c = param({0, 0, 0}, {3}, DType::f32);
  set_grad(c, {2.0, -1.0, 2.0});
  BOOST_TEST(clip_grad_norm({c}, 1.5) == 3.0);
  check_close(c.grad().to_vector<double>(), {1.0, -0.5, 1.0}, 1e-7, "c");
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_leaves_non_finite_gradients_alone) {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    Variable a = param({0, 0}), b = param({0});
    set_grad(a, {3.0, bad});
    set_grad(b, {12.0});
    const Tensor ga = a.grad().clone(), gb = b.grad().clone();
    const double norm = clip_grad_norm({a, b}, 1.0);
    BOOST_TEST(!std::isfinite(norm));
    if (std::isinf(bad)) BOOST_TEST(norm == std::numeric_limits<double>::infinity());
    BOOST_TEST(bit_equal(a.grad(), ga));
    BOOST_TEST(bit_equal(b.grad(), gb));
  }
}

BOOST_AUTO_TEST_CASE(a_parameter_listed_twice_counts_twice_and_is_scaled_once) {
  Variable a = param({0, 0});
  set_grad(a, {3.0, 4.0});
  BOOST_TEST(clip_grad_norm({a, a}, 1.0) == std::sqrt(50.0));
  check_close(a.grad().to_vector<double>(), {3.0 / std::sqrt(50.0), 4.0 / std::sqrt(50.0)}, 1e-15, "a");
}

BOOST_AUTO_TEST_CASE(grad_norm_is_deterministic_across_thread_counts) {
  Generator gen(11);
  Variable a(zeros({70000}, DType::f32), true), b(zeros({300, 7}, DType::f64), true);
  a.set_grad(randn({70000}, gen, DType::f32));
  b.set_grad(randn({300, 7}, gen, DType::f64));
  const int saved = num_threads();
  std::vector<double> norms;
  for (int threads : {1, 2, 4}) {
    set_num_threads(threads);
    norms.push_back(grad_norm({a, b}));
  }
  set_num_threads(saved);
  BOOST_TEST(norms[0] == norms[1]);
  BOOST_TEST(norms[0] == norms[2]);
  // Against a plain double sum in parameter order.
  double s = 0;
  for (double g : a.grad().to_vector<double>()) s += g * g;
  for (double g : b.grad().to_vector<double>()) s += g * g;
  BOOST_TEST(std::abs(norms[0] - std::sqrt(s)) <= 1e-12 * std::sqrt(s));
}

BOOST_AUTO_TEST_CASE(clip_errors_name_the_value) {
  Variable a = param({1.0});
  set_grad(a, {1.0});
  BOOST_TEST(contains(error_of([&] { clip_grad_norm({a}, 0.0); }), "max_norm must be > 0, got 0"));
  BOOST_TEST(contains(error_of([&] { clip_grad_norm({a}, -2.5); }), "got -2.5"));
  BOOST_TEST(contains(error_of([&] { clip_grad_norm({a}, std::nan("")); }), "got nan"));
}

// ---------------------------------------------------------------------------------------------
// Convergence on f(x) = 0.5 sum_i a_i (x_i - c_i)^2 (+ 0.5 wd |x|^2 for l2 decay, whose
// minimizer is x_i = a_i c_i / (a_i + wd)).

namespace {
const Vec quad_a = {1.0, 3.0, 0.5, 8.0}, quad_c = {2.0, -1.0, 4.0, 0.5};

// Runs `steps` steps from x = 0 with autograd gradients and returns the final x.
Vec minimize(const std::function<std::unique_ptr<Optimizer>(std::vector<ParamGroup>)>& make, int steps,
             double wd = 0.0, const Schedule* sched = nullptr) {
  Variable x = param(Vec(4, 0.0));
  const Variable a(from_vector(quad_a, {4}, DType::f64)), c(from_vector(quad_c, {4}, DType::f64));
  auto opt = make({ParamGroup{{{"x", x}}, wd}});
  for (int t = 1; t <= steps; ++t) {
    if (sched) opt->set_lr(sched->lr(t));
    const Variable d = x - c;
    const Variable loss = 0.5 * sum(a * d * d);
    loss.backward();
    opt->step();
    opt->zero_grad();
  }
  return values(x);
}

void check_near(const Vec& got, const Vec& expected, double tol, const std::string& what) {
  for (size_t i = 0; i < got.size(); ++i)
    BOOST_TEST(std::abs(got[i] - expected[i]) < tol, what << " x[" << i << "] = " << got[i] << ", minimizer "
                                                          << expected[i]);
}
}  // namespace

BOOST_AUTO_TEST_CASE(optimizers_minimize_a_convex_quadratic) {
  const Vec argmin = quad_c;
  check_near(minimize([](auto g) { return std::make_unique<SGD>(std::move(g), SGDOptions{.lr = 0.05, .momentum = 0.9}); },
                      400),
             argmin, 1e-6, "sgd momentum");
  check_near(minimize([](auto g) {
               return std::make_unique<SGD>(std::move(g), SGDOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true});
             }, 400),
             argmin, 1e-6, "sgd nesterov");
  // l2 decay moves the minimizer to a c / (a + wd).
  const double wd = 0.5;
  Vec argmin_l2;
  for (size_t i = 0; i < 4; ++i) argmin_l2.push_back(quad_a[i] * quad_c[i] / (quad_a[i] + wd));
  check_near(minimize([](auto g) { return std::make_unique<SGD>(std::move(g), SGDOptions{.lr = 0.05, .momentum = 0.9}); },
                      400, wd),
             argmin_l2, 1e-6, "sgd momentum l2");
  // Adam and AdamW under warmup + cosine decay to 0.
  const Schedule sched{.kind = ScheduleKind::cosine, .peak_lr = 0.1, .warmup = 20, .total = 600};
  check_near(minimize([](auto g) {
               return std::make_unique<Adam>(std::move(g),
                                             AdamOptions{.lr = 0.1, .weight_decay_mode = WeightDecayMode::l2});
             }, 600, wd, &sched),
             argmin_l2, 1e-6, "adam l2");
  check_near(minimize([](auto g) { return make_adamw(std::move(g), AdamOptions{.lr = 0.1}); }, 600, 0.0, &sched),
             argmin, 1e-6, "adamw");
}

// ---------------------------------------------------------------------------------------------
// Save / load

namespace {

// A small model's parameters: a matrix (decayed), a vector and a scalar (not), and "late",
// which gets no gradient before step 5 (so it has no state when saved at step 3).
NamedParameters make_params(uint64_t seed) {
  Generator gen(seed);
  return {{"blocks.0.attn.q.weight", Variable(randn({3, 4}, gen, DType::f64), true)},
          {"blocks.0.norm.gamma", Variable(randn({4}, gen, DType::f32), true)},
          {"dyt.alpha", Variable(randn({}, gen, DType::f64), true)},
          {"late", Variable(randn({2, 2}, gen, DType::f64), true)}};
}

NamedParameters clone_params(const NamedParameters& ps) {
  NamedParameters out;
  for (const auto& [n, p] : ps) out.emplace_back(n, Variable(p.data().clone(), true));
  return out;
}

// Gradients of sum(sin(k * x + t)) (deterministic, depend on the parameters' values).
void set_grads(NamedParameters& ps, int t) {
  for (size_t k = 0; k < ps.size(); ++k) {
    auto& [n, p] = ps[k];
    if (n == "late" && t < 5) continue;
    Vec g = values(p);
    for (double& v : g) v = std::cos(double(k + 1) * v + t) * double(k + 1);
    p.set_grad(from_vector(g, p.shape(), p.dtype()));
  }
}

using Factory = std::function<std::unique_ptr<Optimizer>(const NamedParameters&)>;

void check_round_trip(const Factory& make, const std::string& label) {
  const Schedule sched{.kind = ScheduleKind::linear, .peak_lr = 0.05, .warmup = 2, .total = 9, .min_lr = 0.001};
  TempDir tmp("normlab_test_optim");
  NamedParameters pa = make_params(5);
  auto a = make(pa);
  int t = 1;
  for (; t <= 3; ++t) {
    set_grads(pa, t);
    a->set_lr(sched.lr(t));
    a->step();
    a->zero_grad();
  }
  const std::string path = tmp.file("ckpt.h5");
  {
    H5File f(path, H5File::Mode::create);
    a->save(f, "/optim");  // saved twice: the second replaces the first
    a->save(f, "/checkpoint/optim");
    a->save(f, "/checkpoint/optim");
    f.close();
  }
  NamedParameters pb = clone_params(pa);
  auto b = make(pb);
  {
    H5File f(path, H5File::Mode::read);
    b->load(f, "checkpoint/optim");
  }
  BOOST_TEST(b->step_count() == 3, label);
  BOOST_TEST(b->lr() == a->lr(), label);
  BOOST_TEST(b->peak_lr() == a->peak_lr(), label);
  for (; t <= 8; ++t) {
    for (NamedParameters* ps : {&pa, &pb}) set_grads(*ps, t);
    for (Optimizer* o : {a.get(), b.get()}) {
      o->set_lr(sched.lr(t));
      o->step();
      o->zero_grad();
    }
  }
  for (size_t k = 0; k < pa.size(); ++k)
    BOOST_TEST(bit_equal(pa[k].second.data(), pb[k].second.data()), label << " " << pa[k].first);
  // And the parameters moved (the comparison is not vacuous).
  const NamedParameters p0 = make_params(5);
  for (size_t k = 0; k < pa.size(); ++k)
    BOOST_TEST(!bit_equal(pa[k].second.data(), p0[k].second.data()), label << " " << pa[k].first);
}

}  // namespace

BOOST_AUTO_TEST_CASE(save_load_round_trip_is_bit_exact) {
  check_round_trip([](const NamedParameters& ps) { return make_adamw(param_groups(ps, 0.1), {.lr = 0.05}); },
                   "adamw");
  check_round_trip(
      [](const NamedParameters& ps) {
        return make_adamw(param_groups(ps, 0.1), {.lr = 0.05, .weight_decay_mode = WeightDecayMode::independent});
      },
      "adamw independent");
  check_round_trip(
      [](const NamedParameters& ps) {
        return std::make_unique<Adam>(param_groups(ps, 0.01),
                                      AdamOptions{.lr = 0.05, .weight_decay_mode = WeightDecayMode::l2});
      },
      "adam");
  check_round_trip(
      [](const NamedParameters& ps) {
        return std::make_unique<SGD>(param_groups(ps, 0.01), SGDOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true});
      },
      "sgd nesterov");
  check_round_trip(
      [](const NamedParameters& ps) { return std::make_unique<SGD>(param_groups(ps, 0.01), SGDOptions{.lr = 0.05}); },
      "sgd plain");
}

BOOST_AUTO_TEST_CASE(load_errors_are_clear) {
  TempDir tmp("normlab_test_optim");
  const std::string path = tmp.file("state.h5");
  NamedParameters ps = make_params(9);
  {
    SGD sgd(param_groups(ps, 0.0), {.lr = 0.1, .momentum = 0.9});
    set_grads(ps, 1);
    sgd.step();
    auto adamw = make_adamw(param_groups(ps, 0.0), {.lr = 0.1});
    adamw->step();
    H5File f(path, H5File::Mode::create);
    sgd.save(f, "/sgd");
    adamw->save(f, "/adamw");
  }
  H5File f(path, H5File::Mode::read);
  auto expect_error = [&](Optimizer& o, const std::string& group, const std::vector<std::string>& parts) {
    const std::string e = error_of([&] { o.load(f, group); });
    for (const std::string& part : parts) BOOST_TEST(contains(e, part), "'" << part << "' not in: " << e);
    BOOST_TEST(o.step_count() == 0, "a failed load changes nothing");
    BOOST_TEST(o.lr() == 0.5);
  };
  // Wrong optimizer kind, both ways.
  auto adamw = make_adamw(param_groups(clone_params(ps), 0.0), {.lr = 0.5});
  expect_error(*adamw, "/sgd", {"optimizer 'sgd', not 'adamw'", "/sgd"});
  SGD sgd(param_groups(clone_params(ps), 0.0), {.lr = 0.5, .momentum = 0.9});
  expect_error(sgd, "/adamw", {"optimizer 'adamw', not 'sgd'"});
  Adam adam(param_groups(clone_params(ps), 0.0), {.lr = 0.5, .weight_decay_mode = WeightDecayMode::l2});
  expect_error(adam, "/adamw", {"'adamw', not 'adam'"});
  // No state there.
  expect_error(sgd, "/nothing", {"no optimizer state at '/nothing'", path});
  // A parameter missing (renamed).
  NamedParameters renamed = clone_params(ps);
  renamed[2].first = "dyt.beta";
  SGD sgd_renamed(param_groups(renamed, 0.0), {.lr = 0.5, .momentum = 0.9});
  expect_error(sgd_renamed, "/sgd", {"parameter 'dyt.beta' is missing"});
  // One parameter more than saved.
  NamedParameters extra = clone_params(ps);
  extra.emplace_back("head.weight", param(Vec(4, 0.0), {2, 2}));
  SGD sgd_extra(param_groups(extra, 0.0), {.lr = 0.5, .momentum = 0.9});
  expect_error(sgd_extra, "/sgd", {"has 4 parameters but the optimizer has 5"});
  // A wrong shape.
  NamedParameters reshaped = clone_params(ps);
  reshaped[0].second = Variable(zeros({4, 3}, DType::f64), true);
  SGD sgd_reshaped(param_groups(reshaped, 0.0), {.lr = 0.5, .momentum = 0.9});
  expect_error(sgd_reshaped, "/sgd", {"'blocks.0.attn.q.weight' has shape [3, 4]", "but [4, 3]"});
  // A wrong dtype.
  NamedParameters retyped = clone_params(ps);
  retyped[1].second = Variable(zeros({4}, DType::f64), true);
  SGD sgd_retyped(param_groups(retyped, 0.0), {.lr = 0.5, .momentum = 0.9});
  expect_error(sgd_retyped, "/sgd", {"'blocks.0.norm.gamma' has dtype f32", "but f64"});
  // Saving to a read-only file.
  BOOST_TEST(contains(error_of([&] { sgd.save(f, "/x"); }), "not open for writing"));
}

// ---------------------------------------------------------------------------------------------
// Bad options and bad input

BOOST_AUTO_TEST_CASE(bad_options_throw_naming_the_value) {
  auto groups = [] { return one_group("x", param({1.0})); };
  auto sgd = [&](SGDOptions o) { return error_of([&] { SGD s(groups(), o); }); };
  auto adam = [&](AdamOptions o) { return error_of([&] { Adam s(groups(), o); }); };
  BOOST_TEST(contains(sgd({.lr = -0.1}), "lr must be finite and >= 0, got -0.1"));
  BOOST_TEST(contains(sgd({.lr = std::numeric_limits<double>::infinity()}), "got inf"));
  BOOST_TEST(contains(sgd({.momentum = 1.0}), "momentum must be in [0, 1), got 1"));
  BOOST_TEST(contains(sgd({.momentum = -0.5}), "got -0.5"));
  BOOST_TEST(contains(sgd({.dampening = 1.5}), "dampening must be in [0, 1), got 1.5"));
  BOOST_TEST(contains(sgd({.nesterov = true}), "nesterov needs momentum > 0, got momentum 0"));
  BOOST_TEST(contains(sgd({.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                      "nesterov needs dampening 0, got dampening 0.1"));
  BOOST_TEST(contains(adam({.beta1 = 1.0}), "beta1 must be in [0, 1), got 1"));
  BOOST_TEST(contains(adam({.beta2 = -0.5}), "beta2 must be in [0, 1), got -0.5"));
  BOOST_TEST(contains(adam({.eps = 0.0}), "eps must be finite and > 0, got 0"));
  BOOST_TEST(contains(adam({.eps = -1e-8}), "got -1e-08"));
  BOOST_TEST(contains(adam({.lr = std::nan("")}), "got nan"));
  BOOST_TEST(contains(adam({.lr = 0.0, .weight_decay_mode = WeightDecayMode::independent}), "got lr 0"));
  BOOST_TEST(contains(error_of([&] { make_adamw(groups(), {.weight_decay_mode = WeightDecayMode::l2}); }),
                      "got l2"));
  BOOST_TEST(contains(error_of([] { SGD s({}, {}); }), "empty"));
  BOOST_TEST(contains(error_of([] { SGD s(one_group("x", param({1.0}), -0.1), {}); }),
                      "weight_decay of group 0 must be finite and >= 0, got -0.1"));
  BOOST_TEST(contains(error_of([] { parse_weight_decay_mode("l1"); }), "'l1'"));
  for (WeightDecayMode m : {WeightDecayMode::l2, WeightDecayMode::decoupled, WeightDecayMode::independent})
    BOOST_TEST((parse_weight_decay_mode(to_string(m)) == m));

  SGD ok(groups(), {});
  BOOST_TEST(contains(error_of([&] { ok.set_lr(-1.0); }), "got -1"));
  BOOST_TEST(contains(error_of([&] { ok.set_lr(std::numeric_limits<double>::infinity()); }), "got inf"));
  ok.set_lr(0.25);
  BOOST_TEST(ok.lr() == 0.25);
  BOOST_TEST(ok.peak_lr() == 1e-2);
}

BOOST_AUTO_TEST_CASE(bad_parameters_and_gradients_throw) {
  Variable p = param({1.0, 2.0});
  BOOST_TEST(contains(error_of([&] { SGD s({ParamGroup{{{"a", p}, {"a", param({1.0})}}}}, {}); }),
                      "name 'a' appears twice"));
  BOOST_TEST(contains(error_of([&] { SGD s({ParamGroup{{{"a", p}}}, ParamGroup{{{"b", p}}}}, {}); }),
                      "'b' is the same Variable"));
  BOOST_TEST(contains(error_of([&] { SGD s(one_group("a/b", p), {}); }), "'a/b' contains '/'"));
  BOOST_TEST(contains(error_of([&] { SGD s(one_group("", p), {}); }), "empty name"));
  BOOST_TEST(contains(error_of([&] { SGD s(one_group("u", Variable()), {}); }), "'u' is undefined"));
  BOOST_TEST(contains(error_of([&] { SGD s(one_group("h", Variable(zeros({2}, DType::bf16), true)), {}); }),
                      "'h' has dtype bf16"));

  // A gradient of the wrong shape or dtype: an error, and nothing is updated.
  Variable q = param({3.0});
  SGD opt({ParamGroup{{{"q", q}, {"p", p}}}}, {.lr = 0.1});
  set_grad(q, {1.0});
  p.set_grad(zeros({3}, DType::f64));
  BOOST_TEST(contains(error_of([&] { opt.step(); }), "gradient of 'p' has shape [3] but the parameter has shape [2]"));
  p.set_grad(zeros({2}, DType::f32));
  BOOST_TEST(contains(error_of([&] { opt.step(); }), "gradient of 'p' has dtype f32"));
  BOOST_TEST(q.data().item() == 3.0);
  BOOST_TEST(opt.step_count() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
