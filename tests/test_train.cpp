// The training loop, checkpoints and dumps: a small model learns a task; a non-finite loss
// stops the run and records its step; resuming from a checkpoint reproduces an uninterrupted
// run bit for bit (with dropout and BatchNorm buffers); the config round-trips through HDF5;
// a dump holds the loss and gradients the model computes.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "experiments/train.h"
#include "framework/allocator.h"
#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

// Trains `c` for its steps without interruption, and again with a checkpoint after `cut`
// steps from which a fresh Trainer resumes; the histories and parameters must be identical.
void expect_resume_is_exact(const TrainConfig& c, int64_t cut) {
  Trainer whole(c);
  whole.run(0, false);
  TempDir tmp("normlab_test_train");
  const std::string ckpt = tmp.file("resume.h5");
  {
    Trainer first(c);
    first.run(cut, false);
    BOOST_TEST(first.step() == cut);
    first.save_checkpoint(ckpt);
  }
  BOOST_TEST(!std::filesystem::exists(ckpt + ".tmp"));
  auto resumed = Trainer::resume(ckpt);
  BOOST_TEST(resumed->step() == cut);
  resumed->run(0, false);
  BOOST_TEST(resumed->step() == c.steps);
  BOOST_TEST(same_bits(whole.history().loss, resumed->history().loss));
  BOOST_TEST(same_bits(whole.history().grad_norm, resumed->history().grad_norm));
  BOOST_TEST(same_bits(whole.history().eval_loss, resumed->history().eval_loss));
  BOOST_TEST(whole.history().eval_step == resumed->history().eval_step);
  BOOST_TEST(whole.history().skipped_step == resumed->history().skipped_step);
  BOOST_TEST(whole.loss_scaler().scale() == resumed->loss_scaler().scale());
  const auto a = whole.model().named_parameters(), b = resumed->model().named_parameters();
  BOOST_REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) BOOST_TEST(same_bits(a[i].second.data(), b[i].second.data()), a[i].first);
  const auto ba = whole.model().named_buffers(), bb = resumed->model().named_buffers();
  BOOST_REQUIRE(ba.size() == bb.size());
  for (size_t i = 0; i < ba.size(); ++i) BOOST_TEST(same_bits(ba[i].second, bb[i].second), ba[i].first);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(train)

// small() with a learning rate at which it learns the copy task within 300 steps.
TrainConfig learning(int64_t eval_every) {
  TrainConfig c = small();
  c.steps = 300;
  c.eval_every = eval_every;
  c.optim.lr = 1e-2;
  c.optim.warmup = 20;
  return c;
}

BOOST_AUTO_TEST_CASE(a_small_model_learns_the_copy_task) {
  const TrainConfig c = learning(100);
  Trainer t(c);
  t.run(0, false);
  const double chance = t.data().chance_loss();
  BOOST_TEST_MESSAGE("copy, depth 2: eval loss " << t.history().eval_loss.back() << " vs chance " << chance);
  BOOST_TEST(!t.diverged());
  BOOST_TEST(t.history().eval_loss.back() < 0.5 * chance);
  BOOST_TEST(t.history().eval_step == (std::vector<int64_t>{100, 200, 300}));
}

// stop_learned ends the run at the first evaluation at or below that fraction of chance; the
// same run without it trains every step, through the same losses up to there.
BOOST_AUTO_TEST_CASE(stop_learned_ends_the_run_at_the_first_learned_evaluation) {
  TrainConfig c = learning(20);
  c.stop_learned = 0.3;
  Trainer t(c);
  t.run(0, false);
  const double chance = t.data().chance_loss();
  const std::vector<double>& evals = t.history().eval_loss;
  BOOST_TEST_MESSAGE("copy, depth 2: learned at step " << t.step() << ", eval loss " << evals.back());
  BOOST_TEST(t.learned());
  BOOST_TEST(t.finished());
  BOOST_TEST(t.step() < c.steps);
  BOOST_TEST(t.step() % c.eval_every == 0);
  BOOST_TEST(evals.back() <= 0.3 * chance);
  for (size_t i = 0; i + 1 < evals.size(); ++i) BOOST_TEST(evals[i] > 0.3 * chance);
  TrainConfig all = c;
  all.stop_learned = 0;
  Trainer u(all);
  u.run(0, false);
  BOOST_TEST(u.step() == c.steps);
  BOOST_TEST(!u.learned());
  const std::vector<double>& first = u.history().loss;
  BOOST_TEST(std::vector<double>(first.begin(), first.begin() + t.step()) == t.history().loss);
}

