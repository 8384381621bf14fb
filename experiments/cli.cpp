// The normlab command-line program.
#include "experiments/cli.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "experiments/bench.h"
#include "experiments/bench_cuda.h"
#include "experiments/config.h"
#include "experiments/demo.h"
#include "experiments/results_file.h"
#include "experiments/sweep.h"
#include "experiments/train.h"
#include "framework/error.h"

namespace normlab {

namespace {

constexpr int kUsageError = 2;

void print_help() {
  std::printf(
      "normlab %s: normalization in deep transformers\n"
      "\n"
      "usage: normlab <command> [options]     (normlab <command> --help for its options)\n"
      "\n"
      "commands:\n"
      "  run <experiment> [--set key=value ...] [--out F.h5]\n"
      "                                run a stability sweep: results file, summary, plots\n"
      "  list                          the experiments, one line each\n"
      "  report F.h5                   the summary of a results file\n"
      "  train [--<key> <value> ...]   train the toy transformer on a task and print a summary\n"
      "  dump  [--<key> <value> ...] --out F.h5\n"
      "                                write a model, one batch, its loss and every gradient\n"
      "  demo [--steps N] [--seed S]   train a small attention model on the previous-token task\n"
      "  bench [kernels|train|cuda|all] [--depth N]\n"
      "                                kernel and transformer-step benchmarks (kernels), training\n"
      "                                throughput at depth 48 and a 1000-layer step (train), GPU\n"
      "                                norm kernels against copy bandwidth and cuDNN (cuda)\n"
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
      "  --checkpoint-every K    steps between checkpoints (0: only at the end)\n"
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

[[noreturn]] void usage_error(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "normlab %s: %s (see normlab %s --help)\n", command.c_str(), message.c_str(),
               command.c_str());
  std::exit(kUsageError);
}

// Parses a non-negative integer flag value; exits with code 2 naming the flag on bad input.
long long parse_count(const std::string& command, const std::string& flag, const char* value) {
  char* end = nullptr;
  const long long v = value ? std::strtoll(value, &end, 10) : 0;
  if (!value || *end != '\0' || v < 0)
    usage_error(command, flag + " needs a non-negative integer, got '" + (value ? value : "") + "'");
  return v;
}

// The key of a config flag: "--d-model" -> "d_model".
std::string config_key(const std::string& flag) {
  std::string key = flag.substr(2);
  for (char& ch : key)
    if (ch == '-') ch = '_';
  return key;
}

struct TrainOptions {
  std::string checkpoint, resume, out;
  long long checkpoint_every = 0, stop_at = 0;
  bool quiet = false;
  std::vector<std::string> config_flags;  // as given, for the --resume check
};

// Parses `normlab <command>` flags into config and options; exits with 2 on bad input.
void parse_flags(const std::string& command, int argc, char** argv, TrainConfig& config, TrainOptions& o,
                 void (*help)()) {
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    auto take = [&]() -> std::string {
      if (!value) usage_error(command, flag + " needs a value");
      ++i;
      return value;
    };
    if (flag == "--help" || flag == "-h") {
      help();
      std::exit(0);
    }
    if (command == "train" && flag == "--checkpoint") o.checkpoint = take();
    else if (command == "train" && flag == "--checkpoint-every") o.checkpoint_every = parse_count(command, flag, value), ++i;
    else if (command == "train" && flag == "--stop-at") o.stop_at = parse_count(command, flag, value), ++i;
    else if (command == "train" && flag == "--resume") o.resume = take();
    else if (command == "train" && flag == "--quiet") o.quiet = true;
    else if (command == "dump" && flag == "--out") o.out = take();
    else if (flag.rfind("--", 0) == 0 && find_config_field(config_key(flag))) {
      const std::string v = take();
      try {
        set_config_value(config, config_key(flag), v);
      } catch (const Error& e) {
        usage_error(command, e.what());
      }
      o.config_flags.push_back(config_key(flag));
    } else {
      usage_error(command, "unknown flag '" + flag + "'");
    }
  }
}

void print_summary(const Trainer& t) {
  const TrainHistory& h = t.history();
  const TrainConfig& c = t.config();
  const int64_t n = int64_t(h.loss.size());
  double recent = 0;
  int64_t k = 0;
  for (int64_t i = std::max<int64_t>(0, n - 10); i < n; ++i) recent += h.loss[i], ++k;
  std::printf("\nsummary\n");
  std::printf("  steps          %lld of %lld\n", (long long)t.step(), (long long)c.steps);
  if (t.diverged())
    std::printf("  diverged       at step %lld (%s)\n", (long long)h.diverged_step, h.diverged_reason.c_str());
  else
    std::printf("  diverged       no\n");
  if (k > 0) std::printf("  train loss     %.4f (mean of the last %lld steps)\n", recent / double(k), (long long)k);
  if (!h.eval_loss.empty())
    std::printf("  eval loss      %.4f (step %lld)\n", h.eval_loss.back(), (long long)h.eval_step.back());
  std::printf("  chance loss    %.4f\n", t.data().chance_loss());
  if (t.tokens_per_second() > 0) std::printf("  tokens/s       %.0f\n", t.tokens_per_second());
}

int run_train(int argc, char** argv) {
  TrainConfig config;
  TrainOptions o;
  parse_flags("train", argc, argv, config, o, print_train_help);
  if (!o.resume.empty())
    for (const std::string& key : o.config_flags)
      if (key != "steps")
        usage_error("train", "--resume takes the config from the checkpoint; only --steps may change, got --" + key);
  std::unique_ptr<Trainer> trainer;
  try {
    if (!o.resume.empty()) {
      bool steps_given = false;
      for (const std::string& key : o.config_flags) steps_given |= key == "steps";
      trainer = Trainer::resume(o.resume, steps_given ? config.steps : 0);
      if (o.checkpoint.empty()) o.checkpoint = o.resume;
      std::printf("resumed %s at step %lld\n", o.resume.c_str(), (long long)trainer->step());
    } else {
      trainer = std::make_unique<Trainer>(config);
    }
  } catch (const Error& e) {
    usage_error("train", e.what());
  }
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
  try {
    size_t evals_printed = trainer->history().eval_loss.size();
    trainer->run(o.stop_at, !o.quiet, [&](Trainer& t) {
      const TrainHistory& h = t.history();
      for (; evals_printed < h.eval_loss.size(); ++evals_printed) {
        clear_progress_line();
        std::printf("step %6lld  train loss %.4f  eval loss %.4f\n", (long long)h.eval_step[evals_printed],
                    h.loss[size_t(h.eval_step[evals_printed] - 1)], h.eval_loss[evals_printed]);
        std::fflush(stdout);
      }
      if (!o.checkpoint.empty() && o.checkpoint_every > 0 && t.step() % o.checkpoint_every == 0)
        t.save_checkpoint(o.checkpoint);
    });
    if (!o.checkpoint.empty()) {
      trainer->save_checkpoint(o.checkpoint);
      std::printf("checkpoint %s (step %lld)\n", o.checkpoint.c_str(), (long long)trainer->step());
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "normlab train: %s\n", e.what());
    return 1;
  }
  print_summary(*trainer);
  return 0;
}

int run_dump(int argc, char** argv) {
  TrainConfig config;
  TrainOptions o;
  parse_flags("dump", argc, argv, config, o, print_dump_help);
  if (o.out.empty()) usage_error("dump", "--out F.h5 is required");
  try {
    check(config);
  } catch (const Error& e) {
    usage_error("dump", e.what());
  }
  try {
    const double loss = write_dump(config, o.out);
    std::printf("dump %s: loss %.17g\n", o.out.c_str(), loss);
  } catch (const Error& e) {
    std::fprintf(stderr, "normlab dump: %s\n", e.what());
    return 1;
  }
  return 0;
}

int run_bench(int argc, char** argv) {
  std::string what = "kernels";
  int depth = 48;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "kernels" || arg == "train" || arg == "cuda" || arg == "all") what = arg;
    else if (arg == "--depth") depth = int(parse_count("bench", "--depth", i + 1 < argc ? argv[i + 1] : nullptr)), ++i;
    else if (arg == "--help" || arg == "-h") return print_help(), 0;
    else usage_error("bench", "unknown argument '" + arg + "'");
  }
  if (what == "kernels" || what == "all") run_foundation_bench(depth);
  if (what == "train" || what == "all") run_train_bench();
  if (what == "cuda" || what == "all") run_cuda_bench();
  return 0;
}

