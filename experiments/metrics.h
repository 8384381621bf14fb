// Stability metrics of one training run, taken on a fixed probe batch (eval batch 0) at
// chosen steps, without changing the run: the probe's forward and backward passes restore
// every buffer (BatchNorm's running statistics) and the dropout generator, and leave no
// gradient behind, so a run with metrics is bit-identical to one without.
//
//   layer_grad_norm[s][l]  ||dL/dtheta||_F over the parameters of block l (probe batch, train
//                          mode, before clipping)                        Xiong et al. 2020
//   residual_norm[s][l]    mean over tokens of ||x_l||_2, the residual stream entering block
//                          l (l = depth: leaving the last block)        Xiong et al. 2020
//   norm_input_rms[s][n]   mean over rows of ||x||_2 / sqrt(d) of norm n's input (1: the
//                          row has norm sqrt(d))                         Wang et al. 2022
//   max_attn_logit[s][l]   max over batch, heads and causal pairs (j <= i) of the
//                          pre-softmax logit of block l (q.k / sqrt(d_h), or qk_norm's)
//                                                                        Wortsman et al. 2023
//   log_z[s]               mean over tokens of logsumexp(logits)         Wortsman et al. 2023
//   delta_f[u]             ||F(x, theta_t) - F(x, theta_0)||_F / sqrt(B T), F = logits
//                          (the RMS over tokens of each token's change)  Wang et al. 2022
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "experiments/train.h"
#include "framework/hdf5.h"

namespace normlab {

struct MetricsConfig {
  int64_t every = 50;          // probe metrics at step 0 (the init) and every k steps; 0: init only
  int64_t delta_f_steps = 50;  // ||delta F|| after each of the first n steps; 0: never
};

struct RunMetrics {
  std::vector<int64_t> step;                         // the steps probed (0 = the init)
  std::vector<std::vector<double>> layer_grad_norm;  // [steps][depth]
  std::vector<std::vector<double>> residual_norm;    // [steps][depth + 1]
  std::vector<std::string> norm_names;               // Transformer::norm_probes() order
  std::vector<std::vector<double>> norm_input_rms;   // [steps][norms]
  std::vector<std::vector<double>> max_attn_logit;   // [steps][depth]
  std::vector<double> log_z;                         // [steps]
  std::vector<int64_t> delta_f_step;                 // 1, 2, ..., up to delta_f_steps
  std::vector<double> delta_f;                       // [delta_f_step]
};

// Follows one Trainer: construct it before the first step (it probes the init and keeps
// F(x, theta_0)), then call after_step() after every step (Trainer::run's after_step).
class MetricsRecorder {
 public:
  MetricsRecorder(Trainer& trainer, const MetricsConfig& config);
  void after_step(Trainer& trainer);
  // Probes the current step now (the runner calls it after the last step when that step
  // was not due, so every run ends with a probe). No-op if this step was already probed.
  void probe(Trainer& trainer);
  const RunMetrics& metrics() const { return metrics_; }

 private:
  bool delta_f_recorded(int64_t step) const;
  // Appends ||f - F(x, theta_0)|| for `step` when it is one of the first delta_f_steps steps
  // and not recorded yet.
  void record_delta_f(int64_t step, const Tensor& f);

  MetricsConfig config_;
  Tensor probe_tokens_, probe_targets_;
  Tensor f0_;  // logits at the init, f64
  RunMetrics metrics_;
};

// Writes the metrics as datasets under `group` (layout in the README, "Results files");
// norm_names as the group's attribute "norm_names" (comma-separated).
void write_metrics(H5File& file, const std::string& group, const RunMetrics& m);
// Reads them back, checking every shape: one row per metric_step, of `depth` values
// (layer_grad_norm, max_attn_logit), depth + 1 (residual_norm) and one per norm name
// (norm_input_rms); steps that increase. depth -1: the width layer_grad_norm has. Throws
// normlab::Error naming the file, the dataset, and the shape found and expected.
RunMetrics read_metrics(const H5File& file, const std::string& group, int64_t depth = -1);

}  // namespace normlab
