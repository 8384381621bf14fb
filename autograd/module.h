// Module: a layer with named parameters, buffers and sub-modules. Names are dotted paths
// (`blocks.17.attn.q.weight`), stable across runs, and double as HDF5 dataset paths.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"

namespace normlab {

class Module {
 public:
  virtual ~Module() = default;

  std::vector<std::pair<std::string, Variable>> named_parameters() const;
  std::vector<Variable> parameters() const;
  // Buffers are tensors saved with the module but not trained (e.g. running statistics).
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  void zero_grad();
  void train(bool on = true);
  void eval() { train(false); }
  // Moves every parameter and buffer (of this module and its children) to `device`, dropping
  // gradients. Tensors a module keeps outside its parameters and buffers stay where they are.
  void to(Device device);
  bool training() const { return training_; }

 protected:
  Variable register_parameter(const std::string& name, Tensor init);
  void register_buffer(const std::string& name, Tensor t);
  Tensor& buffer(const std::string& name);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    check_name(name);
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void check_name(const std::string& name) const;
  void collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Variable>>& out) const;
  void collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;

  std::vector<std::pair<std::string, Variable>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// A module that only holds children, under names the caller picks (`blocks` then `0`, `1`, ...).
class ModuleDict : public Module {
 public:
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
};

// y = x W^T + b, W [out, in]; initialised uniform(-1/sqrt(in), 1/sqrt(in)) like PyTorch.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype = DType::f32);
  Variable forward(const Variable& x) const;
  Variable weight, bias;  // bias undefined when disabled
};

// Rows of a [num, dim] table, initialised N(0, 1) like PyTorch.
class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen, DType dtype = DType::f32);
  Variable forward(const Tensor& indices) const;
  Variable weight;
};

}  // namespace normlab
