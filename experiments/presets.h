// The built-in experiments (`normlab list`): each reproduces a published finding at toy
// scale and prints the paper's claim next to its own verdict.
#pragma once

#include <vector>

#include "experiments/sweep.h"

namespace normlab {

std::vector<Experiment> builtin_presets();

}  // namespace normlab
