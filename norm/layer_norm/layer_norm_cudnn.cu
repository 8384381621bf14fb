#include "norm/layer_norm/layer_norm_cudnn.h"

#include <cudnn.h>

#include <vector>

#include "norm/layer_norm/row_norm_cuda.cuh"

#define NL_CUDNN_CHECK(call)                                                                          \
  do {                                                                                                \
    const cudnnStatus_t normlab_cudnn_status = (call);                                                \
    if (normlab_cudnn_status != CUDNN_STATUS_SUCCESS)                                                 \
      ::normlab::detail::fail_located(__FILE__, __LINE__, ::normlab::detail::concat(                  \
          "cuDNN error ", cudnnGetErrorString(normlab_cudnn_status), " in ", #call));                 \
  } while (0)

namespace normlab {

namespace {

// One cuDNN handle on normlab's stream for the process.
cudnnHandle_t cudnn_handle() {
  static cudnnHandle_t handle = [] {
    cudnnHandle_t h = nullptr;
    NL_CUDNN_CHECK(cudnnCreate(&h));
    NL_CUDNN_CHECK(cudnnSetStream(h, cuda_stream()));
    return h;
  }();
  return handle;
}

// An owned backend descriptor.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) { NL_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d_)); }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc(Desc&& o) noexcept : d_(o.d_) { o.d_ = nullptr; }
  cudnnBackendDescriptor_t get() const { return d_; }
  template <class V> void set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n, const V* v) {
    NL_CUDNN_CHECK(cudnnBackendSetAttribute(d_, name, type, n, v));
  }
  void set_desc(cudnnBackendAttributeName_t name, const Desc& d) {
    cudnnBackendDescriptor_t raw = d.get();
    set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  void finalize() { NL_CUDNN_CHECK(cudnnBackendFinalize(d_)); }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// A 4-D tensor descriptor [d0, d1, 1, 1] with row-major strides [d1, 1, d1, d1].
Desc tensor_desc(int64_t uid, cudnnDataType_t type, int64_t d0, int64_t d1, bool by_value = false) {
  Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const int64_t dims[4] = {d0, d1, 1, 1}, strides[4] = {d1, 1, d1, d1};
  const int64_t alignment = by_value ? 4 : 16;
  t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
  t.set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
  t.set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
  t.set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  t.set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
  if (by_value) {
    const bool yes = true;
    t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
  }
  t.finalize();
  return t;
}

// Unique ids of the graph's tensors.
enum Uid : int64_t { kX = 1, kY, kMean, kInvStd, kScale, kBias, kEps, kDy, kDx, kDScale, kDBias };

// A finalized execution plan for the one-operation graph `op`, from the first engine config
// of heuristics mode A that builds; its workspace size in *workspace.
Desc make_plan(const Desc& op, int64_t* workspace) {
  cudnnHandle_t handle = cudnn_handle();
  Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  cudnnBackendDescriptor_t ops[1] = {op.get()};
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, ops);
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  graph.finalize();
  Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  heur.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  heur.finalize();
  int64_t count = 0;
  NL_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                          &count, nullptr));
  NL_CHECK(count > 0, "cuDNN layer norm: heuristics found no engine");
  std::vector<Desc> cfgs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw.push_back(cfgs.back().get());
  }
  int64_t got = 0;
  NL_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                          count, &got, raw.data()));
  for (int64_t i = 0; i < got; ++i) {
    Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    plan.set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw[size_t(i)]);
    if (cudnnBackendFinalize(plan.get()) != CUDNN_STATUS_SUCCESS) continue;
    int64_t n = 0;
    NL_CUDNN_CHECK(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                            &n, workspace));
    return plan;
  }
  NL_FAIL("cuDNN layer norm: none of the ", got, " engine configs builds a plan");
}

// Runs `plan` with the tensors (uids[i], ptrs[i]) and a workspace of `ws_bytes`.
void execute(const Desc& plan, const std::vector<int64_t>& uids, const std::vector<void*>& ptrs, int64_t ws_bytes) {
  Tensor ws;
  void* ws_ptr = nullptr;
  if (ws_bytes > 0) {
    ws = empty({ws_bytes}, DType::f32, Device::cuda());  // over-allocated 4x: simple and aligned
    ws_ptr = ws.raw_data();
  }
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()), uids.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()), ptrs.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws_ptr);
  pack.finalize();
  NL_CUDNN_CHECK(cudnnBackendExecute(cudnn_handle(), plan.get(), pack.get()));
}

__global__ void to_f32_kernel(float* out, const __nv_bfloat16* in, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(in[i]);
}

