#include "framework/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <sstream>

#include "framework/allocator.h"
#include "framework/cuda.h"
#include "framework/cuda_ops.h"
#include "framework/parallel.h"
#include "framework/strided.h"

namespace normlab {

// ---------------------------------------------------------------------------------------------
// Shapes

std::string to_string(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t d = int64_t(s.size()) - 1; d >= 0; --d) {
    st[d] = acc;
    acc *= std::max<int64_t>(s[d], 1);
  }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  NL_CHECK(dim >= lo && dim <= hi, op, ": dim ", dim, " is out of range for a tensor of ", ndim,
           " dims (expected ", lo, "..", hi, ")");
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    NL_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", to_string(a), " and ", to_string(b),
             " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Storage

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.type == DeviceType::cpu) {
    data_ = CpuAllocator::instance().allocate(nbytes);
    return;
  }
  NL_CHECK(cuda_available(), "device ", device, " is not available: ", cuda_unavailable_reason());
  NL_CHECK(device.index == 0, "device ", device, " is not supported: normlab uses cuda:0 only (",
           cuda_device_count(), " CUDA device(s) present)");
  data_ = CudaAllocator::instance().allocate(nbytes);
}

Storage::~Storage() {
  if (device_.type == DeviceType::cpu) CpuAllocator::instance().deallocate(data_, nbytes_);
  else CudaAllocator::instance().deallocate(data_, nbytes_);
}

void check_cpu(const Tensor& t, const char* op) {
  NL_CHECK(!t.defined() || t.device().type == DeviceType::cpu, op, ": a tensor of shape ", to_string(t.shape()),
           " is on ", t.device(), ", but this op has only a cpu kernel (move it with .to(Device::cpu()))");
}

Device same_device(const Tensor& a, const Tensor& b, const char* op) {
  NL_CHECK(a.device() == b.device(), op, ": tensors are on different devices: ", a.device(), " (shape ",
           to_string(a.shape()), ") and ", b.device(), " (shape ", to_string(b.shape()), ")");
  return a.device();
}

// ---------------------------------------------------------------------------------------------
// Tensor

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype)
    : storage_(std::move(storage)), shape_(std::move(shape)), strides_(std::move(strides)),
      offset_(offset), numel_(shape_numel(shape_)), dtype_(dtype) {}

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (shape_[d] == 1) continue;
    if (strides_[d] != expected) return false;
    expected *= shape_[d];
  }
  return true;
}

