#include "experiments/config.h"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "framework/enum_names.h"

namespace normlab {

constexpr EnumNames<OptimizerKind, 3> kOptimizerNames{
    {{OptimizerKind::sgd, "sgd"}, {OptimizerKind::adam, "adam"}, {OptimizerKind::adamw, "adamw"}}};

const char* to_string(OptimizerKind k) { return enum_name(kOptimizerNames, k); }
OptimizerKind parse_optimizer_kind(const std::string& name) { return parse_enum(kOptimizerNames, name, "optimizer"); }

namespace {

std::string gib(double bytes) {
  char buf[48];
  if (bytes < double(1 << 30)) std::snprintf(buf, sizeof buf, "%.0f MiB", bytes / double(1 << 20));
  else std::snprintf(buf, sizeof buf, "%.3g GiB", bytes / double(1 << 30));
  return buf;
}

std::string count(double n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, n < 1e6 ? "%.0f" : "%.3g", n);
  return buf;
}

// The largest vocabulary the task can have (data.h): copy/reverse S + 2, recall 2S + 2,
// modadd p + 2, text at most 256 bytes.
int64_t task_vocab_bound(const TaskConfig& t) {
  switch (t.task) {
    case TaskKind::copy:
    case TaskKind::reverse:
    case TaskKind::modadd: return t.symbols + 2;
    case TaskKind::recall: return 2 * t.symbols + 2;
    case TaskKind::text: return 256;
  }
  return 256;
}

}  // namespace

bool parse_integer(const std::string& s, int64_t& out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (*end == '\0') {
    if (errno == ERANGE) return false;
    out = v;
    return true;
  }
  // "1e9", "2.5e3": a real with an integer value inside int64's range.
  const double d = std::strtod(s.c_str(), &end);
  if (*end != '\0' || !std::isfinite(d) || d != std::floor(d) || std::fabs(d) >= 9.2e18) return false;
  out = int64_t(d);
  return true;
}

void check(const TrainConfig& c) {
  ModelConfig m = c.model;
  m.seq_len = c.data.seq_len;  // the task decides these two
  m.vocab = std::max<int64_t>(m.vocab, 1);
  check(m);
  NL_CHECK(c.steps >= 1, "config: steps must be >= 1, got ", c.steps);
  NL_CHECK(c.batch >= 1, "config: batch must be >= 1, got ", c.batch);
  NL_CHECK(c.eval_every >= 0, "config: eval_every must be >= 0, got ", c.eval_every);
  NL_CHECK(c.eval_batches >= 1, "config: eval_batches must be >= 1, got ", c.eval_batches);
  NL_CHECK(std::isfinite(c.z_loss) && c.z_loss >= 0, "config: z_loss must be >= 0, got ", c.z_loss);
  NL_CHECK(std::isfinite(c.stop_learned) && c.stop_learned >= 0 && c.stop_learned < 1,
           "config: stop_learned must be in [0, 1), got ", c.stop_learned);
  NL_CHECK(c.micro_batches >= 1 && c.micro_batches <= c.batch, "config: micro_batches must be in [1, batch=", c.batch,
           "], got ", c.micro_batches);
  NL_CHECK(c.micro_batches == 1 || m.norm != NormKind::batch, "config: micro_batches=", c.micro_batches,
           " with norm batch: BatchNorm's statistics are over the whole batch; use micro_batches 1");
  NL_CHECK(c.micro_batches == 1 || m.dropout == 0, "config: micro_batches=", c.micro_batches, " with dropout=",
           m.dropout, ": the micro-batches would draw their masks from one generator; use micro_batches 1");
  NL_CHECK(std::isfinite(c.loss_scale) && c.loss_scale >= LossScaler::kMinScale &&
               std::exp2(std::round(std::log2(c.loss_scale))) == c.loss_scale,
           "config: loss_scale must be a power of two >= 2^-24, got ", c.loss_scale);
  const OptimConfig& o = c.optim;
  NL_CHECK(std::isfinite(o.lr) && o.lr > 0, "config: lr must be > 0, got ", o.lr);
  NL_CHECK(std::isfinite(o.clip) && o.clip >= 0, "config: clip must be >= 0 (0: off), got ", o.clip);
  NL_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "config: weight_decay must be >= 0, got ",
           o.weight_decay);
  NL_CHECK(o.kind != OptimizerKind::adamw || o.weight_decay_mode != WeightDecayMode::l2,
           "config: adamw needs weight_decay_mode decoupled or independent, got l2 (use optimizer adam for l2)");
  NL_CHECK(!(o.schedule == ScheduleKind::linear || o.schedule == ScheduleKind::cosine) || c.steps > o.warmup,
           "config: the ", to_string(o.schedule), " schedule decays after the warmup, so steps must exceed warmup; "
           "got steps=", c.steps, " and warmup=", o.warmup, ": set warmup below ", c.steps, " or steps above ", o.warmup);
  NL_CHECK(o.min_lr <= o.lr, "config: min_lr=", o.min_lr, " exceeds lr=", o.lr, "; set min_lr <= lr");
  Schedule{o.schedule, o.lr, o.warmup, c.steps, o.min_lr}.check();
  const MemoryEstimate need = estimate_memory(c);
  const double have = available_memory();
  NL_CHECK(need.total() <= have, "config: depth=", m.depth, ", d_model=", m.d_model, ", ffn_mult=", m.ffn_mult,
           ", batch=", c.batch, ", seq_len=", c.data.seq_len, " need about ", gib(need.total()),
           " (", gib(need.weights), " for ", count(need.parameters), " parameters with gradients and optimizer state, ",
           gib(need.activations), " of activations), more than this machine's ", gib(have));
}

