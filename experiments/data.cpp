#include "experiments/data.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "framework/enum_names.h"
#include "framework/error.h"
#include "framework/rng.h"

namespace normlab {

constexpr EnumNames<TaskKind, 5> kTaskNames{{{TaskKind::copy, "copy"},
                                             {TaskKind::reverse, "reverse"},
                                             {TaskKind::recall, "recall"},
                                             {TaskKind::modadd, "modadd"},
                                             {TaskKind::text, "text"}}};

const char* to_string(TaskKind k) { return enum_name(kTaskNames, k); }

TaskKind parse_task_kind(const std::string& name) { return parse_enum(kTaskNames, name, "task"); }

const char* to_string(Split s) { return s == Split::train ? "train" : "eval"; }

namespace {

constexpr int64_t kIgnore = -100;
constexpr int64_t kMaxSeqLen = int64_t(1) << 20;
constexpr int64_t kMaxSymbols = int64_t(1) << 20;
constexpr int64_t kMaxModulus = 4096;  // p * p pairs are tabulated

// The random streams of one seed: train, eval, and the modadd pair permutation.
enum class Stream : uint64_t { train = 0, eval = 1, modadd_pairs = 2 };

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// splitmix64 is a bijection, so one seed's streams always get different keys.
uint64_t stream_key(uint64_t seed, Stream s) { return splitmix64(splitmix64(seed) + uint64_t(s)); }


// Uniform integer in [0, n) from a uniform double in [0, 1).
int64_t below(double u, int64_t n) { return std::min(int64_t(u * double(n)), n - 1); }

// Draws of one sequence: draw j of sequence r is the uniform at counter r * stride + j.
class Draws {
 public:
  Draws(const Generator& gen, uint64_t row, uint64_t stride) : gen_(gen), first_(row * stride), stride_(stride) {}
  int64_t below(int64_t n) {
    NL_CHECK(used_ < stride_, "internal: sequence drew more than its ", stride_, " draws");
    return normlab::below(gen_.uniform_at(first_ + used_++), n);
  }

 private:
  const Generator& gen_;
  uint64_t first_, stride_, used_ = 0;
};

// A task whose batch rows are independent sequences of T + 1 tokens. Subclasses fill one
// sequence and say which of its tokens are supervised; this assembles tokens and targets.
class SequenceDataset : public Dataset {
 public:
  SequenceDataset(const TaskConfig& c, int64_t draws_per_row)
      : config_(c), stride_(uint64_t(std::max<int64_t>(draws_per_row, 1))),
        train_gen_(stream_key(c.seed, Stream::train)), eval_gen_(stream_key(c.seed, Stream::eval)) {}

  Batch batch(Split split, int64_t index, int64_t batch_size) const override {
    NL_CHECK(batch_size >= 1, "batch_size must be >= 1, got ", batch_size);
    NL_CHECK(index >= 0, "batch index must be >= 0, got ", index);
    const uint64_t max_rows = std::numeric_limits<uint64_t>::max() / stride_;
    NL_CHECK(uint64_t(index) < max_rows / uint64_t(batch_size), "batch index ", index, " with batch_size ",
             batch_size, " is past the end of the ", to_string(split), " stream (", max_rows, " sequences)");
    const int64_t T = config_.seq_len;
    Batch out{empty({batch_size, T}, DType::i64), empty({batch_size, T}, DType::i64)};
    int64_t* tokens = out.tokens.data<int64_t>();
    int64_t* targets = out.targets.data<int64_t>();
    const Generator& gen = split == Split::train ? train_gen_ : eval_gen_;
    std::vector<int64_t> seq(size_t(T + 1));
    std::vector<char> supervised(size_t(T + 1));
    for (int64_t b = 0; b < batch_size; ++b) {
      const uint64_t row = uint64_t(index) * uint64_t(batch_size) + uint64_t(b);
      std::fill(supervised.begin(), supervised.end(), 0);
      Draws draws(gen, row, stride_);
      fill(split, draws, seq.data(), supervised.data());
      for (int64_t t = 0; t < T; ++t) {
        tokens[b * T + t] = seq[size_t(t)];
        targets[b * T + t] = supervised[size_t(t + 1)] ? seq[size_t(t + 1)] : kIgnore;
      }
    }
    return out;
  }

 protected:
  // Writes seq[0, T + 1) and marks the supervised tokens, using at most draws_per_row draws.
  virtual void fill(Split split, Draws& draws, int64_t* seq, char* supervised) const = 0;

