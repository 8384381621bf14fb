// The normlab command-line program.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "experiments/bench.h"
#include "experiments/demo.h"
#include "framework/error.h"

namespace {

void print_help() {
  std::printf(
      "normlab %s: normalization in deep transformers\n"
      "\n"
      "usage: normlab <command> [options]\n"
      "\n"
      "commands:\n"
      "  demo [--steps N] [--seed S]   train a small attention model on the previous-token task\n"
      "  bench [--depth N]             matmul backends, engine overhead, copy bandwidth and a\n"
      "                                transformer step of depth N (48) built from the ops\n"
      "  --help                        this text\n"
      "  --version                     the version\n",
      NORMLAB_VERSION);
}

// Parses a positive integer flag value; exits with code 2 naming the flag on bad input.
long long parse_int(const char* flag, const char* value) {
  char* end = nullptr;
  const long long v = value ? std::strtoll(value, &end, 10) : 0;
  if (!value || *end != '\0' || v < 0) {
    std::fprintf(stderr, "normlab: %s needs a non-negative integer, got '%s'\n", flag, value ? value : "");
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    print_help();
    return 0;
  }
  const std::string command = argv[1];
  if (command == "--version") {
    std::printf("normlab %s\n", NORMLAB_VERSION);
    return 0;
  }
  if (command == "demo") {
    normlab::DemoConfig config;
    for (int i = 2; i < argc; ++i) {
      const std::string flag = argv[i];
      const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
      if (flag == "--steps") config.steps = parse_int("--steps", value), ++i;
      else if (flag == "--seed") config.seed = uint64_t(parse_int("--seed", value)), ++i;
      else if (flag == "--help") return print_help(), 0;
      else {
        std::fprintf(stderr, "normlab demo: unknown flag '%s' (see normlab --help)\n", flag.c_str());
        return 2;
      }
    }
    try {
      normlab::run_demo(config);
    } catch (const normlab::Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (command == "bench") {
    int depth = 48;
    for (int i = 2; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag == "--depth") {
        depth = int(parse_int("--depth", i + 1 < argc ? argv[i + 1] : nullptr));
        ++i;
      } else {
        std::fprintf(stderr, "normlab bench: unknown flag '%s' (see normlab --help)\n", flag.c_str());
        return 2;
      }
    }
    normlab::run_foundation_bench(depth);
    return 0;
  }
  std::fprintf(stderr, "normlab: unknown command '%s' (see normlab --help)\n", command.c_str());
  return 2;
}