// t as an f32 CUDA tensor (t itself when already f32).
Tensor as_f32_cuda(const Tensor& t) {
  if (t.dtype() == DType::f32) return cuda_norm::dense(t);
  NL_CHECK(t.dtype() == DType::bf16, "layer_norm_cudnn: expected f32 or bf16, got ", dtype_name(t.dtype()));
  const Tensor src = cuda_norm::dense(t);
  Tensor out = empty(src.shape(), DType::f32, src.device());
  const int64_t n = src.numel();
  to_f32_kernel<<<cuda_norm::ceil_blocks(n, 256), 256, 0, cuda_stream()>>>(
      out.data<float>(), reinterpret_cast<const __nv_bfloat16*>(src.data<bf16>()), n);
  NL_CUDA_LAUNCH_CHECK();
  return out;
}

}  // namespace

struct CudnnLayerNorm::Impl {
  int64_t M, N;
  cudnnDataType_t io;
  float eps;
  std::unique_ptr<Desc> fwd, bwd;
  int64_t fwd_ws = 0, bwd_ws = 0;
};

CudnnLayerNorm::CudnnLayerNorm(int64_t M, int64_t N, DType dtype, double eps) : impl_(std::make_unique<Impl>()) {
  NL_CHECK(M >= 1 && N >= 1, "CudnnLayerNorm: expected M, N >= 1, got M=", M, " N=", N);
  NL_CHECK(dtype == DType::f32 || dtype == DType::bf16, "CudnnLayerNorm: dtype ", dtype_name(dtype),
           " is not supported (expected f32 or bf16)");
  check_eps(eps, "CudnnLayerNorm");
  impl_->M = M;
  impl_->N = N;
  impl_->io = dtype == DType::f32 ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
  impl_->eps = float(eps);
}

CudnnLayerNorm::~CudnnLayerNorm() = default;

void CudnnLayerNorm::forward(void* y, float* mean, float* rstd, const void* x, const float* gamma,
                             const float* beta) {
  Impl& p = *impl_;
  if (!p.fwd) {
    const Desc tx = tensor_desc(kX, p.io, p.M, p.N), ty = tensor_desc(kY, p.io, p.M, p.N);
    const Desc tmean = tensor_desc(kMean, CUDNN_DATA_FLOAT, p.M, 1), tinv = tensor_desc(kInvStd, CUDNN_DATA_FLOAT, p.M, 1);
    const Desc tscale = tensor_desc(kScale, CUDNN_DATA_FLOAT, 1, p.N), tbias = tensor_desc(kBias, CUDNN_DATA_FLOAT, 1, p.N);
    const Desc teps = tensor_desc(kEps, CUDNN_DATA_FLOAT, 1, 1, true);
    Desc op(CUDNN_BACKEND_OPERATION_NORM_FORWARD_DESCRIPTOR);
    const cudnnBackendNormMode_t mode = CUDNN_LAYER_NORM;
    const cudnnBackendNormFwdPhase_t phase = CUDNN_NORM_FWD_TRAINING;
    op.set(CUDNN_ATTR_OPERATION_NORM_FWD_MODE, CUDNN_TYPE_NORM_MODE, 1, &mode);
    op.set(CUDNN_ATTR_OPERATION_NORM_FWD_PHASE, CUDNN_TYPE_NORM_FWD_PHASE, 1, &phase);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_XDESC, tx);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_MEAN_DESC, tmean);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_INV_VARIANCE_DESC, tinv);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_SCALE_DESC, tscale);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_BIAS_DESC, tbias);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_EPSILON_DESC, teps);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_FWD_YDESC, ty);
    op.finalize();
    p.fwd = std::make_unique<Desc>(make_plan(op, &p.fwd_ws));
  }
  float eps = p.eps;  // by value: a host pointer in the variant pack
  execute(*p.fwd, {kX, kY, kMean, kInvStd, kScale, kBias, kEps},
          {const_cast<void*>(x), y, mean, rstd, const_cast<float*>(gamma), const_cast<float*>(beta), &eps}, p.fwd_ws);
}