  TaskConfig config_;

 private:
  uint64_t stride_;
  Generator train_gen_, eval_gen_;
};

std::string pad_note(bool padded, int64_t pad) {
  return padded ? ", PAD (" + std::to_string(pad) + ")" : std::string();
}

// copy / reverse: s SEP s [PAD] or s SEP reverse(s) [PAD], n = T / 2.
class CopyDataset final : public SequenceDataset {
 public:
  explicit CopyDataset(const TaskConfig& c)
      : SequenceDataset(c, c.seq_len / 2), S_(c.symbols), n_(c.seq_len / 2), sep_(S_),
        padded_(2 * n_ + 1 < c.seq_len + 1), pad_(S_ + 1) {}

  int64_t vocab_size() const override { return S_ + 1 + (padded_ ? 1 : 0); }
  double chance_loss() const override { return std::log(double(S_)); }
  std::string describe() const override {
    std::ostringstream os;
    os << to_string(config_.task) << ": " << n_ << " random symbols from " << S_ << ", SEP (" << sep_ << "), "
       << (config_.task == TaskKind::copy ? "the same again" : "them reversed") << pad_note(padded_, pad_)
       << "; vocab " << vocab_size();
    return os.str();
  }

 protected:
  void fill(Split, Draws& draws, int64_t* seq, char* supervised) const override {
    const bool reverse = config_.task == TaskKind::reverse;
    for (int64_t i = 0; i < n_; ++i) seq[i] = draws.below(S_);
    seq[n_] = sep_;
    for (int64_t i = 0; i < n_; ++i) {
      seq[n_ + 1 + i] = reverse ? seq[n_ - 1 - i] : seq[i];
      supervised[n_ + 1 + i] = 1;
    }
    for (int64_t i = 2 * n_ + 1; i < config_.seq_len + 1; ++i) seq[i] = pad_;
  }

 private:
  int64_t S_, n_, sep_;
  bool padded_;
  int64_t pad_;
};

// recall: k1 v1 .. kn vn SEP q1 a1 .. qm am [PAD]; keys 0..S-1 distinct, values S..2S-1.
class RecallDataset final : public SequenceDataset {
 public:
  // T / 16 pairs (at least 2, at most S): at T = 64, 4 pairs and 28 queries.
  static int64_t pairs(const TaskConfig& c) { return std::min(c.symbols, std::max<int64_t>(2, c.seq_len / 16)); }
  static int64_t queries(const TaskConfig& c) { return (c.seq_len - 2 * pairs(c)) / 2; }

  explicit RecallDataset(const TaskConfig& c)
      : SequenceDataset(c, 3 * pairs(c) + queries(c)), S_(c.symbols), n_(pairs(c)), m_(queries(c)),
        sep_(2 * S_), padded_(2 * n_ + 1 + 2 * m_ < c.seq_len + 1), pad_(2 * S_ + 1) {}

  int64_t vocab_size() const override { return 2 * S_ + 1 + (padded_ ? 1 : 0); }
  double chance_loss() const override { return std::log(double(S_)); }
  std::string describe() const override {
    std::ostringstream os;
    os << "recall: " << n_ << " key/value pairs (distinct keys 0.." << S_ - 1 << ", values " << S_ << ".."
       << 2 * S_ - 1 << "), SEP (" << sep_ << "), " << m_ << " queries each followed by its value"
       << pad_note(padded_, pad_) << "; vocab " << vocab_size();
    return os.str();
  }

 protected:
  void fill(Split, Draws& draws, int64_t* seq, char* supervised) const override {
    // n distinct keys: Floyd's sampling of a subset, then a Fisher-Yates shuffle of it.
    std::vector<int64_t> keys;
    keys.reserve(size_t(n_));
    for (int64_t j = S_ - n_; j < S_; ++j) {
      const int64_t t = draws.below(j + 1);
      keys.push_back(std::find(keys.begin(), keys.end(), t) == keys.end() ? t : j);
    }
    for (int64_t i = n_ - 1; i > 0; --i) std::swap(keys[size_t(i)], keys[size_t(draws.below(i + 1))]);
    std::vector<int64_t> values(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) {
      values[size_t(i)] = S_ + draws.below(S_);
      seq[2 * i] = keys[size_t(i)];
      seq[2 * i + 1] = values[size_t(i)];
    }
    seq[2 * n_] = sep_;
    for (int64_t i = 0; i < m_; ++i) {
      const size_t which = size_t(draws.below(n_));
      const int64_t at = 2 * n_ + 1 + 2 * i;
      seq[at] = keys[which];
      seq[at + 1] = values[which];
      supervised[at + 1] = 1;
    }
    for (int64_t i = 2 * n_ + 1 + 2 * m_; i < config_.seq_len + 1; ++i) seq[i] = pad_;
  }

