#include "experiments/metrics.h"

#include <algorithm>
#include <cmath>

#include "autograd/ops.h"

namespace normlab {

namespace {

// A tensor as a contiguous f64 copy on the cpu (for metrics, computed in double).
Tensor host_f64(const Tensor& t) { return t.to(Device::cpu()).to(DType::f64).contiguous(); }

// Mean over rows of logsumexp(z_row), logits [B, T, V] (f64, contiguous):
// lse = m + log(sum exp(z - m)), m = max z.
double mean_logsumexp(const Tensor& logits) {
  const int64_t V = logits.size(-1), M = logits.numel() / V;
  const double* p = logits.data<double>();
  double total = 0;
  for (int64_t i = 0; i < M; ++i) {
    const double* z = p + i * V;
    const double m = *std::max_element(z, z + V);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - m);
    total += m + std::log(s);
  }
  return total / double(M);
}

// ||F - F0||_F / sqrt(rows), F and F0 [B, T, V] (f64, contiguous): the RMS over tokens of
// each token's change.
double delta_norm(const Tensor& f, const Tensor& f0) {
  NL_CHECK(f.shape() == f0.shape(), "metrics: probe logits ", to_string(f.shape()), " differ in shape from the init's ",
           to_string(f0.shape()));
  const double* a = f.data<double>();
  const double* b = f0.data<double>();
  double ss = 0;
  for (int64_t i = 0; i < f.numel(); ++i) ss += (a[i] - b[i]) * (a[i] - b[i]);
  const double rows = double(f.numel() / f.size(-1));
  return std::sqrt(ss / rows);
}

// Holds a model's state while a probe runs and puts it back: buffers (BatchNorm's running
// statistics), the dropout generator, the training flag; switches the recording flags off,
// drops the kept tensors and the gradients. The probe draws its dropout masks from the
// generator's initial state (offset 0), so every probe sees the same masks.
class ProbeScope {
 public:
  explicit ProbeScope(Transformer& model)
      : model_(model),
        seed_(model.generator().seed()),
        offset_(model.generator().offset()),
        training_(model.training()) {
    for (const auto& [name, b] : model.named_buffers()) buffers_.push_back(b.clone());
    model.generator().set_state(seed_, 0);
    model.train();
  }
  ~ProbeScope() {
    if (restored_) return;
    try {
      restore();
    } catch (...) {  // already unwinding from the probe's own error
    }
  }
  ProbeScope(const ProbeScope&) = delete;
  ProbeScope& operator=(const ProbeScope&) = delete;

  void record(bool on) {
    model_.keep_residuals = on;
    for (const auto& block : model_.blocks) block->attn->keep_logits = on;
    for (const auto& [name, probe] : model_.norm_probes())
      if (probe) probe->record = on;
  }

  void restore() {
    restored_ = true;
    record(false);
    model_.residuals.clear();
    model_.zero_grad();
    // Fetched again: the live buffers, whether updated in place or replaced.
    auto live = model_.named_buffers();
    NL_CHECK(live.size() == buffers_.size(), "metrics: the model's buffers changed during a probe");
    for (size_t i = 0; i < live.size(); ++i) live[i].second.copy_from(buffers_[i]);
    model_.generator().set_state(seed_, offset_);
    model_.train(training_);
  }

