// The normlab program, and the main() of every experiment built with
// normlab_add_experiment (which adds its own experiments to the registry).
#include <csignal>

#include "experiments/cli.h"

int main(int argc, char** argv) {
  std::signal(SIGXFSZ, SIG_IGN);  // a write past the file size limit fails with EFBIG, reported, instead of killing
  return normlab::cli_main(argc, argv);
}