// Parameters, from Transformer's layers (experiments/model.cpp): per block q, k, v, out
// (d x d) and the FFN (2 or 3 matrices of d x f), their biases, up to six norms of 2d; the
// token embedding, positions and the head. Weights: parameter, gradient and optimizer state
// (Adam: m and v; SGD: momentum). Activations per block, in elements, for N = batch x seq_len
// tokens and h heads: about 18 N d + 4 N f (the saved inputs and outputs of each op; the fused
// attention keeps no seq_len^2 tensor); plus h batch seq_len^2 (the attention logits of the one
// block whose largest logit a metrics probe is taking) and 4 N vocab for the logits and the
// loss. With recompute, the graph keeps one N d input per block and one block's activations
// exist at a time: L N d + 18 N d + 4 N f in place of L (18 N d + 4 N f). Micro-batches run side
// by side hold the same activations in all, and a gradient each past the first. Against the
// allocator's peak over a training step, the estimate is 1.10x to 1.81x (depth 1 to 200, d_model
// 16 to 128, seq_len 16 to 256, gelu and swiglu, adamw, adam and sgd, recompute on and off, f32,
// bf16, fp16); with 2 to 4 micro-batches on as many threads 1.13x to 2.01x of their own peak
// (which depends on how far the scheduler overlaps them) and 1.26x to 1.79x of the whole batch's.
// test_train's memory_estimate_brackets_the_measured_peak prints the ratios and requires the
// estimate at least the peak and at most 2x the whole batch's.
MemoryEstimate estimate_memory(const TrainConfig& c) {
  const ModelConfig& m = c.model;
  // Doubles: a config of 10^9 layers must not overflow.
  const double d = double(m.d_model), f = double(m.ffn_mult) * d, L = double(m.depth), T = double(c.data.seq_len);
  const double V = double(std::max<int64_t>(m.vocab, task_vocab_bound(c.data)));
  const double N = double(c.batch) * T, H = double(m.heads);
  const double matrices = m.activation == Activation::swiglu ? 3 : 2;
  const double per_block = 4 * d * d + matrices * d * f + (m.bias ? 4 * d + (matrices - 1) * f + d : 0) + 12 * d;
  MemoryEstimate e;
  e.parameters = L * per_block + V * d + T * d + d * V + 2 * d;
  const double element = m.dtype == DType::f64 ? 8 : 4;
  const double copies = c.optim.kind == OptimizerKind::sgd ? 3 : 4;
  e.weights = e.parameters * copies * element;
  // One block's saved activations, and the attention logits a metrics probe holds for one block.
  // A bf16/fp16 run keeps about 16 N d more per block (measured 16.6-16.8): the rounded copies
  // (round_to) of the stream, the norms' outputs and the linear layers' inputs, each saved
  // beside the unfused add and norm nodes.
  const double stored = m.precision == Precision::f32 ? 0 : 16 * N * d;
  const double block = 18 * N * d + stored + 4 * N * f, probe_logits = H * double(c.batch) * T * T;
  // With recompute the graph keeps each block's input, and one block's activations live at a time.
  const double kept = m.recompute ? L * N * d + block : L * block;
  const double activations = (kept + probe_logits + 4 * N * V) * element;
  // Each micro-batch past the first keeps a gradient of its own until they are summed. Those grow
  // in backward as the stored activations are freed, so the peak holds the larger of the two;
  // with recompute the activations are the blocks' inputs, kept until the end.
  const double gradients = e.parameters * double(c.micro_batches - 1) * element;
  e.activations = m.recompute ? activations + gradients : std::max(activations, gradients);
  return e;
}

