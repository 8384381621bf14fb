// Stability metrics: recording them leaves a run bit-identical (dropout, BatchNorm buffers);
// each metric matches an independent computation (post-LN residual norms ~ sqrt(d), attention
// logits rebuilt from the parameters, log Z from the logits, ||delta F|| from two forwards,
// per-block gradient norms from finite differences of the loss); the HDF5 layout round-trips;
// a diverged run records nothing more.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "autograd/ops.h"
#include "experiments/metrics.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"

using namespace normlab;
using namespace normlab::testing;
namespace tt = boost::test_tools;

namespace {

// small() with a batch of 4, 6 steps, no evaluation but the last, and no warmup.
TrainConfig tiny() {
  TrainConfig c = small();
  c.batch = 4;
  c.steps = 6;
  c.eval_every = 0;
  c.eval_batches = 1;
  c.optim.warmup = 0;
  return c;
}

std::function<void(Trainer&)> recording(MetricsRecorder& rec) {
  return [&rec](Trainer& t) { rec.after_step(t); };
}

// The same run with and without a recorder: identical losses, parameters and buffers.
void expect_metrics_change_nothing(const TrainConfig& c) {
  Trainer plain(c);
  plain.run(0, false);
  Trainer probed(c);
  MetricsRecorder rec(probed, {.every = 2, .delta_f_steps = 3});
  probed.run(0, false, recording(rec));
  BOOST_TEST(rec.metrics().step == (std::vector<int64_t>{0, 2, 4, 6}), tt::per_element());
  BOOST_TEST(rec.metrics().delta_f_step == (std::vector<int64_t>{1, 2, 3}), tt::per_element());

  BOOST_TEST(same_bits(plain.history().loss, probed.history().loss));
  BOOST_TEST(same_bits(plain.history().grad_norm, probed.history().grad_norm));
  BOOST_TEST(same_bits(plain.history().eval_loss, probed.history().eval_loss));
  const auto a = plain.model().named_parameters(), b = probed.model().named_parameters();
  BOOST_REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) BOOST_TEST(same_bits(a[i].second.data(), b[i].second.data()), a[i].first);
  const auto ba = plain.model().named_buffers(), bb = probed.model().named_buffers();
  BOOST_REQUIRE(ba.size() == bb.size());
  for (size_t i = 0; i < ba.size(); ++i) BOOST_TEST(same_bits(ba[i].second, bb[i].second), ba[i].first);
  BOOST_TEST(plain.model().generator().offset() == probed.model().generator().offset());

  // Nothing is left recording or held.
  Transformer& m = probed.model();
  BOOST_TEST(!m.keep_residuals);
  BOOST_TEST(m.residuals.empty());
  for (const auto& block : m.blocks) BOOST_TEST(!block->attn->keep_logits);
  for (const auto& [name, p] : m.norm_probes()) BOOST_TEST(!p->record, name);
  for (const auto& [name, p] : m.named_parameters()) BOOST_TEST(!p.grad().defined(), name);
}

std::map<std::string, Tensor> parameters_by_name(const Transformer& m) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, p] : m.named_parameters()) out[name] = p.data().contiguous();
  return out;
}

