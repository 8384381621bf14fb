#include "experiments/presets.h"

namespace normlab {

namespace {

Experiment quick() {
  return {
      .name = "quick",
      .description = "LayerNorm and RMSNorm x pre/post/deepnorm x depth 6..48: the stability map in minutes",
      .base = {.model = {.d_model = 32, .heads = 2}, .data = {.task = TaskKind::copy, .seq_len = 32},
               .optim = {.lr = 3e-3, .warmup = 20}, .steps = 200, .batch = 8, .eval_every = 50},
      .axes = {axis("norm", {"layer", "rms"}),
               {"placement",
                {{"pre", {}}, {"post", {}}, {"deepnorm", {{"placement", "deepnorm"}, {"init", "deepnorm"}}}}},
               axis("depth", {"6", "24"})},
  };
}

}  // namespace

std::vector<Experiment> builtin_presets() { return {quick()}; }

}  // namespace normlab