double available_memory() {
  double bytes = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");  // cgroup v2; "max" when unlimited
  std::string limit;
  if (cgroup >> limit && limit != "max") {
    char* end = nullptr;
    const double v = std::strtod(limit.c_str(), &end);
    if (*end == '\0' && v > 0) bytes = std::min(bytes, v);
  }
  return bytes;
}

namespace {

[[noreturn]] void bad_value(const std::string& key, const std::string& value, const std::string& expected) {
  NL_FAIL("bad value '", value, "' for ", key, " (expected ", expected, ")");
}

// Parsers and printers of field values; each names the key and the value on failure.
void parse_into(const std::string& key, const std::string& s, int64_t& out) {
  if (!parse_integer(s, out)) bad_value(key, s, "an integer");
}
void parse_into(const std::string& key, const std::string& s, uint64_t& out) {
  int64_t v = 0;
  parse_into(key, s, v);
  if (v < 0) bad_value(key, s, "an integer >= 0");
  out = uint64_t(v);
}
void parse_into(const std::string& key, const std::string& s, double& out) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v)) bad_value(key, s, "a finite number");
  out = v;
}
void parse_into(const std::string& key, const std::string& s, bool& out) {
  if (s == "on" || s == "true" || s == "1") out = true;
  else if (s == "off" || s == "false" || s == "0") out = false;
  else bad_value(key, s, "on or off");
}
void parse_into(const std::string&, const std::string& s, std::string& out) { out = s; }
// Enums: the parse functions throw naming the value and listing the valid ones.
template <class E, class Parse>
void parse_enum_into(const std::string& key, const std::string& s, E& out, Parse parse) {
  try {
    out = parse(s);
  } catch (const Error& e) {
    NL_FAIL(key, ": ", e.what());
  }
}
void parse_into(const std::string& k, const std::string& s, NormKind& o) { parse_enum_into(k, s, o, parse_norm_kind); }
void parse_into(const std::string& k, const std::string& s, Placement& o) {
  parse_enum_into(k, s, o, [](const std::string& n) { return parse_placement(n); });
}
void parse_into(const std::string& k, const std::string& s, Activation& o) { parse_enum_into(k, s, o, parse_activation); }
void parse_into(const std::string& k, const std::string& s, InitScheme& o) { parse_enum_into(k, s, o, parse_init_scheme); }
void parse_into(const std::string& k, const std::string& s, Precision& o) { parse_enum_into(k, s, o, parse_precision); }
void parse_into(const std::string& k, const std::string& s, std::optional<QKNormKind>& o) {
  parse_enum_into(k, s, o, parse_qk_norm);
}
void parse_into(const std::string& k, const std::string& s, TaskKind& o) { parse_enum_into(k, s, o, parse_task_kind); }
void parse_into(const std::string& k, const std::string& s, OptimizerKind& o) {
  parse_enum_into(k, s, o, parse_optimizer_kind);
}
void parse_into(const std::string& k, const std::string& s, ScheduleKind& o) {
  parse_enum_into(k, s, o, parse_schedule_kind);
}
void parse_into(const std::string& k, const std::string& s, WeightDecayMode& o) {
  parse_enum_into(k, s, o, parse_weight_decay_mode);
}
void parse_into(const std::string& key, const std::string& s, DType& o) {
  if (s == "f32") o = DType::f32;
  else if (s == "f64") o = DType::f64;
  else bad_value(key, s, "f32 or f64");
}

