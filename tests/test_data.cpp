// Training data: batches are pure functions of (config, split, index, batch_size); tokens and
// targets are in range; each synthetic task's supervised targets are recomputed here from the
// tokens (copy, reverse, recall, modadd); modadd's train and eval pairs partition all pairs;
// text has the file's bytes as vocabulary, next-byte targets and eval windows from the tail;
// bad configs throw naming the bad value.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "experiments/data.h"
#include "framework/rng.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

// A file of `head` bytes over "abcdefgh \n" followed by `tail` bytes over "XYZ", so a window
// tells which part it came from.
std::string two_part_text(int64_t head, int64_t tail, uint64_t seed) {
  const std::string lower = "abcdefgh \n", upper = "XYZ";
  Generator gen(seed);
  std::string s;
  for (int64_t i = 0; i < head; ++i) s += lower[size_t(gen.uniform_at(uint64_t(i)) * double(lower.size()))];
  for (int64_t i = 0; i < tail; ++i) s += upper[size_t(gen.uniform_at(uint64_t(head + i)) * double(upper.size()))];
  return s;
}

std::vector<int64_t> values(const Tensor& t) { return t.to_vector<int64_t>(); }

bool same(const Batch& a, const Batch& b) {
  return values(a.tokens) == values(b.tokens) && values(a.targets) == values(b.targets);
}

TaskConfig config(TaskKind task, int64_t seq_len = 32, int64_t symbols = 8, uint64_t seed = 5) {
  TaskConfig c;
  c.task = task, c.seq_len = seq_len, c.symbols = symbols, c.seed = seed;
  return c;
}

const std::vector<TaskKind> synthetic = {TaskKind::copy, TaskKind::reverse, TaskKind::recall, TaskKind::modadd};

