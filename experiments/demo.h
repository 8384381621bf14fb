// A small training demo: a one-block causal-attention model learns to output the previous
// token. Shows the library end to end until the experiment runner exists.
#pragma once

#include <cstdint>

namespace normlab {

struct DemoConfig {
  int64_t vocab = 16;
  int64_t seq_len = 16;
  int64_t d_model = 32;
  int64_t batch = 16;
  int64_t steps = 300;
  double lr = 0.05;
  uint64_t seed = 0;
};

// Trains and prints the loss every `steps / 10` steps; returns the final loss.
double run_demo(const DemoConfig& config);

}  // namespace normlab
