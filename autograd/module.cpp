#include "autograd/module.h"

#include <cmath>

#include "autograd/ops.h"

namespace normlab {

void Module::check_name(const std::string& name) const {
  NL_CHECK(!name.empty() && name.find('.') == std::string::npos && name.find('/') == std::string::npos,
           "Module: invalid name '", name, "' (must be non-empty, without '.' or '/')");
  for (const auto& [n, p] : params_) NL_CHECK(n != name, "Module: name '", name, "' is already registered");
  for (const auto& [n, c] : children_) NL_CHECK(n != name, "Module: name '", name, "' is already registered");
  for (const auto& [n, b] : buffers_) NL_CHECK(n != name, "Module: name '", name, "' is already registered");
}

Variable Module::register_parameter(const std::string& name, Tensor init) {
  check_name(name);
  Variable v(std::move(init), true);
  params_.emplace_back(name, v);
  return v;
}

void Module::register_buffer(const std::string& name, Tensor t) {
  check_name(name);
  buffers_.emplace_back(name, std::move(t));
}

Tensor& Module::buffer(const std::string& name) {
  for (auto& [n, b] : buffers_)
    if (n == name) return b;
  NL_FAIL("Module: no buffer named '", name, "'");
}

void Module::collect_parameters(const std::string& prefix, std::vector<std::pair<std::string, Variable>>& out) const {
  for (const auto& [n, p] : params_) out.emplace_back(prefix + n, p);
  for (const auto& [n, c] : children_) c->collect_parameters(prefix + n + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [n, b] : buffers_) out.emplace_back(prefix + n, b);
  for (const auto& [n, c] : children_) c->collect_buffers(prefix + n + ".", out);
}

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out;
  collect_parameters("", out);
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect_buffers("", out);
  return out;
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.zero_grad();
}

void Module::to(Device device) {
  for (auto& [n, p] : params_) {
    p.data() = p.data().to(device);
    p.zero_grad();
  }
  for (auto& [n, b] : buffers_) b = b.to(device);
  for (auto& [n, c] : children_) c->to(device);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, Generator& gen, DType dtype) {
  NL_CHECK(in_features >= 1 && out_features >= 1, "Linear: feature sizes must be >= 1, got in=", in_features,
           " out=", out_features);
  const double bound = 1.0 / std::sqrt(double(in_features));
  weight = register_parameter("weight", uniform({out_features, in_features}, gen, -bound, bound, dtype));
  if (with_bias) bias = register_parameter("bias", uniform({out_features}, gen, -bound, bound, dtype));
}

Variable Linear::forward(const Variable& x) const {
  NL_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "Linear: input shape ", to_string(x.shape()),
           " does not end in in_features=", weight.size(1));
  return linear(x, weight, bias);
}

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen, DType dtype) {
  NL_CHECK(num >= 1 && dim >= 1, "Embedding: sizes must be >= 1, got num=", num, " dim=", dim);
  weight = register_parameter("weight", randn({num, dim}, gen, dtype));
}

Variable Embedding::forward(const Tensor& indices) const { return embedding(weight, indices); }

}  // namespace normlab
