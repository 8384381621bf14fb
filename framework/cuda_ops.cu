// CUDA kernels for the basic tensor ops (framework/cuda_ops.h): strided copies with dtype
// conversion, fill, broadcasting binary ops, scalar ops and deterministic sums. Enough for
// the autograd engine (seeding, gradient accumulation) and losses such as sum(out * r) on
// device tensors. All work is queued on normlab's stream.
#include "framework/cuda_ops.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "framework/cuda.h"
#include "framework/cuda_check.h"

namespace normlab {

static_assert(sizeof(bf16) == sizeof(__nv_bfloat16), "normlab::bf16 and __nv_bfloat16 must share a layout");

namespace {

constexpr int kMaxDims = 8;
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

// ---------------------------------------------------------------------------------------------
// Element types: storage T, compute type (fp32 for bf16), conversions matching tensor.cpp's.

template <class T> struct ComputeOf { using type = T; };
template <> struct ComputeOf<__nv_bfloat16> { using type = float; };
template <class T> using compute_t = typename ComputeOf<T>::type;

// Sum accumulators: fp64 for f64, fp32 for f32 and bf16.
template <class T> using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T> __device__ __forceinline__ compute_t<T> load(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return v;
}
template <class T> __device__ __forceinline__ T store(compute_t<T> v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}
template <class T> __device__ __forceinline__ double to_double(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return double(__bfloat162float(v));
  else return double(v);
}
template <class T> __device__ __forceinline__ T from_double(double v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
  else return T(v);
}
template <class D, class S> __device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else return from_double<D>(to_double(v));
}

// Calls f.template operator()<T>() with T the device storage type of dtype.
template <class F>
decltype(auto) visit_any(DType t, const char* name, F&& f) {
  switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::bf16: return f.template operator()<__nv_bfloat16>();
    case DType::i64: return f.template operator()<int64_t>();
    case DType::f16: break;  // f16 tensors live on the CPU only
  }
  NL_FAIL(name, ": dtype ", dtype_name(t), " is not supported on cuda (expected f32, f64, bf16 or i64)");
}
template <class F>
decltype(auto) visit_float(DType t, const char* name, F&& f) {
  switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::bf16: return f.template operator()<__nv_bfloat16>();
    case DType::i64:
    case DType::f16: break;
  }
  NL_FAIL(name, ": dtype ", dtype_name(t), " is not supported on cuda (expected f32, f64 or bf16)");
}

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }

// ---------------------------------------------------------------------------------------------
// Strided indexing: element i of a row-major walk over `size` -> offsets (in elements) into
// K operands. Dims are coalesced on the host as in framework/strided.h.

template <int K>
struct Indexer {
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[K][kMaxDims] = {};

  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t q = i / size[d], idx = i - q * size[d];
      i = q;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += idx * stride[k][d];
    }
  }
};

template <int K>
Indexer<K> make_indexer(const Shape& shape, const std::array<Shape, K>& strides, const char* name) {
  Shape sz;
  std::array<Shape, K> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !sz.empty();
    for (int k = 0; k < K && merge; ++k) merge = st[k].back() == strides[k][d] * shape[d];
    if (merge) {
      sz.back() *= shape[d];
      for (int k = 0; k < K; ++k) st[k].back() = strides[k][d];
    } else {
      sz.push_back(shape[d]);
      for (int k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
    }
  }
  NL_CHECK(sz.size() <= size_t(kMaxDims), name, ": shape ", to_string(shape), " has ", sz.size(),
           " dims that cannot be merged; the cuda kernels take at most ", kMaxDims, " (make it contiguous first)");
  Indexer<K> ix;
  ix.ndim = int(sz.size());
  for (int d = 0; d < ix.ndim; ++d) {
    ix.size[d] = sz[d];
    for (int k = 0; k < K; ++k) ix.stride[k][d] = st[k][d];
  }
  return ix;
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)); }

#define NL_GRID_STRIDE_LOOP(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

void check_launch() { CUDA_CHECK(cudaGetLastError()); }

// ---------------------------------------------------------------------------------------------
// Kernels

template <class D, class S>
__global__ void copy_kernel(D* dst, const S* src, int64_t n, Indexer<2> ix) {
  NL_GRID_STRIDE_LOOP(i, n) {
    int64_t off[2];
    ix.offsets(i, off);
    dst[off[0]] = convert<D>(src[off[1]]);
  }
}

template <class T>
__global__ void fill_kernel(T* p, double value, int64_t n, Indexer<1> ix) {
  const T v = from_double<T>(value);
  NL_GRID_STRIDE_LOOP(i, n) {
    int64_t off[1];
    ix.offsets(i, off);
    p[off[0]] = v;
  }
}

