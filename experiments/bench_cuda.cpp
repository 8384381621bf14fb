#include "experiments/bench_cuda.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "framework/cuda.h"
#include "framework/rng.h"
#include "framework/tensor.h"

#ifdef NORMLAB_WITH_CUDA
#include "framework/cuda_check.h"
#include "norm/layer_norm/layer_norm_cuda.h"
#include "norm/rms_norm/rms_norm_cuda.h"
#endif
#ifdef NORMLAB_WITH_CUDNN
#include "norm/layer_norm/layer_norm_cudnn.h"
#endif

namespace normlab {

#ifdef NORMLAB_WITH_CUDA
namespace {

constexpr int kWarmup = 3;
constexpr int kReps = 20;

// Median time in seconds of f() on normlab's stream, timed with CUDA events after warm-up.
double median_seconds(const std::function<void()>& f) {
  cudaStream_t s = cuda_stream();
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < kWarmup; ++i) f();
  std::vector<double> times;
  for (int i = 0; i < kReps; ++i) {
    CUDA_CHECK(cudaEventRecord(start, s));
    f();
    CUDA_CHECK(cudaEventRecord(stop, s));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(double(ms) * 1e-3);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// A CUDA tensor of `shape` filled with a random block (at most 1M values) repeated.
Tensor random_device(const Shape& shape, DType dtype, Generator& gen) {
  const int64_t n = shape_numel(shape);
  const int64_t block = std::min<int64_t>(n, int64_t(1) << 20);
  const Tensor host = randn({block}, gen, DType::f32).to(dtype);
  const Tensor dev_block = to_device(host, Device::cuda());
  Tensor out = empty(shape, dtype, Device::cuda());
  const size_t es = dtype_size(dtype);
  for (int64_t off = 0; off < n; off += block) {
    const int64_t len = std::min(block, n - off);
    CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(out.raw_data()) + off * int64_t(es), dev_block.raw_data(),
                               size_t(len) * es, cudaMemcpyDeviceToDevice, cuda_stream()));
  }
  cuda_synchronize();
  return out;
}

// GB/s of moving `bytes` in `seconds`.
double gbps(double bytes, double seconds) { return bytes / seconds * 1e-9; }

struct Shape2 {
  int64_t M, N;
};

template <class T>
void bench_dtype(DType dtype, const Shape2& s, Generator& gen) {
  const int64_t M = s.M, N = s.N;
  const double tensor_bytes = double(M) * double(N) * double(dtype_size(dtype));
  const Tensor x = random_device({M, N}, dtype, gen), dy = random_device({M, N}, dtype, gen);
  const Tensor gamma = random_device({N}, dtype, gen), beta = random_device({N}, dtype, gen);
  Tensor y = empty({M, N}, dtype, Device::cuda()), dx = empty({M, N}, dtype, Device::cuda());
  Tensor dgamma = empty({N}, dtype, Device::cuda()), dbeta = empty({N}, dtype, Device::cuda());
  Tensor mean = empty({M}, DType::f32, Device::cuda()), rstd = empty({M}, DType::f32, Device::cuda());
  Tensor copy_dst = empty({M, N}, dtype, Device::cuda());
  T* py = y.data<T>();
  T* pdx = dx.data<T>();
  T* pdg = dgamma.data<T>();
  T* pdb = dbeta.data<T>();
  const T* px = x.data<T>();
  const T* pdy = dy.data<T>();
  const T* pg = gamma.data<T>();
  const T* pb = beta.data<T>();
  float* pmean = mean.data<float>();
  float* prstd = rstd.data<float>();

  // The practical limit: a device-to-device copy of one tensor moves 2 tensors of bytes.
  const double t_copy = median_seconds([&] {
    CUDA_CHECK(cudaMemcpyAsync(copy_dst.raw_data(), x.raw_data(), size_t(tensor_bytes), cudaMemcpyDeviceToDevice,
                               cuda_stream()));
  });
  const double copy_gbps = gbps(2 * tensor_bytes, t_copy);
  const double fwd_bytes = 2 * tensor_bytes, bwd_bytes = 3 * tensor_bytes;  // x, y / x, dy, dx

  double cudnn_fwd = 0, cudnn_bwd = 0;
#ifdef NORMLAB_WITH_CUDNN
  try {
    const Tensor g32 = random_device({N}, DType::f32, gen), b32 = random_device({N}, DType::f32, gen);
    Tensor dg32 = empty({N}, DType::f32, Device::cuda()), db32 = empty({N}, DType::f32, Device::cuda());
    CudnnLayerNorm ln(M, N, dtype, 1e-5);
    cudnn_fwd = median_seconds([&] {
      ln.forward(y.raw_data(), pmean, prstd, x.raw_data(), g32.data<float>(), b32.data<float>());
    });
    cudnn_bwd = median_seconds([&] {
      ln.backward(dx.raw_data(), dg32.data<float>(), db32.data<float>(), dy.raw_data(), x.raw_data(),
                  g32.data<float>(), pmean, prstd);
    });
  } catch (const std::exception& e) {
    std::printf("  (cuDNN %lldx%lld %s: %s)\n", (long long)M, (long long)N, dtype_name(dtype), e.what());
  }
#endif

  const double ln_fwd = median_seconds([&] {
    layer_norm_forward_cuda<T>(py, pmean, prstd, nullptr, px, nullptr, pg, pb, M, N, 1e-5);
  });
  const double ln_bwd = median_seconds([&] {
    layer_norm_backward_cuda<T>(pdx, pdg, pdb, pdy, px, pg, pmean, prstd, nullptr, M, N);
  });
  const double rms_fwd = median_seconds([&] {
    rms_norm_forward_cuda<T>(py, prstd, nullptr, px, nullptr, pg, M, N, 1e-6, false);
  });
  const double rms_bwd = median_seconds([&] {
    rms_norm_backward_cuda<T>(pdx, pdg, pdy, px, pg, prstd, nullptr, M, N, false);
  });

  auto row = [&](const char* op, double bytes, double t, double t_cudnn) {
    const double g = gbps(bytes, t);
    char shape[64];
    std::snprintf(shape, sizeof shape, "%lldx%lld", (long long)M, (long long)N);
    std::printf("%-14s %-5s %-15s %9.1f %9.1f %7.1f%% %10.1f", op, dtype_name(dtype), shape, g, copy_gbps,
                100.0 * g / copy_gbps, t * 1e6);
    if (t_cudnn > 0)
      std::printf(" %10.1f %8.2fx\n", t_cudnn * 1e6, t_cudnn / t);
    else
      std::printf(" %10s %9s\n", "-", "-");
  };
  row("layer fwd", fwd_bytes, ln_fwd, cudnn_fwd);
  row("layer bwd", bwd_bytes, ln_bwd, cudnn_bwd);
  row("rms fwd", fwd_bytes, rms_fwd, 0);
  row("rms bwd", bwd_bytes, rms_bwd, 0);
  std::fflush(stdout);
}

}  // namespace
#endif  // NORMLAB_WITH_CUDA

void run_cuda_bench() {
  if (!cuda_available()) {
    std::printf("cuda bench skipped: %s\n", cuda_unavailable_reason().c_str());
    return;
  }
#ifdef NORMLAB_WITH_CUDA
  std::printf("CUDA norm kernels on %s (median of %d after %d warm-up; GB/s counts x, y forward and x, dy, dx\n"
              "backward; copy = cudaMemcpyAsync D2D of one tensor, read + write, in the same run)\n",
              cuda_device_name().c_str(), kReps, kWarmup);
#ifndef NORMLAB_WITH_CUDNN
  std::printf("(built without cuDNN: no cuDNN column)\n");
#endif
  std::printf("%-14s %-5s %-15s %9s %9s %8s %10s %10s %9s\n", "op", "dtype", "MxN", "GB/s", "copy GB/s", "of copy",
              "us", "cuDNN us", "cuDNN/us");
  Generator gen(1);
  const std::vector<Shape2> shapes{{32768, 4096}, {65536, 1024}, {16384, 16384}, {262144, 128}};
  for (const Shape2& s : shapes) {
    bench_dtype<float>(DType::f32, s, gen);
    bench_dtype<bf16>(DType::bf16, s, gen);
  }
#endif
}

}  // namespace normlab
