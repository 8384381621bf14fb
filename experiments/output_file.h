// Output files named on the command line (a checkpoint, a dump): checked before any work, so
// a run never trains for hours and then fails to save, and never overwrites a file of
// another kind (a results file, a README).
#pragma once

#include <string>

namespace normlab {

// Checks that `path` can be written as a normlab file whose root attribute `format` is
// `format` (`kind` names it in messages: "checkpoint"): its folder exists or can be created
// and is writable, the path is not a folder, and a file already there is one of the same
// format. Throws normlab::Error naming the path and the problem.
void check_output_file(const std::string& path, const std::string& format, const std::string& kind);

}  // namespace normlab
