// Activation recomputation (gradient checkpointing): the forward keeps only the input; the
// backward runs the function again with grad on and backpropagates through that graph.
#include "autograd/ops.h"

namespace normlab {

namespace {

// While alive: the generator is where the forward found it (so f draws the same numbers)
// and the buffers are snapshots; on leaving, the generator goes back to where it was and the
// buffers get their values back, so the recomputation leaves no trace (also when f throws).
class Replay {
 public:
  Replay(Generator* gen, uint64_t seed, uint64_t offset, const std::vector<Tensor>& buffers)
      : gen_(gen), buffers_(buffers) {
    if (gen_) {
      seed_ = gen_->seed();
      offset_ = gen_->offset();
      gen_->set_state(seed, offset);
    }
    for (const Tensor& b : buffers_) saved_.push_back(b.clone());
  }
  ~Replay() {
    if (gen_) gen_->set_state(seed_, offset_);
    for (size_t i = 0; i < saved_.size(); ++i) buffers_[i].copy_from(saved_[i]);
  }
  Replay(const Replay&) = delete;
  Replay& operator=(const Replay&) = delete;

 private:
  Generator* gen_;
  uint64_t seed_ = 0, offset_ = 0;
  std::vector<Tensor> buffers_, saved_;
};

}  // namespace

// Forward: y = f(x) without a graph. Backward: x' = x's data as a new leaf (requiring grad
// when x does); y' = f(x') with the generator replayed and the buffers kept; the engine then
// runs from y' with seed dy, adding the gradients of the parameters into their grad() as the
// graph of f(x) would have, and leaving dx in x'.grad(), which this node returns.
Variable checkpoint(const CheckpointFn& f, const Variable& x, CheckpointState state) {
  NL_CHECK(x.defined(), "checkpoint: the input is undefined");
  std::vector<Variable> inputs{x};
  inputs.insert(inputs.end(), state.params.begin(), state.params.end());
  if (!any_requires_grad(inputs)) return f(x);
  const uint64_t seed = state.gen ? state.gen->seed() : 0, offset = state.gen ? state.gen->offset() : 0;
  Tensor y;
  {
    NoGradGuard no_grad;
    y = f(x).data();
  }
  return make_output("checkpoint", std::move(inputs), std::move(y),
                     [f, gen = state.gen, seed, offset, buffers = std::move(state.buffers)](
                         const std::vector<Tensor>& dy, const Node& self) {
                       const Variable& x = self.inputs()[0];
                       const Variable leaf(x.data(), x.requires_grad());
                       Variable y;
                       {
                         const Replay replay(gen, seed, offset, buffers);
                         y = f(leaf);
                       }
                       if (y.requires_grad()) backward({y}, {dy[0]});
                       std::vector<Tensor> grads(self.inputs().size());
                       grads[0] = leaf.grad();
                       return grads;
                     });
}

}  // namespace normlab
