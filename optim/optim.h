// Optimizers (SGD, Adam, AdamW), parameter groups, learning-rate schedules and clipping by
// global gradient norm. Updates run in place on the parameters' tensors, elementwise in the
// parameter's dtype with double scalars, so results do not depend on the thread count.
//
// Update rules (t = 1, 2, ... counts steps; g = p.grad(); lr is the current learning rate):
//   SGD:   g' = g + wd p;  b = momentum b + (1 - dampening) g'  (b = g' at t = 1);
//          nesterov: d = g' + momentum b, else d = b (d = g' when momentum = 0);  p -= lr d
//   Adam (weight_decay_mode l2): g' = g + wd p, then the AdamW update below without decay
//   AdamW: m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//          m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)
//          decoupled:   p -= lr wd p          (PyTorch AdamW: p *= 1 - lr wd, before the update)
//          independent: p -= (lr / peak_lr) wd p   (Wortsman et al. 2023: follows the schedule,
//                                                    not the peak learning rate)
//          p -= lr m_hat / (sqrt(v_hat) + eps)
// A parameter without a gradient (undefined grad) is skipped and its state left as is.
// State buffers (in the parameter's dtype) are allocated at a parameter's first update; "b = g'
// at t = 1" means at that first update. t is the optimizer's step count, so a parameter whose
// first gradient arrives at a later step starts from zero moments with that step's bias
// correction. A step updates every parameter in one parallel pass over all their elements
// (optim/flat_spans.h), not one tensor at a time.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "framework/hdf5.h"

namespace normlab {

class FlatSpans;

using NamedParameters = std::vector<std::pair<std::string, Variable>>;

// A set of parameters sharing a weight decay. Names identify state in saved files.
struct ParamGroup {
  NamedParameters params;
  double weight_decay = 0.0;
};

// The usual split: weight_decay on matrices (2 or more dims: linear weights, embeddings),
// none on tensors of fewer than 2 dims (norm gains and biases, DyT's alpha, ScaleNorm's g,
// every bias). Empty groups are dropped. `decay` overrides the rule when given.
std::vector<ParamGroup> param_groups(const NamedParameters& params, double weight_decay,
                                     const std::function<bool(const std::string& name, const Variable& p)>& decay = {});

enum class WeightDecayMode {
  l2,           // added to the gradient (SGD, Adam)
  decoupled,    // AdamW: p -= lr * wd * p
  independent,  // AdamW, "independent": p -= (lr / peak_lr) * wd * p
};
const char* to_string(WeightDecayMode m);           // "l2", "decoupled", "independent"
WeightDecayMode parse_weight_decay_mode(const std::string& name);  // throws naming the bad name

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every parameter with a gradient, at the current learning rate.
  void step();
  // Drops every parameter's gradient.
  void zero_grad();

  double lr() const { return lr_; }
  void set_lr(double lr);      // throws unless finite and >= 0
  double peak_lr() const { return peak_lr_; }  // the lr given at construction (or restored by load)
  int64_t step_count() const { return t_; }    // completed steps
  const std::vector<ParamGroup>& groups() const { return groups_; }
  virtual const char* name() const = 0;        // "sgd", "adam", "adamw"

  // State under `group_path` (created or replaced): attributes name, step, lr, peak_lr and
  // num_params; a group per parameter, "<group_path>/<param name>", with attributes shape and
  // dtype; and one dataset per allocated state buffer, "<group_path>/<param name>/<buffer>"
  // (buffers: "momentum" for SGD with momentum; "exp_avg", "exp_avg_sq" for Adam/AdamW).
  // load() checks the optimizer kind, the parameter count, names, shapes and dtypes, then
  // restores the buffers, step, lr and peak_lr bit-exactly; on any error nothing changes.
  void save(H5File& file, const std::string& group_path) const;
  void load(const H5File& file, const std::string& group_path);