// Row b of a batch: its tokens and targets.
struct Row {
  std::vector<int64_t> tok, tgt;
};
std::vector<Row> rows(const Batch& batch) {
  const int64_t B = batch.tokens.size(0), T = batch.tokens.size(1);
  const auto tok = values(batch.tokens), tgt = values(batch.targets);
  std::vector<Row> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    out[size_t(b)].tok.assign(tok.begin() + b * T, tok.begin() + (b + 1) * T);
    out[size_t(b)].tgt.assign(tgt.begin() + b * T, tgt.begin() + (b + 1) * T);
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(data_suite)

BOOST_AUTO_TEST_CASE(task_names_round_trip) {
  for (TaskKind k : {TaskKind::copy, TaskKind::reverse, TaskKind::recall, TaskKind::modadd, TaskKind::text})
    BOOST_CHECK(parse_task_kind(to_string(k)) == k);
  BOOST_CHECK_EQUAL(std::string(to_string(Split::eval)), "eval");
  const std::string e = error_of([] { parse_task_kind("copyy"); });
  BOOST_CHECK_MESSAGE(contains(e, "'copyy'"), e);
}

BOOST_AUTO_TEST_CASE(same_arguments_give_identical_batches_and_others_differ) {
  TempDir tmp("normlab_test_data");
  std::vector<TaskConfig> configs;
  for (TaskKind k : synthetic) configs.push_back(config(k));
  TaskConfig text = config(TaskKind::text, 16);
  text.text_path = tmp.write("a.txt", two_part_text(800, 200, 1));
  text.eval_fraction = 0.2;
  configs.push_back(text);
  for (const TaskConfig& c : configs) {
    const auto d = make_dataset(c), d_again = make_dataset(c);
    TaskConfig c2 = c;
    c2.seed = c.seed + 1;
    const auto d_seed = make_dataset(c2);
    const Batch b = d->batch(Split::train, 3, 6);
    BOOST_CHECK_EQUAL(b.tokens.dtype() == DType::i64, true);
    BOOST_CHECK(b.tokens.shape() == Shape({6, c.seq_len}));
    BOOST_CHECK(b.targets.shape() == Shape({6, c.seq_len}));
    BOOST_CHECK_MESSAGE(same(b, d->batch(Split::train, 3, 6)), to_string(c.task));
    BOOST_CHECK_MESSAGE(same(b, d_again->batch(Split::train, 3, 6)), to_string(c.task));
    BOOST_CHECK_MESSAGE(!same(b, d->batch(Split::train, 4, 6)), to_string(c.task) << " index");
    BOOST_CHECK_MESSAGE(!same(b, d->batch(Split::eval, 3, 6)), to_string(c.task) << " split");
    BOOST_CHECK_MESSAGE(!same(b, d_seed->batch(Split::train, 3, 6)), to_string(c.task) << " seed");
    // Row b of batch i is sequence i * B + b of the stream, whatever B.
    const Batch big = d->batch(Split::eval, 0, 8);
    auto r = rows(big), r0 = rows(d->batch(Split::eval, 0, 4)), r1 = rows(d->batch(Split::eval, 1, 4));
    for (int64_t i = 0; i < 4; ++i) {
      BOOST_CHECK(r[size_t(i)].tok == r0[size_t(i)].tok && r[size_t(i)].tgt == r0[size_t(i)].tgt);
      BOOST_CHECK(r[size_t(4 + i)].tok == r1[size_t(i)].tok && r[size_t(4 + i)].tgt == r1[size_t(i)].tgt);
    }
  }
}

BOOST_AUTO_TEST_CASE(tokens_and_targets_are_in_range_with_pad_only_when_needed) {
  for (TaskKind k : synthetic)
    for (int64_t T : {16, 17, 18, 19, 64, 65}) {
      const auto d = make_dataset(config(k, T, 5));
      const int64_t V = d->vocab_size();
      // PAD is the last id when the pieces leave a gap: T odd (copy/reverse/recall) or (T + 1) % 4 (modadd).
      const bool padded = k == TaskKind::modadd ? (T + 1) % 4 != 0 : T % 2 != 0;
      const int64_t base = k == TaskKind::recall ? 2 * 5 + 1 : 5 + 1;
      BOOST_CHECK_EQUAL(V, base + (padded ? 1 : 0));
      for (Split s : {Split::train, Split::eval})
        for (const Row& r : rows(d->batch(s, 1, 8))) {
          int64_t supervised = 0;
          for (int64_t t = 0; t < T; ++t) {
            BOOST_REQUIRE(r.tok[size_t(t)] >= 0 && r.tok[size_t(t)] < V);
            const int64_t y = r.tgt[size_t(t)];
            BOOST_REQUIRE(y == -100 || (y >= 0 && y < V));
            if (y == -100) continue;
            ++supervised;
            if (padded) BOOST_REQUIRE(y != V - 1);  // PAD is never a target
            if (t + 1 < T) BOOST_REQUIRE_EQUAL(y, r.tok[size_t(t + 1)]);  // targets are the next token
          }
          BOOST_REQUIRE(supervised >= T / 4);  // dense supervision
        }
    }
}

BOOST_AUTO_TEST_CASE(copy_and_reverse_targets_are_the_prefix_again) {
  for (TaskKind k : {TaskKind::copy, TaskKind::reverse})
    for (int64_t T : {2, 3, 32, 33}) {
      const int64_t S = 7, n = T / 2, sep = S;
      const auto d = make_dataset(config(k, T, S));
      for (const Row& r : rows(d->batch(Split::train, 2, 16))) {
        for (int64_t t = 0; t < n; ++t) {
          BOOST_REQUIRE(r.tok[size_t(t)] < S);
          BOOST_REQUIRE_EQUAL(r.tgt[size_t(t)], -100);
        }
        BOOST_REQUIRE_EQUAL(r.tok[size_t(n)], sep);
        for (int64_t t = n; t < 2 * n; ++t) {
          const int64_t expected = k == TaskKind::copy ? r.tok[size_t(t - n)] : r.tok[size_t(2 * n - 1 - t)];
          BOOST_REQUIRE_EQUAL(r.tgt[size_t(t)], expected);
        }
        for (int64_t t = 2 * n; t < T; ++t) BOOST_REQUIRE_EQUAL(r.tgt[size_t(t)], -100);
      }
      BOOST_CHECK_CLOSE(d->chance_loss(), std::log(7.0), 1e-12);
    }
}

BOOST_AUTO_TEST_CASE(recall_values_follow_their_keys) {
  for (auto [T, S] : {std::pair<int64_t, int64_t>{64, 16}, {64, 3}, {8, 2}, {9, 5}, {17, 2}, {260, 40}}) {
    const int64_t n = std::min(S, std::max<int64_t>(2, T / 16)), m = (T - 2 * n) / 2, sep = 2 * S;
    const auto d = make_dataset(config(TaskKind::recall, T, S));
    std::set<int64_t> queried;
    for (Split s : {Split::train, Split::eval})
      for (const Row& r : rows(d->batch(s, 0, 16))) {
        std::vector<int64_t> value_of(size_t(S), -1);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t key = r.tok[size_t(2 * i)], value = r.tok[size_t(2 * i + 1)];
          BOOST_REQUIRE(key >= 0 && key < S);
          BOOST_REQUIRE(value >= S && value < 2 * S);
          BOOST_REQUIRE_EQUAL(value_of[size_t(key)], -1);  // keys are distinct
          value_of[size_t(key)] = value;
          BOOST_REQUIRE_EQUAL(r.tgt[size_t(2 * i)], -100);
          BOOST_REQUIRE_EQUAL(r.tgt[size_t(2 * i + 1)], -100);
        }
        BOOST_REQUIRE_EQUAL(r.tok[size_t(2 * n)], sep);
        BOOST_REQUIRE_EQUAL(r.tgt[size_t(2 * n)], -100);
        int64_t supervised = 0;
        for (int64_t t = 2 * n + 1; t < T; ++t) {
          if ((t - 2 * n - 1) % 2 == 0 && t - 2 * n - 1 < 2 * m) {  // a query
            const int64_t q = r.tok[size_t(t)];
            BOOST_REQUIRE(q >= 0 && q < S);
            BOOST_REQUIRE(value_of[size_t(q)] != -1);
            BOOST_REQUIRE_EQUAL(r.tgt[size_t(t)], value_of[size_t(q)]);
            queried.insert(q);
            ++supervised;
          } else {
            BOOST_REQUIRE_EQUAL(r.tgt[size_t(t)], -100);
          }
        }
        BOOST_REQUIRE_EQUAL(supervised, m);
      }
    BOOST_CHECK_EQUAL(int64_t(queried.size()), S);  // every key gets asked somewhere
    BOOST_CHECK_CLOSE(d->chance_loss(), std::log(double(S)), 1e-12);
  }
}

