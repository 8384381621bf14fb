// The normlab program, and the main() of every experiment built with
// normlab_add_experiment (which adds its own experiments to the registry).
#include "experiments/cli.h"

int main(int argc, char** argv) { return normlab::cli_main(argc, argv); }
