// The normlab command-line program.
#include "experiments/cli.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "experiments/bench.h"
#include "experiments/bench_cuda.h"
#include "experiments/config.h"
#include "experiments/demo.h"
#include "experiments/output_file.h"
#include "experiments/results_file.h"
#include "experiments/sweep.h"
#include "experiments/train.h"
#include "framework/error.h"
#include "framework/file_lock.h"

namespace normlab {

namespace {

constexpr int kUsageError = 2;  // bad input: flags, values, paths, files; nothing was done
constexpr int kWorkError = 1;   // a failure during the work (a full disk, a failed run)

constexpr const char* kCommands[] = {"run", "merge", "list", "report", "train", "dump", "demo", "bench"};
bool is_command(const std::string& s) { return std::find(std::begin(kCommands), std::end(kCommands), s) != std::end(kCommands); }

void print_help() {
  std::printf(
      "normlab %s: normalization in deep transformers\n"
      "\n"
      "usage: normlab <command> [options]     (normlab <command> --help for its options)\n"
      "\n"
      "commands:\n"
      "  run <experiment> [--set key=value ...] [--out F.h5] [--shard I/N]\n"
      "                                run a stability sweep (or its part I of N): results\n"
      "                                file, summary, plots\n"
      "  merge OUT.h5 F.h5 ...         join results files of one experiment (a sweep's shards)\n"
      "  list                          the experiments, one line each\n"
      "  report F.h5                   the summary of a results file\n"
      "  train [--<key> <value> ...]   train the toy transformer on a task and print a summary\n"
      "  dump  [--<key> <value> ...] --out F.h5\n"
      "                                write a model, one batch, its loss and every gradient\n"
      "  demo [--steps N] [--seed S]   train a small attention model on the previous-token task\n"
      "  bench [kernels|norms|train|cuda|all] [--depth N]\n"
      "                                kernel and transformer-step benchmarks (kernels; --depth N\n"
      "                                sets the step's depth), training throughput at depth 48 and\n"
      "                                a 1000-layer step (train), GPU norm kernels against copy\n"
      "                                bandwidth and cuDNN (cuda)\n"
      "  --help                        this text\n"
      "  --version                     the version\n",
      NORMLAB_VERSION);
}

// A real as short as %g prints it.
std::string shortest(const std::string& value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", std::stod(value));
  return buf;
}

void print_config_keys() {
  const TrainConfig defaults;
  std::printf("config keys (--key value; '-' and '_' are interchangeable in keys):\n");
  for (const ConfigField& f : config_fields()) {
    std::string value = f.get(defaults);
    if (f.type == ConfigField::Type::real) value = shortest(value);
    std::printf("  --%-18s %-10s %s\n", f.key.c_str(), value.c_str(), f.help.c_str());
  }
}

void print_train_help() {
  std::printf(
      "usage: normlab train [--<key> <value> ...] [options]\n"
      "\n"
      "Trains the toy transformer and prints a summary (loss against chance, eval loss,\n"
      "divergence, tokens/s). Stops at the first non-finite loss or gradient.\n"
      "\n"
      "options:\n"
      "  --checkpoint F.h5       save the whole state to F.h5 at the end (and every\n"
      "                          --checkpoint-every K steps)\n"
      "  --checkpoint-every K    steps between checkpoints (0: only at the end); the checkpoint\n"
      "                          records it and a resumed run keeps it\n"
      "  --stop-at N             stop after step N (a later --resume continues)\n"
      "  --resume F.h5           continue the run saved in F.h5, bit-exactly; the config comes\n"
      "                          from the file (only --steps may change); saves back to F.h5\n"
      "                          unless --checkpoint names another file\n"
      "  --quiet                 no progress line\n"
      "\n");
  print_config_keys();
}

void print_dump_help() {
  std::printf(
      "usage: normlab dump [--<key> <value> ...] --out F.h5\n"
      "\n"
      "Builds the model the config describes (at its initialisation, --dtype f32 or f64),\n"
      "runs one forward and backward pass on train batch 0, and writes /config (attributes),\n"
      "/batch/tokens, /batch/targets, /params/<name>, /loss and /grads/<name>. The README's\n"
      "\"The toy transformer's math\" states the model exactly.\n"
      "\n");
  print_config_keys();
}

// Bad input on the command line, or a bad input file: the command prints the message and
// exits with kUsageError before any work.
struct UsageError : Error {
  using Error::Error;
};

[[noreturn]] void usage_error(const std::string& message) { throw UsageError(message); }

// Runs `f`, turning an Error into a UsageError: for the steps that only read the input
// (checking a config, opening a checkpoint or a results file).
template <class F>
auto as_input(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    usage_error(e.what());
  }
}

// An integer flag value in [lo, hi]; anything else (text, overflow, out of range) is a
// usage error naming the flag and the value.
long long parse_int(const std::string& flag, const char* value, long long lo, long long hi) {
  if (!value) usage_error(flag + " needs a value");
  int64_t v = 0;
  if (!parse_integer(value, v) || v < lo || v > hi)
    usage_error("bad value '" + std::string(value) + "' for " + flag + " (expected an integer from " +
                std::to_string(lo) + " to " + std::to_string(hi) + ")");
  return v;
}

// The flags of one command: each value flag at most once, values taken in turn.
class Flags {
 public:
  Flags(int argc, char** argv, int first) : argc_(argc), argv_(argv), i_(first) {}
  bool done() const { return i_ >= argc_; }
  // The next argument; remembers it so a second occurrence of the same flag is refused.
  std::string next() {
    current_ = argv_[i_++];
    return current_;
  }
  // The value after the current flag.
  const char* value() {
    if (i_ >= argc_) usage_error(current_ + " needs a value");
    return argv_[i_++];
  }
  // Refuses a flag (or a --set key) given twice; `hint` follows the message.
  void once(const std::string& name, const std::string& hint = "") {
    if (!seen_.insert(name).second) usage_error(name + " is given twice" + hint);
  }

