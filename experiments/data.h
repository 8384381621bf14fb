// Training data: deterministic synthetic tasks generated from a seed, and character-level
// language modelling from a text file. A batch is a pure function of (task, seed, split,
// batch index): no generator state to save, so a resumed run sees exactly the batches an
// uninterrupted run would, for any thread count.
//
// Every batch is tokens [B, T] and targets [B, T] (i64). targets[b, t] is the token the
// model must predict after reading tokens[b, 0..t], or -100 (ignored by the loss) where
// nothing is to be predicted (e.g. the random prefix of a copy task).
//
// Each task writes a sequence seq of T + 1 tokens; tokens = seq[0, T) and targets[t] =
// seq[t + 1] where that token is supervised, else -100. Row b of batch i is sequence number
// r = i * B + b of its split's stream, so it does not depend on B otherwise: batch(s, 0, 2B)
// is batch(s, 0, B) followed by batch(s, 1, B). Draw j of sequence r is the Philox uniform
// at counter r * (draws per sequence) + j under a key hashed from (seed, split), so no two
// (split, index, row) share a draw and the train and eval streams differ.
//
// Token layouts (S = symbols, T = seq_len). PAD fills the end of seq when the task's
// pieces do not fill T + 1 tokens exactly (only when T is odd for copy, reverse and recall,
// when (T + 1) % 4 != 0 for modadd); PAD is then the last id of the vocabulary and is
// never supervised. Without padding the vocabulary has no PAD.
//   copy     n = T / 2 symbols s (ids 0..S-1), SEP (id S), s again:  s SEP s [PAD].
//            Supervised: the second s (n targets). Vocab S + 1, or S + 2 with PAD id S + 1.
//   reverse  the same with the second half reversed: s SEP reverse(s) [PAD].
//   recall   n = min(S, max(2, T / 16)) pairs k v with distinct keys (ids 0..S-1) and random
//            values (ids S..2S-1), SEP (id 2S), then m = (T - 2n) / 2 queries q a: q is one of the
//            n keys (uniform, with repeats) and a its value:  k1 v1 .. kn vn SEP q1 a1 ..
//            qm am [PAD]. Supervised: every a (m targets). Vocab 2S + 1, or 2S + 2 with
//            PAD id 2S + 1.
//   modadd   k = (T + 1) / 4 examples "a b = c" back to back, a and b ids 0..p-1 (p = S),
//            '=' id p, c = (a + b) mod p:  a b = c a b = c ... [PAD PAD PAD]. Supervised:
//            each c (k targets). The p * p pairs (a, b) are shuffled by a permutation drawn
//            from the seed; the first round(eval_fraction * p * p) are the eval split, the
//            rest the train split, and each example is a uniform draw from its split's
//            pairs. Vocab p + 1, or p + 2 with PAD id p + 1.
//   text     the vocabulary is the sorted distinct bytes of the file, byte -> its rank; the
//            last round(eval_fraction * size) bytes are the eval split, the others the train
//            split; a sequence is the T + 1 bytes at a uniform position inside its split.
//            Every target is supervised (the next byte).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "framework/tensor.h"

namespace normlab {

enum class TaskKind {
  copy,     // s SEP s              (predict the second copy of s)
  reverse,  // s SEP reverse(s)     (predict the reversed copy)
  recall,   // k1 v1 ... kn vn SEP then queries ki -> vi (multi-query associative recall)
  modadd,   // packed "a b = c" with c = (a + b) mod p (predict c); the (a, b) pairs are split
            // into disjoint train and eval sets
  text,     // next character of a text file (byte-level; the vocabulary is the file's bytes)
};
const char* to_string(TaskKind k);  // "copy", "reverse", "recall", "modadd", "text"
TaskKind parse_task_kind(const std::string& name);  // throws naming the bad name

enum class Split { train, eval };
const char* to_string(Split s);  // "train", "eval"

struct TaskConfig {
  TaskKind task = TaskKind::copy;
  int64_t seq_len = 64;     // T, tokens per sequence
  int64_t symbols = 16;     // alphabet of copy/reverse, and of recall's keys and values;
                            // the modulus p of modadd; unused by text
  std::string text_path = {};  // text only
  double eval_fraction = 0.1;  // text: last fraction of the file; modadd: fraction of pairs
  uint64_t seed = 0;
};

struct Batch {
  Tensor tokens;   // [B, T] i64
  Tensor targets;  // [B, T] i64, -100 where ignored
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t vocab_size() const = 0;  // tokens are in [0, vocab_size)
  // Batch number `index` (>= 0) of the split; the same arguments give the same batch.
  // Throws naming the value for batch_size < 1, index < 0, or an index past the stream.
  virtual Batch batch(Split split, int64_t index, int64_t batch_size) const = 0;
  // Loss of predicting uniformly over the tokens a target can take, ln(choices); the
  // reference "chance" line for a task: ln S for copy, reverse and recall (a value), ln p
  // for modadd, ln V for text.
  virtual double chance_loss() const = 0;
  // One line describing the task and its format.
  virtual std::string describe() const = 0;
};

// Validates the config and throws normlab::Error naming the bad value: seq_len long enough
// for the task (copy/reverse 2, recall 8, modadd 3, text 1) and at most 2^20; symbols in
// [2, 2^20], for modadd p <= 4096 and an eval_fraction leaving at least one pair in each
// split; a readable text file with at least 2 distinct bytes and at least seq_len + 1 bytes
// in each split; eval_fraction in (0, 1). A text file is read once, here.
std::unique_ptr<Dataset> make_dataset(const TaskConfig& config);

}  // namespace normlab