BOOST_AUTO_TEST_CASE(modadd_targets_are_sums_and_splits_partition_the_pairs) {
  for (auto [T, p, frac] : {std::tuple<int64_t, int64_t, double>{64, 7, 0.3}, {33, 11, 0.5}, {18, 5, 0.1}}) {
    TaskConfig c = config(TaskKind::modadd, T, p);
    c.eval_fraction = frac;
    const auto d = make_dataset(c);
    const int64_t eq = p, k = (T + 1) / 4;
    std::set<int64_t> seen[2];
    for (Split s : {Split::train, Split::eval})
      for (int64_t index = 0; index < 20; ++index)
        for (const Row& r : rows(d->batch(s, index, 16))) {
          int64_t supervised = 0;
          for (int64_t t = 0; t < T; ++t) {
            const int64_t y = r.tgt[size_t(t)];
            if (t % 4 == 2 && t / 4 < k) {
              BOOST_REQUIRE_EQUAL(r.tok[size_t(t)], eq);
              const int64_t a = r.tok[size_t(t - 2)], b = r.tok[size_t(t - 1)];
              BOOST_REQUIRE(a >= 0 && a < p && b >= 0 && b < p);
              BOOST_REQUIRE_EQUAL(y, (a + b) % p);
              seen[s == Split::eval].insert(a * p + b);
              ++supervised;
            } else {
              BOOST_REQUIRE_EQUAL(y, -100);
            }
          }
          BOOST_REQUIRE_EQUAL(supervised, k);
        }
    const int64_t n_eval = std::llround(frac * double(p * p));
    BOOST_CHECK_EQUAL(int64_t(seen[1].size()), n_eval);
    BOOST_CHECK_EQUAL(int64_t(seen[0].size()), p * p - n_eval);
    for (int64_t id : seen[1]) BOOST_CHECK(!seen[0].count(id));  // disjoint, so together all p * p
    BOOST_CHECK_CLOSE(d->chance_loss(), std::log(double(p)), 1e-12);
  }
  // The split depends on the seed.
  TaskConfig c = config(TaskKind::modadd, 64, 7);
  const auto d1 = make_dataset(c);
  c.seed += 1;
  const auto d2 = make_dataset(c);
  BOOST_CHECK(d1->describe() == d2->describe());
  BOOST_CHECK(!same(d1->batch(Split::eval, 0, 4), d2->batch(Split::eval, 0, 4)));
}

BOOST_AUTO_TEST_CASE(text_vocab_next_byte_targets_and_eval_from_the_tail) {
  TempDir tmp("normlab_test_data");
  const int64_t head = 800, tail = 200, T = 24;
  const std::string content = two_part_text(head, tail, 9);
  TaskConfig c = config(TaskKind::text, T);
  c.text_path = tmp.write("t.txt", content);
  c.eval_fraction = 0.2;  // exactly the uppercase tail
  const auto d = make_dataset(c);
  const std::set<unsigned char> distinct(content.begin(), content.end());  // sorted by byte value
  const std::string alphabet(distinct.begin(), distinct.end());
  BOOST_CHECK_EQUAL(d->vocab_size(), int64_t(alphabet.size()));
  BOOST_CHECK_EQUAL(alphabet, std::string("\n XYZabcdefgh"));
  BOOST_CHECK_CLOSE(d->chance_loss(), std::log(double(alphabet.size())), 1e-12);
  BOOST_CHECK_MESSAGE(contains(d->describe(), c.text_path), d->describe());
  const std::string train_part = content.substr(0, head), eval_part = content.substr(head);
  std::set<size_t> eval_starts;
  for (Split s : {Split::train, Split::eval})
    for (int64_t index = 0; index < 8; ++index)
      for (const Row& r : rows(d->batch(s, index, 16))) {
        std::string window;
        for (int64_t t = 0; t < T; ++t) {
          BOOST_REQUIRE(r.tgt[size_t(t)] >= 0 && r.tgt[size_t(t)] < d->vocab_size());
          if (t + 1 < T) BOOST_REQUIRE_EQUAL(r.tgt[size_t(t)], r.tok[size_t(t + 1)]);
          window += alphabet[size_t(r.tok[size_t(t)])];
        }
        window += alphabet[size_t(r.tgt[size_t(T - 1)])];
        const std::string& part = s == Split::train ? train_part : eval_part;
        const size_t at = part.find(window);
        BOOST_REQUIRE_MESSAGE(at != std::string::npos, to_string(s) << " window '" << window << "' not in its split");
        if (s == Split::eval) eval_starts.insert(at);
      }
  BOOST_CHECK_GT(eval_starts.size(), 50u);  // spread over the tail, not a few fixed windows
}