 private:
  int argc_;
  char** argv_;
  int i_;
  std::string current_;
  std::set<std::string> seen_;
};

bool is_help(const std::string& flag) { return flag == "--help" || flag == "-h"; }

// The key of a config flag: "--d-model" -> "d_model".
std::string config_key(const std::string& flag) {
  std::string key = flag.substr(2);
  for (char& ch : key)
    if (ch == '-') ch = '_';
  return key;
}

struct TrainOptions {
  std::string checkpoint, resume, out;
  std::optional<long long> checkpoint_every;
  long long stop_at = 0;
  bool quiet = false;
  std::vector<std::string> config_flags;  // the keys given, in order
};

constexpr long long kMaxSteps = 1'000'000'000'000;

// Parses `normlab <command>` flags into config and options. Returns false after printing
// the help.
bool parse_flags(const std::string& command, int argc, char** argv, TrainConfig& config, TrainOptions& o,
                 void (*help)()) {
  Flags flags(argc, argv, 2);
  while (!flags.done()) {
    const std::string flag = flags.next();
    if (is_help(flag)) return help(), false;
    const bool train = command == "train";
    if (flag.rfind("--", 0) != 0) usage_error("unexpected argument '" + flag + "' (flags start with --)");
    if (train && flag == "--checkpoint") flags.once(flag), o.checkpoint = flags.value();
    else if (train && flag == "--checkpoint-every") flags.once(flag), o.checkpoint_every = parse_int(flag, flags.value(), 0, kMaxSteps);
    else if (train && flag == "--stop-at") flags.once(flag), o.stop_at = parse_int(flag, flags.value(), 1, kMaxSteps);
    else if (train && flag == "--resume") flags.once(flag), o.resume = flags.value();
    else if (train && flag == "--quiet") flags.once(flag), o.quiet = true;
    else if (command == "dump" && flag == "--out") flags.once(flag), o.out = flags.value();
    else if (find_config_field(config_key(flag))) {
      const std::string key = config_key(flag);
      flags.once("--" + key);
      as_input([&] { set_config_value(config, key, flags.value(), "--" + key); });
      o.config_flags.push_back(key);
    } else {
      usage_error("unknown flag '" + flag + "' (see normlab " + command + " --help)");
    }
  }
  return true;
}

// Refuses a config flag that would do nothing in this config (naming why).
void check_flags_used(const TrainConfig& config, const std::vector<std::string>& keys) {
  for (const std::string& key : keys)
    if (const std::string why = unused_reason(config, key); !why.empty())
      usage_error("--" + key + " does nothing here: " + why);
}

// An output file given on the command line: refuses "" and checks it can be written.
void check_output(const std::string& flag, const std::string& path, const char* format, const char* kind) {
  if (path.empty()) usage_error(flag + " needs a file name, got ''");
  as_input([&] { check_output_file(path, format, kind); });
}

void print_summary(const Trainer& t) {
  const TrainHistory& h = t.history();
  const TrainConfig& c = t.config();
  const int64_t n = int64_t(h.loss.size());
  double recent = 0;
  int64_t k = 0;
  for (int64_t i = std::max<int64_t>(0, n - 10); i < n; ++i) recent += h.loss[i], ++k;
  std::printf("\nsummary\n");
  std::printf("  steps          %lld of %lld%s\n", (long long)t.step(), (long long)c.steps,
              t.learned() ? " (stopped: learned, eval loss <= stop_learned x chance)" : "");
  if (t.diverged())
    std::printf("  diverged       at step %lld (%s)\n", (long long)h.diverged_step, h.diverged_reason.c_str());
  else
    std::printf("  diverged       no\n");
  if (c.model.precision == Precision::fp16)
    std::printf("  loss scale     %g (%lld steps skipped on fp16 gradient overflow)\n", t.loss_scaler().scale(),
                (long long)h.skipped_step.size());
  if (k > 0) std::printf("  train loss     %.4f (mean of the last %lld steps)\n", recent / double(k), (long long)k);
  if (!h.eval_loss.empty())
    std::printf("  eval loss      %.4f (step %lld)\n", h.eval_loss.back(), (long long)h.eval_step.back());
  std::printf("  chance loss    %.4f\n", t.data().chance_loss());
  if (t.tokens_per_second() > 0) std::printf("  tokens/s       %.0f\n", t.tokens_per_second());
}

int run_train(int argc, char** argv) {
  TrainConfig config;
  TrainOptions o;
  if (!parse_flags("train", argc, argv, config, o, print_train_help)) return 0;
  const bool steps_given = std::find(o.config_flags.begin(), o.config_flags.end(), "steps") != o.config_flags.end();
  if (!o.resume.empty()) {
    for (const std::string& key : o.config_flags)
      if (key != "steps")
        usage_error("--resume takes the config from the checkpoint; only --steps may change, got --" + key);
  } else {
    check_flags_used(config, o.config_flags);
    if (o.checkpoint_every && o.checkpoint.empty())
      usage_error("--checkpoint-every needs --checkpoint F.h5 (the file to save to)");
  }
  if (!o.resume.empty() && o.checkpoint.empty()) o.checkpoint = o.resume;
  // One run at a time saves to a checkpoint: a second `train` on the same path stops here.
  FileLock lock;
  if (!o.checkpoint.empty()) {
    check_output("--checkpoint", o.checkpoint, kCheckpointFormat, "checkpoint");
    if (const pid_t owner = as_input([&] { return lock.try_lock(o.checkpoint + ".lock"); }))
      usage_error(o.checkpoint + " is in use by another run (pid " + std::to_string(owner) +
                  "); wait for it to finish or choose another --checkpoint");
  }
  // Checked before the model is built: a config too large for the machine stops here.
  std::unique_ptr<Trainer> trainer = as_input([&] {
    return o.resume.empty() ? std::make_unique<Trainer>(config)
                            : Trainer::resume(o.resume, steps_given ? config.steps : 0);
  });
  if (!o.resume.empty()) {
    // The checkpoint keeps its save interval: a resumed run saves as the first one did.
    if (!o.checkpoint_every) o.checkpoint_every = trainer->checkpoint_every();
    std::printf("resumed %s at step %lld (checkpoint every %lld steps%s)\n", o.resume.c_str(),
                (long long)trainer->step(), *o.checkpoint_every, *o.checkpoint_every ? "" : ": only at the end");
  }
  trainer->set_checkpoint_every(o.checkpoint_every.value_or(0));
  if (o.stop_at > 0 && o.stop_at <= trainer->step())
    usage_error("--stop-at " + std::to_string(o.stop_at) + " is not after the checkpoint's step " +
                std::to_string(trainer->step()));
  const TrainConfig& c = trainer->config();
  std::printf("task   %s; chance loss %.4f\n", trainer->data().describe().c_str(), trainer->data().chance_loss());
  std::printf("model  depth %lld, d_model %lld, heads %lld, %s, norm %s, placement %s, qk_norm %s, init %s; %lld "
              "parameters\n",
              (long long)c.model.depth, (long long)c.model.d_model, (long long)c.model.heads,
              to_string(c.model.activation), to_string(c.model.norm), to_string(c.model.placement).c_str(),
              qk_norm_name(c.model.qk_norm).c_str(), to_string(c.model.init),
              (long long)trainer->model().num_parameters());
  std::printf("train  %s lr %g, %s schedule, warmup %lld, clip %g, batch %lld, %lld steps\n", to_string(c.optim.kind),
              c.optim.lr, to_string(c.optim.schedule), (long long)c.optim.warmup, c.optim.clip, (long long)c.batch,
              (long long)c.steps);
  size_t evals_printed = trainer->history().eval_loss.size();
  const long long every = o.checkpoint_every.value_or(0);
  trainer->run(o.stop_at, !o.quiet, [&](Trainer& t) {
    const TrainHistory& h = t.history();
    for (; evals_printed < h.eval_loss.size(); ++evals_printed) {
      clear_progress_line();
      std::printf("step %6lld  train loss %.4f  eval loss %.4f\n", (long long)h.eval_step[evals_printed],
                  h.loss[size_t(h.eval_step[evals_printed] - 1)], h.eval_loss[evals_printed]);
    }
    if (!o.checkpoint.empty() && every > 0 && t.step() % every == 0) t.save_checkpoint(o.checkpoint);
  });
  if (!o.checkpoint.empty()) {
    trainer->save_checkpoint(o.checkpoint);
    std::printf("checkpoint %s (step %lld)\n", o.checkpoint.c_str(), (long long)trainer->step());
  }
  print_summary(*trainer);
  return 0;
}

int run_dump(int argc, char** argv) {
  TrainConfig config;
  TrainOptions o;
  if (!parse_flags("dump", argc, argv, config, o, print_dump_help)) return 0;
  if (o.out.empty()) usage_error("--out F.h5 is required");
  check_flags_used(config, o.config_flags);
  as_input([&] { check(config); });
  check_output("--out", o.out, kDumpFormat, "dump");
  const double loss = write_dump(config, o.out);
  std::printf("dump %s: loss %.17g\n", o.out.c_str(), loss);
  return 0;
}

void print_bench_help() {
  std::printf(
      "usage: normlab bench [kernels|norms|train|cuda|all] [--depth N]\n"
      "       normlab bench results F.h5 [--runs N]\n"
      "\n"
      "Benchmarks, printing figures measured side by side in one run:\n"
      "  kernels   norm kernels against oneDNN and copy bandwidth, matmul, the fused causal\n"
      "            attention at the toy shapes (warm and from memory), and one transformer\n"
      "            training step at --depth N (default 48) composed of ops and hand-derived\n"
      "  norms     only the norm kernels of kernels: each norm's GB/s, a copy of the same bytes\n"
      "            and oneDNN, on every shape\n"
      "  train     the toy model: each op of a block with one thread and with all; training\n"
      "            throughput at depth 48 (all threads and one) and 1000-layer steps; each step's\n"
      "            GFLOP/s next to its own matmuls timed alone\n"
      "  cuda      GPU norm kernels against copy bandwidth and cuDNN (needs a GPU)\n"
      "  all       all of them (the default is kernels)\n"
      "  results   writing a results file: N (default 64) copies of F.h5's runs committed one\n"
      "            at a time (ms per commit as the file grows, against a run's training time),\n"
      "            then merged from 4 shard files (ms per run); works beside F.h5\n");
}

int run_bench(int argc, char** argv) {
  std::string what, source;
  std::optional<long long> depth, runs;
  Flags flags(argc, argv, 2);
  while (!flags.done()) {
    const std::string arg = flags.next();
    if (is_help(arg)) return print_bench_help(), 0;
    if (arg == "kernels" || arg == "norms" || arg == "train" || arg == "cuda" || arg == "all" || arg == "results") {
      if (!what.empty()) usage_error("name one benchmark, got '" + what + "' and '" + arg + "'");
      what = arg;
    } else if (arg == "--depth") {
      flags.once(arg);
      depth = parse_int(arg, flags.value(), 1, 100000);
    } else if (arg == "--runs") {
      flags.once(arg);
      runs = parse_int(arg, flags.value(), 1, 100000);
    } else if (what == "results" && source.empty() && arg.rfind("--", 0) != 0) {
      source = arg;
    } else {
      usage_error("unknown argument '" + arg + "' (see normlab bench --help)");
    }
  }
  if (what.empty()) what = "kernels";
  if (depth && what != "kernels" && what != "all")
    usage_error("--depth sets the transformer step of bench kernels; bench " + what + " does not take it");
  if (runs && what != "results") usage_error("--runs sets bench results; bench " + what + " does not take it");
  if (what == "results") {
    if (source.empty()) usage_error("bench results needs a results file to copy runs from (normlab run writes one)");
    as_input([&] { read_results(source); });
    run_results_bench(source, int(runs.value_or(64)));
    return 0;
  }
  if (what == "kernels" || what == "all") run_foundation_bench(int(depth.value_or(48)));
  if (what == "norms") run_norm_bench();
  if (what == "train" || what == "all") run_train_bench();
  if (what == "cuda" || what == "all") run_cuda_bench();
  return 0;
}

void print_demo_help() {
  std::printf(
      "usage: normlab demo [--steps N] [--seed S]\n"
      "\n"
      "Trains a one-block causal-attention model to output the previous token and prints its\n"
      "loss every N/10 steps.\n"
      "\n"
      "options:\n"
      "  --steps N   training steps (default 300)\n"
      "  --seed S    seed of the initialisation and data (default 0)\n");
}

int run_demo_command(int argc, char** argv) {
  DemoConfig config;
  Flags flags(argc, argv, 2);
  while (!flags.done()) {
    const std::string flag = flags.next();
    if (is_help(flag)) return print_demo_help(), 0;
    if (flag == "--steps") flags.once(flag), config.steps = parse_int(flag, flags.value(), 1, 100'000'000);
    else if (flag == "--seed") flags.once(flag), config.seed = uint64_t(parse_int(flag, flags.value(), 0, INT64_MAX));
    else usage_error("unknown flag '" + flag + "' (see normlab demo --help)");
  }
  run_demo(config);
  return 0;
}

void print_run_help() {
  std::printf(
      "usage: normlab run <experiment> [--set key=value ...] [--out F.h5] [options]\n"
      "\n"
      "Runs an experiment's sweep (normlab list shows them), writing one HDF5 results file.\n"
      "Running the same command again skips the runs the file already holds, so an\n"
      "interrupted sweep resumes. Ends with the stability map, LR sensitivity (when lr is an\n"
      "axis), the published claims next to this sweep's verdicts, and PNG plots.\n"
      "\n"
      "options:\n"
      "  --set key=value     a config key (normlab train --help lists them) in every run; a\n"
      "                      comma-separated list (depth=6,12) makes it an axis, and a single\n"
      "                      value of an axis key keeps only that value. Runner keys:\n"
      "                      metrics_every (probe metrics every k steps), delta_f_steps (||dF||\n"
      "                      after each of the first n steps), diverge_loss (eval loss above it\n"
      "                      counts as diverging; 0: 1.5 x chance), diverge_evals (that many\n"
      "                      evals in a row)\n"
      "  --out F.h5          the results file (default results/<experiment>.h5); the plots go\n"
      "                      to F/ (results/<experiment>/)\n"
      "  --jobs N            runs at once, one process each (default: one per core); under\n"
      "                      mpirun -np N, the runs rank 0 runs itself (default 1)\n"
      "  --shard I/N         only the runs whose index in the sweep is I mod N (0 <= I < N):\n"
      "                      one machine's part; the default --out is\n"
      "                      results/<experiment>.shard-I-of-N.h5; normlab merge joins the parts\n"
      "  --no-plots          skip experiments/plot.py\n"
      "  --quiet             no line per run\n");
}

// `--shard I/N`: two integers, 0 <= I < N.
void parse_shard(const std::string& value, SweepOptions& o) {
  const size_t slash = value.find('/');
  int64_t shard = -1, shards = 0;
  if (slash == std::string::npos || !parse_integer(value.substr(0, slash), shard) ||
      !parse_integer(value.substr(slash + 1), shards) || shards < 1 || shards > 100000 || shard < 0 || shard >= shards)
    usage_error("bad value '" + value + "' for --shard (expected I/N with 0 <= I < N, e.g. 0/4)");
  o.shard = int(shard);
  o.shards = int(shards);
}

int run_sweep_command(int argc, char** argv) {
  if (argc < 3) usage_error("name an experiment (normlab list shows them)");
  const std::string name = argv[2];
  if (is_help(name)) return print_run_help(), 0;
  Experiment e = as_input([&] { return find_experiment(name); });
  SweepOptions o;
  std::vector<std::string> set_keys;  // config keys given with --set
  Flags flags(argc, argv, 3);
  while (!flags.done()) {
    const std::string flag = flags.next();
    if (is_help(flag)) return print_run_help(), 0;
    if (flag == "--set") {
      const std::string kv = flags.value();
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) usage_error("--set needs key=value, got '" + kv + "'");
      std::string key = kv.substr(0, eq);
      std::replace(key.begin(), key.end(), '-', '_');
      flags.once("--set " + key, " (a list makes an axis: --set " + key + "=a,b)");
      as_input([&] { apply_override(e, key, kv.substr(eq + 1)); });
      if (find_config_field(key)) set_keys.push_back(key);
    } else if (flag == "--out") {
      flags.once(flag);
      o.out = flags.value();
      if (o.out.empty()) usage_error("--out needs a file name, got ''");
    } else if (flag == "--jobs") {
      flags.once(flag);
      o.jobs = int(parse_int(flag, flags.value(), 1, 4096));
    } else if (flag == "--shard") {
      flags.once(flag);
      parse_shard(flags.value(), o);
    } else if (flag == "--no-plots") {
      flags.once(flag);
      o.plots = false;
    } else if (flag == "--quiet") {
      flags.once(flag);
      o.quiet = true;
    } else {
      usage_error("unknown flag '" + flag + "' (see normlab run --help)");
    }
  }
  // A --set key that does nothing in every run of the sweep is refused, naming why.
  const std::vector<PlannedRun> runs = as_input([&] { return plan(e); });
  as_input([&] { shard_runs(runs, o.shard, o.shards); });  // a shard without runs
  for (const std::string& key : set_keys) {
    std::string why;
    for (const PlannedRun& r : runs) {
      why = unused_reason(r.config, key);
      if (why.empty()) break;
    }
    if (!why.empty()) usage_error("--set " + key + " does nothing in this sweep: " + why);
  }
  try {
    return run_sweep(e, o) == 0 ? 0 : 1;
  } catch (const SweepInputError& err) {
    usage_error(err.what());
  }
}

