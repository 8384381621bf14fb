#include "norm/rms_norm/rms_norm.h"

#include "framework/simd.h"

#ifdef NORMLAB_WITH_CUDA
#include "norm/rms_norm/rms_norm_cuda.h"
#endif

namespace normlab {

namespace {

// The scale of feature j: gamma[j], (1 + gamma[j]) with unit_offset, or 1 without a weight.
template <class T>
double scale_at(const T* gamma, int64_t j, bool unit_offset) {
  if (!gamma) return 1.0;
  return unit_offset ? 1.0 + double(gamma[j]) : double(gamma[j]);
}

}  // namespace

template <class T>
void rms_norm_forward(T* y, T* rrms, const T* x, const T* gamma, int64_t M, int64_t N, double eps, bool unit_offset) {
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* xi = x + i * N;
      double ss = 0;
      for (int64_t j = 0; j < N; ++j) ss += double(xi[j]) * double(xi[j]);
      const double rr = 1.0 / std::sqrt(ss / double(N) + eps);
      rrms[i] = T(rr);
      T* yi = y + i * N;
      for (int64_t j = 0; j < N; ++j) yi[j] = T(double(xi[j]) * rr * scale_at(gamma, j, unit_offset));
    }
  });
}

// xhat = x * rrms,  g = gamma (or 1 + gamma with unit_offset),  dxhat = dy * g
// d rrms / dx_k = -rrms^3 * x_k / N, hence
// dx = rrms * (dxhat - xhat * mean(dxhat * xhat))
// dgamma = sum_rows(dy * xhat)   (the same with unit_offset: d(1 + w)/dw = 1)
template <class T>
void rms_norm_backward(T* dx, T* dgamma, const T* dy, const T* x, const T* gamma, const T* rrms, int64_t M, int64_t N,
                       bool unit_offset) {
  if (dx) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* xi = x + i * N;
        const T* dyi = dy + i * N;
        const double rr = double(rrms[i]);
        double sum_dxhat_xhat = 0;
        for (int64_t j = 0; j < N; ++j) {
          const double xhat = double(xi[j]) * rr;
          const double dxhat = double(dyi[j]) * scale_at(gamma, j, unit_offset);
          sum_dxhat_xhat += dxhat * xhat;
        }
        const double mean_dxhat_xhat = sum_dxhat_xhat / double(N);
        T* dxi = dx + i * N;
        for (int64_t j = 0; j < N; ++j) {
          const double xhat = double(xi[j]) * rr;
          const double dxhat = double(dyi[j]) * scale_at(gamma, j, unit_offset);
          dxi[j] = T(rr * (dxhat - xhat * mean_dxhat_xhat));
        }
      }
    });
  }
  if (dgamma) {
    const std::vector<double> acc = sum_rows(M, N, [&](int64_t i, double* a) {
      const T* xi = x + i * N;
      const T* dyi = dy + i * N;
      const double rr = double(rrms[i]);
      for (int64_t j = 0; j < N; ++j) a[j] += double(dyi[j]) * double(xi[j]) * rr;
    });
    for (int64_t j = 0; j < N; ++j) dgamma[j] = T(acc[size_t(j)]);
  }
}

// Scalar math: rms_norm_forward above; the sum of squares in vector accumulators of T
// (simd::row_sums), then y from the row, still in L1. Rows go in groups (simd::group_rows) as in
// layer_norm_forward_cpu: the sums of the group, then its rrms in one loop that vectorizes, then y.
template <class S>
void rms_norm_forward_cpu(S* y, math_t<S>* rrms, const S* x, const S* gamma, int64_t M, int64_t N, double eps,
                          bool unit_offset) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  constexpr int64_t G = simd::kRowGroup;
  const std::vector<T> g = as_values<T>(gamma, N, 1.0, unit_offset ? 1.0 : 0.0);
  const T* gp = g.data();
  parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) { simd::with_row_length(N, [&](auto N) {
    simd::for_row_groups(r0, r1, simd::group_rows<T>(N), [&](int64_t i0, int64_t n) {
      T ss[G] = {}, rr[G];  // rows past n: zeros, never stored
      for (int64_t k = 0; k < n; ++k) ss[k] = simd::row_sum_squares(N, x + (i0 + k) * N);
      for (int64_t k = 0; k < G; ++k) rr[k] = T(1.0 / std::sqrt(double(ss[k]) / double(N) + eps));
      for (int64_t k = 0; k < n; ++k) {
        rrms[i0 + k] = rr[k];
        const S* xi = x + (i0 + k) * N;
        S* yi = y + (i0 + k) * N;
        const V rrv = simd::splat(rr[k]);
        simd::row_for<T>(N, [&](int64_t j, auto at) { at.store(yi + j, at(xi + j) * rrv * at(gp + j)); });
      }
    });
  }); });
}

