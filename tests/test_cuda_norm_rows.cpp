// CUDA LayerNorm, RMSNorm and fused residual-add + norm kernels against the CPU kernels
// (forward and backward, f32 / bf16 / f64, rows from 1x1 to 32768x8192 incl. odd N and N=1,
// misaligned rows), determinism, the Modules on GPU tensors, and cuDNN parity. Without a GPU
// (or a CUDA build) each GPU case skips with the reason.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "framework/cuda.h"
#include "norm/fused_add_norm/fused_add_norm.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/rms_norm/rms_norm.h"
#include "tests/test_util.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/fused_add_norm/fused_add_norm_cuda.h"
#include "norm/layer_norm/layer_norm_cuda.h"
#include "norm/rms_norm/rms_norm_cuda.h"
#endif
#ifdef NORMLAB_WITH_CUDNN
#include "norm/layer_norm/layer_norm_cudnn.h"
#endif

using namespace normlab;

namespace {

// True (after logging the reason) when the GPU cases must skip.
bool skip_without_gpu() {
  if (cuda_available()) return false;
  BOOST_TEST_MESSAGE("skipped: " + cuda_unavailable_reason());
  return true;
}

#ifdef NORMLAB_WITH_CUDA

Tensor gpu(const Tensor& t) { return t.defined() ? to_device(t, Device::cuda()) : Tensor(); }
Tensor cpu(const Tensor& t) { return t.defined() ? to_device(t, Device::cpu()) : Tensor(); }
// A CPU copy of t in f64 (from any device and float dtype).
std::vector<double> host_values(const Tensor& t) { return cpu(t).to(DType::f64).to_vector<double>(); }

// Checks a GPU result against a CPU reference: f32 and f64 normwise (max |diff| / max |ref|
// <= tol), bf16 elementwise within bf16 rounding (2^-7 |ref| + 2^-8 max |ref|).
void expect_close(const Tensor& got, const Tensor& ref, DType dtype, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(got.defined() && ref.defined(), what << ": undefined result");
  BOOST_REQUIRE_MESSAGE(got.numel() == ref.numel(), what << ": " << got.numel() << " vs " << ref.numel());
  const std::vector<double> a = host_values(got), b = host_values(ref);
  double max_ref = 0, max_diff = 0, worst = 0;
  for (double v : b) max_ref = std::max(max_ref, std::abs(v));
  bool finite = true;
  for (size_t i = 0; i < a.size(); ++i) {
    finite = finite && std::isfinite(a[i]);
    const double d = std::abs(a[i] - b[i]);
    max_diff = std::max(max_diff, d);
    worst = std::max(worst, d / (std::ldexp(std::abs(b[i]), -7) + std::ldexp(max_ref, -8) + 1e-30));
  }
  BOOST_CHECK_MESSAGE(finite, what << ": non-finite values");
  if (dtype == DType::bf16) {
    BOOST_CHECK_MESSAGE(worst <= 1.0, what << ": bf16 error " << worst << " x its bound (max diff " << max_diff << ")");
  } else {
    const double tol = dtype == DType::f64 ? 1e-12 : 1e-5;
    const double rel = max_diff / std::max(max_ref, 1e-30);
    BOOST_CHECK_MESSAGE(rel <= tol, what << ": relative error " << rel << " > " << tol);
  }
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  const Tensor ha = cpu(a), hb = cpu(b);
  if (ha.numel() != hb.numel() || ha.dtype() != hb.dtype()) return false;
  const auto* pa = static_cast<const unsigned char*>(ha.contiguous().raw_data());
  const auto* pb = static_cast<const unsigned char*>(hb.contiguous().raw_data());
  return std::equal(pa, pa + ha.numel() * int64_t(ha.element_size()), pb);
}

// Random inputs in `dtype` (generated in f32, rounded), with a mean offset so that the
// centering matters.
Tensor make(const Shape& s, Generator& gen, DType dtype, double mean = 0.0, double std = 1.0) {
  return randn(s, gen, DType::f32, mean, std).to(dtype);
}

// The dtype of the CPU reference for a GPU dtype: f64 for f64, f32 otherwise (for bf16 the
// reference runs on the bf16 values widened to f32, unrounded, to bound the GPU's own rounding).
DType ref_dtype(DType d) { return d == DType::f64 ? DType::f64 : DType::f32; }

struct Case {
  int64_t M, N;
};
const std::vector<Case> kShapes{{1, 1},    {1, 2},    {3, 1},    {7, 5},    {2, 31},   {4, 33},   {5, 127},
                                {16, 128}, {3, 255},  {9, 256},  {17, 1000}, {8, 1023}, {64, 1024}, {5, 1025},
                                {3, 2047}, {4, 3000}, {2, 4096}, {3, 8191}, {2, 16384}, {3, 16385}, {2, 65536},
                                {4097, 64}};

std::string label(const char* op, DType d, int64_t M, int64_t N) {
  return std::string(op) + " " + dtype_name(d) + " " + std::to_string(M) + "x" + std::to_string(N);
}

void check_layer_norm(int64_t M, int64_t N, DType d, Generator& gen, bool misaligned = false) {
  const std::string who = label("layer_norm", d, M, N) + (misaligned ? " (misaligned)" : "");
  Tensor x = make({M, N}, gen, d, 3.0), dy = make({M, N}, gen, d);
  const Tensor gamma = make({N}, gen, d, 1.0, 0.5), beta = make({N}, gen, d);
  Tensor gx = gpu(x), gdy = gpu(dy);
  if (misaligned) {  // rows start 1 element past a 16-byte boundary: the scalar path
    Tensor big = gpu(make({M * N + 1}, gen, d));
    Tensor big_dy = gpu(make({M * N + 1}, gen, d));
    gx = big.narrow(0, 1, M * N).view({M, N});
    gdy = big_dy.narrow(0, 1, M * N).view({M, N});
    x = cpu(gx);
    dy = cpu(gdy);
  }
  const DType rd = ref_dtype(d);
  const LayerNormStats ref = layer_norm_forward(x.to(rd), gamma.to(rd), beta.to(rd), 1e-5);
  const LayerNormStats out = layer_norm_forward(gx, gpu(gamma), gpu(beta), 1e-5);
  expect_close(out.y, ref.y, d, who + " y");
  expect_close(out.mean, ref.mean, rd, who + " mean");
  expect_close(out.rstd, ref.rstd, rd, who + " rstd");
  const LayerNormGrads rg = layer_norm_backward(dy.to(rd), x.to(rd), gamma.to(rd), ref.mean, ref.rstd, true, true, true);
  const LayerNormGrads g = layer_norm_backward(gdy, gx, gpu(gamma), out.mean, out.rstd, true, true, true);
  expect_close(g.dx, rg.dx, d, who + " dx");
  expect_close(g.dgamma, rg.dgamma, d, who + " dgamma");
  expect_close(g.dbeta, rg.dbeta, d, who + " dbeta");
  // Optional gradients and parameters: dx only without gamma/beta; partials only.
  const LayerNormStats plain = layer_norm_forward(gx, Tensor(), Tensor(), 1e-5);
  const LayerNormStats plain_ref = layer_norm_forward(x.to(rd), Tensor(), Tensor(), 1e-5);
  expect_close(plain.y, plain_ref.y, d, who + " y (no affine)");
  const LayerNormGrads g2 = layer_norm_backward(gdy, gx, Tensor(), plain.mean, plain.rstd, true, false, false);
  const LayerNormGrads rg2 = layer_norm_backward(dy.to(rd), x.to(rd), Tensor(), plain_ref.mean, plain_ref.rstd, true,
                                                 false, false);
  expect_close(g2.dx, rg2.dx, d, who + " dx (no affine)");
  const LayerNormGrads g3 = layer_norm_backward(gdy, gx, gpu(gamma), out.mean, out.rstd, false, true, false);
  BOOST_CHECK(!g3.dx.defined() && !g3.dbeta.defined());
  expect_close(g3.dgamma, rg.dgamma, d, who + " dgamma alone");
}

void check_rms_norm(int64_t M, int64_t N, DType d, bool unit_offset, Generator& gen) {
  const std::string who = label(unit_offset ? "rms_norm(unit_offset)" : "rms_norm", d, M, N);
  const Tensor x = make({M, N}, gen, d, 0.5), dy = make({M, N}, gen, d);
  const Tensor gamma = make({N}, gen, d, unit_offset ? 0.0 : 1.0, 0.5);
  const DType rd = ref_dtype(d);
  const RMSNormStats ref = rms_norm_forward(x.to(rd), gamma.to(rd), 1e-6, unit_offset);
  const RMSNormStats out = rms_norm_forward(gpu(x), gpu(gamma), 1e-6, unit_offset);
  expect_close(out.y, ref.y, d, who + " y");
  expect_close(out.rrms, ref.rrms, rd, who + " rrms");
  const RMSNormGrads rg = rms_norm_backward(dy.to(rd), x.to(rd), gamma.to(rd), ref.rrms, unit_offset, true, true);
  const RMSNormGrads g = rms_norm_backward(gpu(dy), gpu(x), gpu(gamma), out.rrms, unit_offset, true, true);
  expect_close(g.dx, rg.dx, d, who + " dx");
  expect_close(g.dgamma, rg.dgamma, d, who + " dgamma");
}

void check_fused(int64_t M, int64_t N, DType d, Generator& gen) {
  const std::string who = label("add_norm", d, M, N);
  const Tensor x = make({M, N}, gen, d, 2.0), r = make({M, N}, gen, d), dy = make({M, N}, gen, d),
               dh = make({M, N}, gen, d);
  const Tensor gamma = make({N}, gen, d, 1.0, 0.5), beta = make({N}, gen, d);
  const DType rd = ref_dtype(d);
  // h is rounded to d on the GPU; the reference normalizes the GPU's h (checked separately).
  const AddLayerNormStats out = add_layer_norm_forward(gpu(x), gpu(r), gpu(gamma), gpu(beta), 1e-5);
  {  // h = x + r, rounded once to d
    const std::vector<double> hx = host_values(x), hr = host_values(r), hh = host_values(out.h);
    const double tol = d == DType::bf16 ? 1.0 / 256 : d == DType::f32 ? 1e-7 : 1e-15;
    double worst = 0;
    for (size_t i = 0; i < hh.size(); ++i) {
      const double want = hx[i] + hr[i];
      worst = std::max(worst, std::abs(hh[i] - want) / std::max(std::abs(want), 1e-30));
    }
    BOOST_CHECK_MESSAGE(worst <= tol, who << " h relative error " << worst << " > " << tol);
  }
  const Tensor h = cpu(out.h).to(rd);
  const LayerNormStats ref = layer_norm_forward(h, gamma.to(rd), beta.to(rd), 1e-5);
  expect_close(out.y, ref.y, d, who + " layer y");
  const AddLayerNormGrads g = add_layer_norm_backward(gpu(dh), gpu(dy), out.h, gpu(gamma), out.mean, out.rstd, true,
                                                      true, true);
  const AddLayerNormGrads rg = add_layer_norm_backward(dh.to(rd), dy.to(rd), h, gamma.to(rd), ref.mean, ref.rstd,
                                                       true, true, true);
  expect_close(g.dh_total, rg.dh_total, d, who + " layer dh_total");
  expect_close(g.dgamma, rg.dgamma, d, who + " layer dgamma");
  expect_close(g.dbeta, rg.dbeta, d, who + " layer dbeta");
  const AddLayerNormGrads g_no_dh = add_layer_norm_backward(Tensor(), gpu(dy), out.h, gpu(gamma), out.mean, out.rstd,
                                                            true, false, false);
  const AddLayerNormGrads rg_no_dh = add_layer_norm_backward(Tensor(), dy.to(rd), h, gamma.to(rd), ref.mean, ref.rstd,
                                                             true, false, false);
  expect_close(g_no_dh.dh_total, rg_no_dh.dh_total, d, who + " layer dh_total (no dh)");

  const AddRMSNormStats rout = add_rms_norm_forward(gpu(x), gpu(r), gpu(gamma), 1e-6, true);
  const Tensor rh = cpu(rout.h).to(rd);
  const RMSNormStats rref = rms_norm_forward(rh, gamma.to(rd), 1e-6, true);
  expect_close(rout.y, rref.y, d, who + " rms y");
  const AddRMSNormGrads rgg = add_rms_norm_backward(gpu(dh), gpu(dy), rout.h, gpu(gamma), rout.rrms, true, true, true);
  const AddRMSNormGrads rrg = add_rms_norm_backward(dh.to(rd), dy.to(rd), rh, gamma.to(rd), rref.rrms, true, true, true);
  expect_close(rgg.dh_total, rrg.dh_total, d, who + " rms dh_total");
  expect_close(rgg.dgamma, rrg.dgamma, d, who + " rms dgamma");
}

#endif  // NORMLAB_WITH_CUDA

}  // namespace