void CudnnLayerNorm::backward(void* dx, float* dgamma, float* dbeta, const void* dy, const void* x,
                              const float* gamma, const float* mean, const float* rstd) {
  Impl& p = *impl_;
  if (!p.bwd) {
    const Desc tx = tensor_desc(kX, p.io, p.M, p.N), tdy = tensor_desc(kDy, p.io, p.M, p.N),
               tdx = tensor_desc(kDx, p.io, p.M, p.N);
    const Desc tmean = tensor_desc(kMean, CUDNN_DATA_FLOAT, p.M, 1), tinv = tensor_desc(kInvStd, CUDNN_DATA_FLOAT, p.M, 1);
    const Desc tscale = tensor_desc(kScale, CUDNN_DATA_FLOAT, 1, p.N);
    const Desc tdscale = tensor_desc(kDScale, CUDNN_DATA_FLOAT, 1, p.N), tdbias = tensor_desc(kDBias, CUDNN_DATA_FLOAT, 1, p.N);
    const Desc teps = tensor_desc(kEps, CUDNN_DATA_FLOAT, 1, 1, true);
    Desc op(CUDNN_BACKEND_OPERATION_NORM_BACKWARD_DESCRIPTOR);
    const cudnnBackendNormMode_t mode = CUDNN_LAYER_NORM;
    op.set(CUDNN_ATTR_OPERATION_NORM_BWD_MODE, CUDNN_TYPE_NORM_MODE, 1, &mode);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_XDESC, tx);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_MEAN_DESC, tmean);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_INV_VARIANCE_DESC, tinv);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_DYDESC, tdy);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_SCALE_DESC, tscale);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_EPSILON_DESC, teps);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_DSCALE_DESC, tdscale);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_DBIAS_DESC, tdbias);
    op.set_desc(CUDNN_ATTR_OPERATION_NORM_BWD_DXDESC, tdx);
    op.finalize();
    p.bwd = std::make_unique<Desc>(make_plan(op, &p.bwd_ws));
  }
  float eps = p.eps;
  execute(*p.bwd, {kX, kDy, kMean, kInvStd, kScale, kEps, kDScale, kDBias, kDx},
          {const_cast<void*>(x), const_cast<void*>(dy), const_cast<float*>(mean), const_cast<float*>(rstd),
           const_cast<float*>(gamma), &eps, dgamma, dbeta, dx},
          p.bwd_ws);
}

LayerNormStats layer_norm_forward_cudnn(const Tensor& x_in, const Tensor& gamma, const Tensor& beta, double eps) {
  const char* who = "layer_norm_forward_cudnn";
  const int64_t M = cuda_norm::check_rows_cuda(x_in, who);
  const int64_t N = x_in.size(-1);
  NL_CHECK(gamma.defined() && beta.defined(), who, ": cuDNN needs both gamma and beta");
  cuda_norm::check_param_cuda(gamma, N, x_in.dtype(), who, "gamma");
  cuda_norm::check_param_cuda(beta, N, x_in.dtype(), who, "beta");
  const Tensor x = cuda_norm::dense(x_in), g = as_f32_cuda(gamma), b = as_f32_cuda(beta);
  const Device dev = x.device();
  LayerNormStats out{empty(x.shape(), x.dtype(), dev), empty(leading_shape(x), DType::f32, dev),
                     empty(leading_shape(x), DType::f32, dev)};
  CudnnLayerNorm ln(M, N, x.dtype(), eps);
  ln.forward(out.y.raw_data(), out.mean.data<float>(), out.rstd.data<float>(), x.raw_data(), g.data<float>(),
             b.data<float>());
  cuda_synchronize();  // the plan and the workspace go out of scope
  return out;
}

LayerNormGrads layer_norm_backward_cudnn(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma,
                                         const Tensor& mean, const Tensor& rstd, double eps) {
  const char* who = "layer_norm_backward_cudnn";
  const int64_t M = cuda_norm::check_rows_cuda(x_in, who);
  const int64_t N = x_in.size(-1);
  cuda_norm::check_like_cuda(dy_in, x_in, who, "dy");
  NL_CHECK(gamma.defined(), who, ": cuDNN needs gamma");
  cuda_norm::check_param_cuda(gamma, N, x_in.dtype(), who, "gamma");
  cuda_norm::check_stat_cuda(mean, M, DType::f32, who, "mean");
  cuda_norm::check_stat_cuda(rstd, M, DType::f32, who, "rstd");
  const Tensor x = cuda_norm::dense(x_in), dy = cuda_norm::dense(dy_in), g = as_f32_cuda(gamma);
  const Tensor m = cuda_norm::dense(mean), r = cuda_norm::dense(rstd);
  const Device dev = x.device();
  LayerNormGrads out;
  out.dx = empty(x.shape(), x.dtype(), dev);
  out.dgamma = empty({N}, DType::f32, dev);
  out.dbeta = empty({N}, DType::f32, dev);
  CudnnLayerNorm ln(M, N, x.dtype(), eps);
  ln.backward(out.dx.raw_data(), out.dgamma.data<float>(), out.dbeta.data<float>(), dy.raw_data(), x.raw_data(),
              g.data<float>(), m.data<float>(), r.data<float>());
  cuda_synchronize();
  return out;
}

}  // namespace normlab
