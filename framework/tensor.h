// Tensor: shared storage + shape + strides + offset + dtype + device. Row-major and
// contiguous by default; reshape/transpose/permute/slice/narrow/expand are views and
// contiguous() copies. A Tensor knows nothing of gradients.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "framework/dtype.h"
#include "framework/error.h"
#include "framework/rng.h"

namespace normlab {

using Shape = std::vector<int64_t>;

std::string to_string(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);
// Wraps a possibly negative dim into [0, ndim); throws naming the op and the dim.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

// A block of memory from the device's caching allocator.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false
  Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device{}; }
  bool is_cuda() const { return device().type == DeviceType::cuda; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const;
  int64_t numel() const { return numel_; }
  size_t element_size() const { return dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Pointer to the first element; checks that T matches the dtype.
  template <class T> T* data() const {
    NL_CHECK(dtype_v<T> == dtype_, "data<", dtype_name(dtype_v<T>), ">() on a tensor of dtype ", dtype_name(dtype_));
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const {
    return static_cast<char*>(storage_->data()) + offset_ * int64_t(element_size());
  }

  // Views (share storage).
  Tensor view(Shape shape) const;      // needs a compatible layout; one dim may be -1
  Tensor reshape(Shape shape) const;   // a view when possible, else a copy
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes `dim`
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(const Shape& shape) const;  // size-1 dims broadcast with stride 0

  // Copies.
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;       // always a fresh contiguous copy
  Tensor to(DType dtype) const;
  // This tensor on `device`: itself when already there, else to_device (framework/cuda.h).
  Tensor to(Device device) const;
  void copy_from(const Tensor& src);  // same shape; any layouts, float dtypes and devices
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Element access (for tests and small code): any dtype, read as double. On a CUDA
  // device each call copies one element (slow; meant for scalars such as a loss).
  double item() const;
  double at(const std::vector<int64_t>& index) const;
  void set(const std::vector<int64_t>& index, double value);
  template <class T> std::vector<T> to_vector() const;
  int64_t linear_offset(const std::vector<int64_t>& index) const;  // in elements, from storage start

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;
  int64_t numel_ = 0;
  DType dtype_ = DType::f32;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Factories.
Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = {});
Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = {});
Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = {});
Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = {});
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::f32);
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32, double mean = 0.0, double std = 1.0);
Tensor uniform(const Shape& shape, Generator& gen, double low = 0.0, double high = 1.0, DType dtype = DType::f32);
Tensor zeros_like(const Tensor& t);  // same shape, dtype and device
Tensor empty_like(const Tensor& t);
template <class T> Tensor from_vector(const std::vector<T>& values, const Shape& shape);
Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype);

// Device checks for kernels. check_cpu throws naming the op and the tensor's device when t
// is not on the cpu (CPU kernels call it before touching memory); same_device returns the
// device of a and b, or throws naming both devices.
void check_cpu(const Tensor& t, const char* op);
Device same_device(const Tensor& a, const Tensor& b, const char* op);

// Broadcasting: the shape two operands broadcast to (numpy rules), or an Error naming both.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace normlab