BOOST_AUTO_TEST_CASE(a_non_finite_loss_stops_the_run_at_its_step) {
  TrainConfig c = small();
  Trainer t(c);
  t.run(3, false);
  BOOST_TEST(!t.diverged());
  Tensor w = t.model().head->weight.data();
  w.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  const Tensor before = t.model().blocks[0]->attn->q->weight.data().clone();
  t.run(0, false);
  BOOST_TEST(t.diverged());
  BOOST_TEST(t.history().diverged_step == 4);
  BOOST_TEST(t.history().diverged_reason == "non-finite loss");
  BOOST_TEST(t.step() == 4);
  BOOST_TEST(t.history().loss.size() == 4u);
  // The diverged step changed nothing.
  BOOST_TEST(same_bits(before, t.model().blocks[0]->attn->q->weight.data()));
  BOOST_TEST(contains(error_of([&] { t.train_step(); }), "diverged at step 4"));
}

BOOST_AUTO_TEST_CASE(a_huge_learning_rate_diverges) {
  TrainConfig c = small();
  c.model.norm = NormKind::none;
  c.model.placement = Placement::none;
  c.model.final_norm = false;
  c.optim.kind = OptimizerKind::sgd;
  c.optim.clip = 0;
  c.optim.lr = 1e12;
  c.optim.warmup = 0;
  c.steps = 50;
  Trainer t(c);
  t.run(0, false);
  BOOST_TEST(t.diverged());
  BOOST_TEST(t.history().diverged_step > 1);
  BOOST_TEST(t.step() == t.history().diverged_step);
}

BOOST_AUTO_TEST_CASE(resume_continues_bit_exactly) {
  expect_resume_is_exact(small(), 5);
  TrainConfig dropout = small();
  dropout.model.dropout = 0.2;  // the RNG state is part of the checkpoint
  expect_resume_is_exact(dropout, 6);
  TrainConfig batch = small(TaskKind::reverse);
  batch.model.norm = NormKind::batch;  // running statistics are buffers
  batch.optim.kind = OptimizerKind::sgd;
  batch.optim.lr = 0.05;
  batch.optim.schedule = ScheduleKind::inverse_sqrt;
  expect_resume_is_exact(batch, 7);
  TrainConfig fp16 = small();
  fp16.model.precision = Precision::fp16;  // the loss scaler's state is part of the checkpoint:
  fp16.loss_scale = 0x1p34;                // steps 1 to 3 overflow and halve it
  expect_resume_is_exact(fp16, 2);
}

BOOST_AUTO_TEST_CASE(checkpoint_errors_name_the_problem) {
  TempDir tmp("normlab_test_train");
  const std::string other = tmp.file("other.h5");
  {
    H5File f(other, H5File::Mode::create);
    write_attribute(f, "/", "format", "something-else");
  }
  BOOST_TEST(contains(error_of([&] { Trainer::resume(other); }), "is not a normlab checkpoint"));
  BOOST_TEST(contains(error_of([&] { Trainer::resume("/nonexistent/dir/x.h5"); }), "/nonexistent/dir/x.h5"));
}

