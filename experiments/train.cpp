#include "experiments/train.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "autograd/ops.h"
#include "framework/allocator.h"
#include "framework/tensor_ops.h"

namespace normlab {

namespace {

constexpr int64_t kCheckpointVersion = 1;

// Copies a stored tensor into a parameter or buffer, checking shape and dtype.
void restore(Tensor& dst, const H5File& f, const std::string& path) {
  NL_CHECK(f.exists(path), "checkpoint ", f.path(), " has no ", path);
  const Tensor src = read_tensor(f, path);
  NL_CHECK(src.shape() == dst.shape() && src.dtype() == dst.dtype(), "checkpoint ", f.path(), ": ", path, " is ",
           to_string(src.shape()), " ", dtype_name(src.dtype()), ", the model has ", to_string(dst.shape()), " ",
           dtype_name(dst.dtype()));
  dst.copy_from(src);
}


}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const NamedParameters& params) {
  std::vector<ParamGroup> groups = param_groups(params, c.weight_decay);
  switch (c.kind) {
    case OptimizerKind::sgd: return std::make_unique<SGD>(std::move(groups), SGDOptions{c.lr, c.momentum, 0.0, c.nesterov});
    case OptimizerKind::adam:
      return std::make_unique<Adam>(std::move(groups), AdamOptions{c.lr, c.beta1, c.beta2, c.eps, WeightDecayMode::l2});
    case OptimizerKind::adamw:
      return make_adamw(std::move(groups), AdamOptions{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay_mode});
  }
  NL_FAIL("make_optimizer: invalid optimizer kind ", int(c.kind));
}

Trainer::Trainer(const TrainConfig& config) : config_(config) {
  check(config_);
  data_ = make_dataset(config_.data);
  config_.model.vocab = data_->vocab_size();
  config_.model.seq_len = config_.data.seq_len;
  model_ = std::make_unique<Transformer>(config_.model);
  scaler_ = LossScaler(config_.loss_scale, 0);
  optimizer_ = make_optimizer(config_.optim, model_->named_parameters());
  params_ = model_->parameters();
  schedule_ = Schedule{config_.optim.schedule, config_.optim.lr, config_.optim.warmup, config_.steps,
                       config_.optim.min_lr};
  // So that the first step runs as fast as later ones: what it takes from the allocator
  // (gradients, optimizer state, activations: their whole estimate, which errs high by up to 2x
  // and covers the blocks carved beside those cached in other sizes) is mapped and faulted in
  // now, and so are oneDNN's kernels for the step's matmul shapes, compiled the first time each
  // shape runs: a one-block model of the same config runs a forward and backward on this run's
  // first batch (every block has the same shapes; the run's model and state are untouched).
  const MemoryEstimate e = estimate_memory(config_);
  const double parameters = e.parameters * double(dtype_size(config_.model.dtype));
  CpuAllocator::instance().reserve(size_t(e.weights - parameters + e.activations));
  TrainConfig one_block = config_;
  one_block.model.depth = 1;
  Transformer warm_up(one_block.model);
  forward_backward(warm_up, warm_up.parameters(), data_->batch(Split::train, 0, config_.batch), one_block);
}

double Trainer::train_step() {
  NL_CHECK(!finished(), "Trainer: the run is ", diverged() ? "diverged" : "finished", " at step ", step_);
  const auto start = std::chrono::steady_clock::now();
  const int64_t t = step_ + 1;
  const Batch batch = data_->batch(Split::train, step_, config_.batch);
  const bool scaled = config_.model.precision == Precision::fp16;
  model_->train();
  optimizer_->zero_grad();
  const double loss_value = forward_backward(*model_, params_, batch, config_, scaled ? scaler_.scale() : 1.0);
  double norm = NAN;
  if (std::isfinite(loss_value)) {
    if (scaled) scale_grads(params_, 1.0 / scaler_.scale());
    norm = config_.optim.clip > 0 ? clip_grad_norm(params_, config_.optim.clip) : grad_norm(params_);
  }
  const double lr = schedule_.lr(t);
  history_.loss.push_back(loss_value);
  history_.grad_norm.push_back(norm);
  history_.lr.push_back(lr);
  step_ = t;
  // An fp16 gradient that overflowed at this scale: skip the step, halve the scale, go on (at
  // the smallest scale, the overflow is the model's own: the run diverges).
  const bool skip = scaled && std::isfinite(loss_value) && scaler_.scale() > LossScaler::kMinScale &&
                    !scaler_.update(std::isfinite(norm));
  if (skip) history_.skipped_step.push_back(t);
  if (!skip && (!std::isfinite(loss_value) || !std::isfinite(norm))) {
    history_.diverged_step = t;
    history_.diverged_reason = std::isfinite(loss_value) ? "non-finite gradient norm" : "non-finite loss";
    optimizer_->zero_grad();
    return loss_value;
  }
  if (skip) {
    optimizer_->zero_grad();
  } else {
    optimizer_->set_lr(lr);
    optimizer_->step();
  }
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++steps_timed_;
  if ((config_.eval_every > 0 && t % config_.eval_every == 0) || t == config_.steps) {
    history_.eval_step.push_back(t);
    history_.eval_loss.push_back(evaluate());
  }
  return loss_value;
}