 protected:
  // Throws (naming `who` and the bad value) for an empty groups list, an lr that is not
  // finite and >= 0, a weight_decay that is not finite and >= 0, and a parameter that is
  // undefined, not f32/f64 on the cpu, unnamed, named with a '/', or listed twice.
  Optimizer(std::vector<ParamGroup> groups, double lr, const char* who);
  // Updates every parameter that has a gradient (defined, shape and dtype checked) at step t
  // (>= 1), in one pass. Span k of `params` is one parameter: ptr[0] its data, ptr[1] its
  // gradient, ptr[2], ptr[3] its state buffers (named by state_names(), in that order); tag is
  // its group's index; first is true at its first update, when its state buffers were just
  // allocated and zero-filled.
  virtual void update(const FlatSpans& params, int64_t t) = 0;
  virtual std::vector<std::string> state_names() const = 0;

 private:
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<std::vector<Tensor>>> state_;  // [group][param][buffer], allocated lazily
  double lr_, peak_lr_;
  int64_t t_ = 0;
};

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0.0;   // in [0, 1)
  double dampening = 0.0;  // in [0, 1); must be 0 with nesterov
  bool nesterov = false;   // requires momentum > 0
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, SGDOptions options);
  const char* name() const override { return "sgd"; }
  SGDOptions options;

 protected:
  void update(const FlatSpans& params, int64_t t) override;
  std::vector<std::string> state_names() const override;
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;  // each in [0, 1)
  double eps = 1e-8;                  // > 0
  WeightDecayMode weight_decay_mode = WeightDecayMode::decoupled;
};
// Adam is AdamW with weight_decay_mode l2; AdamW accepts decoupled or independent.
class Adam : public Optimizer {
 public:
  Adam(std::vector<ParamGroup> groups, AdamOptions options);
  const char* name() const override;  // "adam" for l2, "adamw" otherwise
  AdamOptions options;

 protected:
  void update(const FlatSpans& params, int64_t t) override;
  std::vector<std::string> state_names() const override;
};
std::unique_ptr<Adam> make_adamw(std::vector<ParamGroup> groups, AdamOptions options);  // checks the mode

// ---- Learning-rate schedules. Step t = 1, 2, ... is the t-th update. ----
//   warmup (t <= warmup):   lr = peak * t / warmup              (every kind)
//   constant:               lr = peak
//   linear:                 lr = peak + (min - peak) * (t - warmup) / (total - warmup)
//   cosine:                 lr = min + (peak - min) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2
//   inverse_sqrt:           lr = peak * sqrt(max(warmup, 1) / t)
// After `total` steps, linear and cosine stay at min.
enum class ScheduleKind { constant, linear, cosine, inverse_sqrt };
const char* to_string(ScheduleKind k);  // "constant", "linear", "cosine", "inverse_sqrt"
ScheduleKind parse_schedule_kind(const std::string& name);

struct Schedule {
  ScheduleKind kind = ScheduleKind::constant;
  double peak_lr = 1e-3;
  int64_t warmup = 0;  // steps
  int64_t total = 0;   // steps; needed (> warmup) by linear and cosine
  double min_lr = 0.0;
  double lr(int64_t t) const;  // throws for t < 1
  void check() const;          // throws naming the bad field
};

// Scales every gradient (in place) by max_norm / norm when the global L2 norm (over all gradients,
// summed in double in parameter order) exceeds max_norm (> 0). Returns the norm before
// clipping; a non-finite norm is returned and the gradients are left untouched. A parameter
// listed twice counts twice in the norm and is scaled once.
double clip_grad_norm(const std::vector<Variable>& params, double max_norm);
// The global L2 norm of the gradients, without clipping.
double grad_norm(const std::vector<Variable>& params);
// Multiplies every defined gradient by `factor` in place, each parameter once (a loss scaler's
// unscale: exact when factor is a power of two and nothing underflows).
void scale_grads(const std::vector<Variable>& params, double factor);

}  // namespace normlab
