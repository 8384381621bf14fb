// The CUDA kernels of DyT, ScaleNorm, GroupNorm and BatchNorm (and cuDNN's batch normalization
// as a peer): each against the CPU reference in f64 on the same values, forward and backward,
// over shapes from 1 value to large ones with odd sizes; f32 within 1e-5 relative (max|diff| /
// max|ref|), bf16 within bf16 rounding, f64 within 1e-10. The Modules' gradients on the GPU (f64)
// against the CPU Modules' on the same data; two runs bit-identical. Without a GPU every GPU
// case skips with the reason; the first case runs everywhere.
#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "framework/cuda.h"
#include "norm/batch_norm/batch_norm.h"
#include "norm/dyt/dyt.h"
#include "norm/group_norm/group_norm.h"
#include "norm/scale_norm/scale_norm.h"
#include "tests/norm_test_util.h"
#include "tests/test_util.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/batch_norm/batch_norm_cuda.h"
#include "norm/dyt/dyt_cuda.h"
#include "norm/group_norm/group_norm_cuda.h"
#include "norm/scale_norm/scale_norm_cuda.h"
#endif
#ifdef NORMLAB_WITH_CUDNN
#include "norm/batch_norm/batch_norm_cudnn.h"
#endif

using namespace normlab;
using namespace normlab::testing;