double forward_backward(Transformer& model, const std::vector<Variable>& params, const Batch& batch,
                        const TrainConfig& config, double seed_scale) {
  const int64_t parts = config.micro_batches, B = batch.tokens.size(0);
  auto backward_of = [&](const Variable& loss, double scale) {
    if (scale == 1.0) loss.backward();
    else mul_scalar(loss, scale).backward();
  };
  if (parts == 1) {
    const Variable loss = model.loss(batch.tokens, batch.targets, config.z_loss);
    const double value = loss.item();
    if (std::isfinite(value)) backward_of(loss, seed_scale);
    return value;
  }
  // Micro-batch k: sequences [first[k], first[k + 1]), `targets[k]` of the batch's counted targets.
  const size_t K = static_cast<size_t>(parts);
  std::vector<int64_t> first(K + 1), targets(K);
  for (int64_t k = 0; k < parts; ++k) first[size_t(k) + 1] = first[size_t(k)] + B / parts + (k < B % parts);
  const Tensor all_targets = batch.targets.contiguous();
  const int64_t* target = all_targets.data<int64_t>();
  const int64_t T = all_targets.numel() / std::max<int64_t>(B, 1);
  int64_t counted = 0;
  for (int64_t k = 0; k < parts; ++k) {
    for (int64_t i = first[size_t(k)] * T; i < first[size_t(k) + 1] * T; ++i) targets[size_t(k)] += target[i] != -100;
    counted += targets[size_t(k)];
  }
  std::vector<double> losses(K, 0.0);
  run_parts(parts, params, [&](int64_t k) {
    if (targets[size_t(k)] == 0) return;
    const int64_t b = first[size_t(k)], n = first[size_t(k) + 1] - b;
    const Variable loss = model.loss(batch.tokens.narrow(0, b, n), batch.targets.narrow(0, b, n), config.z_loss);
    const double share = double(targets[size_t(k)]) / double(counted);
    losses[size_t(k)] = share * loss.item();
    if (std::isfinite(losses[size_t(k)])) backward_of(loss, share * seed_scale);
  });
  double total = counted == 0 ? NAN : 0.0;  // no target to average over, as cross_entropy
  for (const double l : losses) total += l;
  return total;
}

bool Trainer::learned() const {
  return config_.stop_learned > 0 && !history_.eval_loss.empty() &&
         history_.eval_loss.back() <= config_.stop_learned * data_->chance_loss();
}

double Trainer::evaluate() {
  NoGradGuard no_grad;
  model_->eval();
  double total = 0;
  for (int64_t i = 0; i < config_.eval_batches; ++i) {
    const Batch b = data_->batch(Split::eval, i, config_.batch);
    total += model_->loss(b.tokens, b.targets, 0.0).item();
  }
  model_->train();
  return total / double(config_.eval_batches);
}

void Trainer::mark_diverged(const std::string& reason) {
  if (diverged()) return;
  history_.diverged_step = std::max<int64_t>(step_, 1);
  history_.diverged_reason = reason;
}

double Trainer::tokens_per_second() const {
  return seconds_ > 0 ? double(steps_timed_ * config_.batch * config_.data.seq_len) / seconds_ : 0.0;
}

void Trainer::run(int64_t stop_at, bool progress, const std::function<void(Trainer&)>& after_step) {
  const bool show = progress && isatty(STDERR_FILENO);
  const int64_t last = stop_at > 0 ? std::min(stop_at, config_.steps) : config_.steps;
  const int64_t first = step_;
  auto shown = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  while (!finished() && step_ < last) {
    const double loss = train_step();
    if (after_step) after_step(*this);
    // At most ten updates a second, and always the last step.
    const auto now = std::chrono::steady_clock::now();
    if (show && (now - shown > std::chrono::milliseconds(100) || finished() || step_ == last)) {
      shown = now;
      const double tps = tokens_per_second();
      const double eta = tps > 0 ? double((last - step_) * config_.batch * config_.data.seq_len) / tps : 0;
      std::fprintf(stderr, "\r\033[Kstep %lld/%lld  loss %.4f  %.0f tokens/s  ETA %s", (long long)step_,
                   (long long)config_.steps, loss, tps, format_duration(eta).c_str());
      std::fflush(stderr);
    }
  }
  if (show && step_ > first) clear_progress_line();
}

