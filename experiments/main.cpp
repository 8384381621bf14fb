// The normlab program, and the main() of every experiment built with
// normlab_add_experiment (which adds its own experiments to the registry).
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "experiments/cli.h"
#include "experiments/sweep_mpi.h"

int main(int argc, char** argv) {
  // Lines appear as they are printed, also when the output goes to a file or a pipe.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  // A write past the file-size limit (ulimit -f) fails with EFBIG and becomes an error
  // message, like a full disk, instead of killing the program.
  std::signal(SIGXFSZ, SIG_IGN);
#ifdef NORMLAB_PLOT_SCRIPT
  // Built by normlab_add_experiment from an installed normlab: its sweeps draw their plots with
  // the installed plot.py, unless $NORMLAB_PLOT names another.
  ::setenv("NORMLAB_PLOT", NORMLAB_PLOT_SCRIPT, /*overwrite=*/0);
#endif
  // Under mpirun with several ranks, `normlab run` sweeps across them (README, "MPI").
  return normlab::mpi_main(argc, argv, normlab::cli_main);
}
