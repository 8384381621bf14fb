// Helpers shared by the suites that train the toy transformer (train, metrics, sweep).
#pragma once

#include <cstring>
#include <vector>

#include "experiments/config.h"
#include "framework/tensor.h"

namespace normlab::testing {

// A model and task small enough to train for a few steps in milliseconds: depth 2,
// d_model 16, 2 heads, sequences of 16 tokens over 6 symbols, batch 8, 12 steps.
inline TrainConfig small(TaskKind task = TaskKind::copy) {
  TrainConfig c;
  c.data.task = task;
  c.data.seq_len = 16;
  c.data.symbols = 6;
  c.model.d_model = 16;
  c.model.heads = 2;
  c.model.depth = 2;
  c.batch = 8;
  c.steps = 12;
  c.eval_every = 4;
  c.eval_batches = 2;
  c.optim.lr = 3e-3;
  c.optim.warmup = 2;
  return c;
}

// Bit-for-bit equality (NaNs included).
inline bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
inline bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}
inline bool same_bits(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!same_bits(a[i], b[i])) return false;
  return true;
}
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

}  // namespace normlab::testing
