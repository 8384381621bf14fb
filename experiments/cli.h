// The command line: train, dump, run, list, report, demo, bench.
#pragma once

namespace normlab {

// Exit codes: 0 success, 1 a failure while running, 2 bad input (before any training).
int cli_main(int argc, char** argv);

}  // namespace normlab