// Checks each block's recorded gradient norm against central differences of the probe
// loss along that block's (normalized) gradient; see the test below.
void expect_grad_norms_match_finite_differences(Trainer& t, const std::vector<double>& recorded) {
  const TrainConfig& c = t.config();
  Transformer& model = t.model();
  BOOST_REQUIRE(int64_t(recorded.size()) == c.model.depth);
  const Batch probe = t.data().batch(Split::eval, 0, c.batch);
  model.train();
  model.zero_grad();
  model.loss(probe.tokens, probe.targets, c.z_loss).backward();
  auto loss_at = [&] {
    NoGradGuard no_grad;
    return model.loss(probe.tokens, probe.targets, c.z_loss).item();
  };
  for (int64_t l = 0; l < c.model.depth; ++l) {
    const std::string prefix = "blocks." + std::to_string(l) + ".";
    std::vector<std::pair<Tensor, Tensor>> block;  // (parameter, gradient)
    std::vector<Tensor> saved;
    double g2 = 0;
    for (const auto& [name, p] : model.named_parameters()) {
      if (!name.starts_with(prefix)) continue;
      const Tensor g = p.grad().contiguous().clone();
      for (int64_t i = 0; i < g.numel(); ++i) g2 += g.data<double>()[i] * g.data<double>()[i];
      block.emplace_back(p.data(), g);
      saved.push_back(p.data().clone());
    }
    const double eps = 1e-5, scale = eps / std::sqrt(g2);
    // theta + s g for the block's parameters, then the loss, then theta again.
    auto loss_shifted = [&](double s) {
      for (auto& [p, g] : block)
        for (int64_t i = 0; i < p.numel(); ++i) p.data<double>()[i] += s * g.data<double>()[i];
      const double loss = loss_at();
      for (size_t i = 0; i < block.size(); ++i) block[i].first.copy_from(saved[i]);
      return loss;
    };
    const double directional = (loss_shifted(scale) - loss_shifted(-scale)) / (2 * eps);
    BOOST_TEST_MESSAGE("step " << t.step() << ", block " << l << ": recorded " << recorded[size_t(l)]
                               << ", finite differences " << directional);
    BOOST_TEST(recorded[size_t(l)] == directional, tt::tolerance(1e-6));
  }
  model.zero_grad();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(metrics)

BOOST_AUTO_TEST_CASE(recording_leaves_a_layer_norm_run_with_dropout_bit_identical) {
  TrainConfig c = tiny();
  c.model.dropout = 0.1;
  expect_metrics_change_nothing(c);
}

BOOST_AUTO_TEST_CASE(recording_leaves_a_batch_norm_run_and_its_running_statistics_bit_identical) {
  TrainConfig c = tiny();
  c.model.norm = NormKind::batch;
  c.model.placement = Placement::pre;
  expect_metrics_change_nothing(c);
}

// The probes (residuals, attention logits, norm inputs, per-block gradient norms) see the
// same numbers when each block is recomputed in backward, and still change nothing.
BOOST_AUTO_TEST_CASE(recompute_records_the_same_metrics) {
  TrainConfig c = tiny();
  c.model.norm = NormKind::batch;
  c.model.dropout = 0.1;
  auto record = [](const TrainConfig& config) {
    Trainer t(config);
    MetricsRecorder rec(t, {.every = 2, .delta_f_steps = 2});
    t.run(0, false, recording(rec));
    return rec.metrics();
  };
  TrainConfig r = c;
  r.model.recompute = true;
  const RunMetrics a = record(c), b = record(r);
  BOOST_TEST(same_bits(a.layer_grad_norm, b.layer_grad_norm));
  BOOST_TEST(same_bits(a.residual_norm, b.residual_norm));
  BOOST_TEST(same_bits(a.norm_input_rms, b.norm_input_rms));
  BOOST_TEST(same_bits(a.max_attn_logit, b.max_attn_logit));
  BOOST_TEST(same_bits(a.log_z, b.log_z));
  BOOST_TEST(same_bits(a.delta_f, b.delta_f));
  expect_metrics_change_nothing(r);
}

BOOST_AUTO_TEST_CASE(probe_adds_the_current_step_once) {
  TrainConfig c = tiny();
  Trainer t(c);
  MetricsRecorder rec(t, {.every = 4, .delta_f_steps = 0});
  t.run(0, false, recording(rec));
  BOOST_TEST(rec.metrics().step == (std::vector<int64_t>{0, 4}), tt::per_element());
  rec.probe(t);
  rec.probe(t);
  BOOST_TEST(rec.metrics().step == (std::vector<int64_t>{0, 4, 6}), tt::per_element());
  BOOST_TEST(rec.metrics().log_z.size() == 3u);
  BOOST_TEST(rec.metrics().layer_grad_norm.size() == 3u);
  BOOST_TEST(rec.metrics().delta_f.empty());
}

BOOST_AUTO_TEST_CASE(a_recorder_must_start_at_step_zero) {
  Trainer t(tiny());
  t.train_step();
  const std::string msg = error_of([&] { MetricsRecorder rec(t, {}); });
  BOOST_TEST(contains(msg, "before the first step"), msg);
  BOOST_TEST(contains(msg, "step 1"), msg);
}

// Post-LN: each block ends in LayerNorm (gain 1, shift 0 at init), so every row of the stream
// leaving a block has norm sqrt(d v / (v + eps)) ~ sqrt(d).
BOOST_AUTO_TEST_CASE(post_ln_residual_norm_is_sqrt_d_and_pre_ln_grows_with_depth) {
  TrainConfig c = tiny();
  c.model.placement = Placement::post;
  c.model.final_norm = false;
  Trainer post(c);
  MetricsRecorder rec(post, {.every = 0, .delta_f_steps = 0});
  const std::vector<double>& r = rec.metrics().residual_norm.at(0);
  BOOST_REQUIRE(r.size() == 3u);
  for (size_t l = 1; l < r.size(); ++l) BOOST_TEST(r[l] == std::sqrt(16.0), tt::tolerance(1e-3));
  BOOST_TEST(r[0] < 0.5);  // the embedding, N(0, 0.02^2) entries

  TrainConfig d = tiny();
  d.model.depth = 8;
  Trainer pre(d);
  MetricsRecorder rec_pre(pre, {.every = 0, .delta_f_steps = 0});
  const std::vector<double>& rp = rec_pre.metrics().residual_norm.at(0);
  BOOST_REQUIRE(rp.size() == 9u);
  BOOST_TEST(rp.back() > rp.front());
}

// Block 0's logits rebuilt from the parameters: x0 = tok[tokens] + pos, a = LN(x0),
// q = a Wq^T + bq, k = a Wk^T + bk, logit = q_h . k_h / sqrt(d_h), max over j <= i. The
// stream entering block 0 and its norm's input are x0 too.
BOOST_AUTO_TEST_CASE(max_attn_logit_residual_norm_and_norm_input_rms_match_a_recomputation) {
  TrainConfig c = tiny();
  c.model.depth = 1;
  c.model.seed = 4;  // its largest logit over all pairs is masked (j > i), so the mask matters
  c.model.dtype = DType::f64;
  Trainer t(c);
  MetricsRecorder rec(t, {.every = 0, .delta_f_steps = 0});
  const RunMetrics& m = rec.metrics();

  const int64_t B = c.batch, T = c.data.seq_len, D = c.model.d_model, H = c.model.heads, dh = D / H;
  const double eps = c.model.norm_eps;
  auto P = parameters_by_name(t.model());
  const double* tok = P.at("tok.weight").data<double>();
  const double* pos = P.at("pos").data<double>();
  const double* w = P.at("blocks.0.attn_res.norm.weight").data<double>();
  const double* beta = P.at("blocks.0.attn_res.norm.bias").data<double>();
  const double* Wq = P.at("blocks.0.attn.q.weight").data<double>();
  const double* bq = P.at("blocks.0.attn.q.bias").data<double>();
  const double* Wk = P.at("blocks.0.attn.k.weight").data<double>();
  const double* bk = P.at("blocks.0.attn.k.bias").data<double>();
  const Tensor tokens = t.data().batch(Split::eval, 0, c.batch).tokens.contiguous();
  const int64_t* ids = tokens.data<int64_t>();

  std::vector<double> q(static_cast<size_t>(B * T * D)), k(static_cast<size_t>(B * T * D));
  double sum_norm = 0;
  for (int64_t r = 0; r < B * T; ++r) {
    std::vector<double> x(static_cast<size_t>(D)), a(static_cast<size_t>(D));
    double mu = 0, var = 0, ss = 0;
    for (int64_t i = 0; i < D; ++i) x[size_t(i)] = tok[ids[r] * D + i] + pos[(r % T) * D + i];
    for (double v : x) mu += v / double(D), ss += v * v;
    for (double v : x) var += (v - mu) * (v - mu) / double(D);
    sum_norm += std::sqrt(ss);
    for (int64_t i = 0; i < D; ++i) a[size_t(i)] = (x[size_t(i)] - mu) / std::sqrt(var + eps) * w[i] + beta[i];
    for (int64_t o = 0; o < D; ++o) {
      double sq = bq[o], sk = bk[o];
      for (int64_t i = 0; i < D; ++i) sq += a[size_t(i)] * Wq[o * D + i], sk += a[size_t(i)] * Wk[o * D + i];
      q[size_t(r * D + o)] = sq, k[size_t(r * D + o)] = sk;
    }
  }
  double best = -INFINITY, best_all = -INFINITY;  // over j <= i, and over every pair
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) {
          double s = 0;
          const double* qi = &q[size_t((b * T + i) * D + h * dh)];
          const double* kj = &k[size_t((b * T + j) * D + h * dh)];
          for (int64_t e = 0; e < dh; ++e) s += qi[e] * kj[e];
          s /= std::sqrt(double(dh));
          if (j <= i) best = std::max(best, s);
          best_all = std::max(best_all, s);
        }
  BOOST_TEST_MESSAGE("max attention logit: causal " << best << ", all pairs " << best_all);
  BOOST_REQUIRE(best_all > best + 0.1);
  BOOST_REQUIRE(m.max_attn_logit.at(0).size() == 1u);
  BOOST_TEST(m.max_attn_logit[0][0] == best, tt::tolerance(1e-10));

  const double mean_norm = sum_norm / double(B * T);
  BOOST_TEST(m.residual_norm.at(0).at(0) == mean_norm, tt::tolerance(1e-12));
  BOOST_REQUIRE(!m.norm_names.empty());
  BOOST_TEST(m.norm_names[0] == "blocks.0.attn_res.norm");
  BOOST_TEST(m.norm_names.back() == "final_norm");
  BOOST_REQUIRE(m.norm_input_rms.at(0).size() == m.norm_names.size());
  BOOST_TEST(m.norm_input_rms[0][0] == mean_norm / std::sqrt(double(D)), tt::tolerance(1e-12));
}

