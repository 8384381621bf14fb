// Variable, Node and grad mode: the whole autograd graph.
//
// A Variable is a handle to a Tensor plus its gradient and the Node that made it. A Node
// keeps its inputs (the graph's edges) and what its backward needs; backward maps the
// gradients of its outputs to the gradients of its inputs. Nodes hold Tensors, never their
// output Variables, so the graph has no cycles.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "framework/tensor.h"

namespace normlab {

class Node;

struct VariableImpl {
  Tensor data;
  Tensor grad;                    // undefined until a backward reaches this leaf
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  int output_nr = 0;              // which output of grad_fn this is
};

class Variable {
 public:
  Variable() = default;  // undefined
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const { return impl_->data; }
  Tensor& data() { return impl_->data; }
  const Tensor& grad() const { return impl_->grad; }
  void set_grad(Tensor g) { impl_->grad = std::move(g); }
  void zero_grad() { impl_->grad = Tensor(); }  // drops the gradient (as set_to_none)
  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  Variable& set_requires_grad(bool r);
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  int output_nr() const { return impl_->output_nr; }
  bool is_leaf() const { return impl_->grad_fn == nullptr; }

  const Shape& shape() const { return impl_->data.shape(); }
  int64_t dim() const { return impl_->data.dim(); }
  int64_t size(int64_t d) const { return impl_->data.size(d); }
  int64_t numel() const { return impl_->data.numel(); }
  DType dtype() const { return impl_->data.dtype(); }
  double item() const { return impl_->data.item(); }

  // Backpropagates from this variable. A non-scalar needs `seed` (the gradient of some
  // scalar with respect to it, same shape). Gradients add into the leaves' grad(), so
  // several backward() calls accumulate. The graph is freed unless retain_graph.
  void backward(const Tensor& seed = Tensor(), bool retain_graph = false) const;

  // The same data, cut from the graph (shares storage).
  Variable detach() const;

  VariableImpl* impl() const { return impl_.get(); }
  bool same(const Variable& o) const { return impl_ == o.impl_; }

 private:
  friend class Node;
  std::shared_ptr<VariableImpl> impl_;
};

// Shape, dtype and device of one output of a node: the engine feeds zeros to outputs that
// received no gradient.
struct OutputMeta {
  Shape shape;
  DType dtype;
  Device device{};
};

class Node {
 public:
  explicit Node(std::string name) : name_(std::move(name)) {}
  virtual ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // One gradient per output in, one per input out (undefined where the input needs none).
  virtual std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) = 0;
  // Drops saved state after backward; subclasses free their saved tensors and call this.
  virtual void release();

  const std::string& name() const { return name_; }
  const std::vector<Variable>& inputs() const { return inputs_; }
  const std::vector<OutputMeta>& outputs() const { return outputs_; }
  bool released() const { return released_; }
  bool needs_input_grad(size_t i) const { return i < inputs_.size() && inputs_[i].requires_grad(); }

 private:
  friend std::vector<Variable> make_outputs(const std::shared_ptr<Node>&, std::vector<Variable>, std::vector<Tensor>);
  friend Variable make_output(const char*, std::vector<Variable>, Tensor, std::function<std::vector<Tensor>(const std::vector<Tensor>&, const Node&)>);
  friend struct EngineAccess;
  std::string name_;
  std::vector<Variable> inputs_;
  std::vector<OutputMeta> outputs_;
  bool released_ = false;
  // Engine state, used only while a backward runs through this node.
  uint64_t visit_ = 0;             // id of the last backward that reached this node
  int pending_ = 0;                // consumers that have not yet sent their gradient
  std::vector<Tensor> grad_outs_;  // gradients summed so far, one per output
};

// A node whose backward is a function (flashlight's pattern): the lambda captures only
// the tensors its backward needs.
class FunctionNode final : public Node {
 public:
  using Backward = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs, const Node& self)>;
  FunctionNode(std::string name, Backward fn) : Node(std::move(name)), fn_(std::move(fn)) {}
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override { return fn_(grad_outputs, *this); }
  void release() override {
    fn_ = nullptr;
    Node::release();
  }

 private:
  Backward fn_;
};

// Grad mode: while disabled (NoGradGuard), ops record no graph.
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True when an op on `inputs` should record a node.
bool any_requires_grad(const std::vector<Variable>& inputs);

// Wraps op results: when grad mode is on and some input requires grad, the outputs get
// `node` as grad_fn (with `inputs` as its edges) and require grad.
std::vector<Variable> make_outputs(const std::shared_ptr<Node>& node, std::vector<Variable> inputs,
                                   std::vector<Tensor> outputs);
// Single-output form with a lambda backward.
Variable make_output(const char* name, std::vector<Variable> inputs, Tensor output, FunctionNode::Backward backward);

// Runs backward from several roots at once (each with its seed).
void backward(const std::vector<Variable>& roots, const std::vector<Tensor>& seeds, bool retain_graph = false);

// Gradient accumulation over the parts of a batch, the parts run side by side: calls part(k)
// for k = 0 .. parts - 1, each on one thread (up to num_threads() parts at once; the ops inside
// a part run on its thread alone), each part a forward and backward of its own. Part 0 adds its
// gradients into the leaves' grad() as a plain backward would; the gradients that later parts
// send to `leaves` are kept per part and added after part 0's, in part order, once every part
// is done, so the sums never depend on the thread count. Other leaves get theirs as usual (they
// must belong to one part). When a part throws, the others still finish and the lowest part's
// exception is rethrown, the gradients left partial.
void run_parts(int64_t parts, const std::vector<Variable>& leaves, const std::function<void(int64_t part)>& part);

}  // namespace normlab