std::string format(int64_t v) { return std::to_string(v); }
std::string format(uint64_t v) { return std::to_string(v); }
std::string format(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
std::string format(bool v) { return v ? "on" : "off"; }
std::string format(const std::string& v) { return v; }
std::string format(const std::optional<QKNormKind>& v) { return qk_norm_name(v); }
std::string format(DType v) { return dtype_name(v); }
template <class E>
  requires std::is_enum_v<E>
std::string format(E v) {
  return to_string(v);
}

template <class T>
constexpr ConfigField::Type type_of() {
  if constexpr (std::is_same_v<T, bool>) return ConfigField::Type::boolean;
  else if constexpr (std::is_integral_v<T>) return ConfigField::Type::integer;
  else if constexpr (std::is_floating_point_v<T>) return ConfigField::Type::real;
  else return ConfigField::Type::text;
}

// A field reached through `ref`, a function returning a reference into the config.
template <class Ref>
ConfigField field(const char* key, const char* help, Ref ref) {
  using T = std::remove_reference_t<decltype(ref(std::declval<TrainConfig&>()))>;
  return ConfigField{key, help, type_of<T>(),
                     [ref](const TrainConfig& c) { return format(ref(const_cast<TrainConfig&>(c))); },
                     [ref](TrainConfig& c, const std::string& v, const std::string& name) { parse_into(name, v, ref(c)); }};
}

#define NL_FIELD(key, help, member) field(key, help, [](TrainConfig& c) -> auto& { return c.member; })

ConfigField performance_only(ConfigField f) {
  f.performance_only = true;
  return f;
}

ConfigField absent_means_default(ConfigField f) {
  f.absent_means_default = true;
  return f;
}

std::vector<ConfigField> make_fields() {
  return {
      // Model.
      NL_FIELD("d_model", "residual width", model.d_model),
      NL_FIELD("heads", "attention heads (divide d_model)", model.heads),
      NL_FIELD("ffn_mult", "FFN hidden width = ffn_mult * d_model", model.ffn_mult),
      NL_FIELD("activation", "gelu | swiglu", model.activation),
      NL_FIELD("depth", "transformer blocks", model.depth),
      NL_FIELD("norm", "layer | rms | scale | dyt | batch | group | none", model.norm),
      NL_FIELD("placement", "pre | post | peri | hybrid | hybrid_star | deepnorm | none", model.placement),
      NL_FIELD("qk_norm", "none | layer | rms | l2", model.qk_norm),
      NL_FIELD("final_norm", "a norm before the output head: on | off", model.final_norm),
      NL_FIELD("bias", "biases in linear layers and LayerNorm: on | off", model.bias),
      NL_FIELD("dropout", "dropout on each sublayer's output", model.dropout),
      NL_FIELD("norm_eps", "epsilon of every norm", model.norm_eps),
      NL_FIELD("dyt_alpha0", "DyT's initial alpha", model.dyt_alpha0),
      NL_FIELD("dyt_identity", "DyT with tanh replaced by the identity: on | off", model.dyt_identity),
      NL_FIELD("groups", "GroupNorm groups (divide d_model)", model.groups),
      NL_FIELD("init", "xavier | normal | deepnorm", model.init),
      NL_FIELD("init_std", "std of embeddings (and of matrices with init normal)", model.init_std),
      NL_FIELD("seed", "seed of the initialisation", model.seed),
      NL_FIELD("dtype", "parameter and activation dtype: f32 | f64", model.dtype),
      absent_means_default(NL_FIELD("precision",
                                    "storage of activations and gradients: f32 | bf16 | fp16 (with loss scaling)",
                                    model.precision)),
      performance_only(NL_FIELD("recompute", "recompute each block in backward (less memory, same numbers): on | off",
                                model.recompute)),
      // Task.
      NL_FIELD("task", "copy | reverse | recall | modadd | text", data.task),
      NL_FIELD("seq_len", "tokens per sequence", data.seq_len),
      NL_FIELD("symbols", "alphabet size of copy/reverse/recall; modulus of modadd", data.symbols),
      NL_FIELD("text", "text file of the text task", data.text_path),
      NL_FIELD("eval_fraction", "held-out fraction (text: file tail; modadd: pairs)", data.eval_fraction),
      NL_FIELD("data_seed", "seed of the task's data", data.seed),
      // Optimizer.
      NL_FIELD("optimizer", "sgd | adam | adamw", optim.kind),
      NL_FIELD("lr", "peak learning rate", optim.lr),
      NL_FIELD("beta1", "Adam beta1", optim.beta1),
      NL_FIELD("beta2", "Adam beta2", optim.beta2),
      NL_FIELD("adam_eps", "Adam epsilon", optim.eps),
      NL_FIELD("momentum", "SGD momentum", optim.momentum),
      NL_FIELD("nesterov", "SGD Nesterov momentum: on | off", optim.nesterov),
      NL_FIELD("weight_decay", "weight decay of matrices (not of norms, biases)", optim.weight_decay),
      NL_FIELD("weight_decay_mode", "adamw: decoupled | independent (adam, sgd: l2)", optim.weight_decay_mode),
      NL_FIELD("schedule", "constant | linear | cosine | inverse_sqrt", optim.schedule),
      NL_FIELD("warmup", "linear warmup steps", optim.warmup),
      NL_FIELD("min_lr", "learning rate at the end of linear/cosine decay", optim.min_lr),
      NL_FIELD("clip", "global gradient-norm clipping (0: off)", optim.clip),
      // Loop.
      NL_FIELD("steps", "training steps", steps),
      NL_FIELD("batch", "sequences per step", batch),
      NL_FIELD("eval_every", "evaluate every k steps (0: only at the end)", eval_every),
      NL_FIELD("eval_batches", "batches per evaluation", eval_batches),
      NL_FIELD("z_loss", "z-loss coefficient (z_loss * logsumexp^2)", z_loss),
      absent_means_default(NL_FIELD("stop_learned",
                                    "stop at an eval loss <= this fraction of chance (0: run all steps)",
                                    stop_learned)),
      absent_means_default(NL_FIELD("loss_scale", "precision fp16: the first loss scale (a power of two)",
                                    loss_scale)),
      absent_means_default(NL_FIELD("micro_batches",
                                    "parts of the batch run side by side on the threads, gradients summed in order",
                                    micro_batches)),
  };
}

#undef NL_FIELD

}  // namespace

