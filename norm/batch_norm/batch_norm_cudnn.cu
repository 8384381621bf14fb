#include <cudnn.h>

#include "framework/cuda.h"
#include "framework/cuda_check.h"
#include "norm/batch_norm/batch_norm_cudnn.h"

namespace normlab {

namespace {

#define NL_CUDNN_CHECK(call)                                                                                    \
  do {                                                                                                          \
    const cudnnStatus_t normlab_cudnn_status = (call);                                                          \
    if (normlab_cudnn_status != CUDNN_STATUS_SUCCESS)                                                           \
      ::normlab::detail::fail_located(                                                                          \
          __FILE__, __LINE__,                                                                                   \
          ::normlab::detail::concat("cuDNN error ", cudnnGetErrorString(normlab_cudnn_status), " in ", #call)); \
  } while (0)

// One handle per process, bound to normlab's stream.
cudnnHandle_t handle() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t created = nullptr;
    NL_CUDNN_CHECK(cudnnCreate(&created));
    NL_CUDNN_CHECK(cudnnSetStream(created, cuda_stream()));
    return created;
  }();
  return h;
}

// A tensor descriptor, destroyed with its owner.
struct TensorDesc {
  cudnnTensorDescriptor_t desc = nullptr;
  TensorDesc(cudnnDataType_t type, int n, int c, int h, int w) {
    NL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&desc));
    NL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(desc, CUDNN_TENSOR_NCHW, type, n, c, h, w));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(desc); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
};

struct Layout {
  int N, C, L;
  cudnnDataType_t type;
};

Layout layout_of(const Tensor& x, const char* who) {
  NL_CHECK(x.defined() && (x.dim() == 2 || x.dim() == 3) && x.numel() > 0, who,
           ": expected a non-empty input [N, C] or [N, C, L]");
  NL_CHECK(x.device().type == DeviceType::cuda, who, ": the input must be a CUDA tensor");
  NL_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, who, ": cuDNN's batch normalization is used with f32 ",
           "or f64 here, got ", dtype_name(x.dtype()));
  const int64_t L = x.dim() == 3 ? x.size(2) : 1;
  constexpr int64_t kMax = int64_t(1) << 31;
  NL_CHECK(x.size(0) < kMax && x.size(1) < kMax && L < kMax, who, ": shape ", to_string(x.shape()), " is too large");
  return {int(x.size(0)), int(x.size(1)), int(L), x.dtype() == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT};
}

// t, or `fill` values of [C] when t is undefined (cuDNN needs scale and bias).
Tensor param_or(const Tensor& t, int64_t C, DType dtype, double fill, const char* who, const char* name) {
  check_vector(t, C, dtype, who, name);
  if (t.defined()) {
    NL_CHECK(t.device().type == DeviceType::cuda, who, ": ", name, " must be a CUDA tensor");
    return t.contiguous();
  }
  Tensor out = empty({C}, dtype, Device::cuda());
  out.fill_(fill);
  return out;
}

// alpha/beta blend factors: float for float data, double for double.
struct Blend {
  float f1 = 1.0f, f0 = 0.0f;
  double d1 = 1.0, d0 = 0.0;
  const void* one(cudnnDataType_t t) const { return t == CUDNN_DATA_DOUBLE ? static_cast<const void*>(&d1) : &f1; }
  const void* zero(cudnnDataType_t t) const { return t == CUDNN_DATA_DOUBLE ? static_cast<const void*>(&d0) : &f0; }
};

double cudnn_eps(double eps, const char* who) {
  check_eps(eps, who);
  return std::max(eps, double(CUDNN_BN_MIN_EPSILON));
}
}  // namespace