BOOST_AUTO_TEST_CASE(config_round_trips_through_hdf5) {
  TrainConfig c;
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"depth", "17"},
                                                        {"norm", "dyt"},
                                                        {"placement", "hybrid_star"},
                                                        {"qk_norm", "none"},
                                                        {"activation", "swiglu"},
                                                        {"final_norm", "off"},
                                                        {"lr", "0.00123456789012345"},
                                                        {"weight_decay_mode", "independent"},
                                                        {"schedule", "inverse_sqrt"},
                                                        {"task", "modadd"},
                                                        {"text", "/tmp/some file.txt"},
                                                        {"dtype", "f64"},
                                                        {"seed", "123456789"}})
    set_config_value(c, key, value);
  TempDir tmp("normlab_test_train");
  const std::string path = tmp.file("config.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_config(f, "/config", c);
  }
  const H5File f(path, H5File::Mode::read);
  const TrainConfig r = read_config(f, "/config");
  for (const ConfigField& field : config_fields()) BOOST_TEST(field.get(r) == field.get(c), field.key);
  BOOST_TEST(r.optim.lr == 0.00123456789012345);
  BOOST_TEST(read_attribute_int(f, "/config", "depth") == 17);
  BOOST_TEST(read_attribute_string(f, "/config", "norm") == "dyt");
}

BOOST_AUTO_TEST_CASE(config_errors_name_the_key_and_value) {
  TrainConfig c;
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "dept", "3"); }), "unknown config key 'dept'"));
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "depth", "three"); }), "bad value 'three' for depth"));
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "norm", "batchnorm"); }), "unknown norm 'batchnorm'"));
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "lr", "nan"); }), "bad value 'nan' for lr"));
  BOOST_TEST(contains(error_of([&] { set_config_value(c, "final_norm", "maybe"); }), "expected on or off"));
  c.optim.lr = -1;
  BOOST_TEST(contains(error_of([&] { Trainer t(c); }), "lr must be > 0, got -1"));
  c = TrainConfig{};
  c.model.heads = 5;
  BOOST_TEST(contains(error_of([&] { Trainer t(c); }), "not divisible by heads=5"));
}

BOOST_AUTO_TEST_CASE(a_dump_holds_the_models_loss_and_gradients) {
  TrainConfig c = small();
  c.model.dtype = DType::f64;
  c.z_loss = 1e-3;
  TempDir tmp("normlab_test_train");
  const std::string path = tmp.file("dump.h5");
  const double loss = write_dump(c, path);
  const H5File f(path, H5File::Mode::read);
  BOOST_TEST(read_tensor(f, "/loss").item() == loss);
  BOOST_TEST(read_attribute_string(f, "/config", "norm") == "layer");
  BOOST_TEST(read_attribute_int(f, "/config", "vocab") == 7);  // 6 symbols + SEP
  // The same model and batch recomputed here give the same loss and gradients.
  Trainer t(c);
  const Batch b = t.data().batch(Split::train, 0, c.batch);
  BOOST_TEST(same_bits(read_tensor(f, "/batch/tokens"), b.tokens));
  BOOST_TEST(same_bits(read_tensor(f, "/batch/targets"), b.targets));
  Variable l = t.model().loss(b.tokens, b.targets, c.z_loss);
  l.backward();
  BOOST_TEST(l.item() == loss);
  for (const auto& [name, p] : t.model().named_parameters()) {
    BOOST_TEST(same_bits(read_tensor(f, "/params/" + name), p.data()), name);
    BOOST_TEST(same_bits(read_tensor(f, "/grads/" + name), p.grad()), name);
  }
  TrainConfig d = c;
  d.model.dropout = 0.1;
  BOOST_TEST(contains(error_of([&] { write_dump(d, path); }), "dropout must be 0"));
}