 private:
  int64_t S_, n_, m_, sep_;
  bool padded_;
  int64_t pad_;
};

// modadd: a b = c, packed (T + 1) / 4 times, then PAD; eval pairs are held out.
class ModAddDataset final : public SequenceDataset {
 public:
  static int64_t examples(const TaskConfig& c) { return (c.seq_len + 1) / 4; }
  static int64_t eval_pairs(const TaskConfig& c) {
    return std::llround(c.eval_fraction * double(c.symbols) * double(c.symbols));
  }

  explicit ModAddDataset(const TaskConfig& c)
      : SequenceDataset(c, examples(c)), p_(c.symbols), k_(examples(c)), eq_(p_), padded_(4 * k_ < c.seq_len + 1),
        pad_(p_ + 1) {
    // A seeded Fisher-Yates shuffle of the pair ids a * p + b.
    const int64_t n = p_ * p_;
    std::vector<int32_t> perm(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = int32_t(i);
    const Generator gen(stream_key(c.seed, Stream::modadd_pairs));
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(perm[size_t(i)], perm[size_t(below(gen.uniform_at(uint64_t(i)), i + 1))]);
    const auto cut = perm.begin() + eval_pairs(c);
    eval_.assign(perm.begin(), cut);
    train_.assign(cut, perm.end());
    std::sort(eval_.begin(), eval_.end());
    std::sort(train_.begin(), train_.end());
  }

  int64_t vocab_size() const override { return p_ + 1 + (padded_ ? 1 : 0); }
  double chance_loss() const override { return std::log(double(p_)); }
  std::string describe() const override {
    std::ostringstream os;
    os << "modadd: " << k_ << " packed 'a b = c' with c = (a + b) mod " << p_ << ", '=' (" << eq_ << ")"
       << pad_note(padded_, pad_) << ", " << train_.size() << " train / " << eval_.size() << " eval pairs; vocab "
       << vocab_size();
    return os.str();
  }

 protected:
  void fill(Split split, Draws& draws, int64_t* seq, char* supervised) const override {
    const std::vector<int32_t>& pairs = split == Split::train ? train_ : eval_;
    for (int64_t i = 0; i < k_; ++i) {
      const int64_t id = pairs[size_t(draws.below(int64_t(pairs.size())))];
      const int64_t a = id / p_, b = id % p_;
      seq[4 * i] = a;
      seq[4 * i + 1] = b;
      seq[4 * i + 2] = eq_;
      seq[4 * i + 3] = (a + b) % p_;
      supervised[4 * i + 3] = 1;
    }
    for (int64_t i = 4 * k_; i < config_.seq_len + 1; ++i) seq[i] = pad_;
  }

 private:
  int64_t p_, k_, eq_;
  bool padded_;
  int64_t pad_;
  std::vector<int32_t> train_, eval_;
};

std::string read_file(const std::string& path) {
  errno = 0;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  NL_CHECK(f != nullptr, "cannot open text file '", path, "': ", std::strerror(errno));
  std::string bytes;
  char buffer[1 << 16];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), f)) > 0) bytes.append(buffer, got);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  NL_CHECK(!failed, "cannot read text file '", path, "': ", std::strerror(err));
  return bytes;
}

// text: windows of T + 1 bytes (as vocabulary ids) inside the train head or the eval tail.
class TextDataset final : public SequenceDataset {
 public:
  TextDataset(const TaskConfig& c, const std::string& bytes) : SequenceDataset(c, 1), size_(int64_t(bytes.size())) {
    bool present[256] = {};
    for (unsigned char ch : bytes) present[ch] = true;
    int64_t id[256];
    for (int v = 0; v < 256; ++v) id[v] = present[v] ? vocab_++ : -1;
    ids_.resize(bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) ids_[i] = uint8_t(id[static_cast<unsigned char>(bytes[i])]);
    eval_begin_ = size_ - std::llround(c.eval_fraction * double(size_));
  }

