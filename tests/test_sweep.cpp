// The sweep runner: plan() is the product of the axes (first axis outermost) with the keep
// filter, the overrides and the task's vocab; --set overrides make, narrow or leave axes;
// bad input throws naming the value before any training. run_sweep() writes every run into
// one results file through worker processes, skips the runs the file holds, recomputes a
// removed one bit for bit, and refuses a file of another experiment or config, or an
// unwritable path, leaving the file as it was. The divergence rule, LR sensitivity and
// the report's tables.
//
// The tests that start workers need the normlab program: CTest passes it as $NORMLAB_EXE;
// without it they are skipped with a message.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "experiments/results_file.h"
#include "experiments/sweep.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"

using namespace normlab;
using namespace normlab::testing;
namespace fs = std::filesystem;
namespace tt = boost::test_tools;

namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

// small() at depth 1 with a batch of 2, 4 steps, evaluation every 2 and one warmup step.
TrainConfig tiny_base() {
  TrainConfig c = small();
  c.model.depth = 1;
  c.batch = 2;
  c.steps = 4;
  c.eval_every = 2;
  c.eval_batches = 1;
  c.optim.warmup = 1;
  return c;
}

// 2 x 2 runs: placement pre or deepnorm (placement and init), depth 1 or 2.
Experiment tiny_experiment(const std::string& name = "sweep-test") {
  Experiment e;
  e.name = name;
  e.description = "a tiny sweep for the tests";
  e.base = tiny_base();
  e.axes = {{"placement", {{"pre", {}}, {"deepnorm", {{"placement", "deepnorm"}, {"init", "deepnorm"}}}}},
            axis("depth", {"1", "2"})};
  e.metrics = {.every = 2, .delta_f_steps = 2};
  e.divergence = {.loss_above = 1e6, .evals = 3};
  return e;
}

std::vector<std::string> names_of(const std::vector<PlannedRun>& runs) {
  std::vector<std::string> names;
  for (const PlannedRun& r : runs) names.push_back(r.name);
  return names;
}

// The first config key whose values differ ("" when none); `derived`: then also vocab and
// model.seq_len, which the task sets and config_fields() does not list.
std::string config_diff(const TrainConfig& a, const TrainConfig& b, bool derived = true) {
  for (const ConfigField& f : config_fields())
    if (f.get(a) != f.get(b)) return f.key + ": " + f.get(a) + " vs " + f.get(b);
  if (derived && a.model.vocab != b.model.vocab)
    return "vocab: " + std::to_string(a.model.vocab) + " vs " + std::to_string(b.model.vocab);
  if (derived && a.model.seq_len != b.model.seq_len)
    return "model.seq_len: " + std::to_string(a.model.seq_len) + " vs " + std::to_string(b.model.seq_len);
  return "";
}


// Every value two results hold for a run, compared bit for bit; "" when identical, else the
// first differing field. `timing`: also the seconds and tokens/s (a run not recomputed).
std::string run_diff(const RunResult& a, const RunResult& b, bool timing) {
  if (a.name != b.name) return "name";
  if (a.labels != b.labels) return "labels";
  if (!config_diff(a.config, b.config).empty()) return "config " + config_diff(a.config, b.config);
  if (a.diverged != b.diverged || a.diverged_step != b.diverged_step || a.diverged_reason != b.diverged_reason)
    return "divergence";
  if (!same_bits(a.initial_loss, b.initial_loss)) return "initial_loss";
  if (!same_bits(a.final_loss, b.final_loss)) return "final_loss";
  if (!same_bits(a.chance_loss, b.chance_loss)) return "chance_loss";
  if (timing && !same_bits(a.seconds, b.seconds)) return "seconds";
  if (timing && !same_bits(a.tokens_per_second, b.tokens_per_second)) return "tokens_per_second";
  const TrainHistory &ha = a.history, &hb = b.history;
  if (!same_bits(ha.loss, hb.loss)) return "loss";
  if (!same_bits(ha.grad_norm, hb.grad_norm)) return "grad_norm";
  if (!same_bits(ha.lr, hb.lr)) return "lr";
  if (ha.eval_step != hb.eval_step) return "eval_step";
  if (!same_bits(ha.eval_loss, hb.eval_loss)) return "eval_loss";
  const RunMetrics &ma = a.metrics, &mb = b.metrics;
  if (ma.step != mb.step) return "metrics step";
  if (!same_bits(ma.layer_grad_norm, mb.layer_grad_norm)) return "layer_grad_norm";
  if (!same_bits(ma.residual_norm, mb.residual_norm)) return "residual_norm";
  if (ma.norm_names != mb.norm_names) return "norm_names";
  if (!same_bits(ma.norm_input_rms, mb.norm_input_rms)) return "norm_input_rms";
  if (!same_bits(ma.max_attn_logit, mb.max_attn_logit)) return "max_attn_logit";
  if (!same_bits(ma.log_z, mb.log_z)) return "log_z";
  if (ma.delta_f_step != mb.delta_f_step) return "delta_f_step";
  if (!same_bits(ma.delta_f, mb.delta_f)) return "delta_f";
  return "";
}

