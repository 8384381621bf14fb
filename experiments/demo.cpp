#include "experiments/demo.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "autograd/module.h"
#include "autograd/ops.h"
#include "framework/tensor_ops.h"
#include "optim/optim.h"

namespace normlab {

namespace {

// x -> x + attn(x) -> x + mlp(x) -> logits, with learned positions; no norms (those come
// with the norm layers).
class PreviousTokenModel : public Module {
 public:
  PreviousTokenModel(const DemoConfig& c, Generator& gen)
      : tok(register_module("tok", std::make_shared<Embedding>(c.vocab, c.d_model, gen))),
        q(register_module("q", std::make_shared<Linear>(c.d_model, c.d_model, false, gen))),
        k(register_module("k", std::make_shared<Linear>(c.d_model, c.d_model, false, gen))),
        v(register_module("v", std::make_shared<Linear>(c.d_model, c.d_model, false, gen))),
        o(register_module("o", std::make_shared<Linear>(c.d_model, c.d_model, false, gen))),
        up(register_module("up", std::make_shared<Linear>(c.d_model, 4 * c.d_model, true, gen))),
        down(register_module("down", std::make_shared<Linear>(4 * c.d_model, c.d_model, true, gen))),
        head(register_module("head", std::make_shared<Linear>(c.d_model, c.vocab, false, gen))) {
    pos = register_parameter("pos", randn({c.seq_len, c.d_model}, gen, DType::f32, 0.0, 1.0));
  }

  Variable forward(const Tensor& tokens) const {
    Variable x = tok->forward(tokens) + pos;  // [B, T, D]
    const double scale = 1.0 / std::sqrt(double(x.size(-1)));
    Variable scores = matmul(q->forward(x), transpose(k->forward(x), -1, -2)) * scale;
    x = x + o->forward(matmul(softmax(causal_mask(scores)), v->forward(x)));
    x = x + down->forward(gelu(up->forward(x)));
    return head->forward(x);
  }

  std::shared_ptr<Embedding> tok;
  std::shared_ptr<Linear> q, k, v, o, up, down, head;
  Variable pos;
};

// Random tokens; the target at t is the token at t - 1 (none at t = 0).
void make_batch(const DemoConfig& c, Generator& gen, Tensor& tokens, Tensor& targets) {
  const Tensor u = uniform({c.batch, c.seq_len}, gen, 0.0, double(c.vocab), DType::f64);
  tokens = empty({c.batch, c.seq_len}, DType::i64);
  targets = empty({c.batch, c.seq_len}, DType::i64);
  const double* up = u.data<double>();
  int64_t* tp = tokens.data<int64_t>();
  int64_t* gp = targets.data<int64_t>();
  for (int64_t i = 0; i < tokens.numel(); ++i) tp[i] = std::min(int64_t(up[i]), c.vocab - 1);
  for (int64_t i = 0; i < tokens.numel(); ++i) gp[i] = i % c.seq_len == 0 ? -100 : tp[i - 1];
}

}  // namespace

double run_demo(const DemoConfig& c) {
  Generator gen(c.seed);
  PreviousTokenModel model(c, gen);
  std::printf("demo: previous-token task, vocab %lld, seq %lld, d_model %lld, batch %lld, %lld steps; "
              "chance loss ln(%lld) = %.3f\n",
              (long long)c.vocab, (long long)c.seq_len, (long long)c.d_model, (long long)c.batch,
              (long long)c.steps, (long long)c.vocab, std::log(double(c.vocab)));
  SGD optimizer(param_groups(model.named_parameters(), 0.0), {.lr = c.lr, .momentum = 0.9});
  const auto start = std::chrono::steady_clock::now();
  double loss_value = 0;
  for (int64_t step = 1; step <= c.steps; ++step) {
    Tensor tokens, targets;
    make_batch(c, gen, tokens, targets);
    optimizer.zero_grad();
    Variable loss = cross_entropy(model.forward(tokens), targets);
    loss.backward();
    loss_value = loss.item();
    optimizer.step();
    if (step == 1 || step % std::max<int64_t>(1, c.steps / 10) == 0)
      std::printf("step %5lld  loss %.4f\n", (long long)step, loss_value);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("done in %.2f s (%.0f tokens/s); final loss %.4f\n", seconds,
              double(c.steps * c.batch * c.seq_len) / seconds, loss_value);
  return loss_value;
}

}  // namespace normlab