BOOST_AUTO_TEST_SUITE(cuda_norm_rows)

// Runs everywhere: without a GPU the reason is non-empty; the CUDA entry points refuse CPU tensors.
BOOST_AUTO_TEST_CASE(entry_points_refuse_cpu_tensors) {
  if (!cuda_available()) BOOST_CHECK(!cuda_unavailable_reason().empty());
  else BOOST_CHECK(cuda_unavailable_reason().empty());
#ifdef NORMLAB_WITH_CUDA
  const Tensor x = ones({2, 4}), g = ones({4});
  BOOST_CHECK_THROW(layer_norm_forward_cuda(x, g, g, 1e-5), Error);
  BOOST_CHECK_THROW(rms_norm_forward_cuda(x, g, 1e-6, false), Error);
  BOOST_CHECK_THROW(add_layer_norm_forward_cuda(x, x, g, g, 1e-5), Error);
  BOOST_CHECK_THROW(add_rms_norm_forward_cuda(x, x, g, 1e-6, false), Error);
  BOOST_CHECK_THROW(layer_norm_backward_cuda(x, x, g, g, g, true, true, true), Error);
  BOOST_CHECK_THROW(rms_norm_backward_cuda(x, x, g, g, false, true, true), Error);
#else
  BOOST_CHECK(!cuda_available());
#endif
}