// The memory estimate that refuses configs too large for the machine stays within [1, 2] x
// the allocator's measured peak over one training step (and an eval), across depth, width,
// sequence length, heads, activation and optimizer: it never refuses a config that fits by
// much, and never lets one through that is far larger than it says.
BOOST_AUTO_TEST_CASE(memory_estimate_brackets_the_measured_peak) {
  struct Case {
    int64_t depth, d_model, heads, seq_len, batch;
    Activation activation;
    OptimizerKind optimizer;
    bool recompute = false;
    Precision precision = Precision::f32;
    int64_t micro_batches = 1;
  };
  const Case cases[] = {
      {1, 16, 2, 16, 8, Activation::gelu, OptimizerKind::adamw},
      {8, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw},
      {4, 64, 4, 128, 4, Activation::swiglu, OptimizerKind::sgd},
      {24, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw},
      {2, 128, 8, 256, 2, Activation::gelu, OptimizerKind::adam},
      {1, 16, 2, 16, 8, Activation::gelu, OptimizerKind::adamw, true},
      {8, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true},
      {4, 64, 4, 128, 4, Activation::swiglu, OptimizerKind::sgd, true},
      {48, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true},
      {2, 128, 8, 256, 2, Activation::gelu, OptimizerKind::adam, true},
      {200, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true},
      {24, 128, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true},
      {8, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, false, Precision::bf16},
      {4, 64, 4, 128, 4, Activation::swiglu, OptimizerKind::sgd, false, Precision::fp16},
      {24, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, false, Precision::fp16},
      {48, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true, Precision::bf16},
      {8, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, false, Precision::f32, 2},
      {24, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, false, Precision::f32, 2},
      {4, 64, 4, 128, 4, Activation::swiglu, OptimizerKind::sgd, false, Precision::fp16, 4},
      {48, 32, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true, Precision::f32, 2},
      {24, 128, 2, 64, 8, Activation::gelu, OptimizerKind::adamw, true, Precision::f32, 2},
  };
  for (const Case& k : cases) {
    TrainConfig c = small();
    c.model.depth = k.depth;
    c.model.d_model = k.d_model;
    c.model.heads = k.heads;
    c.model.activation = k.activation;
    c.data.seq_len = k.seq_len;
    c.batch = k.batch;
    c.optim.kind = k.optimizer;
    c.model.recompute = k.recompute;
    c.model.precision = k.precision;
    c.micro_batches = k.micro_batches;
    c.steps = 3;
    // The allocator's peak over a few steps of `config`, on `threads` threads.
    auto measured_peak = [](const TrainConfig& config, int threads) {
      CpuAllocator::instance().empty_cache();
      CpuAllocator::instance().reset_peak();
      const size_t before = CpuAllocator::instance().stats().bytes_in_use;
      const int saved = num_threads();
      set_num_threads(threads);
      {
        Trainer t(config);
        t.run(0, false);
      }
      set_num_threads(saved);
      return double(CpuAllocator::instance().stats().peak_bytes_in_use - before);
    };
    // Micro-batches on as many threads, as the estimate assumes. How far they overlap depends on
    // the scheduler (on cores busy with other tests they may run nearly in turn), so their peak
    // lies between one part's activations and all parts'; the upper bound is checked against the
    // whole batch's peak, the activations all parts hold together when they do overlap.
    const double peak = measured_peak(c, int(c.micro_batches));
    TrainConfig whole = c;
    whole.micro_batches = 1;
    const double whole_peak = c.micro_batches == 1 ? peak : measured_peak(whole, 1);
    const double estimate = estimate_memory(c).total();
    BOOST_TEST_MESSAGE("depth " << k.depth << " d_model " << k.d_model << " seq_len " << k.seq_len
                                << (k.recompute ? " recompute" : "") << " " << to_string(k.precision) << " micro-batches "
                                << k.micro_batches << ": estimate "
                                << estimate / (1 << 20) << " MiB, measured peak " << peak / (1 << 20) << " MiB, ratio "
                                << estimate / peak << " (to the whole batch's peak " << estimate / whole_peak << ")");
    BOOST_TEST(estimate >= peak);
    BOOST_TEST(estimate <= 2 * whole_peak);
  }
}