static Shape infer_shape(Shape shape, int64_t numel, const char* op) {
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      NL_CHECK(infer < 0, op, ": only one dim may be -1, got ", to_string(shape));
      infer = int64_t(i);
    } else {
      NL_CHECK(shape[i] >= 0, op, ": invalid size ", shape[i], " in shape ", to_string(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    NL_CHECK(known != 0 && numel % known == 0, op, ": shape ", to_string(shape), " is invalid for ",
             numel, " elements");
    shape[infer] = numel / known;
  }
  NL_CHECK(shape_numel(shape) == numel, op, ": shape ", to_string(shape), " is invalid for ", numel,
           " elements");
  return shape;
}

// Strides for viewing (old shape, old strides) as new_shape without a copy, or empty when
// impossible (PyTorch's computeStride: each run of old dims that is contiguous in memory
// may be split into new dims).
static std::optional<Shape> view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& new_shape) {
  const int64_t numel = shape_numel(old_shape);
  Shape out(new_shape.size());
  if (numel == 0 || old_shape.empty()) return contiguous_strides(new_shape);
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    if (d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

Tensor Tensor::view(Shape shape) const {
  shape = infer_shape(std::move(shape), numel_, "view");
  auto st = view_strides(shape_, strides_, shape);
  NL_CHECK(st.has_value(), "view: cannot view a tensor of shape ", to_string(shape_), " and strides ",
           to_string(strides_), " as ", to_string(shape), " without a copy (use reshape)");
  return Tensor(storage_, std::move(shape), std::move(*st), offset_, dtype_);
}

Tensor Tensor::reshape(Shape shape) const {
  shape = infer_shape(std::move(shape), numel_, "reshape");
  if (auto st = view_strides(shape_, strides_, shape)) return Tensor(storage_, std::move(shape), std::move(*st), offset_, dtype_);
  return contiguous().view(std::move(shape));
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  d0 = wrap_dim(d0, dim(), "transpose");
  d1 = wrap_dim(d1, dim(), "transpose");
  Shape sh = shape_, st = strides_;
  std::swap(sh[d0], sh[d1]);
  std::swap(st[d0], st[d1]);
  return Tensor(storage_, std::move(sh), std::move(st), offset_, dtype_);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  NL_CHECK(int64_t(dims.size()) == dim(), "permute: got ", dims.size(), " dims for a tensor of shape ",
           to_string(shape_));
  Shape sh(dims.size()), st(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    NL_CHECK(!seen[d], "permute: dim ", dims[i], " appears twice in ", to_string(Shape(dims)));
    seen[d] = true;
    sh[i] = shape_[d];
    st[i] = strides_[d];
  }
  return Tensor(storage_, std::move(sh), std::move(st), offset_, dtype_);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  NL_CHECK(step >= 1, "slice: step must be >= 1, got ", step);
  const int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape sh = shape_, st = strides_;
  sh[d] = (end - start + step - 1) / step;
  st[d] = strides_[d] * step;
  return Tensor(storage_, std::move(sh), std::move(st), offset_ + start * strides_[d], dtype_);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  NL_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d], "narrow: range [", start, ", ",
           start + length, ") is out of bounds for dim ", d, " of size ", shape_[d]);
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  NL_CHECK(index >= -shape_[d] && index < shape_[d], "select: index ", index, " is out of bounds for dim ",
           d, " of size ", shape_[d]);
  if (index < 0) index += shape_[d];
  Shape sh = shape_, st = strides_;
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return Tensor(storage_, std::move(sh), std::move(st), offset_ + index * strides_[d], dtype_);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape sh = shape_, st = strides_;
  sh.insert(sh.begin() + d, 1);
  st.insert(st.begin() + d, d < dim() ? strides_[d] * shape_[d] : 1);
  return Tensor(storage_, std::move(sh), std::move(st), offset_, dtype_);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  NL_CHECK(shape_[d] == 1, "squeeze: dim ", d, " has size ", shape_[d], ", expected 1");
  Shape sh = shape_, st = strides_;
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return Tensor(storage_, std::move(sh), std::move(st), offset_, dtype_);
}

Tensor Tensor::expand(const Shape& shape) const {
  NL_CHECK(shape.size() >= shape_.size(), "expand: cannot expand shape ", to_string(shape_), " to ",
           to_string(shape));
  const size_t lead = shape.size() - shape_.size();
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) continue;
    const int64_t have = shape_[i - lead];
    NL_CHECK(have == shape[i] || have == 1, "expand: cannot expand shape ", to_string(shape_), " to ",
             to_string(shape));
    st[i] = have == shape[i] ? strides_[i - lead] : 0;
  }
  return Tensor(storage_, shape, std::move(st), offset_, dtype_);
}

// Calls f.template operator()<T>() with T the C++ type of dtype.
template <class F>
static decltype(auto) visit_dtype(DType t, F&& f) {
  switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::bf16: return f.template operator()<bf16>();
    case DType::f16: return f.template operator()<f16>();
    case DType::i64: return f.template operator()<int64_t>();
  }
  NL_FAIL("unknown dtype");
}

template <class T> static double to_double(T v) { return double(to_math(v)); }

template <class D, class S> static D convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else return to_storage<D>(to_double(v));
}

// dst[i, j] = src[i, j] for a P x L block where the destination is unit-stride along j and
// the source along i: 32 x 32 tiles keep both sides on few cache lines.
template <class D, class S>
static void transpose_copy(D* dst, int64_t dst_row_stride, const S* src, int64_t src_col_stride, int64_t P, int64_t L) {
  constexpr int64_t kTile = 32;
  parallel_for(0, (P + kTile - 1) / kTile, std::max<int64_t>(1, 8192 / std::max<int64_t>(L, 1) / kTile), [&](int64_t tb, int64_t te) {
    for (int64_t i0 = tb * kTile; i0 < std::min(P, te * kTile); i0 += kTile)
      for (int64_t j0 = 0; j0 < L; j0 += kTile)
        for (int64_t i = i0; i < std::min(i0 + kTile, P); ++i)
          for (int64_t j = j0; j < std::min(j0 + kTile, L); ++j)
            dst[i * dst_row_stride + j] = convert<D>(src[i + j * src_col_stride]);
  });
}