BOOST_AUTO_TEST_CASE(layer_norm_matches_cpu) {
  if (skip_without_gpu()) return;
#ifdef NORMLAB_WITH_CUDA
  Generator gen(11);
  for (DType d : {DType::f32, DType::bf16, DType::f64})
    for (const Case& c : kShapes) check_layer_norm(c.M, c.N, d, gen);
  for (DType d : {DType::f32, DType::bf16}) {
    check_layer_norm(3, 1024, d, gen, true);
    check_layer_norm(5, 4096, d, gen, true);
    check_layer_norm(2, 20000, d, gen, true);
  }
  check_layer_norm(32768, 8192, DType::f32, gen);
#endif
}

BOOST_AUTO_TEST_CASE(rms_norm_matches_cpu) {
  if (skip_without_gpu()) return;
#ifdef NORMLAB_WITH_CUDA
  Generator gen(12);
  for (DType d : {DType::f32, DType::bf16, DType::f64})
    for (const Case& c : kShapes)
      for (bool unit_offset : {false, true}) check_rms_norm(c.M, c.N, d, unit_offset, gen);
  check_rms_norm(32768, 8192, DType::f32, false, gen);
#endif
}

BOOST_AUTO_TEST_CASE(fused_add_norm_matches_cpu) {
  if (skip_without_gpu()) return;
#ifdef NORMLAB_WITH_CUDA
  Generator gen(13);
  for (DType d : {DType::f32, DType::bf16, DType::f64})
    for (const Case& c : kShapes) check_fused(c.M, c.N, d, gen);
#endif
}

