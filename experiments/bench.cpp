#include "experiments/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include <dnnl.hpp>

#include "autograd/module.h"
#include "autograd/ops.h"
#include "experiments/train.h"
#include "framework/allocator.h"
#include "framework/fast_math.h"
#include "framework/matmul.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "norm/batch_norm/batch_norm_onednn.h"
#include "norm/dyt/dyt.h"
#include "norm/fused_add_norm/fused_add_norm.h"
#include "norm/group_norm/group_norm.h"
#include "norm/layer_norm/layer_norm.h"
#include "norm/layer_norm/layer_norm_onednn.h"
#include "norm/rms_norm/rms_norm.h"
#include "norm/scale_norm/scale_norm.h"

namespace normlab {

namespace {

// Median seconds per call of f over `reps` timed calls (after one warm-up call).
double time_median(int reps, const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
  return t[reps / 2];
}

void bench_matmul() {
  std::printf("\nmatmul, f32 (GFLOP/s; median of repeated calls)\n");
  std::printf("(oneDNN: primitives cached by shape; no cache: created on every call)\n");
  std::printf("%-28s %12s %12s %12s %10s\n", "shape (a @ b)", "oneDNN", "no cache", "reference", "ref/oneDNN");
  struct Case { const char* name; Shape a, b; bool transpose_b; };
  const Case cases[] = {
      {"[512,32] @ [32,96]", {512, 32}, {32, 96}, false},
      {"[512,128] @ [96,128]^T", {512, 128}, {96, 128}, true},
      {"[16,64,16] @ [16,16,64]", {16, 64, 16}, {16, 16, 64}, false},
      {"[1024,256] @ [256,1024]", {1024, 256}, {256, 1024}, false},
  };
  Generator gen(0);
  for (const Case& c : cases) {
    const Tensor a = randn(c.a, gen), b0 = randn(c.b, gen);
    const Tensor b = c.transpose_b ? b0.transpose(-1, -2) : b0;
    const Tensor out = matmul(a, b);
    const double flops = 2.0 * double(out.numel()) * double(a.size(-1));
    const int reps = flops < 1e8 ? 200 : 20;
    const double t_dnnl = time_median(reps, [&] { matmul(a, b); });
    // Without caches: ours cleared and oneDNN's own primitive cache switched off.
    const int dnnl_capacity = dnnl::get_primitive_cache_capacity();
    dnnl::set_primitive_cache_capacity(0);
    const double t_cold = time_median(std::min(reps, 20), [&] {
      matmul_cache_clear();
      matmul(a, b);
    });
    dnnl::set_primitive_cache_capacity(dnnl_capacity);
    const double t_ref = time_median(std::min(reps, 20), [&] { matmul_ref(a, b); });
    std::printf("%-28s %12.2f %12.2f %12.2f %10.2f\n", c.name, flops / t_dnnl * 1e-9, flops / t_cold * 1e-9,
                flops / t_ref * 1e-9, t_ref / t_dnnl);
  }
}

void bench_engine() {
  std::printf("\nautograd engine: a chain of scalar ops, forward + backward\n");
  for (int n : {1000, 100000}) {
    Variable x(ones({}, DType::f32), true);
    const double t = time_median(5, [&] {
      Variable y = x;
      for (int i = 0; i < n; ++i) y = y * 1.0;
      y.backward();
      x.zero_grad();
    });
    std::printf("%7d ops: %8.2f ms, %6.2f us per op\n", n, t * 1e3, t * 1e6 / n);
  }
}

void bench_copy() {
  std::printf("\ncopies, f32 (GB/s read + written)\n");
  Generator gen(1);
  const Tensor x = randn({4096, 4096}, gen);
  Tensor y = empty_like(x);
  const double bytes = 2.0 * double(x.numel()) * 4.0;
  const double t_copy = time_median(10, [&] { y.copy_from(x); });
  const double t_tr = time_median(10, [&] { y.copy_from(x.transpose(0, 1)); });
  const double t_add = time_median(10, [&] { add(x, x); });
  std::printf("contiguous copy       %8.2f\n", bytes / t_copy * 1e-9);
  std::printf("transposing copy      %8.2f  (%.2fx of the copy)\n", bytes / t_tr * 1e-9, t_copy / t_tr);
  std::printf("add (x + x)           %8.2f  (%.2fx of the copy, counting one read)\n", bytes / t_add * 1e-9, t_copy / t_add);
}

void bench_exp() {
  std::printf("\nexp, f32, one thread (ns per element)\n");
  Generator gen(2);
  const Tensor x = uniform({1 << 16}, gen, -20.0, 20.0);
  Tensor y = empty_like(x);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const int64_t n = x.numel();
  const double t_fast = time_median(50, [&] { for (int64_t i = 0; i < n; ++i) yp[i] = exp_f32(xp[i]); });
  const double t_libm = time_median(50, [&] { for (int64_t i = 0; i < n; ++i) yp[i] = std::exp(xp[i]); });
  std::printf("exp_f32 %6.2f   libm expf %6.2f   (%.1fx)\n", t_fast * 1e9 / double(n), t_libm * 1e9 / double(n),
              t_libm / t_fast);
}

// Fastest seconds per call of each of fs, called in turn (after one warm-up call each) for up to
// `reps` rounds, stopping after ~2 s once 3 rounds are done. On a shared machine a call is slowed
// by whatever else runs (and a parallel region by a descheduled thread); the fastest of many is
// the least disturbed, and taking it for the kernel and its copy alike keeps their ratio fair.
std::vector<double> time_interleaved(int reps, const std::vector<std::function<void()>>& fs) {
  for (const auto& f : fs) f();
  std::vector<double> best(fs.size(), 1e300);
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    for (size_t k = 0; k < fs.size(); ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      fs[k]();
      best[k] = std::min(best[k], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    if (r >= 2 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > 2.0) break;
  }
  return best;
}

// A copy of n f32 values with the threads of the norm kernels (parallel_for in chunks of 16K
// values): the practical bandwidth limit of a kernel moving the same bytes.
struct Copy {
  Tensor src, dst;
  explicit Copy(int64_t n) : src(zeros({n}, DType::f32)), dst(zeros({n}, DType::f32)) {}
  void operator()() {
    const float* s = src.data<float>();
    float* d = dst.data<float>();
    parallel_for(0, src.numel(), 16384, [&](int64_t b, int64_t e) { std::memcpy(d + b, s + b, size_t(e - b) * 4); });
  }
};

// One norm in the kernel table: its forward and backward, each with the number of [M, N] tensors
// it reads and writes and, where oneDNN has the norm, oneDNN's primitive on the same tensors.
struct NormCase {
  const char* name;
  int fwd_tensors;
  std::function<void()> fwd, fwd_onednn;
  int bwd_tensors;
  std::function<void()> bwd, bwd_onednn;
};

// The fused causal attention at the toy models' shapes, with q, k and v head views of one packed
// [B, T, 3 H hd] projection as the model makes them: forward, and forward + backward, with warm
// caches and cold ones (each call after a write to every cache line of 128 MiB, as in a deep
// model's backward, whose inputs were written long before); the fastest call of each (see
// time_interleaved).
void bench_attention() {
  std::printf("\ncausal_attention, f32, %d threads (us per call)\n", num_threads());
  std::printf("%-18s %10s %10s %14s\n", "[B, H, T, hd]", "forward", "fwd+bwd", "fwd+bwd cold");
  Generator gen(5);
  std::vector<char> sweep(size_t(128) << 20);
  const Shape shapes[] = {{8, 2, 64, 16}, {8, 2, 64, 32}, {8, 2, 64, 64}, {8, 2, 128, 16}, {8, 2, 256, 16}};
  for (const Shape& s : shapes) {
    const int64_t B = s[0], H = s[1], T = s[2], hd = s[3];
    const Tensor qkv = randn({B, T, 3 * H * hd}, gen), seed = randn({B, H, T, hd}, gen);
    auto call = [&](bool backward) {
      const Variable x(qkv, true);
      const std::vector<Variable> p = split(x, H * hd, -1);
      auto heads = [&](const Variable& t) { return transpose(reshape(t, {B, T, H, hd}), 1, 2); };
      const Variable O = causal_attention(heads(p[0]), heads(p[1]), heads(p[2]), 1.0 / std::sqrt(double(hd)));
      if (backward) O.backward(seed);
    };
    const std::vector<double> warm = time_interleaved(400, {[&] { call(false); }, [&] { call(true); }});
    double cold = 1e300;
    for (int r = 0; r < 30; ++r) {
      for (size_t i = 0; i < sweep.size(); i += 64) sweep[i] = char(sweep[i] + r);
      const auto start = std::chrono::steady_clock::now();
      call(true);
      cold = std::min(cold, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::printf("%-18s %10.1f %10.1f %14.1f\n", to_string(s).c_str(), warm[0] * 1e6, warm[1] * 1e6, cold * 1e6);
  }
}

// Norm kernels side by side with a copy of the same bytes and oneDNN's primitives (cached by
// shape) on the same tensors: GB/s counting every [M, N] tensor read or written (statistics and
// parameters are small and not counted), the ratio to the copy, and the speed ratio to oneDNN.
void bench_norms() {
  std::printf("\nnorm kernels, f32, %d threads (GB/s counting the [M, N] tensors read and written: forward x, y; "
              "backward x, dy, dx; add+norm forward x, r, h, y, backward dh, dy, h, dh_total)\n",
              num_threads());
  std::printf("copy: a copy of the same bytes with the same threads, timed in turn with the kernel (fastest of up "
              "to 200 rounds or 2 s each); /copy: the kernel's GB/s over the copy's; /oneDNN: oneDNN's time over the "
              "kernel's\n");
  Generator gen(3);
  const Shape shapes[] = {{512, 32}, {512, 128}, {4096, 1024}, {65536, 128}, {1024, 8192}, {65536, 1024}};
  const double eps = 1e-5;
  for (const Shape& s : shapes) {
    const int64_t M = s[0], N = s[1];
    const int64_t C = 32, L = N / C;  // GroupNorm and BatchNorm (N, C, L) view x as [M, 32, N / 32]
    const Shape s3{M, C, L};
    const Tensor x = randn(s, gen), r = randn(s, gen), dy = randn(s, gen), dh = randn(s, gen);
    const Tensor gamma = randn({N}, gen), beta = randn({N}, gen), alpha = full({1}, 0.5);
    const Tensor x3 = x.view(s3), dy3 = dy.view(s3), gamma_c = randn({C}, gen), beta_c = randn({C}, gen);
    const double tensor_bytes = double(M * N) * 4.0;
    const int reps = M * N < (1 << 20) ? 200 : 20;
    const LayerNormStats ln = layer_norm_forward(x, gamma, beta, eps);
    const NormStatsOnednn ln_d = layer_norm_forward_onednn(x, gamma, beta, eps);
    const RMSNormStats rms = rms_norm_forward(x, gamma, 1e-6);
    const ScaleNormStats sn = scale_norm_forward(x, alpha, eps);
    const AddLayerNormStats aln = add_layer_norm_forward(x, r, gamma, beta, eps);
    const AddRMSNormStats arms = add_rms_norm_forward(x, r, gamma, 1e-6);
    const GroupNormStats gn = group_norm_forward(x3, gamma_c, beta_c, 8, eps);
    const BatchNormStats bn = batch_norm_forward(x, gamma, beta, Tensor(), Tensor(), true, 0.1, eps);
    const NormStatsOnednn bn_d = batch_norm_forward_onednn(x, gamma, beta, eps);
    const BatchNormStats bn3 = batch_norm_forward(x3, gamma_c, beta_c, Tensor(), Tensor(), true, 0.1, eps);
    const NormStatsOnednn bn3_d = batch_norm_forward_onednn(x3, gamma_c, beta_c, eps);
    const NormCase cases[] = {
        {"LayerNorm", 2, [&] { layer_norm_forward(x, gamma, beta, eps); },
         [&] { layer_norm_forward_onednn(x, gamma, beta, eps); }, 3,
         [&] { layer_norm_backward(dy, x, gamma, ln.mean, ln.rstd, true, true, true); },
         [&] { layer_norm_backward_onednn(dy, x, gamma, beta, ln_d.mean, ln_d.variance, eps); }},
        {"RMSNorm", 2, [&] { rms_norm_forward(x, gamma, 1e-6); }, nullptr, 3,
         [&] { rms_norm_backward(dy, x, gamma, rms.rrms, false, true, true); }, nullptr},
        {"ScaleNorm", 2, [&] { scale_norm_forward(x, alpha, eps); }, nullptr, 3,
         [&] { scale_norm_backward(dy, x, alpha, sn.norm, eps, true, true); }, nullptr},
        {"DyT", 2, [&] { dyt_forward(x, alpha, gamma, beta); }, nullptr, 3,
         [&] { dyt_backward(dy, x, alpha, gamma, false, true, true, true, true); }, nullptr},
        {"add+LayerNorm", 4, [&] { add_layer_norm_forward(x, r, gamma, beta, eps); }, nullptr, 4,
         [&] { add_layer_norm_backward(dh, dy, aln.h, gamma, aln.mean, aln.rstd, true, true, true); }, nullptr},
        {"add+RMSNorm", 4, [&] { add_rms_norm_forward(x, r, gamma, 1e-6); }, nullptr, 4,
         [&] { add_rms_norm_backward(dh, dy, arms.h, gamma, arms.rrms, false, true, true); }, nullptr},
        {"GroupNorm G=8", 2, [&] { group_norm_forward(x3, gamma_c, beta_c, 8, eps); }, nullptr, 3,
         [&] { group_norm_backward(dy3, x3, gamma_c, gn.mean, gn.rstd, true, true, true); }, nullptr},
        {"BatchNorm (N,C)", 2, [&] { batch_norm_forward(x, gamma, beta, Tensor(), Tensor(), true, 0.1, eps); },
         [&] { batch_norm_forward_onednn(x, gamma, beta, eps); }, 3,
         [&] { batch_norm_backward(dy, x, gamma, bn.mean, bn.rstd, true, true, true, true); },
         [&] { batch_norm_backward_onednn(dy, x, gamma, beta, bn_d.mean, bn_d.variance, eps); }},
        {"BatchNorm (N,C,L)", 2,
         [&] { batch_norm_forward(x3, gamma_c, beta_c, Tensor(), Tensor(), true, 0.1, eps); },
         [&] { batch_norm_forward_onednn(x3, gamma_c, beta_c, eps); }, 3,
         [&] { batch_norm_backward(dy3, x3, gamma_c, bn3.mean, bn3.rstd, true, true, true, true); },
         [&] { batch_norm_backward_onednn(dy3, x3, gamma_c, beta_c, bn3_d.mean, bn3_d.variance, eps); }},
    };
    // A copy of k tensors' bytes moves k/2 tensors in and k/2 out; each kernel is timed in turn
    // with the copy of its bytes (and oneDNN's primitive).
    std::vector<Copy> copies;
    for (int k : {2, 3, 4}) copies.emplace_back(M * N * k / 2);
    std::printf("\n%s (GroupNorm, BatchNorm (N,C,L): [%lld, 32, %lld])\n", to_string(s).c_str(), (long long)M,
                (long long)L);
    std::printf("  %-18s %7s %7s %6s %7s %7s | %7s %7s %6s %7s %7s\n", "norm", "fwd", "copy", "/copy", "oneDNN",
                "/oneDNN", "bwd", "copy", "/copy", "oneDNN", "/oneDNN");
    auto measure = [&](int tensors, const std::function<void()>& f, const std::function<void()>& f_onednn) {
      Copy& copy = copies[size_t(tensors - 2)];
      std::vector<std::function<void()>> fs{f, [&] { copy(); }};
      if (f_onednn) fs.push_back(f_onednn);
      const std::vector<double> t = time_interleaved(reps, fs);
      const double bytes = tensors * tensor_bytes;
      std::printf(" %7.1f %7.1f %6.2f", bytes / t[0] * 1e-9, bytes / t[1] * 1e-9, t[1] / t[0]);
      if (f_onednn)
        std::printf(" %7.1f %7.2f", bytes / t[2] * 1e-9, t[2] / t[0]);
      else
        std::printf(" %7s %7s", "", "");
    };
    for (const NormCase& c : cases) {
      std::printf("  %-18s", c.name);
      measure(c.fwd_tensors, c.fwd, c.fwd_onednn);
      std::printf(" |");
      measure(c.bwd_tensors, c.bwd, c.bwd_onednn);
      std::printf("\n");
      std::fflush(stdout);
    }
  }
}

// LayerNorm and RMSNorm on bf16 and f16 storage beside f32 on the same values, timed in turn: the
// same kernels reading and writing 16-bit rows (f32 math and statistics). GB/s count each dtype's
// own bytes of the [M, N] tensors; f32/bf16 and f32/f16 are the f32 kernel's time over the other's.
void bench_norms_low_precision() {
  std::printf("\nnorm kernels, bf16 and f16 storage beside f32, %d threads (GB/s of each dtype's bytes: forward x, "
              "y; backward x, dy, dx; f32/bf16, f32/f16: the f32 kernel's time over the 16-bit kernel's)\n",
              num_threads());
  Generator gen(5);
  const double eps = 1e-5;
  const DType dtypes[] = {DType::f32, DType::bf16, DType::f16};
  for (const Shape& s : {Shape{4096, 1024}, Shape{65536, 128}}) {
    const int64_t M = s[0], N = s[1];
    const Tensor x = randn(s, gen), dy = randn(s, gen), gamma = randn({N}, gen), beta = randn({N}, gen);
    // The same values in each dtype, and the statistics the backward passes take.
    struct Inputs {
      Tensor x, dy, gamma, beta;
      LayerNormStats ln;
      RMSNormStats rms;
    };
    std::vector<Inputs> in;
    for (DType d : dtypes) {
      Inputs i{x.to(d), dy.to(d), gamma.to(d), beta.to(d), {}, {}};
      i.ln = layer_norm_forward(i.x, i.gamma, i.beta, eps);
      i.rms = rms_norm_forward(i.x, i.gamma, 1e-6);
      in.push_back(std::move(i));
    }
    struct Case {
      const char* name;
      int tensors;
      std::function<void(const Inputs&)> run;
    };
    const Case cases[] = {
        {"LayerNorm fwd", 2, [&](const Inputs& i) { layer_norm_forward(i.x, i.gamma, i.beta, eps); }},
        {"LayerNorm bwd", 3,
         [](const Inputs& i) { layer_norm_backward(i.dy, i.x, i.gamma, i.ln.mean, i.ln.rstd, true, true, true); }},
        {"RMSNorm fwd", 2, [](const Inputs& i) { rms_norm_forward(i.x, i.gamma, 1e-6); }},
        {"RMSNorm bwd", 3,
         [](const Inputs& i) { rms_norm_backward(i.dy, i.x, i.gamma, i.rms.rrms, false, true, true); }},
    };
    std::printf("\n%s\n  %-14s %8s %8s %8s %8s %8s\n", to_string(s).c_str(), "", "f32", "bf16", "f16", "f32/bf16",
                "f32/f16");
    for (const Case& c : cases) {
      std::vector<std::function<void()>> fs;
      for (const Inputs& i : in) fs.push_back([&c, &i] { c.run(i); });
      const std::vector<double> t = time_interleaved(M * N < (1 << 20) ? 200 : 20, fs);
      const double values = double(c.tensors) * double(M * N);
      std::printf("  %-14s", c.name);
      for (size_t k = 0; k < t.size(); ++k) std::printf(" %8.1f", values * double(dtype_size(dtypes[k])) / t[k] * 1e-9);
      std::printf(" %8.2f %8.2f\n", t[0] / t[1], t[0] / t[2]);
      std::fflush(stdout);
    }
  }
}

// LayerNorm composed of autograd ops: the baseline the hand-derived layer_norm is measured against.
Variable composed_layer_norm(const Variable& x) {
  const Variable centered = x - mean(x, {-1}, true);
  return centered * rsqrt(mean(centered * centered, {-1}, true) + 1e-5);
}

// One pre-norm GPT block stack built from the ops (batch 8, seq 64, d_model 32, 2 heads, GELU
// MLP x4, vocab 32), with its LayerNorms composed of ops or the hand-derived layer_norm.
void bench_transformer_step(int depth, bool composed) {
  constexpr int64_t B = 8, T = 64, D = 32, H = 2, Dh = D / H, V = 32;
  struct Block {
    std::shared_ptr<Linear> qkv, out, up, down;
  };
  Generator gen(0);
  Embedding embed(V, D, gen);
  std::vector<Block> blocks;
  for (int l = 0; l < depth; ++l)
    blocks.push_back({std::make_shared<Linear>(D, 3 * D, true, gen), std::make_shared<Linear>(D, D, true, gen),
                      std::make_shared<Linear>(D, 4 * D, true, gen), std::make_shared<Linear>(4 * D, D, true, gen)});
  Linear head(D, V, false, gen);
  LayerNorm ln(D);
  auto norm = [&](const Variable& x) { return composed ? composed_layer_norm(x) : ln.forward(x); };
  const Tensor u = uniform({2, B, T}, gen, 0.0, double(V), DType::f64);
  Tensor tokens = empty({B, T}, DType::i64), targets = empty({B, T}, DType::i64);
  for (int64_t i = 0; i < B * T; ++i) {
    tokens.data<int64_t>()[i] = int64_t(u.data<double>()[i]);
    targets.data<int64_t>()[i] = int64_t(u.data<double>()[B * T + i]);
  }
  auto heads = [&](const Variable& t) { return transpose(reshape(t, {B, T, H, Dh}), 1, 2); };
  auto step = [&] {
    Variable x = embed.forward(tokens);
    for (const Block& b : blocks) {
      auto qkv = split(b.qkv->forward(norm(x)), D, -1);
      Variable scores = matmul(heads(qkv[0]), transpose(heads(qkv[1]), -1, -2)) * (1.0 / std::sqrt(double(Dh)));
      Variable att = matmul(softmax(causal_mask(scores)), heads(qkv[2]));
      x = x + b.out->forward(reshape(transpose(att, 1, 2), {B, T, D}));
      x = x + b.down->forward(gelu(b.up->forward(norm(x))));
    }
    cross_entropy(head.forward(norm(x)), targets).backward();
  };
  CpuAllocator::instance().reset_peak();
  const double t = time_median(3, step);
  std::printf("\ntransformer training step, %s LayerNorm, depth %d, %lld tokens\n",
              composed ? "composed of ops" : "hand-derived", depth, (long long)(B * T));
  std::printf("forward + backward %8.1f ms, %8.0f tokens/s, peak memory %.0f MiB\n", t * 1e3, double(B * T) / t,
              double(CpuAllocator::instance().stats().peak_bytes_in_use) / (1 << 20));
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The toy transformer of `normlab train` with the floor's shape: copy task, seq 64,
// d_model 32, 2 heads, batch 8, AdamW (clip 1), pre-norm LayerNorm.
TrainConfig bench_config(int64_t depth, int64_t steps) {
  TrainConfig c;
  c.model.depth = depth;
  c.model.d_model = 32;
  c.model.heads = 2;
  c.data.seq_len = 64;
  c.batch = 8;
  c.steps = steps;
  c.eval_every = 0;
  c.optim.kind = OptimizerKind::adamw;
  return c;
}

// Seconds of one training step's phases (as Trainer::train_step runs them, on train batch 0):
// forward and backward together (the micro-batches run each in turn, side by side), then
// clipping and the update.
struct StepTimes {
  double forward_backward = 0, update = 0, loss = 0;
  double total() const { return forward_backward + update; }
};

StepTimes time_step(Trainer& trainer) {
  const Batch batch = trainer.data().batch(Split::train, 0, 8);
  Transformer& model = trainer.model();
  const std::vector<Variable> params = model.parameters();
  StepTimes s;
  auto t0 = std::chrono::steady_clock::now();
  trainer.optimizer().zero_grad();
  s.loss = forward_backward(model, params, batch, trainer.config());
  s.forward_backward = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  clip_grad_norm(params, 1.0);
  trainer.optimizer().step();
  s.update = seconds_since(t0);
  return s;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// The floating-point work of one training step and how fast its matmuls run alone.
struct StepWork {
  double matmul_flops = 0;     // every product matmul() ran (recomputed forwards included)
  double attention_flops = 0;  // the fused causal attention's products (see below)
  double matmul_seconds = 0;   // the same products, timed one shape at a time, in sequence
  double flops() const { return matmul_flops + attention_flops; }
};

// Causal attention counts the T (T + 1) / 2 (query, key) pairs it uses, 2 flops per
// multiply-add: S = QK^T and O = PV forward, dV, dP, dQ and dK backward (6 products of pairs x
// head dim); a recomputed forward adds its 2.
double attention_flops(const TrainConfig& c) {
  const double T = double(c.data.seq_len), pairs = T * (T + 1) / 2;
  const double products = c.model.recompute ? 8 : 6;
  return products * 2 * pairs * double(c.model.d_model) * double(c.batch) * double(c.model.depth);
}

// Runs one training step with its matmuls recorded, then times each distinct product alone.
StepWork measure_step_work(Trainer& trainer, const TrainConfig& c) {
  std::vector<MatmulCall> calls;
  {
    const MatmulRecorder recorder;
    time_step(trainer);
    calls = recorder.calls();
  }
  StepWork w;
  w.attention_flops = attention_flops(c);
  std::vector<std::pair<MatmulCall, int64_t>> distinct;
  for (const MatmulCall& call : calls) {
    w.matmul_flops += call.flops();
    auto it = std::find_if(distinct.begin(), distinct.end(), [&](const auto& d) { return d.first == call; });
    if (it == distinct.end()) distinct.push_back({call, 1});
    else ++it->second;
  }
  Generator gen(0);
  for (const auto& [call, count] : distinct) {
    // Operands laid out as the step's were: a transposed view is a transpose of a contiguous tensor.
    auto operand = [&](Shape shape, bool transposed) {
      if (!transposed) return randn(shape, gen, call.dtype);
      std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
      return randn(shape, gen, call.dtype).transpose(-1, -2);
    };
    const Tensor a = operand(call.a, call.a_transposed), b = operand(call.b, call.b_transposed);
    w.matmul_seconds += double(count) * time_median(20, [&] { matmul(a, b); });
  }
  return w;
}

// "step 12.3 GFLOP/s (0.71 GFLOP: matmuls 0.60, attention 0.11); its matmuls alone 150.2 GFLOP/s
// (4.0 ms of the step's 57.8)"
void print_step_work(const StepWork& w, double step_seconds) {
  std::printf("            step %.1f GFLOP/s (%.3f GFLOP: matmuls %.3f, attention %.3f); its matmuls alone %.1f GFLOP/s "
              "(%.1f ms of the step's %.1f ms)\n",
              w.flops() / step_seconds * 1e-9, w.flops() * 1e-9, w.matmul_flops * 1e-9, w.attention_flops * 1e-9,
              w.matmul_flops / w.matmul_seconds * 1e-9, w.matmul_seconds * 1e3, step_seconds * 1e3);
}

void bench_training_throughput(int64_t depth, int64_t steps, int64_t micro_batches) {
  CpuAllocator::instance().empty_cache();  // the first step starts cold, as in a new process
  TrainConfig c = bench_config(depth, steps + 3);
  c.micro_batches = micro_batches;
  Trainer trainer(c);
  auto start = std::chrono::steady_clock::now();
  trainer.train_step();  // the first step: the allocator's cache and oneDNN's primitives fill here
  const double first = seconds_since(start);
  std::vector<double> forward_backward, update;
  for (int64_t i = 0; i < steps; ++i) {
    const StepTimes s = time_step(trainer);
    forward_backward.push_back(s.forward_backward);
    update.push_back(s.update);
  }
  start = std::chrono::steady_clock::now();
  trainer.train_step();
  const double whole = seconds_since(start);
  const double fb = median(forward_backward), u = median(update);
  const double tokens = 8.0 * 64.0;
  std::printf("depth %4lld: %8.0f tokens/s  step %6.1f ms = forward + backward %6.1f + clip/update %5.1f (micro-batches "
              "%lld; medians of %lld steps; Trainer::train_step %.1f ms; first step %.1f ms, %.2fx)\n",
              (long long)depth, tokens / (fb + u), (fb + u) * 1e3, fb * 1e3, u * 1e3, (long long)micro_batches,
              (long long)steps, whole * 1e3, first * 1e3, first / (fb + u));
  print_step_work(measure_step_work(trainer, c), fb + u);
}

// A model of the floor's shape at `depth` and `d_model`, from a cold allocator (as in a new
// process): its build, its first training step and a later one, and the allocator's peak.
void bench_deep_step(int64_t depth, int64_t d_model, bool recompute) {
  CpuAllocator::instance().empty_cache();
  CpuAllocator::instance().reset_peak();
  TrainConfig c = bench_config(depth, 4);
  c.model.d_model = d_model;
  c.model.recompute = recompute;
  const auto start = std::chrono::steady_clock::now();
  Trainer trainer(c);
  const double build = seconds_since(start);
  const StepTimes first = time_step(trainer);
  const StepTimes later = time_step(trainer);
  std::printf("depth %4lld, d_model %3lld, recompute %-3s: build %.2f s; training step %.2f s (%.0f tokens/s); first "
              "step %.2f s (%.2fx); loss %.4f -> %.4f; %lld parameters\n",
              (long long)depth, (long long)d_model, recompute ? "on" : "off", build, later.total(),
              8.0 * 64.0 / later.total(), first.total(), first.total() / later.total(), first.loss, later.loss,
              (long long)trainer.model().num_parameters());
  std::printf("            step = forward + backward %.2f s + clip/update %.1f ms (first step: %.2f s + %.1f ms); "
              "micro-batches %lld\n",
              later.forward_backward, later.update * 1e3, first.forward_backward, first.update * 1e3,
              (long long)c.micro_batches);
  const AllocatorStats mem = CpuAllocator::instance().stats();
  std::printf("            peak tensor memory %.0f MiB; allocator arenas %.0f MiB\n",
              double(mem.peak_bytes_in_use) / (1 << 20), double(mem.bytes_mapped) / (1 << 20));
  print_step_work(measure_step_work(trainer, c), later.total());
}

// Each op of a depth-48 block, forward + backward at the model's shapes (512 rows, d_model 32,
// FFN 128, 2 heads of 16, seq 64), timed with one thread and with `threads`: where the second
// thread pays for the parallel region it starts.
void bench_threads_per_op(int threads) {
  std::printf("\nops of a block at the model's shapes, forward + backward (us; median of 200 calls)\n");
  std::printf("%-34s %10s %10s %8s\n", "op", "1 thread", "threads", "speedup");
  Generator gen(0);
  auto var = [&](const Shape& shape) { return Variable(randn(shape, gen), true); };
  const Variable x = var({8, 64, 32}), h = var({8, 64, 128}), w_qkv = var({96, 32}), b_qkv = var({96}),
                 w_up = var({128, 32}), b_up = var({128}), w_down = var({32, 128}), b_down = var({32}),
                 gamma = var({32}), beta = var({32}), q = var({8, 2, 64, 16}), k = var({8, 2, 64, 16}),
                 v = var({8, 2, 64, 16}), r = var({8, 64, 32});
  struct Case {
    const char* name;
    std::function<Variable()> forward;
  };
  const Case cases[] = {
      {"linear [512,32] -> 96 (qkv)", [&] { return linear(x, w_qkv, b_qkv); }},
      {"linear_gelu [512,32] -> 128", [&] { return linear_gelu(x, w_up, b_up); }},
      {"linear [512,128] -> 32 (down)", [&] { return linear(h, w_down, b_down); }},
      {"causal_attention [8,2,64,16]", [&] { return causal_attention(q, k, v, 0.25); }},
      {"layer_norm [512,32]", [&] { return layer_norm(x, gamma, beta); }},
      {"add [512,32]", [&] { return add(x, r); }},
  };
  for (const Case& c : cases) {
    const Tensor seed = ones(c.forward().shape());
    auto time_with = [&](int n) {
      set_num_threads(n);
      return time_median(200, [&] { c.forward().backward(seed); });
    };
    const double one = time_with(1), many = time_with(threads);
    std::printf("%-34s %10.1f %10.1f %7.2fx\n", c.name, one * 1e6, many * 1e6, one / many);
  }
  set_num_threads(threads);
}

}  // namespace

void run_train_bench() {
  std::printf("\ntoy transformer training (normlab train's model: pre-norm LayerNorm, d_model 32, 2 heads, seq 64, "
              "batch 8, AdamW), %d threads\n",
              num_threads());
  const int threads = num_threads();
  if (threads > 1) bench_threads_per_op(threads);
  // The batch in two micro-batches (side by side on the threads), and the whole batch at once
  // (the default; its ops split over the threads).
  bench_training_throughput(48, 10, 2);
  bench_training_throughput(48, 10, 1);
  if (threads > 1) {  // the same model on one thread, in the same run
    set_num_threads(1);
    std::printf("1 thread:\n");
    bench_training_throughput(48, 10, 2);
    bench_training_throughput(48, 10, 1);
    set_num_threads(threads);
  }
  bench_deep_step(1000, 32, false);
  bench_deep_step(1000, 32, true);
  bench_deep_step(1000, 128, true);
}

void run_norm_bench() {
  bench_norms();
  bench_norms_low_precision();
}

void run_foundation_bench(int depth) {
  std::printf("normlab foundation bench, %d threads\n", num_threads());
  bench_matmul();
  bench_engine();
  bench_copy();
  bench_exp();
  bench_attention();
  bench_norms();
  bench_transformer_step(depth, true);
  bench_transformer_step(depth, false);
}

}  // namespace normlab
