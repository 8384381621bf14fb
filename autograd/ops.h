// Differentiable ops on Variables. Each records a node (when grad mode is on and an input
// requires grad) whose backward is written next to its forward.
#pragma once

#include <functional>
#include <vector>

#include "autograd/variable.h"

namespace normlab {

// Elementwise, with numpy broadcasting for the binary ops.
Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable neg(const Variable& x);
Variable add_scalar(const Variable& x, double s);
Variable mul_scalar(const Variable& x, double s);
Variable pow(const Variable& x, double p);  // x^p (x > 0 unless p is an integer)
Variable exp(const Variable& x);
Variable log(const Variable& x);
Variable sqrt(const Variable& x);
Variable rsqrt(const Variable& x);
Variable tanh(const Variable& x);
Variable relu(const Variable& x);
Variable gelu(const Variable& x);  // tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
Variable silu(const Variable& x);  // x * sigmoid(x)
Variable swiglu(const Variable& gate, const Variable& up);  // silu(gate) * up
// x converted to dtype (each value rounded once, to nearest even, when narrowing); the gradient
// goes back converted to x's dtype. x itself when it has that dtype already.
Variable to_dtype(const Variable& x, DType dtype);

inline Variable operator+(const Variable& a, const Variable& b) { return add(a, b); }
inline Variable operator-(const Variable& a, const Variable& b) { return sub(a, b); }
inline Variable operator*(const Variable& a, const Variable& b) { return mul(a, b); }
inline Variable operator/(const Variable& a, const Variable& b) { return div(a, b); }
inline Variable operator-(const Variable& x) { return neg(x); }
inline Variable operator+(const Variable& a, double s) { return add_scalar(a, s); }
inline Variable operator+(double s, const Variable& a) { return add_scalar(a, s); }
inline Variable operator-(const Variable& a, double s) { return add_scalar(a, -s); }
inline Variable operator-(double s, const Variable& a) { return add_scalar(neg(a), s); }
inline Variable operator*(const Variable& a, double s) { return mul_scalar(a, s); }
inline Variable operator*(double s, const Variable& a) { return mul_scalar(a, s); }
inline Variable operator/(const Variable& a, double s) { return mul_scalar(a, 1.0 / s); }

// Reductions; `dims` empty means all dims.
Variable sum(const Variable& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Variable mean(const Variable& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Variable max(const Variable& x, int64_t dim, bool keepdim = false);  // gradient to the first maximum

// Matrix product: a [..., M, K] @ b [..., K, N] with broadcast batch dims.
Variable matmul(const Variable& a, const Variable& b);

// Linear layers, each one node: x [..., in], weight [out, in], bias [out] (or undefined).
//   linear:        y = x W^T + b                      dx = dy W, dW = dy^T x, db = sum of dy's rows
//   linear_gelu:   y = gelu(x W^T + b)                the same with dy * gelu'(p), p = x W^T + b
//   linear_swiglu: y = silu(x Wg^T + bg) * (x Wu^T + bu)   (both biases or neither)
// Their values are those of the composed ops (matmul, add, gelu, swiglu).
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable());
Variable linear_gelu(const Variable& x, const Variable& weight, const Variable& bias = Variable());
Variable linear_swiglu(const Variable& x, const Variable& gate_weight, const Variable& gate_bias,
                       const Variable& up_weight, const Variable& up_bias);

// Views and layout.
Variable reshape(const Variable& x, Shape shape);
Variable view(const Variable& x, Shape shape);
Variable transpose(const Variable& x, int64_t d0, int64_t d1);
Variable permute(const Variable& x, std::vector<int64_t> dims);
Variable slice(const Variable& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Variable narrow(const Variable& x, int64_t dim, int64_t start, int64_t length);
Variable contiguous(const Variable& x);
Variable concat(const std::vector<Variable>& xs, int64_t dim);
std::vector<Variable> split(const Variable& x, const std::vector<int64_t>& sizes, int64_t dim);
std::vector<Variable> split(const Variable& x, int64_t size, int64_t dim);  // equal chunks (last may be shorter)

// Softmax family over the last dim.
Variable softmax(const Variable& x);
Variable log_softmax(const Variable& x);
// Sets x[..., i, j] = fill for j > i + (L_k - L_q) over the last two dims (L_q, L_k);
// the gradient there is zero.
Variable causal_mask(const Variable& x, double fill = -1.0 / 0.0);

// Causal self-attention as one node: q, k, v [B, H, T, head_dim] (any strides, such as the
// head views of one qkv projection) ->
//   S = scale q k^T,  S_ij = -inf for j > i,  P = softmax over j,  O = P v      [B, H, T, head_dim]
// O is stored [B, T, H, head_dim] (transpose(O, 1, 2) is contiguous, so viewing it as
// [B, T, H head_dim] for an output projection copies nothing); so are the gradients of q, k, v.
// It saves each row's logsumexp, not P: backward recomputes P from q, k (autograd/ops_attention.cpp).
// `logits_out`, when given, receives S [B, H, T, T] with -inf above the diagonal (no gradient).
Variable causal_attention(const Variable& q, const Variable& k, const Variable& v, double scale,
                          Tensor* logits_out = nullptr);

// Rows of weight [V, D] picked by integer `indices` (any shape, i64) -> [..., D].
// Backward scatter-adds into the rows, deterministically.
Variable embedding(const Variable& weight, const Tensor& indices);

// Mean token cross-entropy of logits [..., V] against i64 targets [...], skipping targets
// equal to ignore_index; z_loss adds z_loss * logsumexp^2 per token (PaLM, Wortsman et al.).
Variable cross_entropy(const Variable& logits, const Tensor& targets, int64_t ignore_index = -100,
                       double z_loss = 0.0);

// Inverted dropout: zeroes elements with probability p and scales the rest by 1/(1-p).
// Identity when p == 0 or !training. The mask comes from `gen` (seeded, thread-count independent).
Variable dropout(const Variable& x, double p, bool training, Generator& gen);

// Activation recomputation (gradient checkpointing) of y = f(x): the forward runs f without a
// graph and keeps only x; the backward runs f again from x with grad on and backpropagates dy
// through that graph (a backward of its own, run by the engine: the parameters' gradients add
// into their grad() just as the graph of f(x) would add them, and dx goes back to x). Values
// and gradients are those of f(x) itself when f computes the same values again from the same
// x, parameters and draws. Without grad mode, or when nothing requires grad, it is f(x).
using CheckpointFn = std::function<Variable(const Variable&)>;
struct CheckpointState {
  std::vector<Variable> params;  // every leaf f reads that may require grad (the output requires
                                 // grad when x or one of them does)
  Generator* gen = nullptr;      // the generator f draws from (dropout): the recomputation draws
                                 // what the forward drew, and the generator is left as it was
  std::vector<Tensor> buffers;   // tensors f updates in place (BatchNorm's running statistics):
                                 // the recomputation leaves them as it found them
};
Variable checkpoint(const CheckpointFn& f, const Variable& x, CheckpointState state = {});

}  // namespace normlab
