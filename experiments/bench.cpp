#include "experiments/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>

#include <dnnl.hpp>

#include "autograd/module.h"
#include "autograd/ops.h"
#include "framework/allocator.h"
#include "framework/fast_math.h"
#include "framework/matmul.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"

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

// LayerNorm composed of autograd ops (the hand-derived layers come with norm/).
Variable composed_layer_norm(const Variable& x) {
  const Variable centered = x - mean(x, {-1}, true);
  return centered * rsqrt(mean(centered * centered, {-1}, true) + 1e-5);
}

// One pre-norm GPT block stack built from the ops alone: a baseline for the per-op cost of a
// training step (batch 8, seq 64, d_model 32, 2 heads, GELU MLP x4, vocab 32).
void bench_transformer_step(int depth) {
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
      auto qkv = split(b.qkv->forward(composed_layer_norm(x)), D, -1);
      Variable scores = matmul(heads(qkv[0]), transpose(heads(qkv[1]), -1, -2)) * (1.0 / std::sqrt(double(Dh)));
      Variable att = matmul(softmax(causal_mask(scores)), heads(qkv[2]));
      x = x + b.out->forward(reshape(transpose(att, 1, 2), {B, T, D}));
      x = x + b.down->forward(gelu(b.up->forward(composed_layer_norm(x))));
    }
    cross_entropy(head.forward(composed_layer_norm(x)), targets).backward();
  };
  CpuAllocator::instance().reset_peak();
  const double t = time_median(3, step);
  std::printf("\ntransformer training step from ops (composed LayerNorm), depth %d, %lld tokens\n", depth,
              (long long)(B * T));
  std::printf("forward + backward %8.1f ms, %8.0f tokens/s, peak memory %.0f MiB\n", t * 1e3, double(B * T) / t,
              double(CpuAllocator::instance().stats().peak_bytes_in_use) / (1 << 20));
}

}  // namespace

void run_foundation_bench(int depth) {
  std::printf("normlab foundation bench, %d threads\n", num_threads());
  bench_matmul();
  bench_engine();
  bench_copy();
  bench_exp();
  bench_transformer_step(depth);
}

}  // namespace normlab