// log Z = mean over the B T tokens of log(sum_v exp(z_v)), from the model's own logits.
BOOST_AUTO_TEST_CASE(log_z_is_the_mean_log_partition_of_the_probe_logits) {
  TrainConfig c = tiny();
  c.model.dtype = DType::f64;
  Trainer t(c);
  MetricsRecorder rec(t, {.every = 0, .delta_f_steps = 0});
  NoGradGuard no_grad;
  t.model().train();
  const Tensor z = t.model().forward(t.data().batch(Split::eval, 0, c.batch).tokens).data().contiguous();
  const int64_t V = z.size(-1), rows = z.numel() / V;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(z.data<double>()[r * V + v]);
    total += std::log(s);
  }
  BOOST_TEST(rec.metrics().log_z.at(0) == total / double(rows), tt::tolerance(1e-12));
}

// With updates far below the parameters' rounding (SGD, lr 1e-30, no zero parameters), the
// model does not move and ||delta F|| is exactly 0, dropout included (each probe draws the
// same masks).
BOOST_AUTO_TEST_CASE(delta_f_is_zero_when_the_parameters_do_not_move) {
  TrainConfig c = tiny();
  c.model.bias = false;
  c.model.dropout = 0.1;
  c.optim.kind = OptimizerKind::sgd;
  c.optim.momentum = 0;
  c.optim.lr = 1e-30;
  c.steps = 4;
  Trainer init(c), t(c);
  MetricsRecorder rec(t, {.every = 2, .delta_f_steps = 3});
  t.run(0, false, recording(rec));
  const auto a = init.model().named_parameters(), b = t.model().named_parameters();
  for (size_t i = 0; i < a.size(); ++i) BOOST_TEST(same_bits(a[i].second.data(), b[i].second.data()), a[i].first);
  BOOST_TEST(rec.metrics().delta_f_step == (std::vector<int64_t>{1, 2, 3}), tt::per_element());
  BOOST_TEST(rec.metrics().delta_f == (std::vector<double>{0, 0, 0}), tt::per_element());
}