// A batch's gradient in micro-batches is the batch's: the loss is the mean over the batch's
// counted targets and the gradients its gradient (in f64, to rounding), for any split (uneven,
// with a different number of ignored targets in each sequence); and one split gives the same
// bits at any thread count.
BOOST_AUTO_TEST_CASE(micro_batches_give_the_batch_gradient) {
  TrainConfig c = small();
  c.batch = 5;
  for (DType dtype : {DType::f64, DType::f32}) {
    c.model.dtype = dtype;
    Trainer t(c);
    Batch b = t.data().batch(Split::train, 0, c.batch);
    b.targets = b.targets.contiguous().clone();
    const int64_t T = b.targets.size(1);
    for (int64_t s = 0; s < c.batch; ++s)
      for (int64_t j = 0; j < 3 * s; ++j) b.targets.data<int64_t>()[s * T + j] = -100;
    const std::vector<Variable> params = t.model().parameters();
    auto run = [&](int64_t parts, int threads) {
      const int saved = num_threads();
      set_num_threads(threads);
      TrainConfig k = c;
      k.micro_batches = parts;
      t.model().zero_grad();
      std::vector<Tensor> out{from_vector({forward_backward(t.model(), params, b, k)}, {1}, DType::f64)};
      for (const Variable& p : params) out.push_back(p.grad().to(DType::f64));
      set_num_threads(saved);
      return out;
    };
    if (dtype == DType::f64) {
      const auto whole = run(1, 1);
      for (int64_t parts : {2, 3, 5}) {
        const auto split = run(parts, 2);
        BOOST_REQUIRE(split.size() == whole.size());
        for (size_t i = 0; i < whole.size(); ++i)
          BOOST_TEST(max_abs(sub(whole[i], split[i])) <= 1e-13 * (1 + max_abs(whole[i])),
                     parts << " parts, tensor " << i);
      }
    } else {
      const auto one = run(3, 1);
      for (int threads : {2, 3}) {
        const auto many = run(3, threads);
        for (size_t i = 0; i < one.size(); ++i) BOOST_TEST(same_bits(one[i], many[i]), threads << " threads, " << i);
      }
    }
  }
  // More micro-batches than sequences, or several with BatchNorm or dropout, are refused.
  TrainConfig k = small();
  k.model.dropout = 0.1;
  k.micro_batches = 2;
  BOOST_TEST(contains(error_of([&] { Trainer t(k); }), "micro_batches=2 with dropout=0.1"));
  k = small();
  k.model.norm = NormKind::batch;
  k.micro_batches = 4;
  BOOST_TEST(contains(error_of([&] { Trainer t(k); }), "micro_batches=4 with norm batch"));
  k = small();
  k.micro_batches = 9;
  BOOST_TEST(contains(error_of([&] { Trainer t(k); }), "micro_batches must be in [1, batch=8], got 9"));
  k.micro_batches = 0;
  BOOST_TEST(contains(error_of([&] { Trainer t(k); }), "micro_batches must be in [1, batch=8], got 0"));
}

// Recomputing each block in backward changes no number: a few AdamW steps with dropout
// (BatchNorm, and LayerNorm post-norm with SwiGLU) give the same losses, gradient norms,
// parameters, optimizer state, running statistics and generator state, bit for bit.
BOOST_AUTO_TEST_CASE(recompute_trains_bit_identically) {
  TempDir tmp("normlab_test_train");
  for (NormKind norm : {NormKind::batch, NormKind::layer}) {
    TrainConfig c = small();
    c.model.norm = norm;
    c.model.dropout = 0.1;
    c.model.depth = 3;
    c.steps = 5;
    c.eval_every = 2;
    if (norm == NormKind::layer) {
      c.model.placement = Placement::post;
      c.model.final_norm = false;
      c.model.activation = Activation::swiglu;
    }
    TrainConfig r = c;
    r.model.recompute = true;
    Trainer stored(c), recomputed(r);
    stored.run(0, false);
    recomputed.run(0, false);
    const std::string name = to_string(norm);
    BOOST_TEST(same_bits(stored.history().loss, recomputed.history().loss), name);
    BOOST_TEST(same_bits(stored.history().grad_norm, recomputed.history().grad_norm), name);
    BOOST_TEST(same_bits(stored.history().eval_loss, recomputed.history().eval_loss), name);
    BOOST_TEST(stored.model().generator().offset() == recomputed.model().generator().offset(), name);
    // Parameters, buffers and optimizer state, through the checkpoints both write.
    const std::string a = tmp.file("stored.h5"), b = tmp.file("recomputed.h5");
    stored.save_checkpoint(a);
    recomputed.save_checkpoint(b);
    const H5File fa(a, H5File::Mode::read), fb(b, H5File::Mode::read);
    std::vector<std::string> paths;
    for (const auto& [n, p] : stored.model().named_parameters()) {
      paths.push_back("/params/" + n);
      paths.push_back("/optimizer/" + n + "/exp_avg");
      paths.push_back("/optimizer/" + n + "/exp_avg_sq");
    }
    for (const auto& [n, buf] : stored.model().named_buffers()) paths.push_back("/buffers/" + n);
    for (const std::string& path : paths) {
      BOOST_REQUIRE(fa.exists(path) && fb.exists(path));
      BOOST_TEST(same_bits(read_tensor(fa, path), read_tensor(fb, path)), name << " " << path);
    }
    BOOST_TEST(read_attribute_int(fb, "/config", "recompute") == 1);
  }
}