BatchNormStats batch_norm_forward_training_cudnn(const Tensor& x_in, const Tensor& gamma, const Tensor& beta,
                                                 const Tensor& running_mean, const Tensor& running_var, double momentum,
                                                 double eps) {
  const char* who = "batch_norm_forward_training_cudnn";
  const Layout s = layout_of(x_in, who);
  NL_CHECK(int64_t(s.N) * s.L > 1, who, ": training needs more than one value per channel");
  NL_CHECK(running_mean.defined() == running_var.defined(), who,
           ": running_mean and running_var must be both defined or both undefined");
  check_vector(running_mean, s.C, x_in.dtype(), who, "running_mean");
  check_vector(running_var, s.C, x_in.dtype(), who, "running_var");
  NL_CHECK(!running_mean.defined() ||
               (running_mean.is_contiguous() && running_var.is_contiguous() &&
                running_mean.device().type == DeviceType::cuda && running_var.device().type == DeviceType::cuda),
           who, ": the running statistics must be contiguous CUDA tensors");
  const Tensor x = x_in.contiguous();
  const Tensor g = param_or(gamma, s.C, x.dtype(), 1.0, who, "gamma"),
               b = param_or(beta, s.C, x.dtype(), 0.0, who, "beta");
  BatchNormStats out{empty(x.shape(), x.dtype(), x.device()), empty({s.C}, x.dtype(), x.device()),
                     empty({s.C}, x.dtype(), x.device())};
  const TensorDesc xd(s.type, s.N, s.C, s.L, 1), pd(s.type, 1, s.C, 1, 1);
  const Blend blend;
  NL_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(handle(), CUDNN_BATCHNORM_SPATIAL, blend.one(s.type),
                                                        blend.zero(s.type), xd.desc, x.raw_data(), xd.desc,
                                                        out.y.raw_data(), pd.desc, g.raw_data(), b.raw_data(), momentum,
                                                        running_mean.defined() ? running_mean.raw_data() : nullptr,
                                                        running_var.defined() ? running_var.raw_data() : nullptr,
                                                        cudnn_eps(eps, who), out.mean.raw_data(), out.rstd.raw_data()));
  return out;
}

Tensor batch_norm_forward_inference_cudnn(const Tensor& x_in, const Tensor& gamma, const Tensor& beta,
                                          const Tensor& running_mean, const Tensor& running_var, double eps) {
  const char* who = "batch_norm_forward_inference_cudnn";
  const Layout s = layout_of(x_in, who);
  NL_CHECK(running_mean.defined() && running_var.defined(), who, ": needs running_mean and running_var");
  const Tensor x = x_in.contiguous();
  const Tensor g = param_or(gamma, s.C, x.dtype(), 1.0, who, "gamma"),
               b = param_or(beta, s.C, x.dtype(), 0.0, who, "beta");
  const Tensor rm = param_or(running_mean, s.C, x.dtype(), 0.0, who, "running_mean");
  const Tensor rv = param_or(running_var, s.C, x.dtype(), 1.0, who, "running_var");
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  const TensorDesc xd(s.type, s.N, s.C, s.L, 1), pd(s.type, 1, s.C, 1, 1);
  const Blend blend;
  NL_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
      handle(), CUDNN_BATCHNORM_SPATIAL, blend.one(s.type), blend.zero(s.type), xd.desc, x.raw_data(), xd.desc,
      y.raw_data(), pd.desc, g.raw_data(), b.raw_data(), rm.raw_data(), rv.raw_data(), cudnn_eps(eps, who)));
  return y;
}

BatchNormGrads batch_norm_backward_cudnn(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma,
                                         const Tensor& mean, const Tensor& rstd, double eps) {
  const char* who = "batch_norm_backward_cudnn";
  const Layout s = layout_of(x_in, who);
  NL_CHECK(dy_in.defined() && dy_in.shape() == x_in.shape() && dy_in.dtype() == x_in.dtype() &&
               dy_in.device().type == DeviceType::cuda,
           who, ": dy must be a CUDA tensor matching x");
  const Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const Tensor g = param_or(gamma, s.C, x.dtype(), 1.0, who, "gamma");
  NL_CHECK(mean.defined() && rstd.defined(), who, ": needs the saved mean and rstd");
  const Tensor m = param_or(mean, s.C, x.dtype(), 0.0, who, "mean"),
               r = param_or(rstd, s.C, x.dtype(), 1.0, who, "rstd");
  BatchNormGrads out{empty(x.shape(), x.dtype(), x.device()), empty({s.C}, x.dtype(), x.device()),
                     empty({s.C}, x.dtype(), x.device())};
  const TensorDesc xd(s.type, s.N, s.C, s.L, 1), pd(s.type, 1, s.C, 1, 1);
  const Blend blend;
  NL_CUDNN_CHECK(cudnnBatchNormalizationBackward(
      handle(), CUDNN_BATCHNORM_SPATIAL, blend.one(s.type), blend.zero(s.type), blend.one(s.type), blend.zero(s.type),
      xd.desc, x.raw_data(), xd.desc, dy.raw_data(), xd.desc, out.dx.raw_data(), pd.desc, g.raw_data(),
      out.dgamma.raw_data(), out.dbeta.raw_data(), cudnn_eps(eps, who), m.raw_data(), r.raw_data()));
  return out;
}

}  // namespace normlab