BOOST_AUTO_TEST_CASE(describe_names_the_layout) {
  const auto copy = make_dataset(config(TaskKind::copy, 64, 16));
  BOOST_CHECK_MESSAGE(contains(copy->describe(), "copy: 32 random symbols from 16") &&
                          contains(copy->describe(), "vocab 17"),
                      copy->describe());
  const auto recall = make_dataset(config(TaskKind::recall, 65, 16));
  BOOST_CHECK_MESSAGE(contains(recall->describe(), "4 key/value pairs") && contains(recall->describe(), "PAD (33)") &&
                          contains(recall->describe(), "vocab 34"),
                      recall->describe());
  const auto modadd = make_dataset(config(TaskKind::modadd, 64, 16));
  BOOST_CHECK_MESSAGE(contains(modadd->describe(), "mod 16") && contains(modadd->describe(), "230 train / 26 eval"),
                      modadd->describe());
}

BOOST_AUTO_TEST_CASE(bad_configs_throw_naming_the_value) {
  TempDir tmp("normlab_test_data");
  auto error = [](TaskConfig c) { return error_of([&] { make_dataset(c); }); };
  auto expect = [](const std::string& e, std::initializer_list<const char*> parts) {
    for (const char* part : parts) BOOST_CHECK_MESSAGE(contains(e, part), "'" << e << "' lacks '" << part << "'");
  };
  expect(error(config(TaskKind::copy, 1)), {"seq_len >= 2", "seq_len = 1"});
  expect(error(config(TaskKind::recall, 7)), {"seq_len >= 8", "seq_len = 7"});
  expect(error(config(TaskKind::modadd, 2)), {"seq_len >= 3", "seq_len = 2"});
  expect(error(config(TaskKind::reverse, 16, 1)), {"symbols >= 2", "symbols = 1"});
  expect(error(config(TaskKind::recall, 16, 1)), {"distinct keys", "symbols = 1"});
  expect(error(config(TaskKind::modadd, 16, 5000)), {"symbols <= 4096", "5000"});
  for (double f : {0.0, 1.0, 1.5, -0.25, std::nan("")}) {
    TaskConfig c = config(TaskKind::copy);
    c.eval_fraction = f;
    expect(error(c), {"eval_fraction"});
  }
  TaskConfig c = config(TaskKind::copy);
  c.eval_fraction = 1.5;
  expect(error(c), {"1.5"});
  c = config(TaskKind::modadd, 16, 5);
  c.eval_fraction = 0.01;  // rounds to 0 of 25 pairs
  expect(error(c), {"0.01", "0 eval"});
  c.eval_fraction = 0.99;  // rounds to 25 of 25 pairs
  expect(error(c), {"0.99", "0 train"});

  c = config(TaskKind::text, 16);
  expect(error(c), {"text_path"});
  c.text_path = (tmp.dir / "missing.txt").string();
  expect(error(c), {"missing.txt", "No such file or directory"});
  c.text_path = tmp.dir.string();
  expect(error(c), {tmp.dir.string().c_str(), "directory"});
  c.text_path = tmp.write("small.txt", "abcdefghijklmnopqrstuvwxyz");
  expect(error(c), {"small.txt", "26 bytes", "seq_len 16"});
  c.text_path = tmp.write("same.txt", std::string(500, 'a'));
  expect(error(c), {"same.txt", "1 distinct"});
  c.text_path = tmp.write("ok.txt", two_part_text(400, 100, 3));
  const auto d = make_dataset(c);
  expect(error_of([&] { d->batch(Split::train, 0, 0); }), {"batch_size", "got 0"});
  expect(error_of([&] { d->batch(Split::train, -2, 4); }), {"index", "-2"});
}

BOOST_AUTO_TEST_SUITE_END()