// Two runs of each backward give bit-identical dx, dgamma and dbeta (no atomics anywhere).
BOOST_AUTO_TEST_CASE(backward_is_deterministic) {
  if (skip_without_gpu()) return;
#ifdef NORMLAB_WITH_CUDA
  Generator gen(14);
  for (DType d : {DType::f32, DType::bf16})
    for (const Case& c : std::vector<Case>{{4096, 128}, {2048, 1000}, {512, 4096}, {64, 16384}, {16, 40000}}) {
      const Tensor x = gpu(make({c.M, c.N}, gen, d, 1.0)), dy = gpu(make({c.M, c.N}, gen, d));
      const Tensor gamma = gpu(make({c.N}, gen, d, 1.0, 0.5)), beta = gpu(make({c.N}, gen, d));
      const LayerNormStats s1 = layer_norm_forward(x, gamma, beta, 1e-5), s2 = layer_norm_forward(x, gamma, beta, 1e-5);
      BOOST_CHECK(bit_equal(s1.y, s2.y));
      const LayerNormGrads a = layer_norm_backward(dy, x, gamma, s1.mean, s1.rstd, true, true, true);
      const LayerNormGrads b = layer_norm_backward(dy, x, gamma, s1.mean, s1.rstd, true, true, true);
      BOOST_CHECK_MESSAGE(bit_equal(a.dx, b.dx) && bit_equal(a.dgamma, b.dgamma) && bit_equal(a.dbeta, b.dbeta),
                          label("layer_norm", d, c.M, c.N) << ": two runs differ");
      const RMSNormStats r = rms_norm_forward(x, gamma, 1e-6, false);
      const RMSNormGrads ra = rms_norm_backward(dy, x, gamma, r.rrms, false, true, true);
      const RMSNormGrads rb = rms_norm_backward(dy, x, gamma, r.rrms, false, true, true);
      BOOST_CHECK_MESSAGE(bit_equal(ra.dx, rb.dx) && bit_equal(ra.dgamma, rb.dgamma),
                          label("rms_norm", d, c.M, c.N) << ": two runs differ");
    }
#endif
}