 private:
  Transformer& model_;
  uint64_t seed_, offset_;
  bool training_;
  std::vector<Tensor> buffers_;
  bool restored_ = false;
};

void check_rows(const std::vector<std::vector<double>>& rows, size_t steps, const char* name) {
  NL_CHECK(rows.size() == steps, "write_metrics: ", name, " has ", rows.size(), " rows, expected one per step (",
           steps, ")");
  for (const auto& r : rows)
    NL_CHECK(r.size() == rows.front().size(), "write_metrics: ", name, " has rows of ", rows.front().size(), " and ",
             r.size(), " values");
}

// rows [S][n] -> f64 [S, n]; `width` is n when there are no rows.
Tensor matrix(const std::vector<std::vector<double>>& rows, int64_t width) {
  const int64_t S = int64_t(rows.size()), n = rows.empty() ? width : int64_t(rows.front().size());
  Tensor t = empty({S, n}, DType::f64);
  double* p = t.data<double>();
  for (const auto& r : rows) p = std::copy(r.begin(), r.end(), p);
  return t;
}

Tensor read_dataset(const H5File& f, const std::string& path, DType dtype, int64_t dims) {
  NL_CHECK(f.exists(path), "read_metrics: ", f.path(), " has no dataset ", path);
  Tensor t = read_tensor(f, path);
  NL_CHECK(t.dtype() == dtype && t.dim() == dims, "read_metrics: ", f.path(), ": ", path, " is ",
           to_string(t.shape()), " ", dtype_name(t.dtype()), ", expected ", dims, "-d ", dtype_name(dtype));
  return t.contiguous();
}
template <class T>
std::vector<T> read_vector(const H5File& f, const std::string& path, DType dtype) {
  const Tensor t = read_dataset(f, path, dtype, 1);
  return std::vector<T>(t.data<T>(), t.data<T>() + t.numel());
}
// A [steps, width] dataset as rows; `columns` says what fixes the width (-1: any width).
std::vector<std::vector<double>> read_rows(const H5File& f, const std::string& path, size_t steps, int64_t width,
                                           const std::string& columns) {
  const Tensor t = read_dataset(f, path, DType::f64, 2);
  const int64_t n = t.size(1);
  if (width < 0 || steps == 0) width = n;  // no rows: no values, whatever the width
  NL_CHECK(t.size(0) == int64_t(steps) && n == width, "read_metrics: ", f.path(), ": ", path, " is ",
           to_string(t.shape()), ", expected ", to_string({int64_t(steps), width}),
           " (rows: one per metric_step; columns: ", columns, ")");
  std::vector<std::vector<double>> rows(steps);
  const double* p = t.data<double>();
  for (size_t s = 0; s < steps; ++s) rows[s].assign(p + int64_t(s) * n, p + int64_t(s + 1) * n);
  return rows;
}

// Steps that must increase and start at `first` or later.
void check_steps(const H5File& f, const std::string& path, const std::vector<int64_t>& steps, int64_t first) {
  int64_t next = first;
  for (size_t i = 0; i < steps.size(); ++i) {
    NL_CHECK(steps[i] >= next, "read_metrics: ", f.path(), ": ", path, "[", i, "] is ", steps[i],
             ", expected an increasing step >= ", next);
    next = steps[i] + 1;
  }
}

}  // namespace

MetricsRecorder::MetricsRecorder(Trainer& trainer, const MetricsConfig& config) : config_(config) {
  NL_CHECK(config.every >= 0, "metrics: every must be >= 0 (0: the init only), got ", config.every);
  NL_CHECK(config.delta_f_steps >= 0, "metrics: delta_f_steps must be >= 0 (0: never), got ", config.delta_f_steps);
  NL_CHECK(trainer.step() == 0, "metrics: a MetricsRecorder must start before the first step (it keeps F(x, theta_0)"
           "), but the trainer is at step ", trainer.step());
  const Batch batch = trainer.data().batch(Split::eval, 0, trainer.config().batch);
  probe_tokens_ = batch.tokens;
  probe_targets_ = batch.targets;
  for (const auto& [name, p] : trainer.model().norm_probes()) metrics_.norm_names.push_back(name);
  probe(trainer);
}

void MetricsRecorder::after_step(Trainer& trainer) {
  if (trainer.diverged()) return;
  const int64_t step = trainer.step();
  const bool due_probe = config_.every > 0 && step % config_.every == 0;
  const bool due_delta = step >= 1 && step <= config_.delta_f_steps;
  if (due_probe) probe(trainer);  // also records delta_f when due (one forward)
  if (due_delta && !delta_f_recorded(step)) {
    Transformer& model = trainer.model();
    ProbeScope scope(model);
    Tensor f;
    {
      NoGradGuard no_grad;
      f = host_f64(model.forward(probe_tokens_).data());
    }
    scope.restore();
    record_delta_f(step, f);
  }
}

bool MetricsRecorder::delta_f_recorded(int64_t step) const {
  return !metrics_.delta_f_step.empty() && metrics_.delta_f_step.back() == step;
}

void MetricsRecorder::record_delta_f(int64_t step, const Tensor& f) {
  if (step < 1 || step > config_.delta_f_steps || delta_f_recorded(step)) return;
  metrics_.delta_f_step.push_back(step);
  metrics_.delta_f.push_back(delta_norm(f, f0_));
}

void MetricsRecorder::probe(Trainer& trainer) {
  const int64_t step = trainer.step();
  if (!metrics_.step.empty() && metrics_.step.back() == step) return;
  Transformer& model = trainer.model();
  const int64_t depth = int64_t(model.blocks.size());
  ProbeScope scope(model);
  scope.record(true);
  model.zero_grad();
  const Variable logits = model.forward(probe_tokens_);

  // Activations of this forward.
  std::vector<double> residual_norm, max_attn_logit, norm_input_rms;
  for (const Tensor& x : model.residuals) residual_norm.push_back(mean_row_norm(x));
  NL_CHECK(int64_t(residual_norm.size()) == depth + 1, "metrics: the model kept ", residual_norm.size(),
           " residual tensors, expected depth + 1 = ", depth + 1);
  for (const auto& block : model.blocks) max_attn_logit.push_back(block->attn->max_logit);
  for (const auto& [name, p] : model.norm_probes()) norm_input_rms.push_back(p ? p->input_rms : NAN);
  scope.record(false);
  const Tensor f = host_f64(logits.data());

  // ||dL/dtheta||_F per block: sum of squares over the block's parameters.
  cross_entropy(logits, probe_targets_, -100, trainer.config().z_loss).backward();
  std::vector<double> layer_grad_norm(size_t(depth), 0.0);
  for (int64_t l = 0; l < depth; ++l) {
    double ss = 0;
    for (const Variable& p : model.blocks[size_t(l)]->parameters()) {
      if (!p.grad().defined()) continue;
      const Tensor g = host_f64(p.grad());
      const double* q = g.data<double>();
      for (int64_t i = 0; i < g.numel(); ++i) ss += q[i] * q[i];
    }
    layer_grad_norm[size_t(l)] = std::sqrt(ss);
  }
  scope.restore();

  metrics_.step.push_back(step);
  metrics_.layer_grad_norm.push_back(std::move(layer_grad_norm));
  metrics_.residual_norm.push_back(std::move(residual_norm));
  metrics_.norm_input_rms.push_back(std::move(norm_input_rms));
  metrics_.max_attn_logit.push_back(std::move(max_attn_logit));
  metrics_.log_z.push_back(mean_logsumexp(f));
  if (step == 0) f0_ = f;
  record_delta_f(step, f);
}