void Tensor::copy_from(const Tensor& src) {
  NL_CHECK(src.shape() == shape_, "copy_from: source shape ", to_string(src.shape()),
           " does not match destination shape ", to_string(shape_));
  if (device() != src.device()) {
    // Across devices: one transfer of contiguous bytes of the destination's dtype, then (when
    // this tensor is not a plain contiguous buffer) a copy on this device.
    const Tensor s = src.to(dtype_).contiguous();
    if (is_contiguous()) {
      cuda_memcpy(raw_data(), device(), s.raw_data(), s.device(), size_t(numel_) * element_size());
    } else {
      copy_from(to_device(s, device()));
    }
    return;
  }
  if (device().type == DeviceType::cuda) {
    copy_cuda(*this, src);
    return;
  }
  visit_dtype(dtype_, [&]<class D>() {
    visit_dtype(src.dtype(), [&]<class S>() {
      D* dst = static_cast<D*>(storage_->data()) + offset_;
      const S* s = static_cast<const S*>(src.storage()->data()) + src.offset();
      // Transposing copy: the destination is unit-stride along the last dim, the source
      // along another dim p; copy (p, last) planes in tiles.
      const int64_t last = dim() - 1;
      int64_t p = -1;
      if (last >= 1 && shape_[last] > 1 && strides_[last] == 1 && src.strides()[last] != 1)
        for (int64_t d = 0; d < last; ++d)
          if (shape_[d] > 1 && src.strides()[d] == 1) p = d;
      if (p >= 0) {
        Shape planes = shape_;
        planes[p] = planes[last] = 1;
        for_each_strided<2>(planes, {strides_, src.strides()}, 1,
                            [&](std::array<int64_t, 2> off, int64_t n, std::array<int64_t, 2> inc) {
          for (int64_t r = 0; r < n; ++r)
            transpose_copy(dst + off[0] + r * inc[0], strides_[p], s + off[1] + r * inc[1], src.strides()[last],
                           shape_[p], shape_[last]);
        });
        return;
      }
      for_each_strided<2>(shape_, {strides_, src.strides()}, 1 << 15,
                          [&](std::array<int64_t, 2> off, int64_t n, std::array<int64_t, 2> inc) {
        D* d = dst + off[0];
        const S* ps = s + off[1];
        if constexpr (std::is_same_v<D, S>) {
          if (inc[0] == 1 && inc[1] == 1) {
            std::memcpy(d, ps, size_t(n) * sizeof(D));
            return;
          }
        }
        for (int64_t i = 0; i < n; ++i) d[i * inc[0]] = convert<D>(ps[i * inc[1]]);
      });
    });
  });
}