template <BinaryOp op, class C> __device__ __forceinline__ C apply(C x, C y) {
  if constexpr (op == BinaryOp::add) return x + y;
  else if constexpr (op == BinaryOp::sub) return x - y;
  else if constexpr (op == BinaryOp::mul) return x * y;
  else return x / y;
}

template <class T, BinaryOp op>
__global__ void binary_kernel(T* out, const T* a, const T* b, int64_t n, Indexer<3> ix) {
  NL_GRID_STRIDE_LOOP(i, n) {
    int64_t off[3];
    ix.offsets(i, off);
    out[off[0]] = store<T>(apply<op>(load(a[off[1]]), load(b[off[2]])));
  }
}

template <class T, ScalarOp op>
__global__ void scalar_kernel(T* out, const T* a, compute_t<T> s, int64_t n, Indexer<2> ix) {
  NL_GRID_STRIDE_LOOP(i, n) {
    int64_t off[2];
    ix.offsets(i, off);
    const compute_t<T> x = load(a[off[1]]);
    out[off[0]] = store<T>(op == ScalarOp::add ? x + s : x * s);
  }
}

// Sum of v over the block's kThreads threads, in a fixed tree order; every thread gets it.
template <class Acc>
__device__ Acc block_sum(Acc v) {
  __shared__ Acc buf[kThreads];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  const Acc total = buf[0];
  __syncthreads();
  return total;
}

// First pass of a full sum: block b sums elements b*kThreads + t + k*(grid*kThreads).
template <class T, class Acc>
__global__ void sum_partials_kernel(const T* x, int64_t n, Acc* partials) {
  Acc acc = 0;
  NL_GRID_STRIDE_LOOP(i, n) acc += Acc(load(x[i]));
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Second pass: one block sums the partials in a fixed order.
template <class T, class Acc>
__global__ void sum_finish_kernel(const Acc* partials, int64_t parts, T* out, double scale) {
  Acc acc = 0;
  for (int64_t i = threadIdx.x; i < parts; i += kThreads) acc += partials[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[0] = from_double<T>(double(acc) * scale);
}

// Row sums of x viewed as [rows, inner]: one block per row, a fixed order within it.
template <class T, class Acc>
__global__ void sum_rows_kernel(const T* x, int64_t rows, int64_t inner, T* out, double scale) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = x + r * inner;
    Acc acc = 0;
    for (int64_t i = threadIdx.x; i < inner; i += kThreads) acc += Acc(load(row[i]));
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[r] = from_double<T>(double(acc) * scale);
  }
}

void check_floating_same(const Tensor& a, const Tensor& b, const char* name) {
  NL_CHECK(a.defined() && b.defined(), name, ": input tensor is undefined");
  same_device(a, b, name);
  NL_CHECK(a.dtype() == b.dtype(), name, ": dtypes ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()),
           " differ (shapes ", to_string(a.shape()), " and ", to_string(b.shape()), ")");
}

template <class T>
void launch_binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, int64_t n, const Indexer<3>& ix) {
  const cudaStream_t stream = cuda_stream();
  switch (op) {
    case BinaryOp::add: binary_kernel<T, BinaryOp::add><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<const T>(a), ptr<const T>(b), n, ix); break;
    case BinaryOp::sub: binary_kernel<T, BinaryOp::sub><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<const T>(a), ptr<const T>(b), n, ix); break;
    case BinaryOp::mul: binary_kernel<T, BinaryOp::mul><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<const T>(a), ptr<const T>(b), n, ix); break;
    case BinaryOp::div: binary_kernel<T, BinaryOp::div><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<const T>(a), ptr<const T>(b), n, ix); break;
  }
  check_launch();
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void copy_cuda(Tensor& dst, const Tensor& src) {
  NL_CHECK(dst.defined() && src.defined(), "copy_from: tensor is undefined");
  same_device(dst, src, "copy_from");
  NL_CHECK(dst.shape() == src.shape(), "copy_from: source shape ", to_string(src.shape()),
           " does not match destination shape ", to_string(dst.shape()));
  const int64_t n = dst.numel();
  if (n == 0) return;
  const cudaStream_t stream = cuda_stream();
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), size_t(n) * dst.element_size(),
                               cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const Indexer<2> ix = make_indexer<2>(dst.shape(), {dst.strides(), src.strides()}, "copy_from");
  visit_any(dst.dtype(), "copy_from", [&]<class D>() {
    visit_any(src.dtype(), "copy_from", [&]<class S>() {
      copy_kernel<D, S><<<grid_for(n), kThreads, 0, stream>>>(ptr<D>(dst), ptr<const S>(src), n, ix);
      check_launch();
    });
  });
}