std::string format_duration(double s) {
  const long long t = std::llround(std::max(0.0, s));
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", t / 60, t % 60);
  return buf;
}

void clear_progress_line() {
  if (isatty(STDERR_FILENO)) std::fprintf(stderr, "\r\033[K");
}

void Trainer::save_checkpoint(const std::string& path) const {
  write_file_atomically(path, [&](H5File& f) {
    write_attribute(f, "/", "format", kCheckpointFormat);
    write_attribute(f, "/", "version", kCheckpointVersion);
    write_attribute(f, "/", "step", step_);
    write_attribute(f, "/", "checkpoint_every", checkpoint_every_);
    write_config(f, "/config", config_);
    for (const auto& [name, p] : model_->named_parameters()) write_tensor(f, "/params/" + name, p.data());
    for (const auto& [name, b] : model_->named_buffers()) write_tensor(f, "/buffers/" + name, b);
    optimizer_->save(f, "/optimizer");
    Generator& gen = const_cast<Transformer&>(*model_).generator();
    write_attribute(f, "/rng", "seed", gen.seed());
    write_attribute(f, "/rng", "offset", gen.offset());
    write_history(f, "/history", history_);
    write_attribute(f, "/loss_scaler", "scale", scaler_.scale());
    write_attribute(f, "/loss_scaler", "good_steps", scaler_.good_steps());
  });
}

std::unique_ptr<Trainer> Trainer::resume(const std::string& path, int64_t override_steps) {
  const H5File f(path, H5File::Mode::read);
  NL_CHECK(has_attribute(f, "/", "format") && read_attribute_string(f, "/", "format") == kCheckpointFormat,
           path, " is not a normlab checkpoint (no format=", kCheckpointFormat, " attribute)");
  const int64_t version = read_attribute_int(f, "/", "version");
  NL_CHECK(version == kCheckpointVersion, path, ": checkpoint version ", version, " is not supported (expected ",
           kCheckpointVersion, ")");
  const std::vector<std::string> missing = missing_config_keys(f, "/config");
  NL_CHECK(missing.empty(), path, " lacks the config key", missing.size() > 1 ? "s " : " ", join_list(missing, ','),
           " (a run resumes bit-exactly only with its whole config)");
  TrainConfig config = read_config(f, "/config");
  if (override_steps > 0) config.steps = override_steps;
  auto trainer = std::make_unique<Trainer>(config);
  for (auto& [name, p] : trainer->model_->named_parameters()) {
    Tensor t = p.data();
    restore(t, f, "/params/" + name);
  }
  for (auto& [name, b] : trainer->model_->named_buffers()) restore(b, f, "/buffers/" + name);
  trainer->optimizer_->load(f, "/optimizer");
  trainer->model_->generator().set_state(uint64_t(read_attribute_int(f, "/rng", "seed")),
                                         uint64_t(read_attribute_int(f, "/rng", "offset")));
  trainer->step_ = read_attribute_int(f, "/", "step");
  NL_CHECK(trainer->step_ >= 0, path, ": step ", trainer->step_, " is negative");
  trainer->checkpoint_every_ = has_attribute(f, "/", "checkpoint_every") ? read_attribute_int(f, "/", "checkpoint_every") : 0;
  NL_CHECK(trainer->checkpoint_every_ >= 0, path, ": checkpoint_every ", trainer->checkpoint_every_, " is negative");
  NL_CHECK(trainer->step_ <= config.steps, path, " is at step ", trainer->step_, ", past steps=", config.steps);
  trainer->history_ = read_history(f, "/history");
  if (f.exists("/loss_scaler"))
    trainer->scaler_ = LossScaler(read_attribute_double(f, "/loss_scaler", "scale"),
                                  read_attribute_int(f, "/loss_scaler", "good_steps"));
  return trainer;
}

void write_history(H5File& file, const std::string& group, const TrainHistory& h) {
  const std::string g = group + "/";
  write_vector(file, g + "loss", h.loss);
  write_vector(file, g + "grad_norm", h.grad_norm);
  write_vector(file, g + "lr", h.lr);
  write_vector(file, g + "eval_step", h.eval_step);
  write_vector(file, g + "eval_loss", h.eval_loss);
  write_attribute(file, group, "diverged_step", h.diverged_step);
  write_attribute(file, group, "diverged_reason", h.diverged_reason);
  write_vector(file, g + "skipped_step", h.skipped_step);
}