void print_merge_help() {
  std::printf(
      "usage: normlab merge OUT.h5 F.h5 [F.h5 ...]\n"
      "\n"
      "Adds every run of the results files F.h5 (the shards of a sweep, normlab run --shard) to\n"
      "OUT.h5, created when missing, else a results file of the same experiment, in one atomic\n"
      "change. A run found in several files with the same config is taken once; files of\n"
      "different experiments, or a run of the same name with different configs, are refused\n"
      "before anything is written. Then normlab report OUT.h5 prints the whole sweep's summary.\n");
}

int run_merge(int argc, char** argv) {
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (is_help(arg)) return print_merge_help(), 0;
    if (arg.rfind("--", 0) == 0) usage_error("unknown flag '" + arg + "' (see normlab merge --help)");
    if (arg.empty()) usage_error("expected file names, got ''");
    files.push_back(arg);
  }
  if (files.size() < 2)
    usage_error("expected OUT.h5 and at least one results file to merge into it, got " + std::to_string(files.size()) +
                " file" + (files.size() == 1 ? "" : "s"));
  const std::vector<std::string> inputs(files.begin() + 1, files.end());
  MergeSummary m;
  try {
    m = merge_results(files[0], inputs);
  } catch (const SweepInputError& err) {
    usage_error(err.what());
  }
  std::printf("%s: %zu run%s added from %zu file%s (%zu already there, %zu found again in a later file)\n",
              files[0].c_str(), m.added, m.added == 1 ? "" : "s", inputs.size(), inputs.size() == 1 ? "" : "s",
              m.present, m.duplicates);
  return 0;
}

