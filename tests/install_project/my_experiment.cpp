// A user's experiment: two tiny toy transformers (LayerNorm, RMSNorm), a few steps each.
#include "experiments/sweep.h"
using namespace normlab;

Experiment install_check() {
  return {
      .name = "install-check",
      .description = "LayerNorm and RMSNorm, depth 1, a few steps (an outside project)",
      .base = {.model = {.d_model = 16, .heads = 2, .depth = 1},
               .data = {.task = TaskKind::copy, .seq_len = 16},
               .optim = {.lr = 3e-3, .warmup = 1},
               .steps = 4, .batch = 2, .eval_every = 2},
      .axes = {axis("norm", {"layer", "rms"})},
      .verdicts = [](const SweepResults& s) {
        const RunResult* rms = s.find({{"norm", "rms"}});
        return std::vector<Verdict>{{"install check", "both runs finish",
                                     rms ? "rms final loss " + std::to_string(rms->final_loss) : "not run",
                                     rms && !rms->diverged ? "agrees" : "disagrees"}};
      },
  };
}
NORMLAB_REGISTER_EXPERIMENT(install_check);
