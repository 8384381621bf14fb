// The training loop: a Trainer owns a run's task, model and optimizer, steps it, evaluates,
// stops at the first non-finite loss or gradient, and saves or restores the whole state as
// an HDF5 checkpoint, from which a run continues bit-exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "experiments/config.h"
#include "experiments/data.h"
#include "experiments/model.h"
#include "optim/optim.h"

namespace normlab {

// The `format` attribute of a checkpoint and of a dump: a file of another format is never
// overwritten by either.
inline constexpr const char* kCheckpointFormat = "normlab-checkpoint";
inline constexpr const char* kDumpFormat = "normlab-dump";

struct TrainHistory {
  std::vector<double> loss, grad_norm, lr;  // per completed step; entry i is step i + 1
  std::vector<int64_t> eval_step;
  std::vector<double> eval_loss;
  int64_t diverged_step = 0;  // the step whose loss or gradient was non-finite; 0: none
  std::string diverged_reason;
  // precision fp16: the steps the loss scaler skipped (an fp16 gradient overflowed; the
  // parameters were left as they were and the scale halved), in order.
  std::vector<int64_t> skipped_step;
};

class Trainer {
 public:
  // Checks the config, opens the task, builds the model (vocab and seq_len from the task)
  // and the optimizer. Throws normlab::Error before allocating the model on a bad config.
  explicit Trainer(const TrainConfig& config);

  // One step (number step() + 1): loss and gradients on the step's train batch (in
  // micro-batches: forward_backward); a
  // non-finite loss or gradient norm marks the run diverged and leaves the parameters as
  // they were; otherwise clip, set the scheduled lr and update. Returns the loss. With
  // precision fp16 the backward runs on the scaled loss (loss_scaler()); a non-finite gradient
  // then skips the step (history().skipped_step) instead of ending the run.
  double train_step();
  // Mean loss over eval_batches batches of the eval split, in eval mode without a graph.
  double evaluate();
  // Steps until config.steps, or `stop_at` steps when > 0, or divergence; evaluates every
  // eval_every steps and after the last step. `progress`: a one-line display on stderr
  // (step, loss, tokens/s, ETA; ten updates a second) when it is a terminal. `after_step`
  // runs after each step; before it prints, it calls clear_progress_line().
  void run(int64_t stop_at = 0, bool progress = true, const std::function<void(Trainer&)>& after_step = {});

  // Marks the run diverged at the current step for a reason found outside the loop (say, an
  // eval loss above a threshold); run() then stops. A no-op on a run already diverged.
  void mark_diverged(const std::string& reason);

  int64_t step() const { return step_; }
  bool diverged() const { return history_.diverged_step > 0; }
  // The last evaluation reached config().stop_learned of the chance loss.
  bool learned() const;
  bool finished() const { return diverged() || step_ >= config_.steps || learned(); }
  double tokens_per_second() const;  // over the steps run by this object

  // Writes the whole state to `path` atomically (a temporary file renamed over it):
  // config, parameters, buffers, optimizer state, RNG state, step, history and the
  // checkpoint interval.
  void save_checkpoint(const std::string& path) const;
  // A trainer in the state a checkpoint recorded. `override_steps` > 0 replaces the
  // recorded step budget (to continue a finished run further). A checkpoint lacking any
  // config key is refused, naming the keys: defaults would not continue the run bit-exactly.
  static std::unique_ptr<Trainer> resume(const std::string& path, int64_t override_steps = 0);

  // Steps between the checkpoints of `normlab train` (0: only at the end); saved in each
  // checkpoint, so a resumed run keeps saving as the first one did.
  int64_t checkpoint_every() const { return checkpoint_every_; }
  void set_checkpoint_every(int64_t every) { checkpoint_every_ = every; }

  const TrainConfig& config() const { return config_; }
  const TrainHistory& history() const { return history_; }
  Transformer& model() { return *model_; }
  const Dataset& data() const { return *data_; }
  Optimizer& optimizer() { return *optimizer_; }
  Generator& generator() { return gen_; }
  const LossScaler& loss_scaler() const { return scaler_; }

 private:
  TrainConfig config_;
  std::unique_ptr<Dataset> data_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<Variable> params_;
  Schedule schedule_;
  Generator gen_;  // the run's generator (reserved for stochastic layers; saved and restored)
  int64_t step_ = 0;
  TrainHistory history_;
  LossScaler scaler_;  // used with precision fp16
  double seconds_ = 0;
  int64_t steps_timed_ = 0;
  int64_t checkpoint_every_ = 0;
};

// One forward and backward over `batch` in config.micro_batches parts (run_parts): returns the
// mean loss over the batch's targets and adds the gradient of seed_scale x that loss into the
// parameters' grad(). Each micro-batch's mean loss is weighted by its share of the targets; one
// whose loss is not finite runs no backward (the returned loss is then not finite either).
double forward_backward(Transformer& model, const std::vector<Variable>& params, const Batch& batch,
                        const TrainConfig& config, double seed_scale = 1.0);

// Erases the progress line Trainer::run draws on a terminal (a no-op elsewhere).
void clear_progress_line();
// Seconds as "m:ss", or "h:mm:ss" from an hour on (progress lines' ETAs).
std::string format_duration(double seconds);

// Builds the optimizer a config names over the model's parameters (decay on matrices only).
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const NamedParameters& params);

// A history as datasets under `group` (loss, grad_norm, lr, eval_step, eval_loss) and the
// group's attributes diverged_step and diverged_reason (checkpoints and results files).
void write_history(H5File& file, const std::string& group, const TrainHistory& h);
TrainHistory read_history(const H5File& file, const std::string& group);

// Writes the dump of `normlab dump`: the config (attributes of /config), the train batch 0
// (/batch/tokens, /batch/targets), every parameter (/params/<name>), the loss (/loss) and
// every parameter gradient (/grads/<name>), at the initialisation. Returns the loss.
double write_dump(const TrainConfig& config, const std::string& path);

}  // namespace normlab