const RunResult* run_named(const SweepResults& s, const std::string& name) {
  for (const RunResult& r : s.runs)
    if (r.name == name) return &r;
  return nullptr;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The normlab program the workers start from ($NORMLAB_EXE), or "" when not given.
std::string normlab_exe() {
  const char* exe = std::getenv("NORMLAB_EXE");
  return exe ? exe : "";
}

#define REQUIRE_NORMLAB_EXE()                                                                    \
  const std::string exe = normlab_exe();                                                         \
  if (exe.empty()) {                                                                             \
    BOOST_TEST_MESSAGE("skipped: NORMLAB_EXE is not set (ctest sets it to the normlab program)"); \
    return;                                                                                      \
  }                                                                                              \
  BOOST_REQUIRE_MESSAGE(fs::exists(exe), "NORMLAB_EXE=" << exe << " does not exist")

SweepOptions sweep_options(const std::string& out, const std::string& exe) {
  return {.out = out, .jobs = 2, .plots = false, .quiet = true, .executable = exe};
}
// Options whose workers cannot train (/bin/false exits 1): for sweeps that must stop first.
SweepOptions no_training(const std::string& out) { return sweep_options(out, "/bin/false"); }

// The message of the SweepInputError that f throws, or "" when it throws none (another
// exception propagates and fails the test).
template <class F>
std::string sweep_error_of(F&& f) {
  try {
    f();
  } catch (const SweepInputError& e) {
    return e.what();
  }
  return "";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One run of `e` trained in this process (no worker), as the results file would hold it.
RunResult train_in_process(const PlannedRun& run, const Experiment& e, const TempDir& tmp) {
  const std::string path = tmp.file("one_run.h5");
  run_one(run, e, path, 0);
  RunResult r = read_run(path, run.name);
  fs::remove(path);
  return r;
}

// A results file of `e` holding its first planned run, written without workers.
void write_results_with_first_run(const Experiment& e, const std::string& out, const TempDir& tmp) {
  const std::vector<PlannedRun> runs = plan(e);
  const RunResult r = train_in_process(runs[0], e, tmp);
  ResultsFile file(out, e);
  file.write_header();
  file.commit(r);
}

// What report() prints, through a temporary FILE.
std::string report_text(const SweepResults& s, const Experiment* e) {
  std::FILE* f = std::tmpfile();
  BOOST_REQUIRE(f);
  report(s, e, f);
  std::fflush(f);
  std::rewind(f);
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  return text;
}

std::vector<std::string> tokens_of(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> tokens;
  for (std::string t; in >> t;) tokens.push_back(t);
  return tokens;
}
// The whitespace-separated tokens of the first line whose first token is `first`, after
// the line containing `after` (empty when there is none).
std::vector<std::string> row(const std::string& text, const std::string& first, const std::string& after = "") {
  size_t pos = 0;
  if (!after.empty()) {
    pos = text.find(after);
    if (pos == std::string::npos) return {};
  }
  std::istringstream in(text.substr(pos));
  for (std::string line; std::getline(in, line);) {
    const std::vector<std::string> t = tokens_of(line);
    if (!t.empty() && t[0] == first) return t;
  }
  return {};
}

RunResult made_run(const Labels& labels, double final_loss, int64_t diverged_step = 0) {
  RunResult r;
  for (const auto& [a, l] : labels) r.name += (r.name.empty() ? "" : ",") + a + "=" + l;
  r.labels = labels;
  r.initial_loss = 3.0;
  r.chance_loss = 2.0;
  r.diverged = diverged_step > 0;
  r.diverged_step = diverged_step;
  r.diverged_reason = r.diverged ? "non-finite loss" : "";
  r.final_loss = r.diverged ? NAN : final_loss;
  r.seconds = 0.5;
  return r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sweep)

// ---- axis() and plan() ----

BOOST_AUTO_TEST_CASE(axis_makes_one_value_per_label) {
  const Axis a = axis("depth", {"6", "12", "24"});
  BOOST_TEST(a.name == "depth");
  BOOST_REQUIRE(a.values.size() == 3u);
  BOOST_TEST(a.values[0].label == "6");
  BOOST_TEST(a.values[2].label == "24");
  for (const AxisValue& v : a.values) BOOST_TEST(v.settings.empty());
}

BOOST_AUTO_TEST_CASE(plan_is_the_product_with_the_first_axis_outermost) {
  Experiment e = tiny_experiment();
  e.axes = {axis("norm", {"layer", "rms"}), axis("depth", {"1", "2", "3"})};
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_TEST(names_of(runs) ==
                 (std::vector<std::string>{"norm=layer,depth=1", "norm=layer,depth=2", "norm=layer,depth=3",
                                           "norm=rms,depth=1", "norm=rms,depth=2", "norm=rms,depth=3"}),
             tt::per_element());
  BOOST_REQUIRE(runs.size() == 6u);
  BOOST_TEST((runs[4].labels == Labels{{"norm", "rms"}, {"depth", "2"}}));
  BOOST_TEST((runs[4].config.model.norm == NormKind::rms));
  BOOST_TEST(runs[4].config.model.depth == 2);
  BOOST_TEST((runs[2].config.model.norm == NormKind::layer));
  BOOST_TEST(runs[2].config.model.depth == 3);
  // Everything else is the base config.
  TrainConfig expected = e.base;
  expected.model.norm = NormKind::rms;
  expected.model.depth = 2;
  expected.model.vocab = runs[4].config.model.vocab;
  expected.model.seq_len = runs[4].config.model.seq_len;
  BOOST_TEST(config_diff(runs[4].config, expected) == "");
}

BOOST_AUTO_TEST_CASE(plan_without_axes_is_one_run) {
  Experiment e = tiny_experiment();
  e.axes = {};
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_REQUIRE(runs.size() == 1u);
  BOOST_TEST(runs[0].name == "run");
  BOOST_TEST(runs[0].labels.empty());
}

BOOST_AUTO_TEST_CASE(an_axis_value_may_set_several_keys) {
  const Experiment e = tiny_experiment();
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_TEST(names_of(runs) == (std::vector<std::string>{"placement=pre,depth=1", "placement=pre,depth=2",
                                                         "placement=deepnorm,depth=1", "placement=deepnorm,depth=2"}),
             tt::per_element());
  BOOST_REQUIRE(runs.size() == 4u);
  // "pre" lists no settings: the axis name is the key and the label its value.
  BOOST_TEST((runs[0].config.model.placement == Placement::pre));
  BOOST_TEST((runs[0].config.model.init == e.base.model.init));
  BOOST_TEST((runs[3].config.model.placement == Placement::deepnorm));
  BOOST_TEST((runs[3].config.model.init == InitScheme::deepnorm));
  BOOST_TEST((runs[3].labels == Labels{{"placement", "deepnorm"}, {"depth", "2"}}));
  // An axis named after no config key works when every value lists its settings.
  Experiment recipes = tiny_experiment();
  recipes.axes = {{"recipe", {{"slow", {{"lr", "0.001"}, {"warmup", "2"}}}, {"fast", {{"lr", "0.01"}}}}}};
  const std::vector<PlannedRun> r = plan(recipes);
  BOOST_REQUIRE(r.size() == 2u);
  BOOST_TEST(r[0].name == "recipe=slow");
  BOOST_TEST(r[0].config.optim.lr == 0.001);
  BOOST_TEST(r[0].config.optim.warmup == 2);
  BOOST_TEST(r[1].config.optim.lr == 0.01);
  BOOST_TEST(r[1].config.optim.warmup == recipes.base.optim.warmup);
}

BOOST_AUTO_TEST_CASE(a_shard_keeps_the_runs_whose_index_is_its_number_mod_the_count) {
  Experiment e = tiny_experiment();
  e.axes = {axis("norm", {"layer", "rms"}), axis("depth", {"1", "2", "3"})};
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_TEST(names_of(shard_runs(runs, 0, 4)) == (std::vector<std::string>{"norm=layer,depth=1", "norm=rms,depth=2"}),
             tt::per_element());
  BOOST_TEST(names_of(shard_runs(runs, 3, 4)) == (std::vector<std::string>{"norm=rms,depth=1"}), tt::per_element());
  BOOST_TEST(names_of(shard_runs(runs, 0, 0)) == names_of(runs), tt::per_element());
  // The shards of any count hold every run once.
  for (int shards = 1; shards <= 6; ++shards) {
    std::vector<std::string> all;
    for (int i = 0; i < shards; ++i)
      for (const std::string& name : names_of(shard_runs(runs, i, shards))) all.push_back(name);
    std::sort(all.begin(), all.end());
    std::vector<std::string> expected = names_of(runs);
    std::sort(expected.begin(), expected.end());
    BOOST_TEST(all == expected, tt::per_element());
  }
  std::string m = error_of([&] { shard_runs(runs, 6, 7); });
  BOOST_TEST(contains(m, "shard 6/7 has no runs: the sweep has 6 runs"), m);
  m = error_of([&] { shard_runs(runs, 2, 2); });
  BOOST_TEST(contains(m, "shard 2/2 is not one of 0/2 to 1/2"), m);
  // The default results file of a shard.
  SweepOptions o;
  BOOST_TEST(results_path(e, o) == "results/sweep-test.h5");
  o.shard = 1, o.shards = 4;
  BOOST_TEST(results_path(e, o) == "results/sweep-test.shard-1-of-4.h5");
  o.out = "x.h5";
  BOOST_TEST(results_path(e, o) == "x.h5");
}

BOOST_AUTO_TEST_CASE(keep_filter_leaves_out_combinations) {
  Experiment e = tiny_experiment();
  e.keep = [](const TrainConfig& c) {
    return !(c.model.placement == Placement::deepnorm && c.model.depth == 2);
  };
  BOOST_TEST(names_of(plan(e)) == (std::vector<std::string>{"placement=pre,depth=1", "placement=pre,depth=2",
                                                            "placement=deepnorm,depth=1"}),
             tt::per_element());
  // The filter sees the config after the overrides.
  e.overrides = {{"depth", "2"}};
  e.base.model.depth = 2;
  BOOST_TEST(names_of(plan(e)) == (std::vector<std::string>{"placement=pre,depth=1", "placement=pre,depth=2"}),
             tt::per_element());
}

BOOST_AUTO_TEST_CASE(plan_takes_vocab_and_seq_len_from_the_task) {
  Experiment e = tiny_experiment();
  e.base.model.vocab = 7777;
  e.base.model.seq_len = 3;
  e.axes = {axis("seq_len", {"16", "24"})};
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_REQUIRE(runs.size() == 2u);
  for (const PlannedRun& r : runs) {
    BOOST_TEST(r.config.model.vocab == make_dataset(r.config.data)->vocab_size());
    BOOST_TEST(r.config.model.seq_len == r.config.data.seq_len);
  }
  BOOST_TEST(runs[1].config.model.seq_len == 24);
}

BOOST_AUTO_TEST_CASE(plan_rejects_bad_input_naming_it) {
  auto plan_error = [](std::vector<Axis> axes, std::function<bool(const TrainConfig&)> keep = nullptr) {
    Experiment e = tiny_experiment();
    e.axes = std::move(axes);
    e.keep = std::move(keep);
    return error_of([&] { plan(e); });
  };
  std::string m = plan_error({axis("dept", {"1", "2"})});
  BOOST_TEST(contains(m, "unknown config key 'dept'"), m);
  BOOST_TEST(contains(m, "axis dept"), m);
  m = plan_error({axis("depth", {"1", "x"})});
  BOOST_TEST(contains(m, "bad value 'x' for depth"), m);
  m = plan_error({{"recipe", {{"a", {{"lr", "fast"}}}}}});
  BOOST_TEST(contains(m, "bad value 'fast' for lr"), m);
  m = plan_error({axis("norm", {"layer"}), axis("heads", {"2", "5"})});
  BOOST_TEST(contains(m, "run norm=layer,heads=5"), m);
  BOOST_TEST(contains(m, "not divisible by heads=5"), m);
  m = plan_error({{"placement", {{"a,b", {{"placement", "pre"}}}}}});
  BOOST_TEST(contains(m, "'a,b'"), m);
  m = plan_error({{"placement", {{"a=b", {{"placement", "pre"}}}}}});
  BOOST_TEST(contains(m, "'a=b'"), m);
  m = plan_error({{"x/y", {{"a", {{"placement", "pre"}}}}}});
  BOOST_TEST(contains(m, "'x/y'"), m);
  m = plan_error({{"depth", {}}});
  BOOST_TEST(contains(m, "axis depth has no values"), m);
  m = plan_error({axis("depth", {"1", "1"})});
  BOOST_TEST(contains(m, "two runs are named depth=1"), m);
  m = plan_error({axis("depth", {"1", "2"})}, [](const TrainConfig&) { return false; });
  BOOST_TEST(contains(m, "experiment sweep-test has no runs"), m);
  // The task is opened while planning: a missing text file is found before any training.
  Experiment text = tiny_experiment();
  text.axes = {axis("task", {"copy", "text"})};
  text.base.data.text_path = "/nonexistent/normlab_corpus.txt";
  m = error_of([&] { plan(text); });
  BOOST_TEST(contains(m, "run task=text"), m);
  BOOST_TEST(contains(m, "/nonexistent/normlab_corpus.txt"), m);
}

// ---- apply_override() ----

BOOST_AUTO_TEST_CASE(override_of_a_key_no_axis_sweeps_sets_every_run) {
  Experiment e = tiny_experiment();
  apply_override(e, "lr", "0.02");
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_TEST(runs.size() == 4u);
  for (const PlannedRun& r : runs) BOOST_TEST(r.config.optim.lr == 0.02);
  BOOST_TEST(e.axes.size() == 2u);
  // It wins over an axis value that sets the same key among others.
  Experiment recipes = tiny_experiment();
  recipes.axes = {{"recipe", {{"slow", {{"lr", "0.001"}, {"warmup", "2"}}}, {"fast", {{"lr", "0.01"}}}}}};
  apply_override(recipes, "lr", "0.005");
  for (const PlannedRun& r : plan(recipes)) BOOST_TEST(r.config.optim.lr == 0.005, r.name);
  BOOST_TEST(plan(recipes)[0].config.optim.warmup == 2);
}

BOOST_AUTO_TEST_CASE(override_of_an_axis_key_keeps_only_that_value) {
  Experiment e = tiny_experiment();
  apply_override(e, "depth", "2");
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_TEST(names_of(runs) == (std::vector<std::string>{"placement=pre,depth=2", "placement=deepnorm,depth=2"}),
             tt::per_element());
  for (const PlannedRun& r : runs) BOOST_TEST(r.config.model.depth == 2);
  // A value no axis listed is fine too.
  Experiment other = tiny_experiment();
  apply_override(other, "depth", "3");
  BOOST_TEST(names_of(plan(other)) ==
                 (std::vector<std::string>{"placement=pre,depth=3", "placement=deepnorm,depth=3"}),
             tt::per_element());
  // An axis named after the key whose values set several keys: a value it lists keeps its
  // settings; a new one sets the key; the axis stays one axis.
  Experiment deepnorm = tiny_experiment();
  apply_override(deepnorm, "placement", "deepnorm");
  BOOST_TEST(deepnorm.axes.size() == 2u);
  const std::vector<PlannedRun> dn = plan(deepnorm);
  BOOST_TEST(names_of(dn) ==
                 (std::vector<std::string>{"placement=deepnorm,depth=1", "placement=deepnorm,depth=2"}),
             tt::per_element());
  for (const PlannedRun& r : dn) {
    BOOST_TEST((r.config.model.placement == Placement::deepnorm));
    BOOST_TEST((r.config.model.init == InitScheme::deepnorm));
  }
  Experiment post = tiny_experiment();
  apply_override(post, "placement", "post");
  BOOST_TEST(post.axes.size() == 2u);
  for (const PlannedRun& r : plan(post)) {
    BOOST_TEST(r.labels.front().second == "post");
    BOOST_TEST((r.config.model.placement == Placement::post));
    BOOST_TEST((r.config.model.init == post.base.model.init));
  }
  Experiment both = tiny_experiment();
  apply_override(both, "placement", "deepnorm,post");
  BOOST_TEST(both.axes.size() == 2u);
  const std::vector<PlannedRun> bp = plan(both);
  BOOST_TEST(names_of(bp) == (std::vector<std::string>{"placement=deepnorm,depth=1", "placement=deepnorm,depth=2",
                                                       "placement=post,depth=1", "placement=post,depth=2"}),
             tt::per_element());
  BOOST_REQUIRE(bp.size() == 4u);
  BOOST_TEST((bp[0].config.model.init == InitScheme::deepnorm));
  BOOST_TEST((bp[2].config.model.placement == Placement::post));
  BOOST_TEST((bp[2].config.model.init == both.base.model.init));
  // An axis under another name whose values each set only that key.
  Experiment sizes = tiny_experiment();
  sizes.axes = {{"size", {{"small", {{"d_model", "16"}}}, {"big", {{"d_model", "32"}}}}}};
  apply_override(sizes, "d_model", "32");
  const std::vector<PlannedRun> sized = plan(sizes);
  BOOST_REQUIRE(sized.size() == 1u);
  BOOST_TEST(sized[0].config.model.d_model == 32);
  BOOST_TEST(sized[0].labels.front().first == "size");
}

BOOST_AUTO_TEST_CASE(override_with_a_comma_list_makes_an_axis) {
  Experiment e = tiny_experiment();
  apply_override(e, "lr", "0.001,0.01");
  BOOST_REQUIRE(e.axes.size() == 3u);
  BOOST_TEST(e.axes.back().name == "lr");
  const std::vector<PlannedRun> runs = plan(e);
  BOOST_REQUIRE(runs.size() == 8u);
  BOOST_TEST(runs[0].name == "placement=pre,depth=1,lr=0.001");
  BOOST_TEST(runs[1].name == "placement=pre,depth=1,lr=0.01");
  BOOST_TEST(runs[1].config.optim.lr == 0.01);
  // A list over a swept key replaces that axis in place.
  Experiment deeper = tiny_experiment();
  apply_override(deeper, "depth", "1,2,3");
  BOOST_REQUIRE(deeper.axes.size() == 2u);
  BOOST_TEST(deeper.axes[1].name == "depth");
  BOOST_TEST(plan(deeper).size() == 6u);
  BOOST_TEST(plan(deeper).back().name == "placement=deepnorm,depth=3");
}

BOOST_AUTO_TEST_CASE(override_of_runner_keys) {
  Experiment e = tiny_experiment();
  apply_override(e, "metrics_every", "3");
  apply_override(e, "delta-f-steps", "5");
  apply_override(e, "diverge_loss", "2.5");
  apply_override(e, "diverge-evals", "4");
  BOOST_TEST(e.metrics.every == 3);
  BOOST_TEST(e.metrics.delta_f_steps == 5);
  BOOST_TEST(e.divergence.loss_above == 2.5);
  BOOST_TEST(e.divergence.evals == 4);
  BOOST_TEST(e.axes.size() == 2u);
  BOOST_TEST(e.overrides.empty());
  BOOST_TEST(plan(e).size() == 4u);
}

BOOST_AUTO_TEST_CASE(override_accepts_dashes_in_keys) {
  Experiment e = tiny_experiment();
  apply_override(e, "d-model", "32");
  apply_override(e, "weight-decay", "0.1");
  for (const PlannedRun& r : plan(e)) {
    BOOST_TEST(r.config.model.d_model == 32);
    BOOST_TEST(r.config.optim.weight_decay == 0.1);
  }
}

BOOST_AUTO_TEST_CASE(override_rejects_bad_input_naming_it) {
  Experiment e = tiny_experiment();
  const Experiment before = e;
  std::string m = error_of([&] { apply_override(e, "dept", "3"); });
  BOOST_TEST(contains(m, "unknown config key 'dept'"), m);
  m = error_of([&] { apply_override(e, "depth", "x"); });
  BOOST_TEST(contains(m, "bad value 'x' for depth"), m);
  m = error_of([&] { apply_override(e, "depth", "1,x,3"); });
  BOOST_TEST(contains(m, "bad value 'x' for depth"), m);
  m = error_of([&] { apply_override(e, "lr", "1,"); });
  BOOST_TEST(contains(m, "bad value '' for lr"), m);
  // A failed override changes nothing.
  BOOST_TEST(e.axes.size() == before.axes.size());
  BOOST_TEST(e.overrides.empty());
  BOOST_TEST(config_diff(e.base, before.base) == "");
  BOOST_TEST(names_of(plan(e)) == names_of(plan(before)), tt::per_element());
  m = error_of([&] { apply_override(e, "metrics_every", "-1"); });
  BOOST_TEST(contains(m, "bad value '-1' for metrics_every"), m);
  m = error_of([&] { apply_override(e, "delta_f_steps", "two"); });
  BOOST_TEST(contains(m, "bad value 'two' for delta_f_steps"), m);
  m = error_of([&] { apply_override(e, "diverge_loss", "nan"); });
  BOOST_TEST(contains(m, "bad value 'nan' for diverge_loss"), m);
  m = error_of([&] { apply_override(e, "diverge_evals", "0"); });
  BOOST_TEST(contains(m, "bad value '0' for diverge_evals"), m);
}

// ---- run_sweep() ----

BOOST_AUTO_TEST_CASE(run_sweep_writes_every_run) {
  REQUIRE_NORMLAB_EXE();
  TempDir tmp("normlab_test_sweep");
  const std::string out = tmp.file("results/sweep-test.h5");  // the folder is created
  const Experiment e = tiny_experiment();
  const std::vector<PlannedRun> planned = plan(e);
  const auto start = std::chrono::steady_clock::now();
  BOOST_TEST(run_sweep(e, sweep_options(out, exe)) == 0);
  BOOST_TEST_MESSAGE("4 runs in " << seconds_since(start) << " s");
  BOOST_TEST(!fs::exists(out + ".work"));
  BOOST_TEST(!fs::exists(out + ".tmp"));

  const SweepResults s = read_results(out);
  BOOST_TEST(s.path == out);
  BOOST_TEST(s.experiment == "sweep-test");
  BOOST_TEST(s.map_columns == "depth");
  BOOST_TEST(s.axes == (std::vector<std::string>{"placement", "depth"}), tt::per_element());
  BOOST_TEST(s.axis_values.at("placement") == (std::vector<std::string>{"pre", "deepnorm"}), tt::per_element());
  BOOST_TEST(s.axis_values.at("depth") == (std::vector<std::string>{"1", "2"}), tt::per_element());
  BOOST_REQUIRE(s.runs.size() == planned.size());
  for (const PlannedRun& p : planned) {
    BOOST_TEST_CONTEXT(p.name) {
      const RunResult* r = s.find(p.labels);
      BOOST_REQUIRE(r);
      BOOST_TEST(r->name == p.name);
      BOOST_TEST((r->labels == p.labels));
      BOOST_TEST(config_diff(r->config, p.config, false) == "");
      // vocab and model.seq_len are not stored with the run: read back, they are defaults.
      BOOST_WARN_MESSAGE(config_diff(r->config, p.config) == "",
                         "read_results: " << config_diff(r->config, p.config) << " (not stored in the file)");
      BOOST_TEST(!r->diverged);
      BOOST_TEST(r->diverged_step == 0);
      BOOST_TEST(std::isfinite(r->initial_loss));
      BOOST_TEST(std::isfinite(r->final_loss));
      BOOST_TEST(r->chance_loss > 0);
      BOOST_TEST(r->seconds > 0);
      BOOST_TEST(r->tokens_per_second > 0);
      const TrainHistory& h = r->history;
      BOOST_TEST(h.loss.size() == 4u);
      BOOST_TEST(h.grad_norm.size() == 4u);
      BOOST_TEST(h.lr.size() == 4u);
      BOOST_TEST(h.eval_step == (std::vector<int64_t>{2, 4}), tt::per_element());
      BOOST_REQUIRE(h.eval_loss.size() == 2u);
      BOOST_TEST(same_bits(r->final_loss, h.eval_loss.back()));
      const RunMetrics& m = r->metrics;
      const size_t depth = size_t(p.config.model.depth);
      BOOST_TEST(m.step == (std::vector<int64_t>{0, 2, 4}), tt::per_element());
      BOOST_REQUIRE(m.layer_grad_norm.size() == 3u);
      BOOST_REQUIRE(m.residual_norm.size() == 3u);
      BOOST_REQUIRE(m.max_attn_logit.size() == 3u);
      BOOST_REQUIRE(m.norm_input_rms.size() == 3u);
      BOOST_TEST(m.log_z.size() == 3u);
      BOOST_TEST(!m.norm_names.empty());
      for (size_t i = 0; i < 3; ++i) {
        BOOST_TEST(m.layer_grad_norm[i].size() == depth);
        BOOST_TEST(m.residual_norm[i].size() == depth + 1);
        BOOST_TEST(m.max_attn_logit[i].size() == depth);
        BOOST_TEST(m.norm_input_rms[i].size() == m.norm_names.size());
        for (double g : m.layer_grad_norm[i]) BOOST_TEST((std::isfinite(g) && g > 0));
      }
      BOOST_TEST(m.delta_f_step == (std::vector<int64_t>{1, 2}), tt::per_element());
      BOOST_REQUIRE(m.delta_f.size() == 2u);
      for (double d : m.delta_f) BOOST_TEST((std::isfinite(d) && d > 0));
    }
  }
  // The runs differ from each other (each got its own config).
  BOOST_TEST(!same_bits(s.runs[0].history.loss, s.runs[1].history.loss));
}

BOOST_AUTO_TEST_CASE(run_sweep_counts_failed_workers) {
  // Workers that exit 1 without a result: counted, not committed, nothing thrown.
  TempDir tmp("normlab_test_sweep");
  const std::string out = tmp.file("failed.h5");
  BOOST_TEST(run_sweep(tiny_experiment(), no_training(out)) == 4);
  const SweepResults s = read_results(out);
  BOOST_TEST(s.experiment == "sweep-test");
  BOOST_TEST(s.runs.empty());
  BOOST_TEST(contains(report_text(s, nullptr), "no runs yet"));
}

BOOST_AUTO_TEST_CASE(rerun_skips_finished_runs_and_recomputes_removed_ones) {
  REQUIRE_NORMLAB_EXE();
  TempDir tmp("normlab_test_sweep");
  const std::string out = tmp.file("resume.h5");
  Experiment e = tiny_experiment();
  auto start = std::chrono::steady_clock::now();
  BOOST_REQUIRE(run_sweep(e, sweep_options(out, exe)) == 0);
  const double first_seconds = seconds_since(start);
  const SweepResults first = read_results(out);
  BOOST_REQUIRE(first.runs.size() == 4u);

  // Again: nothing is recomputed (every run's timing is the stored one).
  start = std::chrono::steady_clock::now();
  BOOST_TEST(run_sweep(e, sweep_options(out, exe)) == 0);
  const double again_seconds = seconds_since(start);
  BOOST_TEST_MESSAGE("first sweep " << first_seconds << " s, the same again " << again_seconds << " s");
  BOOST_TEST(again_seconds < 2.0);
  const SweepResults again = read_results(out);
  BOOST_REQUIRE(again.runs.size() == 4u);
  for (const RunResult& r : first.runs) {
    const RunResult* a = run_named(again, r.name);
    BOOST_REQUIRE(a);
    BOOST_TEST(run_diff(r, *a, true) == "", r.name);
  }

  // One run removed from the file: only it is computed again, to the same bits.
  const std::string removed = "placement=deepnorm,depth=2";
  {
    H5File f(out, H5File::Mode::read_write);
    BOOST_REQUIRE(f.exists("/runs/" + removed));
    f.remove("/runs/" + removed);
    f.close();
  }
  BOOST_REQUIRE(read_results(out).runs.size() == 3u);
  BOOST_TEST(run_sweep(e, sweep_options(out, exe)) == 0);
  const SweepResults third = read_results(out);
  BOOST_REQUIRE(third.runs.size() == 4u);
  for (const RunResult& r : first.runs) {
    const RunResult* t = run_named(third, r.name);
    BOOST_REQUIRE(t);
    if (r.name == removed) {
      BOOST_TEST(!same_bits(r.seconds, t->seconds), "the removed run was not computed again");
      BOOST_TEST(run_diff(r, *t, false) == "", "the recomputed run differs");
      BOOST_TEST(same_bits(r.history.loss, t->history.loss));
    } else {
      BOOST_TEST(run_diff(r, *t, true) == "", r.name);
    }
  }

  // A narrower sweep of the same experiment finds its runs and keeps the others.
  Experiment narrow = e;
  apply_override(narrow, "depth", "1");
  BOOST_TEST(run_sweep(narrow, sweep_options(out, exe)) == 0);
  const SweepResults fourth = read_results(out);
  BOOST_REQUIRE(fourth.runs.size() == 4u);
  for (const RunResult& r : third.runs) BOOST_TEST(run_diff(r, *run_named(fourth, r.name), true) == "", r.name);

  // A wider one adds only the new runs, and the new label to the axis.
  Experiment wide = e;
  apply_override(wide, "depth", "1,2,3");
  BOOST_TEST(run_sweep(wide, sweep_options(out, exe)) == 0);
  const SweepResults fifth = read_results(out);
  BOOST_TEST(fifth.runs.size() == 6u);
  BOOST_TEST(fifth.axis_values.at("depth") == (std::vector<std::string>{"1", "2", "3"}), tt::per_element());
  for (const RunResult& r : third.runs) {
    const RunResult* f = run_named(fifth, r.name);
    BOOST_REQUIRE(f);
    BOOST_TEST(run_diff(r, *f, true) == "", r.name);
  }
  const RunResult* deep = fifth.find({{"placement", "deepnorm"}, {"depth", "3"}});
  BOOST_REQUIRE(deep);
  BOOST_TEST(deep->config.model.depth == 3);
  BOOST_TEST(deep->metrics.layer_grad_norm.at(0).size() == 3u);
}

// A finished run that a stopped sweep left uncommitted in the work folder (killed between a
// worker's end and its commit, or a commit that failed on a full disk) is committed by the
// next sweep, not computed again; a run file of another config or a damaged one is not.
BOOST_AUTO_TEST_CASE(a_stopped_sweeps_finished_runs_are_committed_not_recomputed) {
  TempDir tmp("normlab_test_sweep");
  const std::string out = tmp.file("recover.h5");
  const std::string work = out + ".work";
  const Experiment e = tiny_experiment();
  const std::vector<PlannedRun> runs = plan(e);
  fs::create_directories(work);
  run_one(runs[1], e, work + "/1.h5", 0);
  const RunResult finished = read_run(work + "/1.h5", runs[1].name);
  Experiment other = e;  // the same run name, another learning rate: not this sweep's run
  apply_override(other, "lr", "0.5");
  run_one(plan(other)[2], other, work + "/2.h5", 0);
  { std::ofstream(work + "/3.h5") << "not an HDF5 file"; }
  // Workers that cannot train (/bin/false): only the recovered run reaches the file.
  BOOST_TEST(run_sweep(e, no_training(out)) == 3);
  const SweepResults s = read_results(out);
  BOOST_REQUIRE(s.runs.size() == 1u);
  BOOST_TEST(s.runs[0].name == runs[1].name);
  BOOST_TEST(run_diff(finished, s.runs[0], true) == "");
}

BOOST_AUTO_TEST_CASE(a_changed_config_throws_naming_the_key_and_leaves_the_file) {
  TempDir tmp("normlab_test_sweep");
  const std::string out = tmp.file("changed.h5");
  const Experiment e = tiny_experiment();
  write_results_with_first_run(e, out, tmp);
  const std::string bytes = file_bytes(out);
  BOOST_REQUIRE(!bytes.empty());

  Experiment faster = e;
  apply_override(faster, "lr", "0.01");
  std::string m = sweep_error_of([&] { run_sweep(faster, no_training(out)); });
  BOOST_TEST(contains(m, "placement=pre,depth=1"), m);
  BOOST_TEST(contains(m, "lr=0.01"), m);
  BOOST_TEST(contains(m, out), m);
  BOOST_TEST((file_bytes(out) == bytes));
  BOOST_TEST(!fs::exists(out + ".work"));

  Experiment wider = e;
  apply_override(wider, "d-model", "32");
  m = sweep_error_of([&] { run_sweep(wider, no_training(out)); });
  BOOST_TEST(contains(m, "d_model=32"), m);
  BOOST_TEST((file_bytes(out) == bytes));

  // recompute changes no number: the stored run is this sweep's run (only the 3 others are
  // started, and fail without training).
  Experiment recomputing = e;
  apply_override(recomputing, "recompute", "on");
  int failed = -1;
  m = sweep_error_of([&] { failed = run_sweep(recomputing, no_training(out)); });
  BOOST_TEST(m == "");
  BOOST_TEST(failed == 3);
  BOOST_TEST(read_results(out).runs.size() == 1u);
}

BOOST_AUTO_TEST_CASE(a_file_that_is_not_this_experiments_throws_and_is_left_alone) {
  TempDir tmp("normlab_test_sweep");
  const Experiment e = tiny_experiment();
  auto expect_refused = [&](const std::string& out, const std::string& text) {
    const bool existed = fs::exists(out);
    const std::string bytes = existed && fs::is_regular_file(out) ? file_bytes(out) : "";
    const std::string m = sweep_error_of([&] { run_sweep(e, no_training(out)); });
    BOOST_TEST(contains(m, text), out << ": " << m);
    BOOST_TEST(fs::exists(out) == existed, out);
    if (existed && fs::is_regular_file(out)) BOOST_TEST((file_bytes(out) == bytes), out);
    BOOST_TEST(!fs::exists(out + ".work"), out);
  };
  // Results of another experiment.
  const std::string other = tmp.file("other.h5");
  {
    Experiment o = tiny_experiment("other-experiment");
    ResultsFile f(other, o);
    f.write_header();
  }
  expect_refused(other, "holds results of experiment 'other-experiment', not 'sweep-test'");
  // A file that is not HDF5.
  const std::string text = tmp.write("notes.h5", "not an HDF5 file\n");
  expect_refused(text, text);
  expect_refused(text, "cannot be read as a results file");
  // HDF5, but no results file.
  const std::string plain = tmp.file("plain.h5");
  {
    H5File f(plain, H5File::Mode::create);
    write_attribute(f, "/", "format", "something-else");
    f.close();
  }
  expect_refused(plain, "is not a normlab results file");
  // An output that cannot be written.
  expect_refused("/proc/normlab_nonexistent/x.h5", "not writable");
  const std::string file = tmp.write("a_file", "x");
  expect_refused(file + "/sub/x.h5", "not writable");
  expect_refused(tmp.file(""), "is a folder");
  // A bad plan is input too.
  Experiment bad = tiny_experiment();
  bad.axes = {axis("heads", {"2", "5"})};
  const std::string m = sweep_error_of([&] { run_sweep(bad, no_training(tmp.file("bad.h5"))); });
  BOOST_TEST(contains(m, "not divisible by heads=5"), m);
  BOOST_TEST(!fs::exists(tmp.file("bad.h5")));
}

// ---- The divergence rule ----

BOOST_AUTO_TEST_CASE(eval_loss_above_the_threshold_diverges_the_run) {
  TempDir tmp("normlab_test_sweep");
  Experiment e = tiny_experiment("diverge-test");
  e.axes = {};
  e.base.steps = 8;
  e.divergence = {.loss_above = 1e-9, .evals = 2};
  const std::vector<PlannedRun> runs = plan(e);
  const RunResult r = train_in_process(runs.at(0), e, tmp);
  BOOST_TEST(r.diverged);
  BOOST_TEST(r.diverged_step == 4);  // the second eval (steps 2 and 4)
  BOOST_TEST(contains(r.diverged_reason, "1e-09"), r.diverged_reason);
  BOOST_TEST(contains(r.diverged_reason, "2 evals"), r.diverged_reason);
  BOOST_TEST(std::isnan(r.final_loss));
  BOOST_TEST(r.history.loss.size() == 4u);  // it stopped there
  BOOST_TEST(r.history.eval_step == (std::vector<int64_t>{2, 4}), tt::per_element());
  BOOST_TEST(r.metrics.step.back() <= 4);
  SweepResults s{tmp.file("x.h5"), "diverge-test", "", {}, {}, {r}};
  const std::string text = report_text(s, nullptr);
  BOOST_TEST((row(text, "all", "stability map") == std::vector<std::string>{"all", "div@4"}), text);

  // The same run under a threshold it never reaches trains to the end.
  e.divergence = {.loss_above = 1e6, .evals = 1};
  const RunResult fine = train_in_process(runs.at(0), e, tmp);
  BOOST_TEST(!fine.diverged);
  BOOST_TEST(fine.history.loss.size() == 8u);
  BOOST_TEST(std::isfinite(fine.final_loss));
  BOOST_TEST(same_bits(fine.final_loss, fine.history.eval_loss.back()));
  BOOST_TEST(same_bits(std::vector<double>(fine.history.loss.begin(), fine.history.loss.begin() + 4), r.history.loss));
}

BOOST_AUTO_TEST_CASE(a_non_finite_loss_diverges_the_run) {
  TempDir tmp("normlab_test_sweep");
  Experiment e = tiny_experiment("diverge-test");
  e.axes = {};
  e.base.steps = 8;
  e.base.optim.kind = OptimizerKind::sgd;
  e.base.optim.lr = 1e12;
  e.base.optim.clip = 0;
  e.base.optim.warmup = 0;
  const RunResult r = train_in_process(plan(e).at(0), e, tmp);
  BOOST_TEST(r.diverged);
  BOOST_TEST(contains(r.diverged_reason, "non-finite"), r.diverged_reason);
  BOOST_TEST(r.diverged_step >= 1);
  BOOST_TEST(r.diverged_step <= 8);
  BOOST_TEST(r.history.loss.size() == size_t(r.diverged_step));
  BOOST_TEST(std::isnan(r.final_loss));
}

// ---- LR sensitivity ----

BOOST_AUTO_TEST_CASE(lr_sensitivity_of_hand_made_runs) {
  const RunResult a = made_run({{"lr", "1"}}, 1.0), b = made_run({{"lr", "2"}}, 2.0), d = made_run({{"lr", "3"}}, 0, 5);
  // Losses {1, 2, 3 (diverged: the initial)}: best 1, mean excess (0 + 1 + 2) / 3.
  BOOST_TEST(lr_sensitivity({&a, &b, &d}) == 1.0, tt::tolerance(1e-12));
  // A final loss above the initial counts as the initial: {1, 3} -> 1.
  const RunResult worse = made_run({{"lr", "4"}}, 4.0);
  BOOST_TEST(lr_sensitivity({&a, &worse}) == 1.0, tt::tolerance(1e-12));
  BOOST_TEST(lr_sensitivity({&a}) == 0.0);
  BOOST_TEST(lr_sensitivity({&d, &d}) == 0.0);
  // A non-finite final loss not marked diverged counts as the initial too.
  RunResult nan_run = made_run({{"lr", "5"}}, 0.5);
  nan_run.final_loss = NAN;
  BOOST_TEST(lr_sensitivity({&a, &nan_run}) == 1.0, tt::tolerance(1e-12));
  BOOST_TEST(contains(error_of([] { lr_sensitivity({}); }), "no runs"));
}

// ---- report() ----

SweepResults norm_by_lr() {
  SweepResults s;
  s.path = "x.h5";
  s.experiment = "t";
  s.map_columns = "lr";
  s.axes = {"norm", "lr"};
  s.axis_values = {{"norm", {"rms", "layer"}}, {"lr", {"0.001", "0.01"}}};
  s.runs = {made_run({{"norm", "layer"}, {"lr", "0.001"}}, 1.5), made_run({{"norm", "layer"}, {"lr", "0.01"}}, 0, 6),
            made_run({{"norm", "rms"}, {"lr", "0.001"}}, 2.25), made_run({{"norm", "rms"}, {"lr", "0.01"}}, 1.0)};
  return s;
}

BOOST_AUTO_TEST_CASE(report_prints_the_map_and_lr_sensitivity) {
  const SweepResults s = norm_by_lr();
  const std::string text = report_text(s, nullptr);
  BOOST_TEST_MESSAGE(text);
  BOOST_TEST(contains(text, "t (x.h5): 4 runs, 2.0 s of training"), text);
  BOOST_TEST(contains(text, "chance 2.0000"), text);
  BOOST_TEST((row(text, "norm", "stability map") == std::vector<std::string>{"norm", "lr=0.001", "lr=0.01"}), text);
  BOOST_TEST((row(text, "layer", "stability map") == std::vector<std::string>{"layer", "1.5000", "div@6"}), text);
  BOOST_TEST((row(text, "rms", "stability map") == std::vector<std::string>{"rms", "2.2500", "1.0000"}), text);
  // Rows in the axis's order (rms before layer), not by name.
  BOOST_TEST(text.find("\n  rms ") < text.find("\n  layer "), text);
  // layer: losses {1.5, 3 (diverged)} -> 0.75; rms: {2.25, 1} -> 0.625.
  BOOST_REQUIRE(contains(text, "LR sensitivity"));
  BOOST_TEST((row(text, "layer", "LR sensitivity") ==
              std::vector<std::string>{"layer", "0.7500", "0.001", "1.5000", "1", "of", "2"}),
             text);
  BOOST_TEST((row(text, "rms", "LR sensitivity") ==
              std::vector<std::string>{"rms", "0.6250", "0.01", "1.0000", "0", "of", "2"}),
             text);
  BOOST_TEST(!contains(text, "claims and verdicts"));
}

BOOST_AUTO_TEST_CASE(report_without_an_lr_axis_has_no_lr_sensitivity) {
  SweepResults s;
  s.path = "y.h5";
  s.experiment = "t";
  s.map_columns = "depth";
  s.axes = {"norm", "placement", "depth"};
  s.axis_values = {{"norm", {"layer"}}, {"placement", {"pre", "post"}}, {"depth", {"6", "24"}}};
  // post at depth 24 was left out (a keep filter): its cell is "-".
  s.runs = {made_run({{"norm", "layer"}, {"placement", "pre"}, {"depth", "6"}}, 1.0),
            made_run({{"norm", "layer"}, {"placement", "pre"}, {"depth", "24"}}, 1.25),
            made_run({{"norm", "layer"}, {"placement", "post"}, {"depth", "6"}}, 0, 17)};
  const std::string text = report_text(s, nullptr);
  BOOST_TEST_MESSAGE(text);
  BOOST_TEST((row(text, "norm/placement") == std::vector<std::string>{"norm/placement", "depth=6", "depth=24"}), text);
  BOOST_TEST((row(text, "layer/pre") == std::vector<std::string>{"layer/pre", "1.0000", "1.2500"}), text);
  BOOST_TEST((row(text, "layer/post") == std::vector<std::string>{"layer/post", "div@17", "-"}), text);
  BOOST_TEST(!contains(text, "LR sensitivity"), text);
}

BOOST_AUTO_TEST_CASE(report_prints_the_verdicts) {
  const SweepResults s = norm_by_lr();
  Experiment e = tiny_experiment("t");
  e.verdicts = [](const SweepResults& r) {
    const RunResult* best = r.find({{"norm", "rms"}, {"lr", "0.01"}});
    return std::vector<Verdict>{
        {"Xiong et al. 2020", "Pre-LN trains without warmup",
         std::to_string(r.runs.size()) + " runs; rms at lr 0.01: " + (best ? std::to_string(best->final_loss) : "?"),
         "agrees"},
        {"Zhang and Sennrich 2019", "RMSNorm matches LayerNorm", "n/a", "inconclusive"}};
  };
  const std::string text = report_text(s, &e);
  BOOST_TEST_MESSAGE(text);
  BOOST_TEST(contains(text, "claims and verdicts:"), text);
  BOOST_TEST(contains(text, "Xiong et al. 2020: Pre-LN trains without warmup"), text);
  BOOST_TEST(contains(text, "measured: 4 runs; rms at lr 0.01: 1.000000"), text);
  BOOST_TEST(contains(text, "verdict:  agrees"), text);
  BOOST_TEST(contains(text, "Zhang and Sennrich 2019: RMSNorm matches LayerNorm"), text);
  BOOST_TEST(contains(text, "verdict:  inconclusive"), text);
  // The verdicts come after the tables.
  BOOST_TEST(text.find("claims and verdicts") > text.find("LR sensitivity"));
  // An experiment without verdicts prints none.
  e.verdicts = nullptr;
  BOOST_TEST(!contains(report_text(s, &e), "claims and verdicts"));
}

BOOST_AUTO_TEST_SUITE_END()
