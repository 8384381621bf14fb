// The backward engine: finds the nodes reachable from the roots (iteratively, so a graph
// of any depth fits on the stack), counts each node's consumers, then runs nodes in
// dependency order, summing gradients here and nowhere else. A node's backward may run a
// backward of its own (checkpoint recomputes a function and backpropagates through it): that
// run reaches only the nodes of its own graph, and the stack grows with the nesting of such
// nodes, never with a graph's depth.
#include <atomic>
#include <exception>
#include <unordered_map>

#include "autograd/variable.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"

namespace normlab {

struct EngineAccess {
  static uint64_t& visit(Node& n) { return n.visit_; }
  static int& pending(Node& n) { return n.pending_; }
  static std::vector<Tensor>& grads(Node& n) { return n.grad_outs_; }
};

namespace {

using E = EngineAccess;

// slot += g; the first gradient is kept as is. Later ones are added in place when the slot holds
// the only reference to its buffer, out of place otherwise (a node may hand the same tensor to
// several inputs, or keep it). Either way each element is slot + g, one rounded add.
void accumulate(Tensor& slot, const Tensor& g) {
  if (!slot.defined()) {
    slot = g;
  } else if (slot.storage().use_count() == 1 && slot.is_contiguous() && slot.shape() == g.shape() &&
             slot.dtype() == g.dtype()) {
    add_(slot, g);
  } else {
    slot = add(slot, g);
  }
}

// Adds g into the buffer for output `output_nr` of `node`.
void accumulate_output(Node& node, int output_nr, const Tensor& g) {
  auto& slots = E::grads(node);
  slots.resize(node.outputs().size());
  accumulate(slots[output_nr], g);
}

// A leaf's gradient slot += g: the first gradient is kept (copied unless this is its only
// reference), later ones added in place.
void accumulate_leaf_slot(Tensor& slot, const Tensor& g) {
  if (!slot.defined()) {
    const bool owned = g.is_contiguous() && g.storage().use_count() == 1 && g.offset() == 0;
    slot = owned ? g : g.clone();
  } else {
    add_(slot, g);
  }
}

// The gradients of run_parts' leaves in the part this thread runs.
struct PartGrads {
  const std::unordered_map<const VariableImpl*, size_t>* index = nullptr;
  std::vector<Tensor> slots;  // one per leaf
};
thread_local PartGrads* t_part = nullptr;

// Where a leaf's gradients go while `part` runs (null: none does): the part's slot for it, or
// its grad() when the part does not list it.
Tensor& leaf_slot(PartGrads* part, VariableImpl& leaf) {
  if (part) {
    const auto it = part->index->find(&leaf);
    if (it != part->index->end()) return part->slots[it->second];
  }
  return leaf.grad;
}

void accumulate_leaf(VariableImpl& leaf, const Tensor& g) { accumulate_leaf_slot(leaf_slot(t_part, leaf), g); }

uint64_t next_backward_id() {
  static std::atomic<uint64_t> id{0};
  return ++id;
}

}  // namespace

void backward(const std::vector<Variable>& roots, const std::vector<Tensor>& seeds, bool retain_graph) {
  NL_CHECK(roots.size() == seeds.size(), "backward: ", roots.size(), " roots but ", seeds.size(), " seeds");
  const uint64_t id = next_backward_id();
  std::vector<Node*> stack, root_nodes;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Variable& root = roots[i];
    NL_CHECK(root.defined(), "backward: root ", i, " is undefined");
    NL_CHECK(root.requires_grad(), "backward: the output of shape ", to_string(root.shape()),
             " does not require grad (no input requires grad, or it was computed under NoGradGuard)");
    Tensor seed = seeds[i];
    if (!seed.defined()) {
      NL_CHECK(root.numel() == 1, "backward: the output has shape ", to_string(root.shape()),
               "; a non-scalar output needs a seed gradient of the same shape");
      seed = ones(root.shape(), root.dtype(), root.data().device());
    }
    NL_CHECK(seed.shape() == root.shape(), "backward: seed shape ", to_string(seed.shape()),
             " does not match output shape ", to_string(root.shape()));
    NL_CHECK(seed.dtype() == root.dtype(), "backward: seed dtype ", dtype_name(seed.dtype()),
             " does not match output dtype ", dtype_name(root.dtype()));
    NL_CHECK(seed.device() == root.data().device(), "backward: seed is on ", seed.device(),
             " but the output is on ", root.data().device());
    if (root.is_leaf()) {
      accumulate_leaf(*root.impl(), seed);
      continue;
    }
    Node* node = root.grad_fn().get();
    if (E::visit(*node) != id) {
      E::visit(*node) = id;
      E::pending(*node) = 0;
      E::grads(*node).clear();
      root_nodes.push_back(node);
    }
    accumulate_output(*node, root.output_nr(), seed);
  }