int run_list(int argc, char** argv) {
  if (argc > 2) {
    if (argc == 3 && is_help(argv[2])) {
      std::printf("usage: normlab list\n\nThe experiments normlab run knows (presets and your own), one line each.\n");
      return 0;
    }
    usage_error(std::string("list takes no arguments, got '") + argv[2] + "'");
  }
  const std::vector<Experiment> all = registered_experiments();
  size_t width = 0;
  for (const Experiment& e : all) width = std::max(width, e.name.size());
  for (const Experiment& e : all) std::printf("  %-*s  %s\n", int(width), e.name.c_str(), e.description.c_str());
  return 0;
}

int run_report(int argc, char** argv) {
  if (argc == 3 && is_help(argv[2])) {
    std::printf(
        "usage: normlab report F.h5\n"
        "\n"
        "Prints the summary of a results file: the stability map, LR sensitivity when lr is an\n"
        "axis, and the published claims next to the file's verdicts when normlab knows its\n"
        "experiment.\n");
    return 0;
  }
  if (argc != 3) usage_error("expected one results file, got " + std::to_string(argc - 2) + " arguments");
  // Every failure here comes from the file: bad input.
  as_input([&] {
    const SweepResults results = read_results(argv[2]);
    std::optional<Experiment> e;
    try {
      e = find_experiment(results.experiment);
    } catch (const Error&) {
      // An experiment this program does not know: the tables only, without its verdicts.
    }
    report(results, e ? &*e : nullptr, stdout);
  });
  return 0;
}