namespace {

bool gpu_or_skip() {
  if (cuda_available()) return true;
  BOOST_TEST_MESSAGE("skipped: " + cuda_unavailable_reason());
  return false;
}

Tensor gpu(const Tensor& t) { return t.defined() ? to_device(t, Device::cuda()) : Tensor(); }
Tensor host(const Tensor& t) { return t.defined() ? to_device(t, Device::cpu()) : Tensor(); }

// The f64 copy of t's values rounded to dtype: what a kernel of that dtype reads.
Tensor rounded(const Tensor& t64, DType dtype) { return t64.to(dtype).to(DType::f64); }

constexpr DType kDtypes[] = {DType::f32, DType::bf16, DType::f64};

// Outputs of dtype: f32 1e-5, bf16 two bf16 ulps (2^-7), f64 1e-10 (relative to max|ref|).
double tol(DType d) { return d == DType::f64 ? 1e-10 : d == DType::bf16 ? 0x1p-7 : 1e-5; }

double worst = 0;  // printed by the last case

// Checks max|got - ref| / max(max|ref|, floor) <= tolerance; got is on the GPU, ref an f64 CPU
// tensor. The floor is the size of the terms a result is made of where they cancel (dx of a
// norm over 2 values, a sum of terms of both signs), so rounding at that size is allowed.
void expect_close(const std::string& what, const Tensor& got, const Tensor& ref, double tolerance, double floor = 0.0) {
  BOOST_REQUIRE_MESSAGE(got.defined() && ref.defined(), what << ": undefined result");
  BOOST_REQUIRE_MESSAGE(got.shape() == ref.shape(),
                        what << ": shape " << to_string(got.shape()) << " vs " << to_string(ref.shape()));
  const double diff = max_abs(sub(host(got).to(DType::f64), ref.to(DType::f64)));
  const double scale = std::max(max_abs(ref), floor);
  const double e = scale > 0 ? diff / scale : diff;
  worst = std::max(worst, e / tolerance);
  BOOST_CHECK_MESSAGE(e <= tolerance, what << ": max rel err " << e << " > " << tolerance);
}

// sqrt(sum of t^2) (t on the CPU): the size of a sum of t's elements with random signs.
double l2(const Tensor& t) {
  double s = 0;
  for (double v : t.to(DType::f64).contiguous().to_vector<double>()) s += v * v;
  return std::sqrt(s);
}

// The floor of a per-channel column sum of dy-sized terms: the root-mean-square column norm.
double column_floor(const Tensor& dy, int64_t C) { return l2(dy) / std::sqrt(double(C)); }

// The floor of dx = rstd * (dxhat - mean terms): the size of rstd * dxhat.
double dx_floor(const Tensor& rstd, const Tensor& dy, const Tensor& gamma) {
  return max_abs(rstd) * max_abs(dy) * (gamma.defined() ? max_abs(gamma) : 1.0);
}

// True when a and b hold the same bytes (both on the GPU or the CPU).
bool bit_identical(const Tensor& a, const Tensor& b) {
  const Tensor ha = host(a).contiguous(), hb = host(b).contiguous();
  return ha.shape() == hb.shape() && ha.dtype() == hb.dtype() &&
         std::memcmp(ha.raw_data(), hb.raw_data(), size_t(ha.numel()) * ha.element_size()) == 0;
}

std::string label(const char* what, DType d, const Shape& s) {
  return std::string(what) + " " + dtype_name(d) + " " + to_string(s);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_norm_channels)

// Runs everywhere: without a GPU the reason is stated; with CUDA built, the CUDA entry points
// refuse CPU tensors with a message naming the problem.
BOOST_AUTO_TEST_CASE(cuda_entry_points_state_why_or_refuse_cpu_tensors) {
  if (!cuda_available()) {
    BOOST_TEST(!cuda_unavailable_reason().empty());
    BOOST_TEST_MESSAGE("no GPU: " + cuda_unavailable_reason());
  } else {
    BOOST_TEST(cuda_unavailable_reason().empty());
  }
#ifdef NORMLAB_WITH_CUDA
  const Tensor x = ones({4, 3});
  const std::string e1 =
      error_of([&] { batch_norm_forward_cuda(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); });
  BOOST_TEST(contains(e1, "must be a CUDA tensor"), e1);
  const std::string e2 = error_of([&] { scale_norm_forward_cuda(x, Tensor(), 1e-5); });
  BOOST_TEST(contains(e2, "must be a CUDA tensor"), e2);
  const std::string e3 = error_of([&] { group_norm_forward_cuda(x, Tensor(), Tensor(), 3, 1e-5); });
  BOOST_TEST(contains(e3, "must be a CUDA tensor"), e3);
  const std::string e4 = error_of([&] { dyt_forward_cuda(x, ones({1}), ones({3}), zeros({3}), false); });
  BOOST_TEST(contains(e4, "must be a CUDA tensor"), e4);
#endif
}

BOOST_AUTO_TEST_CASE(dyt_matches_cpu) {
  if (!gpu_or_skip()) return;
  Generator gen(11);
  const std::vector<Shape> shapes{{1, 1}, {1, 5}, {3, 7}, {2, 3, 6}, {37, 65}, {129, 1000}, {2048, 1024}};
  for (DType d : kDtypes)
    for (const Shape& s : shapes)
      for (bool identity : {false, true}) {
        const int64_t N = s.back();
        const Tensor x = rounded(randn(s, gen, DType::f64, 0.0, 2.0), d), dy = rounded(randn(s, gen, DType::f64), d);
        const Tensor alpha = rounded(full({1}, 0.7, DType::f64), d);
        const Tensor gamma = rounded(randn({N}, gen, DType::f64, 1.0, 0.5), d),
                     beta = rounded(randn({N}, gen, DType::f64), d);
        const std::string name = label(identity ? "dyt(identity)" : "dyt", d, s);
        expect_close(name + " y",
                     dyt_forward(gpu(x.to(d)), gpu(alpha.to(d)), gpu(gamma.to(d)), gpu(beta.to(d)), identity),
                     dyt_forward(x, alpha, gamma, beta, identity), tol(d));
        const DyTGrads ref = dyt_backward(dy, x, alpha, gamma, identity, true, true, true, true);
        const DyTGrads got = dyt_backward(gpu(dy.to(d)), gpu(x.to(d)), gpu(alpha.to(d)), gpu(gamma.to(d)), identity,
                                          true, true, true, true);
        expect_close(name + " dx", got.dx, ref.dx, tol(d));
        // dalpha = sum(du * x) = sum(dx * x) / alpha, terms of both signs.
        const double dalpha_floor = l2(mul(ref.dx, x)) / 0.7;
        expect_close(name + " dalpha", got.dalpha, ref.dalpha, tol(d), dalpha_floor);
        expect_close(name + " dgamma", got.dgamma, ref.dgamma, tol(d), column_floor(dy, N));
        expect_close(name + " dbeta", got.dbeta, ref.dbeta, tol(d), column_floor(dy, N));
        // dx alone (its own kernel) and the parameters alone.
        const DyTGrads dx_only = dyt_backward(gpu(dy.to(d)), gpu(x.to(d)), gpu(alpha.to(d)), gpu(gamma.to(d)), identity,
                                              true, false, false, false);
        BOOST_TEST(!dx_only.dalpha.defined());
        expect_close(name + " dx alone", dx_only.dx, ref.dx, tol(d));
        const DyTGrads params = dyt_backward(gpu(dy.to(d)), gpu(x.to(d)), gpu(alpha.to(d)), gpu(gamma.to(d)), identity,
                                             false, true, false, true);
        BOOST_TEST(!params.dx.defined());
        expect_close(name + " dalpha alone", params.dalpha, ref.dalpha, tol(d), dalpha_floor);
      }
}

BOOST_AUTO_TEST_CASE(scale_norm_matches_cpu) {
  if (!gpu_or_skip()) return;
  Generator gen(12);
  // 4097 > 2048 takes the block-per-row kernel.
  const std::vector<Shape> shapes{{1, 1}, {1, 5}, {3, 7}, {2, 3, 6}, {37, 65}, {33, 4097}, {2048, 1024}};
  for (DType d : kDtypes)
    for (const Shape& s : shapes)
      for (bool with_g : {true, false}) {
        const Tensor x = rounded(randn(s, gen, DType::f64), d), dy = rounded(randn(s, gen, DType::f64), d);
        const Tensor g = with_g ? rounded(full({1}, 1.7, DType::f64), d) : Tensor();
        const std::string name = label(with_g ? "scale_norm" : "scale_norm(no g)", d, s);
        const ScaleNormStats ref = scale_norm_forward(x, g, 1e-5);
        const ScaleNormStats got = scale_norm_forward(gpu(x.to(d)), gpu(g.defined() ? g.to(d) : g), 1e-5);
        expect_close(name + " y", got.y, ref.y, tol(d));
        expect_close(name + " norm", got.norm, ref.norm, d == DType::f64 ? 1e-10 : 1e-5);
        const ScaleNormGrads rg = scale_norm_backward(dy, x, g, ref.norm, 1e-5, true, with_g);
        const ScaleNormGrads gg = scale_norm_backward(gpu(dy.to(d)), gpu(x.to(d)), gpu(g.defined() ? g.to(d) : g),
                                                      got.norm, 1e-5, true, with_g);
        // dx = (g / d) (dy - xhat sum(dy xhat)) cancels for N = 1; dg sums dy * xhat of both signs.
        const double gain = with_g ? 1.7 : 1.0;
        double min_norm = 1e300;
        for (double v : ref.norm.contiguous().to_vector<double>()) min_norm = std::min(min_norm, std::max(v, 1e-5));
        const double xhat_l2 = l2(mul(dy, ref.y)) / gain;
        expect_close(name + " dx", gg.dx, rg.dx, tol(d), gain * max_abs(dy) / min_norm);
        if (with_g) expect_close(name + " dg", gg.dg, rg.dg, tol(d), xhat_l2);
      }
  // Rows whose norm is below eps take the clamped branch (dx = g / eps * dy).
  const Tensor x = full({3, 4}, 1e-7, DType::f64), dy = randn({3, 4}, gen, DType::f64), g = full({1}, 2.0, DType::f64);
  const ScaleNormStats ref = scale_norm_forward(x, g, 1e-3);
  const ScaleNormStats got = scale_norm_forward(gpu(x), gpu(g), 1e-3);
  expect_close("scale_norm clamped y", got.y, ref.y, 1e-10);
  const ScaleNormGrads rg = scale_norm_backward(dy, x, g, ref.norm, 1e-3, true, true);
  const ScaleNormGrads gg = scale_norm_backward(gpu(dy), gpu(x), gpu(g), got.norm, 1e-3, true, true);
  expect_close("scale_norm clamped dx", gg.dx, rg.dx, 1e-10);
  expect_close("scale_norm clamped dg", gg.dg, rg.dg, 1e-10);
}

BOOST_AUTO_TEST_CASE(group_norm_matches_cpu) {
  if (!gpu_or_skip()) return;
  Generator gen(13);
  struct Case {
    Shape shape;
    int64_t G;
  };
  const std::vector<Case> cases{{{1, 1}, 1},    {{1, 4}, 2},        {{5, 12}, 12},      {{1, 3, 7}, 1},
                                {{3, 6, 5}, 3}, {{2, 8, 3, 3}, 4},  {{4, 32, 1000}, 8}, {{7, 9, 2}, 9},
                                {{64, 33}, 3},  {{2, 16, 4097}, 16}};
  for (DType d : kDtypes)
    for (const Case& c : cases)
      for (bool affine : {true, false}) {
        const int64_t C = c.shape[1];
        const Tensor x = rounded(randn(c.shape, gen, DType::f64, 0.5, 2.0), d);
        const Tensor dy = rounded(randn(c.shape, gen, DType::f64), d);
        const Tensor gamma = affine ? rounded(randn({C}, gen, DType::f64, 1.0, 0.5), d) : Tensor();
        const Tensor beta = affine ? rounded(randn({C}, gen, DType::f64), d) : Tensor();
        auto dev = [&](const Tensor& t) { return t.defined() ? gpu(t.to(d)) : Tensor(); };
        const std::string name =
            label(affine ? "group_norm" : "group_norm(no affine)", d, c.shape) + " G=" + std::to_string(c.G);
        const GroupNormStats ref = group_norm_forward(x, gamma, beta, c.G, 1e-5);
        const GroupNormStats got = group_norm_forward(dev(x), dev(gamma), dev(beta), c.G, 1e-5);
        const double stat_tol = d == DType::f64 ? 1e-10 : 1e-5;
        expect_close(name + " y", got.y, ref.y, tol(d));
        expect_close(name + " mean", got.mean, ref.mean, stat_tol);
        expect_close(name + " rstd", got.rstd, ref.rstd, stat_tol);
        const GroupNormGrads rg = group_norm_backward(dy, x, gamma, ref.mean, ref.rstd, true, affine, affine);
        const GroupNormGrads gg =
            group_norm_backward(dev(dy), dev(x), dev(gamma), got.mean, got.rstd, true, affine, affine);
        expect_close(name + " dx", gg.dx, rg.dx, tol(d), dx_floor(ref.rstd, dy, gamma));
        if (affine) {
          expect_close(name + " dgamma", gg.dgamma, rg.dgamma, tol(d), column_floor(dy, C));
          expect_close(name + " dbeta", gg.dbeta, rg.dbeta, tol(d), column_floor(dy, C));
        }
      }
}

BOOST_AUTO_TEST_CASE(batch_norm_matches_cpu) {
  if (!gpu_or_skip()) return;
  Generator gen(14);
  // (N, C) reduces over N across C; (N, C, L) through row sums (L <= 4: a thread per row).
  const std::vector<Shape> shapes{{2, 1},    {5, 3},     {1, 4, 9},      {7, 3, 5},    {257, 3, 2},
                                  {64, 129}, {4096, 33}, {16, 64, 1000}, {3, 5, 4097}, {8192, 256}};
  for (DType d : kDtypes)
    for (const Shape& s : shapes)
      for (bool affine : {true, false}) {
        const int64_t C = s[1];
        const Tensor x = rounded(randn(s, gen, DType::f64, 0.5, 2.0), d);
        const Tensor dy = rounded(randn(s, gen, DType::f64), d);
        const Tensor gamma = affine ? rounded(randn({C}, gen, DType::f64, 1.0, 0.5), d) : Tensor();
        const Tensor beta = affine ? rounded(randn({C}, gen, DType::f64), d) : Tensor();
        const Tensor rm0 = rounded(randn({C}, gen, DType::f64, 0.0, 0.1), d);
        const Tensor rv0 = rounded(uniform({C}, gen, 0.5, 1.5, DType::f64), d);
        auto dev = [&](const Tensor& t) { return t.defined() ? gpu(t.to(d)) : Tensor(); };
        const double stat_tol = d == DType::f64 ? 1e-10 : 1e-5;
        const std::string name = label(affine ? "batch_norm" : "batch_norm(no affine)", d, s);
        // Training: batch statistics and the running-statistics update.
        const Tensor rm = rm0.clone(), rv = rv0.clone();
        const BatchNormStats ref = batch_norm_forward(x, gamma, beta, rm, rv, true, 0.1, 1e-5);
        const Tensor grm = dev(rm0), grv = dev(rv0);
        const BatchNormStats got = batch_norm_forward(dev(x), dev(gamma), dev(beta), grm, grv, true, 0.1, 1e-5);
        expect_close(name + " train y", got.y, ref.y, tol(d));
        expect_close(name + " train mean", got.mean, ref.mean, stat_tol);
        expect_close(name + " train rstd", got.rstd, ref.rstd, stat_tol);
        // The running statistics keep x's dtype (bf16 rounds them).
        expect_close(name + " running_mean", grm, rm, d == DType::bf16 ? tol(d) : stat_tol);
        expect_close(name + " running_var", grv, rv, d == DType::bf16 ? tol(d) : stat_tol);
        const BatchNormGrads rg = batch_norm_backward(dy, x, gamma, ref.mean, ref.rstd, true, true, affine, affine);
        const BatchNormGrads gg =
            batch_norm_backward(dev(dy), dev(x), dev(gamma), got.mean, got.rstd, true, true, affine, affine);
        expect_close(name + " train dx", gg.dx, rg.dx, tol(d), dx_floor(ref.rstd, dy, gamma));
        if (affine) {
          expect_close(name + " train dgamma", gg.dgamma, rg.dgamma, tol(d), column_floor(dy, C));
          expect_close(name + " train dbeta", gg.dbeta, rg.dbeta, tol(d), column_floor(dy, C));
        }
        // Eval: the running statistics, fixed in the backward.
        const BatchNormStats eref = batch_norm_forward(x, gamma, beta, rm0, rv0, false, 0.1, 1e-5);
        const BatchNormStats egot =
            batch_norm_forward(dev(x), dev(gamma), dev(beta), dev(rm0), dev(rv0), false, 0.1, 1e-5);
        expect_close(name + " eval y", egot.y, eref.y, tol(d));
        expect_close(name + " eval rstd", egot.rstd, eref.rstd, stat_tol);
        const BatchNormGrads erg = batch_norm_backward(dy, x, gamma, eref.mean, eref.rstd, false, true, affine, affine);
        const BatchNormGrads egg =
            batch_norm_backward(dev(dy), dev(x), dev(gamma), egot.mean, egot.rstd, false, true, affine, affine);
        expect_close(name + " eval dx", egg.dx, erg.dx, tol(d));
        if (affine) expect_close(name + " eval dgamma", egg.dgamma, erg.dgamma, tol(d), column_floor(dy, C));
      }
  // A large mean: the two-pass statistics stay exact in f64.
  const Tensor x = randn({33, 5, 7}, gen, DType::f64, 1e4, 1.0);
  const BatchNormStats ref = batch_norm_forward(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
  const BatchNormStats got = batch_norm_forward(gpu(x), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
  expect_close("batch_norm large mean y", got.y, ref.y, 1e-10);
}

// The Modules on the GPU (f64): outputs, parameter and input gradients, and BatchNorm's running
// statistics equal the CPU Modules' on the same data, through the autograd engine.
BOOST_AUTO_TEST_CASE(modules_gradients_on_gpu_match_cpu) {
  if (!gpu_or_skip()) return;
  Generator gen(15);
  auto move_params = [](Module& m) {
    for (auto& [name, p] : m.named_parameters()) p.data() = gpu(p.data());
  };
  // Runs the module on CPU and GPU with the same x and seed dy; compares y, dx and every parameter gradient.
  auto check = [&](const std::string& name, NormLayer& cpu_m, NormLayer& gpu_m, const Shape& s) {
    const Tensor x = randn(s, gen, DType::f64, 0.3, 1.5), dy = randn(s, gen, DType::f64);
    Variable xc(x.clone(), true), xg(gpu(x), true);
    const Variable yc = cpu_m.forward(xc), yg = gpu_m.forward(xg);
    expect_close(name + " y", yg.data(), yc.data(), 1e-10);
    yc.backward(dy);
    yg.backward(gpu(dy));
    expect_close(name + " dx", xg.grad(), xc.grad(), 1e-10);
    const auto pc = cpu_m.named_parameters(), pg = gpu_m.named_parameters();
    BOOST_REQUIRE_EQUAL(pc.size(), pg.size());
    for (size_t i = 0; i < pc.size(); ++i)
      expect_close(name + " d" + pc[i].first, pg[i].second.grad(), pc[i].second.grad(), 1e-10);
  };
  {
    DyT c(7, 0.6, false, DType::f64), g(7, 0.6, false, DType::f64);
    c.weight.data().copy_from(randn({7}, gen, DType::f64, 1.0, 0.3));
    g.weight.data().copy_from(c.weight.data());
    move_params(g);
    check("DyT", c, g, {5, 3, 7});
  }
  {
    ScaleNorm c(9, 1e-5, DType::f64), g(9, 1e-5, DType::f64);
    move_params(g);
    check("ScaleNorm", c, g, {4, 9});
  }
  {
    GroupNorm c(3, 6, 1e-5, true, DType::f64), g(3, 6, 1e-5, true, DType::f64);
    c.weight.data().copy_from(randn({6}, gen, DType::f64, 1.0, 0.3));
    g.weight.data().copy_from(c.weight.data());
    move_params(g);
    check("GroupNorm", c, g, {2, 6, 5});
    InstanceNorm ci(4, 1e-5, false, DType::f64), gi(4, 1e-5, false, DType::f64);
    check("InstanceNorm", ci, gi, {3, 4, 8});
  }
  for (const Shape& s : {Shape{6, 5}, Shape{4, 5, 3}}) {
    BatchNorm c(5, 1e-5, 0.1, true, DType::f64), g(5, 1e-5, 0.1, true, DType::f64);
    c.bias.data().copy_from(randn({5}, gen, DType::f64));
    g.bias.data().copy_from(c.bias.data());
    move_params(g);
    g.running_mean() = gpu(g.running_mean());
    g.running_var() = gpu(g.running_var());
    check("BatchNorm train " + to_string(s), c, g, s);
    expect_close("BatchNorm running_mean", g.running_mean(), c.running_mean(), 1e-12);
    expect_close("BatchNorm running_var", g.running_var(), c.running_var(), 1e-12);
    c.eval();
    g.eval();
    check("BatchNorm eval " + to_string(s), c, g, s);
  }
}

// Two runs of every kernel on the same input: bit-identical outputs, statistics and gradients.
BOOST_AUTO_TEST_CASE(kernels_are_deterministic) {
  if (!gpu_or_skip()) return;
  Generator gen(16);
  for (DType d : {DType::f32, DType::bf16}) {
    const Tensor x = gpu(randn({3001, 517}, gen, d)), dy = gpu(randn({3001, 517}, gen, d));
    const Tensor gamma = gpu(randn({517}, gen, d, 1.0, 0.5)), beta = gpu(randn({517}, gen, d));
    const Tensor alpha = gpu(full({1}, 0.8, d)), g = gpu(full({1}, 3.0, d));
    const std::string dn = dtype_name(d);
    {
      const DyTGrads a = dyt_backward(dy, x, alpha, gamma, false, true, true, true, true);
      const DyTGrads b = dyt_backward(dy, x, alpha, gamma, false, true, true, true, true);
      BOOST_CHECK_MESSAGE(bit_identical(a.dx, b.dx) && bit_identical(a.dalpha, b.dalpha) &&
                              bit_identical(a.dgamma, b.dgamma) && bit_identical(a.dbeta, b.dbeta),
                          "dyt backward " << dn);
    }
    {
      const ScaleNormStats f = scale_norm_forward(x, g, 1e-5);
      const ScaleNormGrads a = scale_norm_backward(dy, x, g, f.norm, 1e-5, true, true);
      const ScaleNormGrads b = scale_norm_backward(dy, x, g, f.norm, 1e-5, true, true);
      BOOST_CHECK_MESSAGE(bit_identical(a.dx, b.dx) && bit_identical(a.dg, b.dg), "scale_norm backward " << dn);
    }
    for (const Shape& s : {Shape{3001, 517}, Shape{41, 517, 73}}) {
      const Tensor xs = gpu(randn(s, gen, d)), dys = gpu(randn(s, gen, d));
      const BatchNormStats fa = batch_norm_forward(xs, gamma, beta, Tensor(), Tensor(), true, 0.1, 1e-5);
      const BatchNormStats fb = batch_norm_forward(xs, gamma, beta, Tensor(), Tensor(), true, 0.1, 1e-5);
      BOOST_CHECK_MESSAGE(
          bit_identical(fa.y, fb.y) && bit_identical(fa.mean, fb.mean) && bit_identical(fa.rstd, fb.rstd),
          "batch_norm forward " << dn << " " << to_string(s));
      const BatchNormGrads a = batch_norm_backward(dys, xs, gamma, fa.mean, fa.rstd, true, true, true, true);
      const BatchNormGrads b = batch_norm_backward(dys, xs, gamma, fa.mean, fa.rstd, true, true, true, true);
      BOOST_CHECK_MESSAGE(
          bit_identical(a.dx, b.dx) && bit_identical(a.dgamma, b.dgamma) && bit_identical(a.dbeta, b.dbeta),
          "batch_norm backward " << dn << " " << to_string(s));
    }
    {
      const Tensor xs = gpu(randn({6, 517, 99}, gen, d)), dys = gpu(randn({6, 517, 99}, gen, d));
      const Tensor gg = gpu(randn({517}, gen, d)), gb = gpu(randn({517}, gen, d));
      const GroupNormStats fa = group_norm_forward(xs, gg, gb, 11, 1e-5);
      const GroupNormStats fb = group_norm_forward(xs, gg, gb, 11, 1e-5);
      BOOST_CHECK_MESSAGE(bit_identical(fa.y, fb.y) && bit_identical(fa.rstd, fb.rstd), "group_norm forward " << dn);
      const GroupNormGrads a = group_norm_backward(dys, xs, gg, fa.mean, fa.rstd, true, true, true);
      const GroupNormGrads b = group_norm_backward(dys, xs, gg, fa.mean, fa.rstd, true, true, true);
      BOOST_CHECK_MESSAGE(
          bit_identical(a.dx, b.dx) && bit_identical(a.dgamma, b.dgamma) && bit_identical(a.dbeta, b.dbeta),
          "group_norm backward " << dn);
    }
  }
}

#ifdef NORMLAB_WITH_CUDNN
// cuDNN's batch normalization against the CUDA kernels (f32, and f64), training and inference
// forward, and the training backward; cuDNN's running statistics against the kernels'.
BOOST_AUTO_TEST_CASE(batch_norm_cudnn_parity) {
  if (!gpu_or_skip()) return;
  Generator gen(17);
  for (DType d : {DType::f32, DType::f64})
    for (const Shape& s : {Shape{2, 3}, Shape{64, 129}, Shape{7, 3, 5}, Shape{16, 64, 1000}, Shape{1, 5, 33}}) {
      const int64_t C = s[1];
      const double t = d == DType::f64 ? 1e-10 : 1e-5, tg = d == DType::f64 ? 1e-10 : 1e-4;
      const Tensor x = gpu(randn(s, gen, d, 0.5, 2.0)), dy = gpu(randn(s, gen, d));
      const Tensor gamma = gpu(randn({C}, gen, d, 1.0, 0.5)), beta = gpu(randn({C}, gen, d));
      const Tensor rm0 = randn({C}, gen, d, 0.0, 0.1), rv0 = uniform({C}, gen, 0.5, 1.5, d);
      const std::string name = label("cudnn batch_norm", d, s);
      const Tensor rm_k = gpu(rm0), rv_k = gpu(rv0), rm_c = gpu(rm0), rv_c = gpu(rv0);
      const BatchNormStats k = batch_norm_forward(x, gamma, beta, rm_k, rv_k, true, 0.1, 1e-5);
      const BatchNormStats c = batch_norm_forward_training_cudnn(x, gamma, beta, rm_c, rv_c, 0.1, 1e-5);
      const Tensor k64 = host(k.y).to(DType::f64);
      expect_close(name + " train y", c.y, k64, t);
      expect_close(name + " mean", c.mean, host(k.mean).to(DType::f64), t);
      expect_close(name + " rstd", c.rstd, host(k.rstd).to(DType::f64), t);
      expect_close(name + " running_mean", rm_c, host(rm_k).to(DType::f64), t);
      expect_close(name + " running_var", rv_c, host(rv_k).to(DType::f64), t);
      const BatchNormGrads kg = batch_norm_backward(dy, x, gamma, k.mean, k.rstd, true, true, true, true);
      const BatchNormGrads cg = batch_norm_backward_cudnn(dy, x, gamma, c.mean, c.rstd, 1e-5);
      const Tensor hdy = host(dy);
      expect_close(name + " dx", cg.dx, host(kg.dx).to(DType::f64), tg, dx_floor(host(k.rstd), hdy, host(gamma)));
      expect_close(name + " dgamma", cg.dgamma, host(kg.dgamma).to(DType::f64), tg, column_floor(hdy, C));
      expect_close(name + " dbeta", cg.dbeta, host(kg.dbeta).to(DType::f64), tg, column_floor(hdy, C));
      const BatchNormStats ke = batch_norm_forward(x, gamma, beta, gpu(rm0), gpu(rv0), false, 0.1, 1e-5);
      const Tensor ce = batch_norm_forward_inference_cudnn(x, gamma, beta, gpu(rm0), gpu(rv0), 1e-5);
      expect_close(name + " inference y", ce, host(ke.y).to(DType::f64), t);
    }
}
#endif

BOOST_AUTO_TEST_CASE(report_worst_error) {
  if (!cuda_available()) return;
  std::printf("cuda norm channels: worst error / tolerance over all checks %.2f\n", worst);
}

BOOST_AUTO_TEST_SUITE_END()
