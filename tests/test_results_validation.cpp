// The reader of results files refuses hand-edited files: a wrong or missing root `axes`, empty
// axis labels, a run's label missing or not one the root lists, an unknown version, /runs that
// is not a group, metric datasets of the wrong width, histories whose lengths or steps
// disagree, a diverged_step outside the history, labels that do not match the run's name.
// Each refusal names the file, the run or attribute, and what was expected; `normlab run
// --out` on such a file (ResultsFile) refuses it the same way and leaves its bytes as they
// were. A good file reads back as written.
//
// With $NORMLAB_CLI_DIR set (CTest sets it), the suite also leaves two bad files there for the
// command-line tests: version99.h5 (for `normlab report`) and bad_width.h5 with its copy
// bad_width.orig.h5 (for `normlab run quick --out`, which must leave it unchanged).
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
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

// Two runs of one block or two, 4 steps each, probed at steps 0, 2 and 4. Named "quick" so that
// `normlab run quick --out` reaches the file's checks rather than refusing another experiment.
Experiment tiny_experiment() {
  Experiment e;
  e.name = "quick";
  e.base = small();
  e.base.model.depth = 1;
  e.base.batch = 2;
  e.base.steps = 4;
  e.base.eval_every = 2;
  e.base.eval_batches = 1;
  e.base.optim.warmup = 1;
  e.axes = {axis("norm", {"layer"}), axis("depth", {"1", "2"})};
  e.metrics = {.every = 2, .delta_f_steps = 2};
  e.divergence = {.loss_above = 1e6, .evals = 3};
  return e;
}

const std::string kRun1 = "norm=layer,depth=1";
const std::string kRun2 = "norm=layer,depth=2";

// The runs the good file holds, trained in this process.
struct GoodFile {
  TempDir dir{"normlab_test_results_validation"};
  Experiment e = tiny_experiment();
  std::vector<RunResult> runs;
  std::string path = dir.file("good.h5");

  GoodFile() {
    for (const PlannedRun& run : plan(e)) {
      const std::string run_file = dir.file("run.h5");
      run_one(run, e, run_file, 1);
      runs.push_back(read_run(run_file, run.name));
    }
    ResultsFile file(path, e);
    file.write_header();
    for (const RunResult& r : runs) file.commit(r);
  }
};

