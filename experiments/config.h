// A training run's configuration: model, task, optimizer and loop, as one aggregate of C++
// structs (designated initializers), plus one table of its settable fields. The table is
// the single source of the command-line flags (`--depth 48`), of `key=value` overrides and
// of the attributes a checkpoint or dump stores, so they never disagree.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "experiments/data.h"
#include "experiments/model.h"
#include "framework/hdf5.h"
#include "optim/optim.h"

namespace normlab {

enum class OptimizerKind { sgd, adam, adamw };
const char* to_string(OptimizerKind k);  // "sgd", "adam", "adamw"
OptimizerKind parse_optimizer_kind(const std::string& name);

struct OptimConfig {
  OptimizerKind kind = OptimizerKind::adamw;
  double lr = 1e-3;  // the peak learning rate
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;  // adam, adamw
  double momentum = 0.9;                         // sgd
  bool nesterov = false;                         // sgd
  double weight_decay = 0.0;  // on matrices only (param_groups); adam: l2, sgd: l2
  WeightDecayMode weight_decay_mode = WeightDecayMode::decoupled;  // adamw: decoupled or independent
  ScheduleKind schedule = ScheduleKind::cosine;
  int64_t warmup = 0;   // linear warmup steps
  double min_lr = 0.0;  // the end of linear and cosine decay
  double clip = 1.0;    // clipping by global gradient norm; 0 switches it off
};

struct TrainConfig {
  ModelConfig model = {};  // model.vocab and model.seq_len are set from the task
  TaskConfig data = {};
  OptimConfig optim = {};
  int64_t steps = 500;
  int64_t batch = 16;
  int64_t eval_every = 100;  // evaluate every k steps (and after the last); 0: only after the last
  int64_t eval_batches = 4;
  double z_loss = 0.0;       // z_loss * logsumexp^2 added to each token's loss
  // Stop once an evaluation's loss is at or below stop_learned * the task's chance loss (the
  // run has learned the task); 0: run all `steps`. `steps` stays the budget and sets the schedule.
  double stop_learned = 0.0;
  // precision fp16: the loss scaler's first scale (a power of two; LossScaler).
  double loss_scale = LossScaler::kInitialScale;
  // The batch is cut into this many micro-batches (consecutive sequences), each a forward and
  // backward of its own, run side by side on the threads (run_parts), each op of one on its
  // thread alone; their gradients are summed in order, so a run's numbers depend on this but
  // never on the thread count. Not with BatchNorm (statistics over the whole batch) or dropout.
  int64_t micro_batches = 1;
};

// Throws normlab::Error naming the first bad field and value (model, task, optimizer, loop),
// and a config whose estimated memory (estimate_memory) exceeds available_memory(), naming
// its sizes and both figures. The task's file is not opened here (make_dataset does that).
void check(const TrainConfig& c);

struct ConfigField {
  std::string key;   // "depth", "norm", "lr", ...
  std::string help;  // one line, with the valid values of an enum
  enum class Type { integer, real, boolean, text } type;
  std::function<std::string(const TrainConfig&)> get;  // round-trips exactly (%.17g for reals)
  // Parses `value` into the config; throws naming `name` (the key, or the flag "--key") and
  // the bad value.
  std::function<void(TrainConfig&, const std::string& value, const std::string& name)> set;
  // A setting of how a run computes, not of what (recompute): it changes no number, so a
  // checkpoint or results file written before the key existed reads with the default, and two
  // runs that differ only in it are the same run.
  bool performance_only = false;
  // A key added later whose default is what every run did before it existed (stop_learned 0):
  // a checkpoint or results file without it reads with the default.
  bool absent_means_default = false;
};
const std::vector<ConfigField>& config_fields();
const ConfigField* find_config_field(const std::string& key);  // null when unknown
// key=value; throws naming an unknown key (listing near ones) or a bad value. Messages name
// the value's `name` (say "--depth" on the command line); "": the key.
void set_config_value(TrainConfig& c, const std::string& key, const std::string& value,
                      const std::string& name = "");

// Why setting `key` does nothing in config c ("" when it does something): --text without
// task text, momentum without optimizer sgd, groups without norm group, ... The command line
// refuses such a key rather than accept it silently.
std::string unused_reason(const TrainConfig& c, const std::string& key);

// The memory a training run holds at its peak, estimated from the config (README, "Memory"):
// parameters, their gradients and optimizer state, and the activations one step keeps for
// backward. Each figure in bytes.
struct MemoryEstimate {
  double parameters = 0;   // the parameter count
  double weights = 0;      // parameters + gradients + optimizer state
  // Saved for backward, with the logits; with micro-batches, also the gradients of those past
  // the first where they outgrow them (estimate_memory).
  double activations = 0;
  double total() const { return weights + activations; }
};
MemoryEstimate estimate_memory(const TrainConfig& c);
// The memory this process may use: physical memory, or the cgroup's limit when lower.
double available_memory();

// Parses an integer: decimal digits, or a real with an integer value ("1e9"); false for
// anything else, a fraction or a value outside int64.
bool parse_integer(const std::string& s, int64_t& out);

// "a,b,c" <-> {"a", "b", "c"} and "" <-> {} (lists on the command line and in attributes).
std::vector<std::string> split_list(const std::string& s, char sep);
std::string join_list(const std::vector<std::string>& parts, char sep);

// Every field as an attribute of the object at object_path: integers as int64, reals as
// double, booleans as int64 0/1, enums and paths as strings.
void write_config(H5File& file, const std::string& object_path, const TrainConfig& c);
// The inverse of write_config; missing attributes keep the default.
TrainConfig read_config(const H5File& file, const std::string& object_path);
// The config keys write_config would write that the object at object_path lacks, except
// performance-only ones (their default reproduces a file written before they existed).
std::vector<std::string> missing_config_keys(const H5File& file, const std::string& object_path);

}  // namespace normlab