void fill_cuda(Tensor& t, double value) {
  NL_CHECK(t.defined() && t.is_cuda(), "fill_: expected a cuda tensor");
  const int64_t n = t.numel();
  if (n == 0) return;
  const Indexer<1> ix = make_indexer<1>(t.shape(), {t.strides()}, "fill_");
  visit_any(t.dtype(), "fill_", [&]<class T>() {
    fill_kernel<T><<<grid_for(n), kThreads, 0, cuda_stream()>>>(ptr<T>(t), value, n, ix);
    check_launch();
  });
}

Tensor binary_cuda(const Tensor& a, const Tensor& b, BinaryOp op, const char* name) {
  check_floating_same(a, b, name);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  const Tensor ea = a.expand(shape), eb = b.expand(shape);
  Tensor out = empty(shape, a.dtype(), a.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const Indexer<3> ix = make_indexer<3>(shape, {out.strides(), ea.strides(), eb.strides()}, name);
  visit_float(a.dtype(), name, [&]<class T>() { launch_binary<T>(op, out, ea, eb, n, ix); });
  return out;
}

void binary_inplace_cuda(Tensor& dst, const Tensor& src, BinaryOp op, const char* name) {
  check_floating_same(dst, src, name);
  NL_CHECK(dst.shape() == src.shape(), name, ": shapes ", to_string(dst.shape()), " and ",
           to_string(src.shape()), " differ");
  NL_CHECK(dst.is_contiguous(), name, ": destination must be contiguous");
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Indexer<3> ix = make_indexer<3>(dst.shape(), {dst.strides(), dst.strides(), src.strides()}, name);
  visit_float(dst.dtype(), name, [&]<class T>() { launch_binary<T>(op, dst, dst, src, n, ix); });
}

Tensor scalar_cuda(const Tensor& a, double s, ScalarOp op, const char* name) {
  NL_CHECK(a.defined() && a.is_cuda(), name, ": expected a cuda tensor");
  Tensor out = empty(a.shape(), a.dtype(), a.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const Indexer<2> ix = make_indexer<2>(a.shape(), {out.strides(), a.strides()}, name);
  visit_float(a.dtype(), name, [&]<class T>() {
    const compute_t<T> cs = compute_t<T>(s);
    const cudaStream_t stream = cuda_stream();
    if (op == ScalarOp::add)
      scalar_kernel<T, ScalarOp::add><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<const T>(a), cs, n, ix);
    else
      scalar_kernel<T, ScalarOp::mul><<<grid_for(n), kThreads, 0, stream>>>(ptr<T>(out), ptr<const T>(a), cs, n, ix);
    check_launch();
  });
  return out;
}

Tensor sum_cuda(const Tensor& x, const std::vector<bool>& reduced, const Shape& out_shape, double scale,
                const char* name) {
  NL_CHECK(x.defined() && x.is_cuda(), name, ": expected a cuda tensor");
  NL_CHECK(int64_t(reduced.size()) == x.dim(), name, ": ", reduced.size(), " reduce flags for ", x.dim(), " dims");
  Tensor out = empty(out_shape, x.dtype(), x.device());
  int64_t outer = 1, inner = 1;
  std::vector<int64_t> perm;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!reduced[size_t(d)]) perm.push_back(d), outer *= x.size(d);
  for (int64_t d = 0; d < x.dim(); ++d)
    if (reduced[size_t(d)]) perm.push_back(d), inner *= x.size(d);
  if (outer == 0) return out;
  if (inner == 0) {
    fill_cuda(out, 0.0);
    return out;
  }
  const cudaStream_t stream = cuda_stream();
  visit_float(x.dtype(), name, [&]<class T>() {
    using Acc = acc_t<T>;
    if (outer == 1) {
      const Tensor c = x.contiguous();
      // The number of partials depends on n only, so the result does not depend on the GPU.
      const int64_t parts = std::clamp<int64_t>((inner + 4 * kThreads - 1) / (4 * kThreads), 1, 1024);
      Tensor partials = empty({parts}, std::is_same_v<Acc, double> ? DType::f64 : DType::f32, x.device());
      sum_partials_kernel<T, Acc><<<int(parts), kThreads, 0, stream>>>(ptr<const T>(c), inner, ptr<Acc>(partials));
      check_launch();
      sum_finish_kernel<T, Acc><<<1, kThreads, 0, stream>>>(ptr<const Acc>(partials), parts, ptr<T>(out), scale);
      check_launch();
      return;
    }
    const Tensor rows = x.permute(perm).contiguous();
    sum_rows_kernel<T, Acc><<<int(std::min<int64_t>(outer, kMaxBlocks)), kThreads, 0, stream>>>(
        ptr<const T>(rows), outer, inner, ptr<T>(out), scale);
    check_launch();
  });
  return out;
}

}  // namespace normlab