// Scalar math: rms_norm_backward above. One pass over the rows: per row, the sum of
// dxhat * xhat (vector accumulators of T) and, in the same pass, dy * xhat into the block's
// dgamma partial (sum_rows: T partials per block, added in double in block order); then dx. S is
// the storage type of the rows and gamma, T = math_t<S> that of the math (layer_norm_rows.h).
template <class S>
void rms_norm_backward_cpu(S* dx, S* dgamma, const S* dy, const S* x, const S* gamma, const math_t<S>* rrms,
                           int64_t M, int64_t N, bool unit_offset, const S* dx_add) {
  using T = math_t<S>;
  using V = simd::Vec<T>;
  const std::vector<T> g = as_values<T>(gamma, N, 1.0, unit_offset ? 1.0 : 0.0);
  const T* gp = g.data();
  // has_acc (a std::bool_constant): whether acc takes the row's dgamma terms; N: the row length, a
  // constant for the short rows (simd::with_row_length).
  auto row = [&](int64_t i, T* acc, auto has_acc, auto N) {
    const S* xi = x + i * N;
    const S* dyi = dy + i * N;
    const V rr = simd::splat(rrms[i]);
    if (!dx) {
      if constexpr (decltype(has_acc)::value)
        simd::row_for<T>(N, [&](int64_t j, auto at) {
          at.store(acc + j, at(acc + j) + at(dyi + j) * (at(xi + j) * rr));
        });
      return;
    }
    const T s = simd::row_sums<T, 1>(N, [&](int64_t j, auto at, V* sums) {
                  const V d = at(dyi + j), xhat = at(xi + j) * rr;
                  sums[0] += d * at(gp + j) * xhat;
                  if constexpr (decltype(has_acc)::value) at.store(acc + j, at(acc + j) + d * xhat);
                }).v[0];
    const V mean_dxhat_xhat = simd::splat(T(double(s) / double(N)));
    S* dxi = dx + i * N;
    const S* addi = dx_add ? dx_add + i * N : nullptr;
    auto dx_of = [&](int64_t j, auto at) {
      const V xhat = at(xi + j) * rr, dxhat = at(dyi + j) * at(gp + j);
      return rr * (dxhat - xhat * mean_dxhat_xhat);
    };
    if (addi)
      simd::row_for<T>(N, [&](int64_t j, auto at) { at.store(dxi + j, dx_of(j, at) + at(addi + j)); });
    else
      simd::row_for<T>(N, [&](int64_t j, auto at) { at.store(dxi + j, dx_of(j, at)); });
  };
  if (!dgamma) {
    parallel_for(0, M, row_grain(N), [&](int64_t r0, int64_t r1) {
      simd::with_row_length(N, [&](auto n) {
        for (int64_t i = r0; i < r1; ++i) row(i, nullptr, std::false_type{}, n);
      });
    });
    return;
  }
  const std::vector<double> acc = sum_blocks<T>(M, N, [&](int64_t i0, int64_t i1, T* a) {
    simd::with_row_length(N, [&](auto n) {
      for (int64_t i = i0; i < i1; ++i) row(i, a, std::true_type{}, n);
    });
  });
  for (int64_t j = 0; j < N; ++j) dgamma[j] = to_storage<S>(acc[size_t(j)]);
}

template void rms_norm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, double, bool);
template void rms_norm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t, double,
                                       bool);
template void rms_norm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                       int64_t, int64_t, bool);
template void rms_norm_backward<double>(double*, double*, const double*, const double*, const double*,
                                        const double*, int64_t, int64_t, bool);
template void rms_norm_forward_cpu<float>(float*, float*, const float*, const float*, int64_t, int64_t, double, bool);
template void rms_norm_forward_cpu<double>(double*, double*, const double*, const double*, int64_t, int64_t, double,
                                           bool);
template void rms_norm_backward_cpu<float>(float*, float*, const float*, const float*, const float*, const float*,
                                           int64_t, int64_t, bool, const float*);
template void rms_norm_backward_cpu<double>(double*, double*, const double*, const double*, const double*,
                                            const double*, int64_t, int64_t, bool, const double*);
#define NL_INSTANTIATE_LOW_PRECISION(T)                                                                               \
  template void rms_norm_forward_cpu<T>(T*, float*, const T*, const T*, int64_t, int64_t, double, bool);              \
  template void rms_norm_backward_cpu<T>(T*, T*, const T*, const T*, const T*, const float*, int64_t, int64_t,        \
                                         bool, const T*);