int run_demo_command(int argc, char** argv) {
  DemoConfig config;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (flag == "--steps") config.steps = parse_count("demo", flag, value), ++i;
    else if (flag == "--seed") config.seed = uint64_t(parse_count("demo", flag, value)), ++i;
    else if (flag == "--help") return print_help(), 0;
    else usage_error("demo", "unknown flag '" + flag + "'");
  }
  try {
    run_demo(config);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
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
      "  --jobs N            runs at once, one process each (default: one per core)\n"
      "  --no-plots          skip experiments/plot.py\n"
      "  --quiet             no line per run\n");
}

int run_sweep_command(int argc, char** argv) {
  if (argc < 3) usage_error("run", "name an experiment (normlab list shows them)");
  std::string name = argv[2];
  if (name == "--help" || name == "-h") return print_run_help(), 0;
  Experiment e;
  try {
    e = find_experiment(name);
  } catch (const Error& err) {
    usage_error("run", err.what());
  }
  SweepOptions o;
  for (int i = 3; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    auto take = [&]() -> std::string {
      if (!value) usage_error("run", flag + " needs a value");
      ++i;
      return value;
    };
    if (flag == "--help" || flag == "-h") return print_run_help(), 0;
    if (flag == "--set") {
      const std::string kv = take();
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) usage_error("run", "--set needs key=value, got '" + kv + "'");
      try {
        apply_override(e, kv.substr(0, eq), kv.substr(eq + 1));
      } catch (const Error& err) {
        usage_error("run", err.what());
      }
    } else if (flag == "--out") {
      o.out = take();
    } else if (flag == "--jobs") {
      o.jobs = int(parse_count("run", flag, value)), ++i;
      if (o.jobs < 1) usage_error("run", "--jobs needs an integer >= 1, got '0'");
    } else if (flag == "--no-plots") {
      o.plots = false;
    } else if (flag == "--quiet") {
      o.quiet = true;
    } else {
      usage_error("run", "unknown flag '" + flag + "'");
    }
  }
  try {
    return run_sweep(e, o) == 0 ? 0 : 1;
  } catch (const SweepInputError& err) {
    usage_error("run", err.what());
  } catch (const Error& err) {
    std::fprintf(stderr, "normlab run: %s\n", err.what());
    return 1;
  }
}