// ||F_1 - F_0||_F / sqrt(B T) from two forwards: a fresh model's and the model after one step.
BOOST_AUTO_TEST_CASE(delta_f_after_a_step_matches_two_forwards) {
  TrainConfig c = tiny();
  c.model.dtype = DType::f64;
  Trainer init(c), t(c);
  MetricsRecorder rec(t, {.every = 0, .delta_f_steps = 3});
  t.run(0, false, recording(rec));
  const RunMetrics& m = rec.metrics();
  BOOST_TEST(m.delta_f_step == (std::vector<int64_t>{1, 2, 3}), tt::per_element());
  BOOST_REQUIRE(m.delta_f.size() == 3u);
  for (double v : m.delta_f) BOOST_TEST((std::isfinite(v) && v > 0), v);

  Trainer one(c);
  one.train_step();
  const Tensor tokens = t.data().batch(Split::eval, 0, c.batch).tokens;
  NoGradGuard no_grad;
  const Tensor f0 = init.model().forward(tokens).data().contiguous();
  const Tensor f1 = one.model().forward(tokens).data().contiguous();
  double ss = 0;
  for (int64_t i = 0; i < f0.numel(); ++i) {
    const double d = f1.data<double>()[i] - f0.data<double>()[i];
    ss += d * d;
  }
  BOOST_TEST(m.delta_f[0] == std::sqrt(ss / double(c.batch * c.data.seq_len)), tt::tolerance(1e-12));
}