const GoodFile& good() {
  static const GoodFile file;
  return file;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void remove_attribute(H5File& f, const std::string& object, const std::string& name) {
  BOOST_REQUIRE(has_attribute(f, object, name));
  BOOST_REQUIRE(H5Adelete_by_name(f.id(), object.c_str(), name.c_str(), H5P_DEFAULT) >= 0);
}

// A copy of the good file at `path`, changed by `edit`.
void write_edited(const std::string& path, const std::function<void(H5File&)>& edit) {
  fs::copy_file(good().path, path, fs::copy_options::overwrite_existing);
  H5File f(path, H5File::Mode::read_write);
  edit(f);
  f.close();
}

struct Case {
  std::string name;                 // what the edit does (also the copy's file name)
  std::function<void(H5File&)> edit;
  std::vector<std::string> expected;  // parts of the message, besides the file's path
};

std::string g1(const std::string& member) { return "/runs/" + kRun1 + "/" + member; }

Tensor matrix(int64_t rows, int64_t cols) { return ones({rows, cols}, DType::f64); }

// Every hand edit, with what its refusal must say.
std::vector<Case> hand_edits() {
  const std::string r1 = "/runs/" + kRun1;
  return {
      {"root_axes_missing", [](H5File& f) { remove_attribute(f, "/", "axes"); }, {"no root attribute axes"}},
      {"root_axes_name_an_axis_without_labels",
       [](H5File& f) { write_attribute(f, "/", "axes", "norm,depth,width"); }, {"width", "axis_values.width"}},
      {"root_axes_lack_an_axis_of_the_runs", [](H5File& f) { write_attribute(f, "/", "axes", "norm"); },
       {kRun1, "axis 'depth'", "root's axes 'norm'"}},
      {"root_axes_repeat_an_axis", [](H5File& f) { write_attribute(f, "/", "axes", "norm,depth,norm"); },
       {"axes is 'norm,depth,norm'", "distinct"}},
      {"axis_values_empty", [](H5File& f) { write_attribute(f, "/", "axis_values.depth", ""); },
       {"axis_values.depth", "missing or empty"}},
      {"axis_values_missing", [](H5File& f) { remove_attribute(f, "/", "axis_values.norm"); },
       {"axis_values.norm", "missing or empty"}},
      {"axis_values_repeat_a_label", [](H5File& f) { write_attribute(f, "/", "axis_values.depth", "1|2|1"); },
       {"axis_values.depth is '1|2|1'"}},
      {"run_label_missing", [r1](H5File& f) { remove_attribute(f, r1, "label.depth"); },
       {kRun1, "label.depth"}},
      {"run_axes_missing", [r1](H5File& f) { remove_attribute(f, r1, "axes"); }, {kRun1, "no attribute axes"}},
      {"run_label_not_in_axis_values", [](H5File& f) { write_attribute(f, "/", "axis_values.depth", "1"); },
       {kRun2, "depth=2", "axis_values.depth '1'"}},
      {"labels_do_not_match_the_name", [r1](H5File& f) { write_attribute(f, r1, "label.depth", "2"); },
       {kRun1, "labels norm=layer,depth=2"}},
      {"version_99", [](H5File& f) { write_attribute(f, "/", "version", int64_t(99)); },
       {"version 99", "expected version=1"}},
      {"version_missing", [](H5File& f) { remove_attribute(f, "/", "version"); }, {"no root attribute version"}},
      {"version_not_an_integer", [](H5File& f) { write_attribute(f, "/", "version", "1"); },
       {"version is not an integer", "expected version=1"}},
      {"runs_is_a_dataset",
       [](H5File& f) {
         f.remove("/runs");
         write_vector(f, "/runs", std::vector<double>{1.0});
       },
       {"/runs is not a group"}},
      {"a_run_is_a_dataset", [](H5File& f) { write_vector(f, "/runs/norm=rms", std::vector<double>{1.0}); },
       {"run norm=rms", "not a group"}},
      {"layer_grad_norm_too_wide", [](H5File& f) { write_tensor(f, g1("layer_grad_norm"), matrix(3, 2)); },
       {"layer_grad_norm is [3, 2], expected [3, 1]", "the run's depth"}},
      {"residual_norm_too_narrow", [](H5File& f) { write_tensor(f, g1("residual_norm"), matrix(3, 1)); },
       {"residual_norm is [3, 1], expected [3, 2]", "depth + 1"}},
      {"max_attn_logit_too_wide", [](H5File& f) { write_tensor(f, g1("max_attn_logit"), matrix(3, 3)); },
       {"max_attn_logit is [3, 3], expected [3, 1]"}},
      {"norm_input_rms_lacks_a_norm",
       [](H5File& f) {
         const int64_t norms = int64_t(good().runs[0].metrics.norm_names.size());
         write_tensor(f, g1("norm_input_rms"), matrix(3, norms - 1));
       },
       {"norm_input_rms is [3, ", "one per norm name"}},
      {"metrics_of_another_depth", [r1](H5File& f) { write_attribute(f, r1 + "/config", "depth", int64_t(2)); },
       {kRun1, "layer_grad_norm is [3, 1], expected [3, 2]"}},
      {"metric_rows_not_one_per_step", [](H5File& f) { write_tensor(f, g1("layer_grad_norm"), matrix(2, 1)); },
       {"layer_grad_norm is [2, 1], expected [3, 1]", "one per metric_step"}},
      {"metric_step_not_increasing",
       [](H5File& f) { write_vector(f, g1("metric_step"), std::vector<int64_t>{0, 4, 2}); },
       {"metric_step[2] is 2", "increasing"}},
      {"metric_step_beyond_the_history",
       [](H5File& f) { write_vector(f, g1("metric_step"), std::vector<int64_t>{0, 2, 6}); },
       {kRun1, "metric_step ends at step 6", "at most 4"}},
      {"eval_step_longer_than_eval_loss",
       [](H5File& f) { write_vector(f, g1("eval_step"), std::vector<int64_t>{1, 2, 4}); },
       {kRun1, "3 eval_step values and 2 eval_loss values"}},
      {"eval_step_not_increasing",
       [](H5File& f) { write_vector(f, g1("eval_step"), std::vector<int64_t>{4, 2}); },
       {kRun1, "eval_step[1] is 2", "after 4"}},
      {"eval_step_beyond_the_steps",
       [](H5File& f) { write_vector(f, g1("eval_step"), std::vector<int64_t>{2, 9}); },
       {kRun1, "eval_step[1] is 9", "at most 4"}},
      {"diverged_step_negative", [r1](H5File& f) { write_attribute(f, r1, "diverged_step", int64_t(-1)); },
       {kRun1, "diverged_step=-1", "1..4"}},
      {"diverged_step_beyond_the_history", [r1](H5File& f) { write_attribute(f, r1, "diverged_step", int64_t(5)); },
       {kRun1, "diverged_step=5", "1..4"}},
      {"diverged_without_a_step", [r1](H5File& f) { write_attribute(f, r1, "diverged", int64_t(1)); },
       {kRun1, "diverged=1 and diverged_step=0"}},
      {"grad_norm_shorter_than_loss",
       [](H5File& f) { write_vector(f, g1("grad_norm"), std::vector<double>{1, 2, 3}); },
       {kRun1, "4 loss values, 3 grad_norm and 4 lr values"}},
      {"lr_longer_than_loss", [](H5File& f) { write_vector(f, g1("lr"), std::vector<double>{1, 2, 3, 4, 5}); },
       {kRun1, "4 loss values, 4 grad_norm and 5 lr values"}},
      {"history_longer_than_the_config",
       [r1](H5File& f) { write_attribute(f, r1 + "/config", "steps", int64_t(3)); },
       {kRun1, "history of 4 steps", "steps=3"}},
      {"loss_missing", [](H5File& f) { f.remove(g1("loss")); }, {kRun1, "no dataset loss"}},
  };
}

// The CLI tests' folder ($NORMLAB_CLI_DIR), or "" when not given.
std::string cli_dir() {
  const char* dir = std::getenv("NORMLAB_CLI_DIR");
  return dir ? dir : "";
}

// What report() prints.
std::string report_text(const SweepResults& s) {
  char* buf = nullptr;
  size_t size = 0;
  std::FILE* f = open_memstream(&buf, &size);
  BOOST_REQUIRE(f);
  report(s, nullptr, f);
  std::fclose(f);
  const std::string text(buf, size);
  std::free(buf);
  return text;
}

// The whitespace-separated tokens of the first line whose first token is `first`.
std::vector<std::string> line_tokens(const std::string& text, const std::string& first) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream in(line);
    std::vector<std::string> tokens;
    for (std::string t; in >> t;) tokens.push_back(t);
    if (!tokens.empty() && tokens[0] == first) return tokens;
  }
  return {};
}

