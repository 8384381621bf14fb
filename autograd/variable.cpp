#include "autograd/variable.h"

namespace normlab {

Variable::Variable(Tensor data, bool requires_grad) : impl_(std::make_shared<VariableImpl>()) {
  NL_CHECK(data.defined(), "Variable: the tensor is undefined");
  NL_CHECK(!requires_grad || is_floating(data.dtype()), "Variable: a tensor of dtype ", dtype_name(data.dtype()),
           " cannot require grad");
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
}

Variable& Variable::set_requires_grad(bool r) {
  NL_CHECK(is_leaf(), "set_requires_grad: only leaves may change requires_grad (this variable was made by '",
           impl_->grad_fn->name(), "')");
  NL_CHECK(!r || is_floating(dtype()), "set_requires_grad: a tensor of dtype ", dtype_name(dtype()), " cannot require grad");
  impl_->requires_grad = r;
  return *this;
}

Variable Variable::detach() const { return Variable(impl_->data, false); }

void Variable::backward(const Tensor& seed, bool retain_graph) const {
  normlab::backward({*this}, {seed}, retain_graph);
}

// Destroying a long chain recursively (node -> input variable -> its node -> ...) would
// overflow the stack at ~100k nodes; instead, nodes that only this chain keeps alive are
// moved to a local stack and destroyed one at a time.
Node::~Node() {
  std::vector<std::shared_ptr<Node>> pending;
  auto take_inputs = [&pending](std::vector<Variable>& inputs) {
    for (Variable& v : inputs) {
      VariableImpl* impl = v.impl();
      if (impl && v.impl_.use_count() == 1 && impl->grad_fn && impl->grad_fn.use_count() == 1)
        pending.push_back(std::move(impl->grad_fn));
    }
    inputs.clear();
  };
  take_inputs(inputs_);
  while (!pending.empty()) {
    std::shared_ptr<Node> n = std::move(pending.back());
    pending.pop_back();
    take_inputs(n->inputs_);
  }  // n is destroyed here with no inputs left: no recursion
}

void Node::release() {
  inputs_.clear();
  released_ = true;
}

namespace {
thread_local bool t_grad_enabled = true;
}

bool grad_enabled() { return t_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }

bool any_requires_grad(const std::vector<Variable>& inputs) {
  if (!t_grad_enabled) return false;
  for (const Variable& v : inputs)
    if (v.requires_grad()) return true;
  return false;
}

std::vector<Variable> make_outputs(const std::shared_ptr<Node>& node, std::vector<Variable> inputs,
                                   std::vector<Tensor> outputs) {
  std::vector<Variable> result;
  result.reserve(outputs.size());
  const bool record = any_requires_grad(inputs);
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (record) node->outputs_.push_back({outputs[i].shape(), outputs[i].dtype(), outputs[i].device()});
    Variable v(std::move(outputs[i]), record);
    if (record) {
      v.impl()->grad_fn = node;
      v.impl()->output_nr = int(i);
    }
    result.push_back(std::move(v));
  }
  if (record) node->inputs_ = std::move(inputs);
  return result;
}

// make_outputs for one output, without its vectors of outputs and results (two allocations
// per node).
Variable make_output(const char* name, std::vector<Variable> inputs, Tensor output, FunctionNode::Backward backward) {
  if (!any_requires_grad(inputs)) return Variable(std::move(output));
  auto node = std::make_shared<FunctionNode>(name, std::move(backward));
  node->outputs_.push_back({output.shape(), output.dtype(), output.device()});
  node->inputs_ = std::move(inputs);
  Variable v(std::move(output), true);
  v.impl()->grad_fn = std::move(node);
  return v;
}

}  // namespace normlab