NL_FOR_EACH_LOW_PRECISION(NL_INSTANTIATE_LOW_PRECISION)
#undef NL_INSTANTIATE_LOW_PRECISION

RMSNormStats rms_norm_forward(const Tensor& x_in, const Tensor& gamma_in, double eps, bool unit_offset) {
#ifdef NORMLAB_WITH_CUDA
  if (x_in.defined() && x_in.device().type == DeviceType::cuda)
    return rms_norm_forward_cuda(x_in, gamma_in, eps, unit_offset);
#endif
  check_eps(eps, "rms_norm");
  NL_CHECK(x_in.defined() && x_in.dim() >= 1, "rms_norm: the input needs at least 1 dim");
  const int64_t N = x_in.size(-1);
  const int64_t M = rows_of(x_in, N, "rms_norm");
  check_vector(gamma_in, N, x_in.dtype(), "rms_norm", "gamma");
  const Tensor x = x_in.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  RMSNormStats out{empty(x.shape(), x.dtype()), empty(leading_shape(x), norm_stat_dtype(x.dtype()))};
  dispatch_norm_dtype(x.dtype(), "rms_norm", [&]<class scalar_t>(scalar_t) {
    rms_norm_forward_cpu<scalar_t>(out.y.data<scalar_t>(), out.rrms.data<math_t<scalar_t>>(), x.data<scalar_t>(),
                                   ptr_or_null<scalar_t>(gamma), M, N, eps, unit_offset);
  });
  return out;
}

RMSNormGrads rms_norm_backward(const Tensor& dy_in, const Tensor& x, const Tensor& gamma_in, const Tensor& rrms,
                               bool unit_offset, bool want_dx, bool want_dgamma) {
#ifdef NORMLAB_WITH_CUDA
  if (x.defined() && x.device().type == DeviceType::cuda)
    return rms_norm_backward_cuda(dy_in, x, gamma_in, rrms, unit_offset, want_dx, want_dgamma);
#endif
  const int64_t N = x.size(-1);
  const int64_t M = x.numel() / N;
  NL_CHECK(dy_in.shape() == x.shape(), "rms_norm_backward: dy has shape ", to_string(dy_in.shape()), " but x has ",
           to_string(x.shape()));
  check_stat(rrms, M, x.dtype(), "rms_norm_backward", "rrms");
  const Tensor dy = dy_in.contiguous(), xc = x.contiguous();
  const Tensor gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor();
  RMSNormGrads g;
  if (want_dx) g.dx = empty(x.shape(), x.dtype());
  if (want_dgamma) g.dgamma = empty({N}, x.dtype());
  dispatch_norm_dtype(x.dtype(), "rms_norm_backward", [&]<class scalar_t>(scalar_t) {
    rms_norm_backward_cpu<scalar_t>(ptr_or_null<scalar_t>(g.dx), ptr_or_null<scalar_t>(g.dgamma),
                                    dy.data<scalar_t>(), xc.data<scalar_t>(), ptr_or_null<scalar_t>(gamma),
                                    rrms.contiguous().data<math_t<scalar_t>>(), M, N, unit_offset);
  });
  return g;
}

std::vector<Tensor> RMSNormNode::backward(const std::vector<Tensor>& grad_outputs) {
  const bool has_gamma = gamma.defined();
  RMSNormGrads g = rms_norm_backward(grad_outputs[0], x, gamma, rrms, unit_offset, needs_input_grad(0),
                                     has_gamma && needs_input_grad(1));
  std::vector<Tensor> out{g.dx};
  if (has_gamma) out.push_back(g.dgamma);
  return out;
}

void RMSNormNode::release() {
  x = gamma = rrms = Tensor();
  Node::release();
}

Variable rms_norm(const Variable& x, const Variable& gamma, double eps, bool unit_offset) {
  RMSNormStats s = rms_norm_forward(x.data(), data_or_undefined(gamma), eps, unit_offset);
  return record(defined_inputs({x, gamma}), {s.y}, [&] {
    return std::make_shared<RMSNormNode>(x.data(), data_or_undefined(gamma), s.rrms, unit_offset);
  })[0];
}

RMSNorm::RMSNorm(int64_t N_, double eps_, bool with_weight, bool unit_offset_, DType dtype)
    : N(N_), eps(eps_), unit_offset(unit_offset_) {
  check_features(N, "RMSNorm");
  check_eps(eps, "RMSNorm");
  if (with_weight) weight = register_parameter("weight", unit_offset ? zeros({N}, dtype) : ones({N}, dtype));
}

Variable RMSNorm::forward(const Variable& x) {
  rows_of(x.data(), N, "RMSNorm");
  return rms_norm(x, weight, eps, unit_offset);
}

}  // namespace normlab
