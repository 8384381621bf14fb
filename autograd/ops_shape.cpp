// Reductions, views and layout ops, and their gradients.
#include <numeric>

#include "autograd/ops.h"
#include "framework/tensor_ops.h"

namespace normlab {

namespace {

// The shape `x` has after reducing `dims` with keepdim = true.
Shape keepdim_shape(const Shape& x, const std::vector<int64_t>& dims) {
  Shape s = x;
  if (dims.empty()) std::fill(s.begin(), s.end(), 1);
  for (int64_t d : dims) s[wrap_dim(d, int64_t(x.size()), "reduce")] = 1;
  return s;
}

// Broadcasts a reduced gradient back over the reduced dims.
Tensor expand_back(const Tensor& g, const Shape& kept, const Shape& full) {
  return g.reshape(kept).expand(full).contiguous();
}

}  // namespace

Variable sum(const Variable& x, std::vector<int64_t> dims, bool keepdim) {
  const Shape full = x.shape(), kept = keepdim_shape(full, dims);
  return make_output("sum", {x}, sum(x.data(), dims, keepdim), [full, kept](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{expand_back(g[0], kept, full)};
  });
}

Variable mean(const Variable& x, std::vector<int64_t> dims, bool keepdim) {
  const Shape full = x.shape(), kept = keepdim_shape(full, dims);
  const double count = double(shape_numel(full)) / double(shape_numel(kept));
  return make_output("mean", {x}, mean(x.data(), dims, keepdim), [full, kept, count](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{mul_scalar(expand_back(g[0], kept, full), 1.0 / count)};
  });
}

// The gradient flows to the first maximum of each reduced slice.
Variable max(const Variable& x, int64_t dim, bool keepdim) {
  dim = wrap_dim(dim, x.dim(), "max");
  auto [values, indices] = max(x.data(), dim, keepdim);
  const Shape full = x.shape(), kept = keepdim_shape(full, {dim});
  return make_output("max", {x}, values, [full, dim, indices](const std::vector<Tensor>& g, const Node&) {
    if (full.empty()) return std::vector<Tensor>{g[0]};  // max of a 0-d tensor is itself
    // Scatter g into zeros laid out with `dim` moved last (other dims in order, which is
    // also the order of g's elements), then move `dim` back.
    const int64_t nd = int64_t(full.size()), n = full[dim];
    Shape moved;
    std::vector<int64_t> back(nd);
    for (int64_t d = 0; d < nd; ++d)
      if (d != dim) back[d] = int64_t(moved.size()), moved.push_back(full[d]);
    back[dim] = nd - 1;
    moved.push_back(n);
    Tensor dx = zeros(moved, g[0].dtype());
    const Tensor gc = g[0].contiguous(), ic = indices.contiguous();
    NL_DISPATCH_FLOATING(gc.dtype(), "max_backward", [&] {
      scalar_t* d = dx.data<scalar_t>();
      const scalar_t* gp = gc.data<scalar_t>();
      const int64_t* ip = ic.data<int64_t>();
      for (int64_t r = 0; r < gc.numel(); ++r) d[r * n + ip[r]] = gp[r];
    });
    return std::vector<Tensor>{dx.permute(back).contiguous()};
  });
}

Variable reshape(const Variable& x, Shape shape) {
  const Shape in = x.shape();
  return make_output("reshape", {x}, x.data().reshape(std::move(shape)), [in](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0].reshape(in)};
  });
}

Variable view(const Variable& x, Shape shape) {
  const Shape in = x.shape();
  return make_output("view", {x}, x.data().view(std::move(shape)), [in](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0].reshape(in)};
  });
}

Variable transpose(const Variable& x, int64_t d0, int64_t d1) {
  return make_output("transpose", {x}, x.data().transpose(d0, d1), [d0, d1](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0].transpose(d0, d1)};
  });
}

Variable permute(const Variable& x, std::vector<int64_t> dims) {
  Tensor y = x.data().permute(dims);
  std::vector<int64_t> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) inverse[wrap_dim(dims[i], x.dim(), "permute")] = int64_t(i);
  return make_output("permute", {x}, y, [inverse](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0].permute(inverse)};
  });
}