  int64_t vocab_size() const override { return vocab_; }
  double chance_loss() const override { return std::log(double(vocab_)); }
  std::string describe() const override {
    std::ostringstream os;
    os << "text: next byte of '" << config_.text_path << "' (" << size_ << " bytes: train " << eval_begin_
       << ", eval " << size_ - eval_begin_ << "); vocab " << vocab_ << " distinct bytes";
    return os.str();
  }

 protected:
  // Every target is supervised: the next byte.
  void fill(Split split, Draws& draws, int64_t* seq, char* supervised) const override {
    const int64_t lo = split == Split::train ? 0 : eval_begin_;
    const int64_t hi = split == Split::train ? eval_begin_ : size_;
    const int64_t start = lo + draws.below(hi - lo - config_.seq_len);  // seq_len + 1 bytes fit
    for (int64_t i = 0; i < config_.seq_len + 1; ++i) {
      seq[i] = ids_[size_t(start + i)];
      supervised[i] = 1;
    }
  }

 private:
  int64_t size_ = 0, vocab_ = 0, eval_begin_ = 0;
  std::vector<uint8_t> ids_;
};

void check_seq_len(const TaskConfig& c, int64_t minimum, const char* why) {
  NL_CHECK(c.seq_len >= minimum, to_string(c.task), " needs seq_len >= ", minimum, " (", why, "), got seq_len = ",
           c.seq_len);
  NL_CHECK(c.seq_len <= kMaxSeqLen, "seq_len must be <= ", kMaxSeqLen, ", got ", c.seq_len);
}

void check_symbols(const TaskConfig& c, int64_t maximum, const char* why) {
  NL_CHECK(c.symbols >= 2, to_string(c.task), " needs symbols >= 2 (", why, "), got symbols = ", c.symbols);
  NL_CHECK(c.symbols <= maximum, to_string(c.task), " needs symbols <= ", maximum, ", got symbols = ", c.symbols);
}

}  // namespace

std::unique_ptr<Dataset> make_dataset(const TaskConfig& c) {
  NL_CHECK(c.eval_fraction > 0.0 && c.eval_fraction < 1.0, "eval_fraction must be in (0, 1), got ",
           c.eval_fraction);
  switch (c.task) {
    case TaskKind::copy:
    case TaskKind::reverse:
      check_seq_len(c, 2, "one symbol, SEP, its copy");
      check_symbols(c, kMaxSymbols, "a string over one symbol is not random");
      return std::make_unique<CopyDataset>(c);
    case TaskKind::recall:
      check_seq_len(c, 8, "2 key/value pairs, SEP and 2 queries");
      check_symbols(c, kMaxSymbols, "the key/value pairs need at least 2 distinct keys");
      return std::make_unique<RecallDataset>(c);
    case TaskKind::modadd: {
      check_seq_len(c, 3, "one 'a b = c' example");
      check_symbols(c, kMaxModulus, "the modulus p; its p * p pairs are tabulated");
      const int64_t n_eval = ModAddDataset::eval_pairs(c), n = c.symbols * c.symbols;
      NL_CHECK(n_eval >= 1 && n_eval <= n - 1, "modadd eval_fraction ", c.eval_fraction, " of the ", n,
               " pairs (p = ", c.symbols, ") gives ", n_eval, " eval and ", n - n_eval,
               " train pairs; each split needs at least one");
      return std::make_unique<ModAddDataset>(c);
    }
    case TaskKind::text: {
      check_seq_len(c, 1, "one byte and the next");
      NL_CHECK(!c.text_path.empty(), "text task needs text_path, got an empty path");
      const std::string bytes = read_file(c.text_path);
      const int64_t n = int64_t(bytes.size());
      const int64_t n_eval = std::llround(c.eval_fraction * double(n));
      NL_CHECK(n - n_eval >= c.seq_len + 1 && n_eval >= c.seq_len + 1, "text file '", c.text_path, "' has ", n,
               " bytes: too small for seq_len ", c.seq_len, " with eval_fraction ", c.eval_fraction, " (train ",
               n - n_eval, " and eval ", n_eval, " bytes; each split needs at least seq_len + 1 = ", c.seq_len + 1,
               ")");
      bool present[256] = {};
      int64_t distinct = 0;
      for (unsigned char ch : bytes) {
        if (!present[ch]) ++distinct;
        present[ch] = true;
      }
      NL_CHECK(distinct >= 2, "text file '", c.text_path, "' has ", distinct,
               " distinct byte value(s); needs at least 2");
      return std::make_unique<TextDataset>(c, bytes);
    }
  }
  NL_FAIL("unknown task kind ", int(c.task));
}

}  // namespace normlab