const std::vector<ConfigField>& config_fields() {
  static const std::vector<ConfigField> fields = make_fields();
  return fields;
}

const ConfigField* find_config_field(const std::string& key) {
  for (const ConfigField& f : config_fields())
    if (f.key == key) return &f;
  return nullptr;
}

void set_config_value(TrainConfig& c, const std::string& key, const std::string& value, const std::string& name) {
  const ConfigField* f = find_config_field(key);
  if (!f) {
    std::string near;
    for (const ConfigField& g : config_fields())
      if (g.key.find(key) != std::string::npos || key.find(g.key) != std::string::npos) near += " " + g.key;
    NL_FAIL("unknown config key '", key, "'", near.empty() ? "" : " (did you mean:" + near + "?)");
  }
  f->set(c, value, name.empty() ? key : name);
}

std::string unused_reason(const TrainConfig& c, const std::string& key) {
  const ModelConfig& m = c.model;
  const OptimConfig& o = c.optim;
  const bool adam = o.kind == OptimizerKind::adam || o.kind == OptimizerKind::adamw;
  const bool decays = o.schedule == ScheduleKind::linear || o.schedule == ScheduleKind::cosine;
  if (key == "text" && c.data.task != TaskKind::text) return "it is the file of task text, and task is " + std::string(to_string(c.data.task));
  if (key == "symbols" && c.data.task == TaskKind::text) return "task text takes its symbols from the file";
  if (key == "eval_fraction" && c.data.task != TaskKind::text && c.data.task != TaskKind::modadd)
    return "only tasks text and modadd split by eval_fraction, and task is " + std::string(to_string(c.data.task));
  if ((key == "momentum" || key == "nesterov") && o.kind != OptimizerKind::sgd)
    return "it is an SGD setting, and optimizer is " + std::string(to_string(o.kind));
  if ((key == "beta1" || key == "beta2" || key == "adam_eps") && !adam)
    return "it is an Adam setting, and optimizer is " + std::string(to_string(o.kind));
  if (key == "weight_decay_mode" && o.kind != OptimizerKind::adamw)
    return "only adamw has a weight decay mode (adam and sgd use l2), and optimizer is " + std::string(to_string(o.kind));
  if (key == "min_lr" && !decays)
    return "only the linear and cosine schedules decay to min_lr, and schedule is " + std::string(to_string(o.schedule));
  if (key == "loss_scale" && m.precision != Precision::fp16)
    return "only precision fp16 scales the loss, and precision is " + std::string(to_string(m.precision));
  if ((key == "dyt_alpha0" || key == "dyt_identity") && m.norm != NormKind::dyt)
    return "it is a DyT setting, and norm is " + std::string(to_string(m.norm));
  if (key == "groups" && m.norm != NormKind::group)
    return "it is a GroupNorm setting, and norm is " + std::string(to_string(m.norm));
  if (key == "norm_eps" && (m.norm == NormKind::none || m.norm == NormKind::dyt) && !m.qk_norm)
    return "norm " + std::string(to_string(m.norm)) + " has no epsilon (and qk_norm is none)";
  return "";
}