  // Count, for every reachable node, how many edges lead into it.
  stack = root_nodes;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Variable& in : n->inputs()) {
      Node* next = in.grad_fn().get();
      if (!next) continue;
      if (E::visit(*next) != id) {
        E::visit(*next) = id;
        E::pending(*next) = 0;
        E::grads(*next).clear();
        stack.push_back(next);
      }
      E::pending(*next)++;
    }
  }
  std::vector<Node*> ready;
  for (Node* n : root_nodes)
    if (E::pending(*n) == 0) ready.push_back(n);

  // Nodes freed by this backward must outlive the loop (an input's grad_fn may be the last
  // owner of the next node).
  std::vector<std::shared_ptr<Node>> keep_alive;
  while (!ready.empty()) {
    Node* node = ready.back();
    ready.pop_back();
    NL_CHECK(!node->released(), "backward: the graph through node '", node->name(),
             "' was already freed by an earlier backward(); pass retain_graph=true to the first call to "
             "backpropagate through it again");
    std::vector<Tensor> grad_out = std::move(E::grads(*node));
    E::grads(*node).clear();
    grad_out.resize(node->outputs().size());
    for (size_t k = 0; k < grad_out.size(); ++k)
      if (!grad_out[k].defined()) {
        const OutputMeta& meta = node->outputs()[k];
        grad_out[k] = zeros(meta.shape, meta.dtype, meta.device);
      }

    std::vector<Tensor> grad_in = node->backward(grad_out);
    grad_out.clear();
    const auto& inputs = node->inputs();
    NL_CHECK(grad_in.size() == inputs.size(), "backward: node '", node->name(), "' returned ", grad_in.size(),
             " gradients for ", inputs.size(), " inputs");
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Variable& in = inputs[i];
      const Tensor& g = grad_in[i];
      Node* next = in.grad_fn().get();
      if (in.requires_grad() && g.defined()) {
        NL_CHECK(g.shape() == in.shape() && g.dtype() == in.dtype(), "backward: node '", node->name(),
                 "' returned a gradient of shape ", to_string(g.shape()), " (", dtype_name(g.dtype()),
                 ") for input ", i, " of shape ", to_string(in.shape()), " (", dtype_name(in.dtype()), ")");
        if (next) accumulate_output(*next, in.output_nr(), g);
        else accumulate_leaf(*in.impl(), g);
      }
      if (next && --E::pending(*next) == 0) ready.push_back(next);
    }
    if (!retain_graph) {
      for (const Variable& in : inputs)
        if (in.grad_fn()) keep_alive.push_back(in.grad_fn());
      node->release();
    }
  }
}

void run_parts(int64_t parts, const std::vector<Variable>& leaves, const std::function<void(int64_t part)>& part) {
  NL_CHECK(parts >= 1, "run_parts: parts must be >= 1, got ", parts);
  std::unordered_map<const VariableImpl*, size_t> index;
  for (size_t i = 0; i < leaves.size(); ++i) {
    NL_CHECK(leaves[i].defined() && leaves[i].is_leaf(), "run_parts: variable ", i, " is not a leaf");
    index.emplace(leaves[i].impl(), i);
  }
  // Part 0 accumulates where a backward on this thread would (into grad(), or the enclosing
  // part's slots when this runs inside a part); the others into slots of their own.
  PartGrads* const enclosing = t_part;
  std::vector<PartGrads> grads(static_cast<size_t>(parts - 1), PartGrads{&index, std::vector<Tensor>(leaves.size())});
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  auto run = [&](int64_t k) {
    PartGrads* const outer = t_part;
    t_part = k == 0 ? enclosing : &grads[size_t(k - 1)];
    try {
      part(k);
    } catch (...) {
      errors[size_t(k)] = std::current_exception();
    }
    t_part = outer;
  };
  const int threads = int(std::min<int64_t>(parts, num_threads()));
  if (threads <= 1) {
    for (int64_t k = 0; k < parts; ++k) run(k);
  } else {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int64_t k = 0; k < parts; ++k) run(k);
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  // Each leaf's sum in part order, the leaves side by side.
  parallel_for(0, int64_t(leaves.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Tensor& slot = leaf_slot(enclosing, *leaves[size_t(i)].impl());
      for (PartGrads& p : grads) {
        const Tensor g = std::move(p.slots[size_t(i)]);  // the only reference: kept, not copied
        if (g.defined()) accumulate_leaf_slot(slot, g);
      }
    }
  });
}

}  // namespace normlab