void write_metrics(H5File& file, const std::string& group, const RunMetrics& m) {
  const size_t S = m.step.size();
  check_rows(m.layer_grad_norm, S, "layer_grad_norm");
  check_rows(m.residual_norm, S, "residual_norm");
  check_rows(m.norm_input_rms, S, "norm_input_rms");
  check_rows(m.max_attn_logit, S, "max_attn_logit");
  NL_CHECK(m.log_z.size() == S, "write_metrics: log_z has ", m.log_z.size(), " values, expected ", S);
  NL_CHECK(m.delta_f.size() == m.delta_f_step.size(), "write_metrics: delta_f has ", m.delta_f.size(),
           " values for ", m.delta_f_step.size(), " steps");
  const int64_t n_norms = int64_t(m.norm_names.size());
  NL_CHECK(S == 0 || int64_t(m.norm_input_rms.front().size()) == n_norms, "write_metrics: norm_input_rms rows have ",
           S ? m.norm_input_rms.front().size() : 0, " values for ", n_norms, " norm names");
  for (const std::string& name : m.norm_names)
    NL_CHECK(!name.empty() && name.find(',') == std::string::npos, "write_metrics: norm name '", name,
             "' is empty or contains ','");
  const std::string g = group + "/";
  write_vector(file, g + "metric_step", m.step);
  write_tensor(file, g + "layer_grad_norm", matrix(m.layer_grad_norm, 0));
  write_tensor(file, g + "residual_norm", matrix(m.residual_norm, 0));
  write_tensor(file, g + "norm_input_rms", matrix(m.norm_input_rms, n_norms));
  write_tensor(file, g + "max_attn_logit", matrix(m.max_attn_logit, 0));
  write_vector(file, g + "log_z", m.log_z);
  write_vector(file, g + "delta_f_step", m.delta_f_step);
  write_vector(file, g + "delta_f", m.delta_f);
  write_attribute(file, group, "norm_names", join_list(m.norm_names, ','));
}

RunMetrics read_metrics(const H5File& file, const std::string& group, int64_t depth) {
  const std::string g = group + "/";
  RunMetrics m;
  m.step = read_vector<int64_t>(file, g + "metric_step", DType::i64);
  check_steps(file, g + "metric_step", m.step, 0);
  const size_t S = m.step.size();
  m.norm_names = split_list(read_attribute_string(file, group, "norm_names"), ',');
  m.layer_grad_norm = read_rows(file, g + "layer_grad_norm", S, depth, "the run's depth");
  if (depth < 0) depth = S ? int64_t(m.layer_grad_norm.front().size()) : 0;
  m.residual_norm = read_rows(file, g + "residual_norm", S, depth + 1, "depth + 1");
  m.norm_input_rms = read_rows(file, g + "norm_input_rms", S, int64_t(m.norm_names.size()), "one per norm name");
  m.max_attn_logit = read_rows(file, g + "max_attn_logit", S, depth, "the run's depth");
  m.log_z = read_vector<double>(file, g + "log_z", DType::f64);
  NL_CHECK(m.log_z.size() == S, "read_metrics: ", file.path(), ": ", g, "log_z has ", m.log_z.size(),
           " values, expected ", S, " (one per metric_step)");
  m.delta_f_step = read_vector<int64_t>(file, g + "delta_f_step", DType::i64);
  check_steps(file, g + "delta_f_step", m.delta_f_step, 1);
  m.delta_f = read_vector<double>(file, g + "delta_f", DType::f64);
  NL_CHECK(m.delta_f.size() == m.delta_f_step.size(), "read_metrics: ", file.path(), ": ", g, "delta_f has ",
           m.delta_f.size(), " values, expected ", m.delta_f_step.size(), " (one per delta_f_step)");
  return m;
}

}  // namespace normlab