std::vector<std::string> split_list(const std::string& s, char sep) {
  std::vector<std::string> parts;
  if (s.empty()) return parts;
  size_t start = 0;
  while (true) {
    const size_t end = s.find(sep, start);
    parts.push_back(s.substr(start, end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

std::string join_list(const std::vector<std::string>& parts, char sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

void write_config(H5File& file, const std::string& object_path, const TrainConfig& c) {
  for (const ConfigField& f : config_fields()) {
    const std::string v = f.get(c);
    switch (f.type) {
      case ConfigField::Type::integer: {
        int64_t i = 0;
        parse_into(f.key, v, i);
        write_attribute(file, object_path, f.key, i);
        break;
      }
      case ConfigField::Type::real: write_attribute(file, object_path, f.key, std::strtod(v.c_str(), nullptr)); break;
      case ConfigField::Type::boolean: write_attribute(file, object_path, f.key, int64_t(v == "on")); break;
      case ConfigField::Type::text: write_attribute(file, object_path, f.key, v); break;
    }
  }
}

TrainConfig read_config(const H5File& file, const std::string& object_path) {
  TrainConfig c;
  for (const ConfigField& f : config_fields()) {
    if (!has_attribute(file, object_path, f.key)) continue;
    const std::string& k = f.key;
    switch (f.type) {
      case ConfigField::Type::integer: f.set(c, std::to_string(read_attribute_int(file, object_path, k)), k); break;
      case ConfigField::Type::real: f.set(c, format(read_attribute_double(file, object_path, k)), k); break;
      case ConfigField::Type::boolean: f.set(c, read_attribute_int(file, object_path, k) ? "on" : "off", k); break;
      case ConfigField::Type::text: f.set(c, read_attribute_string(file, object_path, k), k); break;
    }
  }
  return c;
}

std::vector<std::string> missing_config_keys(const H5File& file, const std::string& object_path) {
  std::vector<std::string> missing;
  for (const ConfigField& f : config_fields())
    if (!f.performance_only && !f.absent_means_default && !has_attribute(file, object_path, f.key))
      missing.push_back(f.key);
  return missing;
}

}  // namespace normlab