TrainHistory read_history(const H5File& file, const std::string& group) {
  const std::string g = group + "/";
  const std::string where = file.path() + ": " + group;
  // write_history writes every dataset, even an empty one; a missing one would read as empty.
  for (const char* name : {"loss", "grad_norm", "lr", "eval_step", "eval_loss"})
    NL_CHECK(file.exists(g + name), where, " has no dataset ", name, " (expected one in every history)");
  TrainHistory h;
  h.loss = read_doubles(file, g + "loss");
  h.grad_norm = read_doubles(file, g + "grad_norm");
  h.lr = read_doubles(file, g + "lr");
  h.eval_step = read_integers(file, g + "eval_step");
  h.eval_loss = read_doubles(file, g + "eval_loss");
  h.diverged_step = read_attribute_int(file, group, "diverged_step");
  h.diverged_reason = read_attribute_string(file, group, "diverged_reason");
  // Written since precision fp16 (loss scaling) exists; an older history skipped none.
  if (file.exists(g + "skipped_step")) h.skipped_step = read_integers(file, g + "skipped_step");

  // One loss, grad_norm and lr per step run; evaluations at increasing steps among them.
  const int64_t steps = int64_t(h.loss.size());
  NL_CHECK(h.grad_norm.size() == h.loss.size() && h.lr.size() == h.loss.size(), where, " has ", steps,
           " loss values, ", h.grad_norm.size(), " grad_norm and ", h.lr.size(),
           " lr values, expected the same number (one per step)");
  NL_CHECK(h.eval_loss.size() == h.eval_step.size(), where, " has ", h.eval_step.size(), " eval_step values and ",
           h.eval_loss.size(), " eval_loss values, expected one eval_loss per eval_step");
  int64_t previous = 0;
  for (size_t i = 0; i < h.eval_step.size(); ++i) {
    NL_CHECK(h.eval_step[i] > previous && h.eval_step[i] <= steps, where, ": eval_step[", i, "] is ", h.eval_step[i],
             ", expected a step after ", previous, " and at most ", steps, " (the steps run)");
    previous = h.eval_step[i];
  }
  previous = 0;
  for (size_t i = 0; i < h.skipped_step.size(); ++i) {
    NL_CHECK(h.skipped_step[i] > previous && h.skipped_step[i] <= steps, where, ": skipped_step[", i, "] is ",
             h.skipped_step[i], ", expected a step after ", previous, " and at most ", steps, " (the steps run)");
    previous = h.skipped_step[i];
  }
  // mark_diverged before the first step records step 1.
  const int64_t last = std::max<int64_t>(steps, 1);
  NL_CHECK(h.diverged_step >= 0 && h.diverged_step <= last, where, " has diverged_step=", h.diverged_step,
           ", expected 0 (none) or a step run (1..", last, ")");
  return h;
}

double write_dump(const TrainConfig& config, const std::string& path) {
  NL_CHECK(config.model.dropout == 0, "dump: dropout must be 0 (a dump must be reproducible), got ",
           config.model.dropout);
  Trainer trainer(config);
  Transformer& model = trainer.model();
  const Batch batch = trainer.data().batch(Split::train, 0, config.batch);
  model.train();
  Variable loss = model.loss(batch.tokens, batch.targets, config.z_loss);
  loss.backward();
  write_file_atomically(path, [&](H5File& f) {
    write_attribute(f, "/", "format", kDumpFormat);
    write_config(f, "/config", trainer.config());
    // Values the config implies, for an independent implementation's convenience.
    const ModelConfig& m = trainer.config().model;
    write_attribute(f, "/config", "vocab", m.vocab);
    write_attribute(f, "/config", "head_dim", m.d_model / m.heads);
    write_attribute(f, "/config", "ffn_hidden", m.ffn_mult * m.d_model);
    write_attribute(f, "/config", "residual_alpha", residual_alpha(m));
    write_tensor(f, "/batch/tokens", batch.tokens);
    write_tensor(f, "/batch/targets", batch.targets);
    for (const auto& [name, p] : model.named_parameters()) {
      write_tensor(f, "/params/" + name, p.data());
      NL_CHECK(p.grad().defined(), "dump: parameter ", name, " got no gradient");
      write_tensor(f, "/grads/" + name, p.grad());
    }
    for (const auto& [name, b] : model.named_buffers()) write_tensor(f, "/buffers/" + name, b);
    write_tensor(f, "/loss", loss.data());
  });
  return loss.item();
}

}  // namespace normlab