Variable slice(const Variable& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const Shape in = x.shape();
  const DType dt = x.dtype();
  return make_output("slice", {x}, x.data().slice(dim, start, end, step), [=](const std::vector<Tensor>& g, const Node&) {
    Tensor dx = zeros(in, dt);
    dx.slice(dim, start, end, step).copy_from(g[0]);
    return std::vector<Tensor>{dx};
  });
}

Variable narrow(const Variable& x, int64_t dim, int64_t start, int64_t length) {
  x.data().narrow(dim, start, length);  // validates the range
  return slice(x, dim, start, start + length);
}

Variable contiguous(const Variable& x) {
  return make_output("contiguous", {x}, x.data().contiguous(), [](const std::vector<Tensor>& g, const Node&) {
    return std::vector<Tensor>{g[0]};
  });
}

Variable concat(const std::vector<Variable>& xs, int64_t dim) {
  std::vector<Tensor> ts;
  std::vector<int64_t> sizes;
  for (const Variable& x : xs) ts.push_back(x.data());
  Tensor y = cat(ts, dim);
  dim = wrap_dim(dim, y.dim(), "concat");
  for (const Tensor& t : ts) sizes.push_back(t.size(dim));
  return make_output("concat", xs, y, [sizes, dim](const std::vector<Tensor>& g, const Node&) {
    std::vector<Tensor> dxs;
    int64_t at = 0;
    for (int64_t s : sizes) {
      dxs.push_back(g[0].narrow(dim, at, s));
      at += s;
    }
    return dxs;
  });
}

namespace {

// The parts' gradients joined along dim into x's shape: when they already are the parts of one
// contiguous buffer of that shape (causal_attention writes the gradients of q, k and v so when
// they are views of one projection), that buffer, as a view; otherwise a copy.
Tensor join_parts(const std::vector<Tensor>& g, const Shape& shape, int64_t dim) {
  const Shape st = contiguous_strides(shape);
  bool packed = !g.empty() && g[0].defined();
  int64_t at = 0;
  for (const Tensor& t : g) {
    if (!packed) break;
    packed = t.defined() && t.storage() == g[0].storage() && t.dtype() == g[0].dtype() &&
             t.dim() == int64_t(shape.size()) && t.offset() == g[0].offset() + at * st[size_t(dim)];
    for (int64_t d = 0; packed && d < t.dim(); ++d)
      packed = (d == dim || t.size(d) == shape[size_t(d)]) && (t.size(d) == 1 || t.strides()[d] == st[size_t(d)]);
    at += packed ? t.size(dim) : 0;
  }
  if (packed && at == shape[size_t(dim)]) return Tensor(g[0].storage(), shape, st, g[0].offset(), g[0].dtype());
  return cat(g, dim);
}

}  // namespace

std::vector<Variable> split(const Variable& x, const std::vector<int64_t>& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t(0));
  NL_CHECK(total == x.size(dim), "split: sizes ", to_string(Shape(sizes)), " sum to ", total, " but dim ", dim,
           " of shape ", to_string(x.shape()), " has size ", x.size(dim));
  std::vector<Tensor> parts;
  int64_t at = 0;
  for (int64_t s : sizes) {
    NL_CHECK(s >= 0, "split: negative size ", s, " in ", to_string(Shape(sizes)));
    parts.push_back(x.data().narrow(dim, at, s));
    at += s;
  }
  auto node = std::make_shared<FunctionNode>("split", [dim, shape = x.shape()](const std::vector<Tensor>& g,
                                                                              const Node&) {
    return std::vector<Tensor>{join_parts(g, shape, dim)};
  });
  return make_outputs(node, {x}, std::move(parts));
}

std::vector<Variable> split(const Variable& x, int64_t size, int64_t dim) {
  NL_CHECK(size >= 1, "split: chunk size must be >= 1, got ", size);
  const int64_t n = x.size(dim);
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < n; at += size) sizes.push_back(std::min(size, n - at));
  return split(x, sizes, dim);
}

}  // namespace normlab