std::string format_loss(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(results_validation)

BOOST_AUTO_TEST_CASE(a_good_file_reads_back_as_written) {
  const GoodFile& g = good();
  const SweepResults s = read_results(g.path);
  BOOST_TEST(s.experiment == "quick");
  BOOST_TEST(s.axes == (std::vector<std::string>{"norm", "depth"}), tt::per_element());
  BOOST_TEST(s.axis_values.at("depth") == (std::vector<std::string>{"1", "2"}), tt::per_element());
  BOOST_TEST(s.map_columns == "depth");
  BOOST_REQUIRE(s.runs.size() == 2u);
  for (size_t i = 0; i < 2; ++i) {
    const RunResult &r = s.runs[i], &w = g.runs[i];
    BOOST_TEST_CONTEXT(w.name) {
      BOOST_TEST(r.name == w.name);
      BOOST_TEST((r.labels == w.labels));
      BOOST_TEST(r.config.model.depth == int64_t(i + 1));
      BOOST_TEST(!r.diverged);
      BOOST_TEST(r.diverged_step == 0);
      BOOST_TEST(same_bits(r.final_loss, w.final_loss));
      BOOST_TEST(same_bits(r.history.loss, w.history.loss));
      BOOST_TEST(r.history.eval_step == (std::vector<int64_t>{2, 4}), tt::per_element());
      BOOST_TEST(r.metrics.step == (std::vector<int64_t>{0, 2, 4}), tt::per_element());
      BOOST_TEST(r.metrics.layer_grad_norm.at(0).size() == i + 1);
      BOOST_TEST(r.metrics.residual_norm.at(0).size() == i + 2);
    }
  }
  // The summary: one row (norm=layer) with each run's final loss under its depth.
  const std::string text = report_text(s);
  BOOST_TEST(contains(text, "quick (" + g.path + "): 2 runs"), text);
  BOOST_TEST((line_tokens(text, "norm") == std::vector<std::string>{"norm", "depth=1", "depth=2"}), text);
  BOOST_TEST((line_tokens(text, "layer") == std::vector<std::string>{"layer", format_loss(g.runs[0].final_loss),
                                                                    format_loss(g.runs[1].final_loss)}),
             text);
  // ResultsFile accepts it (and finds its runs) without changing it.
  const std::string bytes = file_bytes(g.path);
  ResultsFile file(g.path, g.e);
  for (const PlannedRun& run : plan(g.e)) BOOST_TEST(file.has_run(run), run.name);
  BOOST_TEST((file_bytes(g.path) == bytes));
}

BOOST_AUTO_TEST_CASE(every_hand_edit_is_refused_naming_it_and_the_file_is_left_alone) {
  TempDir tmp("normlab_test_results_validation");
  for (const Case& c : hand_edits()) {
    BOOST_TEST_CONTEXT(c.name) {
      const std::string path = tmp.file(c.name + ".h5");
      write_edited(path, c.edit);
      const std::string bytes = file_bytes(path);

      const std::string m = error_of([&] { read_results(path); });
      BOOST_TEST_MESSAGE(c.name << ": " << m);
      BOOST_TEST(!m.empty(), "read_results accepted it");
      BOOST_TEST(contains(m, path), m);
      for (const std::string& part : c.expected) BOOST_TEST(contains(m, part), "'" << part << "' not in: " << m);
      BOOST_TEST(m.find('\n') == std::string::npos, m);

      std::string refused;
      try {
        const ResultsFile file(path, good().e);
      } catch (const SweepInputError& err) {
        refused = err.what();
      }
      BOOST_TEST(contains(refused, path), refused);
      for (const std::string& part : c.expected)
        BOOST_TEST(contains(refused, part), "'" << part << "' not in: " << refused);
      BOOST_TEST((file_bytes(path) == bytes), "the file changed");
      BOOST_TEST(!fs::exists(path + ".tmp"));
    }
  }
}

BOOST_AUTO_TEST_CASE(a_run_file_is_checked_by_the_same_reader) {
  const GoodFile& g = good();
  TempDir tmp("normlab_test_results_validation");
  const std::string path = tmp.file("run.h5");
  write_run_file(path, g.runs[1]);
  const RunResult r = read_run(path, kRun2);
  BOOST_TEST(same_bits(r.history.loss, g.runs[1].history.loss));

  auto refusal = [&](const std::function<void(H5File&)>& edit) {
    write_run_file(path, g.runs[1]);
    {
      H5File f(path, H5File::Mode::read_write);
      edit(f);
      f.close();
    }
    return error_of([&] { read_run(path, kRun2); });
  };
  const std::string r2 = "/runs/" + kRun2;
  std::string m = refusal([&](H5File& f) { write_tensor(f, r2 + "/max_attn_logit", matrix(3, 1)); });
  BOOST_TEST(contains(m, path), m);
  BOOST_TEST(contains(m, "max_attn_logit is [3, 1], expected [3, 2]"), m);
  m = refusal([&](H5File& f) { write_attribute(f, r2, "label.depth", "1"); });
  BOOST_TEST(contains(m, "run " + kRun2 + " has the labels norm=layer,depth=1"), m);
  m = refusal([&](H5File& f) { write_attribute(f, "/", "version", int64_t(99)); });
  BOOST_TEST(contains(m, "run file of version 99"), m);
  m = refusal([&](H5File& f) { write_attribute(f, r2, "diverged_step", int64_t(-3)); });
  BOOST_TEST(contains(m, "diverged_step=-3"), m);
  // A results file is not a run file.
  m = error_of([&] { read_run(g.path, kRun2); });
  BOOST_TEST(contains(m, "is not a normlab run file"), m);
}

BOOST_AUTO_TEST_CASE(writes_the_files_of_the_command_line_tests) {
  const std::string dir = cli_dir();
  if (dir.empty()) {
    BOOST_TEST_MESSAGE("skipped: NORMLAB_CLI_DIR is not set (ctest sets it)");
    return;
  }
  fs::create_directories(dir);
  write_edited(dir + "/version99.h5", [](H5File& f) { write_attribute(f, "/", "version", int64_t(99)); });
  write_edited(dir + "/bad_width.h5", [](H5File& f) { write_tensor(f, g1("layer_grad_norm"), matrix(3, 2)); });
  fs::copy_file(dir + "/bad_width.h5", dir + "/bad_width.orig.h5", fs::copy_options::overwrite_existing);
  BOOST_TEST(contains(error_of([&] { read_results(dir + "/bad_width.h5"); }), "layer_grad_norm"));
}

BOOST_AUTO_TEST_SUITE_END()
