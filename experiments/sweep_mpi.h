// Sweeps across MPI ranks: `mpirun -np N normlab run <experiment> ...` (README, "MPI").
#pragma once

namespace normlab {

// The program's main() under mpirun. Started by mpirun with more than one rank (OpenMPI's
// OMPI_COMM_WORLD_SIZE or PMI_SIZE), `normlab run` initializes MPI: rank 0 runs `cli` and the
// sweep, the other ranks run the runs rank 0 hands them until it lets them go. Any other case,
// a plain `normlab run` included, is `cli` alone, without MPI. Another command under mpirun
// with several ranks, or a program built without MPI, exits with 2 and a message from rank 0.
int mpi_main(int argc, char** argv, int (*cli)(int, char**));

}  // namespace normlab