// `normlab dump --recompute on` writes the dump it writes without.
BOOST_AUTO_TEST_CASE(a_dump_with_recompute_is_the_dump_without) {
  TrainConfig c = small();
  c.model.norm = NormKind::batch;
  c.model.dtype = DType::f64;
  TempDir tmp("normlab_test_train");
  const std::string a = tmp.file("stored.h5"), b = tmp.file("recomputed.h5");
  const double loss = write_dump(c, a);
  c.model.recompute = true;
  BOOST_TEST(same_bits(write_dump(c, b), loss));
  const H5File fa(a, H5File::Mode::read), fb(b, H5File::Mode::read);
  Trainer t(c);
  std::vector<std::string> paths{"/loss", "/batch/tokens", "/batch/targets"};
  for (const auto& [n, p] : t.model().named_parameters()) {
    paths.push_back("/params/" + n);
    paths.push_back("/grads/" + n);
  }
  for (const auto& [n, buf] : t.model().named_buffers()) paths.push_back("/buffers/" + n);
  for (const std::string& path : paths) BOOST_TEST(same_bits(read_tensor(fa, path), read_tensor(fb, path)), path);
}

BOOST_AUTO_TEST_CASE(a_config_larger_than_the_machine_is_refused_before_allocating) {
  TrainConfig c = small();
  c.model.depth = 1'000'000'000;
  try {
    Trainer t(c);
    BOOST_FAIL("a 10^9-layer model was accepted");
  } catch (const Error& e) {
    const std::string m = e.what();
    BOOST_TEST(m.find("depth=1000000000") != std::string::npos, m);
    BOOST_TEST(m.find("more than this machine's") != std::string::npos, m);
  }
}

// A resumed run keeps the checkpoint's interval; a checkpoint lacking a config key is
// refused, naming it, instead of resuming with a default (not bit-exact), except a
// performance-only key (recompute), which a checkpoint written before it existed lacks.
BOOST_AUTO_TEST_CASE(a_checkpoint_keeps_its_interval_and_its_whole_config) {
  TempDir tmp("normlab_test_train");
  const std::string ckpt = tmp.file("settings.h5");
  {
    Trainer t(small());
    t.set_checkpoint_every(5);
    t.run(3, false);
    t.save_checkpoint(ckpt);
  }
  BOOST_TEST(Trainer::resume(ckpt)->checkpoint_every() == 5);
  {
    H5File f(ckpt, H5File::Mode::read_write);
    BOOST_REQUIRE(H5Adelete_by_name(f.id(), "/config", "recompute", H5P_DEFAULT) >= 0);
  }
  BOOST_TEST(!Trainer::resume(ckpt)->config().model.recompute);
  {
    H5File f(ckpt, H5File::Mode::read_write);
    BOOST_REQUIRE(H5Adelete_by_name(f.id(), "/config", "stop_learned", H5P_DEFAULT) >= 0);
  }
  BOOST_TEST(Trainer::resume(ckpt)->config().stop_learned == 0.0);  // written before the key existed
  {
    H5File f(ckpt, H5File::Mode::read_write);
    BOOST_REQUIRE(H5Adelete_by_name(f.id(), "/config", "lr", H5P_DEFAULT) >= 0);
    BOOST_REQUIRE(H5Adelete_by_name(f.id(), "/config", "depth", H5P_DEFAULT) >= 0);
  }
  try {
    Trainer::resume(ckpt);
    BOOST_FAIL("a checkpoint without depth and lr was resumed");
  } catch (const Error& e) {
    const std::string m = e.what();
    BOOST_TEST(m.find("lacks the config keys depth,lr") != std::string::npos, m);
  }
}

BOOST_AUTO_TEST_SUITE_END()