// For the gradient g_l of the probe loss restricted to block l and u = g_l / ||g_l||, the
// directional derivative dL(theta + e u)/de at 0 is g_l . u = ||g_l||; central differences
// (e = 1e-5, f64) give it without the recorder's code. At the init and after two steps (when
// the last training step's gradients are still on the parameters).
BOOST_AUTO_TEST_CASE(layer_grad_norm_matches_finite_differences_of_the_probe_loss) {
  TrainConfig c = tiny();
  c.model.dtype = DType::f64;
  c.z_loss = 1e-2;
  Trainer t(c);
  MetricsRecorder rec(t, {.every = 2, .delta_f_steps = 0});
  expect_grad_norms_match_finite_differences(t, rec.metrics().layer_grad_norm.at(0));
  t.run(2, false, recording(rec));
  BOOST_REQUIRE(rec.metrics().step.back() == 2);
  expect_grad_norms_match_finite_differences(t, rec.metrics().layer_grad_norm.back());
}

BOOST_AUTO_TEST_CASE(metrics_round_trip_through_hdf5) {
  TempDir tmp("normlab_test_metrics");
  const std::string path = tmp.file("metrics.h5");

  TrainConfig c = tiny();
  c.steps = 3;
  Trainer t(c);
  MetricsRecorder rec(t, {.every = 1, .delta_f_steps = 2});
  t.run(0, false, recording(rec));

  TrainConfig n = tiny();  // a model without norms: no norm_input_rms columns
  n.model.norm = NormKind::none;
  n.model.placement = Placement::none;
  n.model.final_norm = false;
  n.steps = 2;
  Trainer tn(n);
  MetricsRecorder rec_n(tn, {.every = 2, .delta_f_steps = 1});
  tn.run(0, false, recording(rec_n));
  BOOST_TEST(rec_n.metrics().norm_names.empty());
  BOOST_TEST(rec_n.metrics().norm_input_rms.size() == 2u);

  const RunMetrics none{};
  {
    H5File f(path, H5File::Mode::create);
    write_metrics(f, "/runs/0/metrics", rec.metrics());
    write_metrics(f, "/runs/1/metrics", rec_n.metrics());
    write_metrics(f, "/runs/2/metrics", none);
    f.close();
  }
  const H5File f(path, H5File::Mode::read);
  BOOST_TEST(read_attribute_string(f, "/runs/0/metrics", "norm_names").find(",final_norm") != std::string::npos);
  BOOST_TEST(read_tensor(f, "/runs/0/metrics/layer_grad_norm").shape() == (Shape{4, 2}), tt::per_element());
  BOOST_TEST(read_tensor(f, "/runs/1/metrics/norm_input_rms").shape() == (Shape{2, 0}), tt::per_element());
  for (const auto& [group, expected] : {std::pair{"/runs/0/metrics", &rec.metrics()},
                                        std::pair{"/runs/1/metrics", &rec_n.metrics()},
                                        std::pair{"/runs/2/metrics", &none}}) {
    BOOST_TEST_CONTEXT(group) {
      const RunMetrics got = read_metrics(f, group);
      BOOST_TEST(got.step == expected->step, tt::per_element());
      BOOST_TEST((got.layer_grad_norm == expected->layer_grad_norm));
      BOOST_TEST((got.residual_norm == expected->residual_norm));
      BOOST_TEST(got.norm_names == expected->norm_names, tt::per_element());
      BOOST_TEST((got.norm_input_rms == expected->norm_input_rms));
      BOOST_TEST((got.max_attn_logit == expected->max_attn_logit));
      BOOST_TEST(got.log_z == expected->log_z, tt::per_element());
      BOOST_TEST(got.delta_f_step == expected->delta_f_step, tt::per_element());
      BOOST_TEST(got.delta_f == expected->delta_f, tt::per_element());
    }
  }
  BOOST_TEST(rec.metrics().step == (std::vector<int64_t>{0, 1, 2, 3}), tt::per_element());
  BOOST_TEST(contains(error_of([&] { read_metrics(f, "/runs/9/metrics"); }), "metric_step"));
}

BOOST_AUTO_TEST_CASE(a_diverged_run_records_nothing_more) {
  Trainer t(tiny());
  MetricsRecorder rec(t, {.every = 1, .delta_f_steps = 10});
  t.run(1, false, recording(rec));
  t.run(2, false);  // step 2 without the recorder
  const RunMetrics before = rec.metrics();
  BOOST_TEST(before.step == (std::vector<int64_t>{0, 1}), tt::per_element());
  t.mark_diverged("x");
  rec.after_step(t);  // step 2 is due for both, but the run has diverged
  BOOST_TEST(rec.metrics().step == before.step, tt::per_element());
  BOOST_TEST(rec.metrics().delta_f_step == before.delta_f_step, tt::per_element());
  BOOST_TEST(rec.metrics().log_z.size() == before.log_z.size());
}

BOOST_AUTO_TEST_SUITE_END()