int dispatch(const std::string& command, int argc, char** argv) {
  if (command == "run") return run_sweep_command(argc, argv);
  if (command == "merge") return run_merge(argc, argv);
  if (command == "list") return run_list(argc, argv);
  if (command == "report") return run_report(argc, argv);
  if (command == "train") return run_train(argc, argv);
  if (command == "dump") return run_dump(argc, argv);
  if (command == "demo") return run_demo_command(argc, argv);
  if (command == "bench") return run_bench(argc, argv);
  usage_error("unknown command '" + command + "' (see normlab --help)");
}

}  // namespace

int cli_main(int argc, char** argv) {
  if (argc < 2 || is_help(argv[1])) {
    print_help();
    return 0;
  }
  const std::string command = argv[1];
  if (command == "--version") {
    std::printf("normlab %s\n", NORMLAB_VERSION);
    return 0;
  }
  if (command == "__worker") {
    if (argc != 5) return kUsageError;
    return run_worker(argv[2], argv[3], std::atoi(argv[4]));
  }
  const std::string who = is_command(command) ? "normlab " + command : "normlab";
  auto fail = [&](const std::string& message, int code) {
    std::fflush(stdout);
    clear_progress_line();
    std::fprintf(stderr, "%s: %s\n", who.c_str(), message.c_str());
    return code;
  };
  try {
    return dispatch(command, argc, argv);
  } catch (const UsageError& e) {
    return fail(e.what(), kUsageError);
  } catch (const std::bad_alloc&) {
    return fail("out of memory", kWorkError);
  } catch (const std::exception& e) {
    return fail(e.what(), kWorkError);
  }
}

}  // namespace normlab