// The Modules on GPU tensors (f64): outputs and every gradient equal the same Module's on the
// CPU. (gradcheck perturbs inputs through host pointers, so it runs on the CPU copies; the
// CPU kernels are gradchecked in their own suites.)
BOOST_AUTO_TEST_CASE(modules_on_gpu_match_cpu_gradients) {
  if (skip_without_gpu()) return;
#ifdef NORMLAB_WITH_CUDA
  Generator gen(15);
  for (int64_t N : {1, 7, 64, 1000, 5000}) {
    const Tensor x = randn({3, 5, N}, gen, DType::f64, 0.5), seed = randn({3, 5, N}, gen, DType::f64);
    const Tensor w = randn({N}, gen, DType::f64, 1.0, 0.5), b = randn({N}, gen, DType::f64);
    LayerNorm cpu_ln(N, 1e-5, true, true, DType::f64), gpu_ln(N, 1e-5, true, true, DType::f64);
    cpu_ln.weight = Variable(w.clone(), true);
    cpu_ln.bias = Variable(b.clone(), true);
    gpu_ln.weight = Variable(gpu(w), true);
    gpu_ln.bias = Variable(gpu(b), true);
    Variable xc(x.clone(), true), xg(gpu(x), true);
    Variable yc = cpu_ln.forward(xc), yg = gpu_ln.forward(xg);
    yc.backward(seed);
    yg.backward(gpu(seed));
    const std::string who = "LayerNorm module N=" + std::to_string(N);
    expect_close(yg.data(), yc.data(), DType::f64, who + " y");
    expect_close(xg.grad(), xc.grad(), DType::f64, who + " dx");
    expect_close(gpu_ln.weight.grad(), cpu_ln.weight.grad(), DType::f64, who + " dweight");
    expect_close(gpu_ln.bias.grad(), cpu_ln.bias.grad(), DType::f64, who + " dbias");

    RMSNorm cpu_rms(N, 1e-6, true, true, DType::f64), gpu_rms(N, 1e-6, true, true, DType::f64);
    cpu_rms.weight = Variable(b.clone(), true);
    gpu_rms.weight = Variable(gpu(b), true);
    Variable xc2(x.clone(), true), xg2(gpu(x), true);
    Variable zc = cpu_rms.forward(xc2), zg = gpu_rms.forward(xg2);
    zc.backward(seed);
    zg.backward(gpu(seed));
    expect_close(zg.data(), zc.data(), DType::f64, "RMSNorm module y");
    expect_close(xg2.grad(), xc2.grad(), DType::f64, "RMSNorm module dx");
    expect_close(gpu_rms.weight.grad(), cpu_rms.weight.grad(), DType::f64, "RMSNorm module dweight");
  }
#endif
}

// cuDNN's CUDNN_LAYER_NORM (backend API) against ours, forward and backward.
BOOST_AUTO_TEST_CASE(layer_norm_matches_cudnn) {
  if (skip_without_gpu()) return;
#ifndef NORMLAB_WITH_CUDNN
  BOOST_TEST_MESSAGE("skipped: normlab was built without cuDNN");
#else
  Generator gen(16);
  for (DType d : {DType::f32, DType::bf16})
    for (const Case& c : std::vector<Case>{{8, 64}, {33, 1024}, {16, 4096}, {4, 16384}, {1024, 768}}) {
      const std::string who = label("cudnn layer_norm", d, c.M, c.N);
      const Tensor x = gpu(make({c.M, c.N}, gen, d, 1.0)), dy = gpu(make({c.M, c.N}, gen, d));
      const Tensor gamma = gpu(make({c.N}, gen, d, 1.0, 0.5)), beta = gpu(make({c.N}, gen, d));
      LayerNormStats ours, theirs;
      try {
        theirs = layer_norm_forward_cudnn(x, gamma, beta, 1e-5);
      } catch (const Error& e) {
        BOOST_TEST_MESSAGE("skipped: cuDNN has no layer norm engine here: " << e.what());
        continue;
      }
      ours = layer_norm_forward(x, gamma, beta, 1e-5);
      // Ours and cuDNN's differ by fp32 rounding; bf16 outputs by one bf16 rounding.
      expect_close(ours.y, theirs.y, d, who + " y");
      expect_close(ours.mean, theirs.mean, DType::f32, who + " mean");
      expect_close(ours.rstd, theirs.rstd, DType::f32, who + " rstd");
      const LayerNormGrads g = layer_norm_backward(dy, x, gamma, ours.mean, ours.rstd, true, true, true);
      const LayerNormGrads t = layer_norm_backward_cudnn(dy, x, gamma, ours.mean, ours.rstd, 1e-5);
      expect_close(g.dx, t.dx, d, who + " dx");
      expect_close(g.dgamma, t.dgamma, d, who + " dgamma");
      expect_close(g.dbeta, t.dbeta, d, who + " dbeta");
    }
#endif
}

BOOST_AUTO_TEST_SUITE_END()
