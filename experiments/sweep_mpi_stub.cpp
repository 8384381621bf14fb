// A program built without MPI: one rank only (experiments/sweep_mpi.cpp is the MPI build's).
#include <cstdio>
#include <string>

#include "experiments/sweep_jobs.h"
#include "experiments/sweep_mpi.h"
#include "framework/error.h"

namespace normlab {

int mpi_ranks() { return 1; }

std::unique_ptr<JobRunner> make_mpi_runner(const std::string&, int) {
  NL_FAIL("this normlab was built without MPI");
}

int mpi_main(int argc, char** argv, int (*cli)(int, char**)) {
  if (launched_ranks() <= 1 || (argc >= 2 && std::string(argv[1]) == "__worker")) return cli(argc, argv);
  if (launched_rank() == 0)
    std::fprintf(stderr,
                 "normlab: started by mpirun with %d ranks, but this normlab was built without MPI (install "
                 "libopenmpi-dev and rebuild, or run it without mpirun)\n",
                 launched_ranks());
  return 2;
}

}  // namespace normlab