int run_list() {
  std::vector<Experiment> all;
  try {
    all = registered_experiments();
  } catch (const Error& err) {
    std::fprintf(stderr, "normlab list: %s\n", err.what());
    return 1;
  }
  size_t width = 0;
  for (const Experiment& e : all) width = std::max(width, e.name.size());
  for (const Experiment& e : all) std::printf("  %-*s  %s\n", int(width), e.name.c_str(), e.description.c_str());
  return 0;
}

int run_report(int argc, char** argv) {
  if (argc != 3 || !std::strcmp(argv[2], "--help")) {
    if (argc == 3) return std::printf("usage: normlab report F.h5\n"), 0;
    usage_error("report", "expected one results file");
  }
  SweepResults results;
  try {
    results = read_results(argv[2]);
  } catch (const Error& err) {
    usage_error("report", err.what());
  }
  std::optional<Experiment> e;
  try {
    e = find_experiment(results.experiment);
  } catch (const Error&) {
    // An experiment this program does not know: the tables only, without its verdicts.
  }
  report(results, e ? &*e : nullptr, stdout);
  return 0;
}

}  // namespace

int cli_main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    print_help();
    return 0;
  }
  const std::string command = argv[1];
  if (command == "--version") {
    std::printf("normlab %s\n", NORMLAB_VERSION);
    return 0;
  }
  if (command == "run") return run_sweep_command(argc, argv);
  if (command == "list") return run_list();
  if (command == "report") return run_report(argc, argv);
  if (command == "__worker" && argc == 5) return run_worker(argv[2], argv[3], std::atoi(argv[4]));
  if (command == "train") return run_train(argc, argv);
  if (command == "dump") return run_dump(argc, argv);
  if (command == "demo") return run_demo_command(argc, argv);
  if (command == "bench") return run_bench(argc, argv);
  std::fprintf(stderr, "normlab: unknown command '%s' (see normlab --help)\n", command.c_str());
  return kUsageError;
}

}  // namespace normlab