void Tensor::fill_(double value) {
  if (device().type == DeviceType::cuda) {
    fill_cuda(*this, value);
    return;
  }
  visit_dtype(dtype_, [&]<class T>() {
    T* base = static_cast<T*>(storage_->data()) + offset_;
    const T v = to_storage<T>(value);
    for_each_strided<1>(shape_, {strides_}, 1 << 15, [&](std::array<int64_t, 1> off, int64_t n, std::array<int64_t, 1> inc) {
      for (int64_t i = 0; i < n; ++i) base[off[0] + i * inc[0]] = v;
    });
  });
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(Device device) const {
  NL_CHECK(defined(), "to: tensor is undefined");
  return device == this->device() ? *this : to_device(*this, device);
}

int64_t Tensor::linear_offset(const std::vector<int64_t>& index) const {
  NL_CHECK(int64_t(index.size()) == dim(), "index ", to_string(Shape(index)), " has ", index.size(),
           " entries for a tensor of shape ", to_string(shape_));
  int64_t off = offset_;
  for (size_t d = 0; d < index.size(); ++d) {
    NL_CHECK(index[d] >= 0 && index[d] < shape_[d], "index ", to_string(Shape(index)),
             " is out of bounds for shape ", to_string(shape_));
    off += index[d] * strides_[d];
  }
  return off;
}

double Tensor::at(const std::vector<int64_t>& index) const {
  const int64_t off = linear_offset(index);
  return visit_dtype(dtype_, [&]<class T>() {
    const T* p = static_cast<const T*>(storage_->data()) + off;
    if (device().type == DeviceType::cpu) return to_double(*p);
    T v;
    cuda_memcpy(&v, Device::cpu(), p, device(), sizeof(T));
    return to_double(v);
  });
}

void Tensor::set(const std::vector<int64_t>& index, double value) {
  const int64_t off = linear_offset(index);
  visit_dtype(dtype_, [&]<class T>() {
    T* p = static_cast<T*>(storage_->data()) + off;
    const T v = to_storage<T>(value);
    if (device().type == DeviceType::cpu) *p = v;
    else cuda_memcpy(p, device(), &v, Device::cpu(), sizeof(T));
  });
}

double Tensor::item() const {
  NL_CHECK(numel_ == 1, "item: tensor of shape ", to_string(shape_), " has ", numel_, " elements, expected 1");
  return at(Shape(shape_.size(), 0));
}

template <class T> std::vector<T> Tensor::to_vector() const {
  Tensor c = to(Device::cpu()).to(dtype_v<T>).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + numel_);
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "Tensor(undefined)";
  os << "Tensor(shape=" << to_string(t.shape()) << ", dtype=" << t.dtype() << ", device=" << t.device() << ", [";
  const std::vector<double> v = t.to_vector<double>();
  const size_t shown = std::min<size_t>(v.size(), 8);
  for (size_t i = 0; i < shown; ++i) os << (i ? ", " : "") << v[i];
  if (shown < v.size()) os << ", ...";
  return os << "])";
}

// ---------------------------------------------------------------------------------------------
// Factories

Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) NL_CHECK(d >= 0, "empty: negative size ", d, " in shape ", to_string(shape));
  const int64_t n = shape_numel(shape);
  auto storage = std::make_shared<Storage>(size_t(n) * dtype_size(dtype), device);
  return Tensor(std::move(storage), shape, contiguous_strides(shape), 0, dtype);
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }

Tensor arange(double start, double end, double step, DType dtype) {
  NL_CHECK(step != 0 && std::isfinite(step), "arange: step must be finite and nonzero, got ", step);
  const int64_t n = std::max<int64_t>(0, int64_t(std::ceil((end - start) / step)));
  Tensor t = empty({n}, dtype);
  visit_dtype(dtype, [&]<class T>() {
    T* p = t.data<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = to_storage<T>(start + double(i) * step);
  });
  return t;
}

// Fills a fresh tensor with value_at(counter) for consecutive counters of the generator.
template <class F>
static Tensor generate(const Shape& shape, Generator& gen, DType dtype, const F& value_at) {
  Tensor t = empty(shape, dtype);
  const int64_t n = t.numel();
  const uint64_t first = gen.advance(uint64_t(n));
  visit_dtype(dtype, [&]<class T>() {
    T* p = t.data<T>();
    parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = to_storage<T>(value_at(first + uint64_t(i)));
    });
  });
  return t;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype, double mean, double std) {
  NL_CHECK(is_floating(dtype), "randn: dtype must be floating, got ", dtype_name(dtype));
  NL_CHECK(std >= 0 && std::isfinite(std), "randn: std must be finite and >= 0, got ", std);
  return generate(shape, gen, dtype, [&](uint64_t c) { return mean + std * gen.normal_at(c); });
}

Tensor uniform(const Shape& shape, Generator& gen, double low, double high, DType dtype) {
  NL_CHECK(is_floating(dtype), "uniform: dtype must be floating, got ", dtype_name(dtype));
  NL_CHECK(low <= high, "uniform: low ", low, " is greater than high ", high);
  return generate(shape, gen, dtype, [&](uint64_t c) { return low + (high - low) * gen.uniform_at(c); });
}

template <class T> Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
  NL_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values do not fill shape ", to_string(shape));
  Tensor t = empty(shape, dtype_v<T>);
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&);

Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype) {
  return from_vector<double>(values, shape).to(dtype);
}

}  // namespace normlab
