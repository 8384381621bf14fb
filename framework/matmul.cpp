// CPU matmul: a plain-loop reference (the f64 path and the ground truth) and oneDNN for f32.
//
// Determinism. oneDNN 2.6 splits K across threads for some shapes and sums the partial products
// in an order that depends on the thread count. On an AVX-512 machine, results at 1 thread
// differ from those at 2..32 threads for brgemm with a transposed A and a large K (a = [K, M].T,
// the weight-gradient shape X^T @ dY: 8x4096 @ 4096x8, 32x16384 @ 16384x32), for jit sgemm with
// a large K at >= 8 threads (32x16384 @ 16384x32) and for M = 1 at 2 threads (1x4096 @ 4096x8).
// Which shapes split is an internal heuristic of the ISA and the version, so instead of
// predicting it we never let oneDNN thread: the output is cut into work units (blocks of batch
// entries, rows and columns) whose sizes depend only on the shapes; each unit is one oneDNN
// matmul planned and run for a single thread, and parallel_for spreads the units over threads.
// Every output element is then computed by the same primitive on the same data whatever the
// thread count. The reference kernel sums over k in order 0..K-1 for every element.
#include "framework/matmul.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>
#include <omp.h>

#include "framework/parallel.h"

namespace normlab {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t m) { return ceil_div(a, m) * m; }
int64_t floor_pow2(int64_t a) { return a < 1 ? 1 : int64_t(1) << (63 - __builtin_clzll(uint64_t(a))); }

// ---------------------------------------------------------------------------------------------
// Arguments

struct MatmulDims {
  Shape batch;  // broadcast batch shape (empty for 2-D x 2-D)
  int64_t M = 0, K = 0, N = 0;
  Shape out;  // batch + {M, N}
};

std::string describe(const Tensor& t) {  // "f32 [2, 3]"
  return t.defined() ? std::string(dtype_name(t.dtype())) + " " + to_string(t.shape()) : "undefined";
}

// NL_CHECK builds its message only on failure, so describe() costs nothing on the good path.
MatmulDims check_args(const Tensor& a, const Tensor& b, const char* op) {
  NL_CHECK(a.defined() && b.defined(), op, ": undefined input (a: ", describe(a), ", b: ", describe(b), ")");
  NL_CHECK(a.device() == Device::cpu() && b.device() == Device::cpu(), op, ": expected cpu tensors, got a on ",
           a.device(), " and b on ", b.device(), " (a: ", describe(a), ", b: ", describe(b), ")");
  NL_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch (a: ", describe(a), ", b: ", describe(b),
           "); expected both f32 or both f64");
  NL_CHECK(a.dtype() == DType::f32 || a.dtype() == DType::f64, op, ": dtype ", dtype_name(a.dtype()),
           " is not supported (a: ", describe(a), ", b: ", describe(b), "); expected f32 or f64");
  NL_CHECK(a.dim() >= 2 && b.dim() >= 2, op, ": expected inputs with at least 2 dims (a: ", describe(a),
           ", b: ", describe(b), ")");
  MatmulDims d;
  d.M = a.shape()[a.dim() - 2];
  d.K = a.shape().back();
  d.N = b.shape().back();
  const int64_t kb = b.shape()[b.dim() - 2];
  NL_CHECK(d.K == kb, op, ": inner dims do not match: a ", to_string(a.shape()), " has K = ", d.K, " but b ",
           to_string(b.shape()), " has K = ", kb);
  // Batch dims broadcast numpy-style, aligned from the right.
  const size_t na = size_t(a.dim()) - 2, nb = size_t(b.dim()) - 2, n = std::max(na, nb);
  d.batch.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - na ? 1 : a.shape()[i - (n - na)];
    const int64_t db = i < n - nb ? 1 : b.shape()[i - (n - nb)];
    NL_CHECK(da == db || da == 1 || db == 1, op, ": batch dims do not broadcast: a ", to_string(a.shape()), " and b ",
             to_string(b.shape()));
    d.batch[i] = da == 1 ? db : da;
  }
  d.out = d.batch;
  d.out.push_back(d.M);
  d.out.push_back(d.N);
  return d;
}

// Strides of t's batch dims right-aligned to `batch`; 0 where t broadcasts (missing or size 1).
Shape batch_strides(const Tensor& t, const Shape& batch) {
  const size_t n = batch.size(), nt = size_t(t.dim()) - 2;
  Shape st(n, 0);
  for (size_t i = 0; i < nt; ++i)
    if (t.shape()[i] != 1) st[n - nt + i] = t.strides()[i];
  return st;
}

// Element offset of each batch entry's matrix, for batch strides `st` over the batch shape
// `batch` (an odometer over the batch dims, last dim fastest).
std::vector<int64_t> batch_offsets(const Shape& batch, const Shape& st) {
  const int64_t nbd = int64_t(batch.size()), n = shape_numel(batch);
  std::vector<int64_t> off(static_cast<size_t>(n));
  Shape idx(size_t(nbd), 0);
  int64_t o = 0;
  for (int64_t i = 0; i < n; ++i) {
    off[size_t(i)] = o;
    for (int64_t k = nbd - 1; k >= 0; --k) {
      o += st[k];
      if (++idx[k] < batch[k]) break;
      o -= st[k] * batch[k];
      idx[k] = 0;
    }
  }
  return off;
}

// A view or copy of t whose matrices are contiguous; batch dims broadcast with stride 0 stay
// broadcast (they are not materialized). Transposed matrices are copied by Tensor::contiguous()
// in cache-friendly tiles.
Tensor compact(const Tensor& t) {
  Tensor base = t;
  for (int64_t d = 0; d + 2 < t.dim(); ++d)
    if (t.strides()[d] == 0 && t.shape()[d] > 1) base = base.narrow(d, 0, 1);
  return base.contiguous().expand(t.shape());
}

// ---------------------------------------------------------------------------------------------
// Reference: c[i, j] = sum_k a[i, k] * b[k, j], summed in double in order k = 0..K-1.
// Loop order i-k-j over tiles of kRefRows rows, so each row of b is loaded once per tile and
// the innermost loop runs over contiguous j. parallel_for splits the (batch x row tile) list.

constexpr int64_t kRefRows = 4;

template <class T>
void matmul_ref_kernel(const Tensor& a, const Tensor& b_in, const Tensor& c, const MatmulDims& d) {
  const int64_t M = d.M, K = d.K, N = d.N;
  // The innermost loop walks rows of b: make them unit-stride.
  const Tensor b = (N > 1 && b_in.strides().back() != 1) ? compact(b_in) : b_in;

  // Element offsets of each batch entry's matrix in a and b.
  const int64_t nbatch = shape_numel(d.batch);
  const std::vector<int64_t> a_off = batch_offsets(d.batch, batch_strides(a, d.batch));
  const std::vector<int64_t> b_off = batch_offsets(d.batch, batch_strides(b, d.batch));

  const int64_t a_sm = a.strides()[a.dim() - 2], a_sk = a.strides().back();
  const int64_t b_sk = b.strides()[b.dim() - 2];
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* pc = c.data<T>();
  const int64_t tiles = ceil_div(M, kRefRows), n_tiles = nbatch * tiles;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, kRefRows * N * K));
  parallel_for(0, n_tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<double> acc(size_t(kRefRows * N));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / tiles, i0 = (t % tiles) * kRefRows, rows = std::min(kRefRows, M - i0);
      const T* A = pa + a_off[size_t(bi)] + i0 * a_sm;
      const T* B = pb + b_off[size_t(bi)];
      std::fill(acc.begin(), acc.begin() + rows * N, 0.0);
      for (int64_t k = 0; k < K; ++k) {
        const T* __restrict bk = B + k * b_sk;
        for (int64_t r = 0; r < rows; ++r) {
          const double ark = double(A[r * a_sm + k * a_sk]);
          double* __restrict acc_r = acc.data() + r * N;
          for (int64_t j = 0; j < N; ++j) acc_r[j] += ark * double(bk[j]);
        }
      }
      T* C = pc + (bi * M + i0) * N;
      for (int64_t e = 0; e < rows * N; ++e) C[e] = T(acc[size_t(e)]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// oneDNN: engine, per-thread stream and scratchpad

dnnl::engine& cpu_engine() {
  // Leaked on purpose, like the cache below: no oneDNN object is destroyed during static
  // destruction, when oneDNN's own globals may already be gone.
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// CPU streams are synchronous and cheap, but oneDNN does not promise that one stream may be
// used by several threads at once, and units run concurrently: one stream per thread.
dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// Primitives use a user scratchpad (the library one would be shared between concurrent units):
// a 64-byte aligned per-thread buffer that only grows.
void* thread_scratchpad(size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  const auto p = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<void*>((p + 63) & ~uintptr_t(63));
}

// Sets this thread's OpenMP thread count for a scope; oneDNN reads it when it plans a primitive
// and when it runs one.
class ScopedOmpThreads {
 public:
  explicit ScopedOmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ScopedOmpThreads() { omp_set_num_threads(saved_); }
  ScopedOmpThreads(const ScopedOmpThreads&) = delete;
  ScopedOmpThreads& operator=(const ScopedOmpThreads&) = delete;

 private:
  int saved_;
};

// ---------------------------------------------------------------------------------------------
// oneDNN: primitive cache

// One oneDNN call: c[bs, ms, ns] = a[bs or 1, ms, K] @ b[bs or 1, K, ns]. A batch dim of size 1
// broadcasts (that is how a stride-0 batch dim is described to oneDNN). Its dims and strides are
// the cache key; the oneDNN path is f32 only, so the dtype need not be part of it.
struct UnitLayout {
  using Dims = std::array<int64_t, 3>;
  Dims a_dims, a_strides, b_dims, b_strides, c_dims, c_strides;
};

// Gives size-1 dims the stride a dense layout would have, so that equal layouts share a primitive
// and oneDNN recognizes a plain row- or column-major matrix.
void canonicalize(const UnitLayout::Dims& dims, UnitLayout::Dims& st) {
  const int64_t r = dims[1], c = dims[2];
  if (r == 1 && c == 1) {
    st[1] = st[2] = 1;
  } else if (r == 1) {
    st[1] = st[2] == 1 ? c : 1;
  } else if (c == 1) {
    st[2] = st[1] == 1 ? r : 1;
  }
  if (dims[0] == 1) st[0] = std::max(r * st[1], c * st[2]);
}

// True when t's matrices are row- or column-major with some leading dimension, which oneDNN's
// fast implementations take as they are. Others (a column slice with step 2, rows broadcast
// with stride 0) are copied by compact() first.
bool is_plain(const Tensor& t) {
  const int64_t r = t.shape()[t.dim() - 2], c = t.shape().back();
  UnitLayout::Dims st{0, t.strides()[t.dim() - 2], t.strides().back()};
  canonicalize({1, r, c}, st);
  return (st[2] == 1 && st[1] >= c) || (st[1] == 1 && st[2] >= r);
}

using CacheKey = std::array<int64_t, 18>;

struct CacheKeyHash {
  size_t operator()(const CacheKey& key) const {
    size_t h = 0xcbf29ce484222325ull;
    for (int64_t v : key) h = (h ^ std::hash<int64_t>{}(v)) * 0x100000001b3ull;
    return h;
  }
};

CacheKey make_key(const UnitLayout& l) {
  CacheKey key;
  size_t i = 0;
  for (const auto* part : {&l.a_dims, &l.a_strides, &l.b_dims, &l.b_strides, &l.c_dims, &l.c_strides})
    for (int64_t v : *part) key[i++] = v;
  return key;
}

struct Primitive {
  uint64_t id = 0;      // unique for the process's lifetime (never reused, unlike an address)
  bool ok = false;      // false: oneDNN could not create one for this layout
  bool is_ref = false;  // oneDNN picked its slow reference implementation ("ref:any")
  dnnl::matmul matmul;
  dnnl::memory::desc a_md, b_md, c_md, scratch_md;
  size_t scratch_bytes = 0;
};

std::shared_ptr<const Primitive> create_primitive(const UnitLayout& l) {
  static std::atomic<uint64_t> next_id{1};
  auto p = std::make_shared<Primitive>();
  p->id = next_id++;
  const auto md = [](const UnitLayout::Dims& dims, const UnitLayout::Dims& strides) {
    return dnnl::memory::desc(dnnl::memory::dims(dims.begin(), dims.end()), dnnl::memory::data_type::f32,
                              dnnl::memory::dims(strides.begin(), strides.end()));
  };
  try {
    p->a_md = md(l.a_dims, l.a_strides);
    p->b_md = md(l.b_dims, l.b_strides);
    p->c_md = md(l.c_dims, l.c_strides);
    const ScopedOmpThreads one_thread(1);  // plan for one thread: see the top of this file
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(p->a_md, p->b_md, p->c_md), attr, cpu_engine());
    p->matmul = dnnl::matmul(pd);
    p->scratch_md = pd.scratchpad_desc();
    p->scratch_bytes = p->scratch_md.get_size();
    p->is_ref = std::strncmp(pd.impl_info_str(), "ref", 3) == 0;
    p->ok = true;
  } catch (const dnnl::error&) {
    p->ok = false;  // cached too, so a layout oneDNN rejects is not retried on every call
  }
  return p;
}

// LRU cache of primitives keyed by their unit layout (batch block, M, K, N and every stride).
class PrimitiveCache {
 public:
  std::shared_ptr<const Primitive> get(const UnitLayout& layout) {
    const CacheKey key = make_key(layout);
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (auto it = index_.find(key); it != index_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        ++stats_.hits;
        return it->second->second;
      }
    }
    // Created outside the lock: creation takes far longer than a lookup.
    std::shared_ptr<const Primitive> created = create_primitive(layout);
    const std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.misses;
    if (auto it = index_.find(key); it != index_.end()) return it->second->second;  // another thread won
    lru_.emplace_front(key, created);
    index_.emplace(key, lru_.begin());
    stats_.ref_impls += created->is_ref;
    evict_to_capacity();
    return created;
  }

  int64_t capacity() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return capacity_;
  }

  void set_capacity(int64_t capacity) {
    const std::lock_guard<std::mutex> lock(mutex_);
    capacity_ = capacity;
    evict_to_capacity();
  }

  MatmulCacheStats stats() {
    const std::lock_guard<std::mutex> lock(mutex_);
    MatmulCacheStats s = stats_;
    s.size = int64_t(lru_.size());
    return s;
  }

  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    index_.clear();
    lru_.clear();
    stats_ = {};
  }

 private:
  using Entry = std::pair<CacheKey, std::shared_ptr<const Primitive>>;
  std::mutex mutex_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<CacheKey, std::list<Entry>::iterator, CacheKeyHash> index_;
  MatmulCacheStats stats_;
  int64_t capacity_ = 1024;

  void evict_to_capacity() {  // with mutex_ held
    while (int64_t(lru_.size()) > capacity_) {
      stats_.ref_impls -= lru_.back().second->is_ref;
      index_.erase(lru_.back().first);
      lru_.pop_back();
      ++stats_.evictions;
    }
  }
};

PrimitiveCache& primitive_cache() {
  static PrimitiveCache* cache = new PrimitiveCache;  // leaked: see cpu_engine()
  return *cache;
}

// The memory objects a thread last used with a primitive. Creating one copies a ~1 KB
// descriptor (as long as the small matmul itself), so they are kept per thread and only
// re-pointed at each call; they wrap the tensors' own pointers, nothing is copied.
struct UnitMemory {
  uint64_t primitive_id = 0;
  dnnl::memory a, b, c, scratch;
};

UnitMemory& unit_memory(const Primitive& p) {
  thread_local std::array<UnitMemory, 16> slots;
  UnitMemory& m = slots[p.id % slots.size()];
  if (m.primitive_id != p.id) {
    const dnnl::engine& engine = cpu_engine();
    m.a = dnnl::memory(p.a_md, engine, DNNL_MEMORY_NONE);
    m.b = dnnl::memory(p.b_md, engine, DNNL_MEMORY_NONE);
    m.c = dnnl::memory(p.c_md, engine, DNNL_MEMORY_NONE);
    m.scratch = p.scratch_bytes > 0 ? dnnl::memory(p.scratch_md, engine, DNNL_MEMORY_NONE) : dnnl::memory();
    m.primitive_id = p.id;
  }
  return m;
}

void run_unit(const Primitive& p, const float* a, const float* b, float* c) {
  UnitMemory& m = unit_memory(p);
  m.a.set_data_handle(const_cast<float*>(a));
  m.b.set_data_handle(const_cast<float*>(b));
  m.c.set_data_handle(c);
  std::array<dnnl_exec_arg_t, 4> args{
      {{DNNL_ARG_SRC, m.a.get()}, {DNNL_ARG_WEIGHTS, m.b.get()}, {DNNL_ARG_DST, m.c.get()}, {}}};
  int n_args = 3;
  if (p.scratch_bytes > 0) {
    m.scratch.set_data_handle(thread_scratchpad(p.scratch_bytes));
    args[n_args++] = {DNNL_ARG_SCRATCHPAD, m.scratch.get()};
  }
  // The C call takes the arguments as an array (the C++ one wants an unordered_map).
  dnnl::stream& stream = thread_stream();
  dnnl::error::wrap_c_api(dnnl_primitive_execute(p.matmul.get(), stream.get(), n_args, args.data()),
                          "could not execute a matmul primitive");
  stream.wait();
}

// ---------------------------------------------------------------------------------------------
// oneDNN: cutting the output into units

// A unit should be worth far more than the ~0.5 us a oneDNN call costs (512K multiply-adds take
// ~4 us on one AVX-512 core), small enough that a toy model's [512, 32] x [32, 96] splits over two
// threads, and there should be enough of them to keep 16 threads busy.
// Blocks cut from one matrix keep at least kMinRows rows and kMinCols columns, so that oneDNN's
// kernels stay efficient.
constexpr double kUnitMacs = double(1 << 19);
constexpr int64_t kMaxUnits = 16;
constexpr int64_t kMinRows = 32;
constexpr int64_t kMinCols = 64;

// How the output is cut into units. Everything here depends on shapes (and, for the batch
// blocking, on which batch dims can be merged), never on the thread count.
struct Split {
  int64_t units = 1;       // units wanted in all
  int64_t mb = 1, nb = 1;  // rows and columns per unit (M and N unless single matrices are cut)
};

// a_cols: a is stored column-major (a transposed view, as in the weight gradient x^T @ dy).
// oneDNN's brgemm transposes such an a into its own buffer in every unit, and does that well,
// so a transposed a is cut by rows only and no two units transpose the same part. (Measured on
// a 2-core AVX-512 machine: a copied up front and cut into a grid was 1.4x slower.)
Split make_split(const MatmulDims& d, bool a_cols) {
  Split s;
  const int64_t n_matrices = shape_numel(d.batch);
  const double macs = double(n_matrices) * double(d.M) * double(d.N) * double(d.K);
  // A power of two, so that units divide evenly among 2, 4, 8 or 16 threads.
  s.units = floor_pow2(std::clamp<int64_t>(int64_t(macs / kUnitMacs), 1, kMaxUnits));
  s.mb = d.M;
  s.nb = d.N;
  if (s.units > n_matrices) {
    // Cut each matrix into a grid of near-square blocks (least traffic per multiply-add),
    // m_splits x n_splits = per_matrix where the sizes allow, rounded to 16 (one AVX-512 vector).
    const int64_t per_matrix = floor_pow2(ceil_div(s.units, n_matrices));
    const int64_t max_m_splits = floor_pow2(std::max<int64_t>(1, d.M / kMinRows));
    const int64_t max_n_splits = a_cols ? 1 : floor_pow2(std::max<int64_t>(1, d.N / kMinCols));
    // Rows of blocks for square blocks, rounded to the nearest power of two (in log scale).
    const double m_ideal = std::sqrt(double(per_matrix) * double(d.M) / double(d.N));
    int64_t m_splits = a_cols ? per_matrix : floor_pow2(std::max<int64_t>(1, std::llround(m_ideal * std::sqrt(2.0))));
    m_splits = std::clamp<int64_t>(m_splits, std::max<int64_t>(1, per_matrix / max_n_splits), per_matrix);
    m_splits = std::min(m_splits, max_m_splits);
    const int64_t n_splits = std::clamp<int64_t>(per_matrix / m_splits, 1, max_n_splits);
    s.mb = std::min(d.M, round_up(ceil_div(d.M, m_splits), 16));
    s.nb = std::min(d.N, round_up(ceil_div(d.N, n_splits), 16));
  }
  return s;
}

struct Plan {
  // Batch dims after dropping size-1 dims and merging dims that are contiguous in a, b and c.
  // The last (`inner`) is cut into blocks of `bb` entries; the others (`outer`) are iterated.
  Shape outer;
  std::array<Shape, 3> outer_st;  // strides of a, b, c
  int64_t inner = 1;
  std::array<int64_t, 3> inner_st{};  // strides of a, b, c
  int64_t bb = 1, mb = 1, nb = 1;     // unit sizes: batch entries, rows, columns
};

Plan make_plan(const Tensor& a, const Tensor& b, const MatmulDims& d, const Split& split) {
  const int64_t nbd = int64_t(d.batch.size());
  const std::array<Shape, 3> st_in{batch_strides(a, d.batch), batch_strides(b, d.batch), contiguous_strides(d.out)};
  Shape size;
  std::array<Shape, 3> st;
  for (int64_t i = 0; i < nbd; ++i) {
    const int64_t n = d.batch[i];
    if (n == 1) continue;
    bool merge = !size.empty();
    for (int k = 0; k < 3 && merge; ++k) merge = st[k].back() == st_in[k][i] * n;
    if (merge) {
      size.back() *= n;
      for (int k = 0; k < 3; ++k) st[k].back() = st_in[k][i];
    } else {
      size.push_back(n);
      for (int k = 0; k < 3; ++k) st[k].push_back(st_in[k][i]);
    }
  }
  Plan p;
  if (!size.empty()) {
    p.inner = size.back();
    size.pop_back();
    for (int k = 0; k < 3; ++k) {
      p.inner_st[k] = st[k].back();
      st[k].pop_back();
    }
  }
  p.outer = size;
  p.outer_st = st;
  p.mb = split.mb;
  p.nb = split.nb;
  // Whole matrices per unit: one block of the inner batch dim per outer index, or several.
  const int64_t n_outer = shape_numel(p.outer);
  p.bb = 1;
  if (split.mb == d.M && split.nb == d.N)
    p.bb = split.units <= n_outer ? p.inner : ceil_div(p.inner, ceil_div(split.units, n_outer));
  // A batch dim broadcast in both a and b (only from expand()) gets one matrix per unit.
  if (p.inner_st[0] == 0 && p.inner_st[1] == 0) p.bb = 1;
  return p;
}

// Runs c = a @ b as single-threaded oneDNN units. Returns false, having written nothing, when
// oneDNN rejects a unit's layout or (unless allow_ref) would run it with its reference code.
bool run_onednn(const Tensor& a, const Tensor& b, const Tensor& c, const MatmulDims& d, const Split& split,
                bool allow_ref) {
  const Plan p = make_plan(a, b, d, split);
  const int64_t M = d.M, K = d.K, N = d.N;
  const int64_t a_sm = a.strides()[a.dim() - 2], a_sk = a.strides().back();
  const int64_t b_sk = b.strides()[b.dim() - 2], b_sn = b.strides().back();
  const int64_t n_b = ceil_div(p.inner, p.bb), n_m = ceil_div(M, p.mb), n_n = ceil_div(N, p.nb);
  const std::array<int64_t, 2> bsz{p.bb, p.inner - (n_b - 1) * p.bb};  // [full block, last block]
  const std::array<int64_t, 2> msz{p.mb, M - (n_m - 1) * p.mb};
  const std::array<int64_t, 2> nsz{p.nb, N - (n_n - 1) * p.nb};

  // At most 8 primitives: a full or a last block along each of batch, rows and columns.
  std::shared_ptr<const Primitive> prims[2][2][2];
  for (int x = n_b > 1 ? 0 : 1; x < 2; ++x)
    for (int y = n_m > 1 ? 0 : 1; y < 2; ++y)
      for (int z = n_n > 1 ? 0 : 1; z < 2; ++z) {
        const int64_t bs = bsz[x], ms = msz[y], ns = nsz[z];
        UnitLayout l;
        l.a_dims = {p.inner_st[0] == 0 ? 1 : bs, ms, K};
        l.a_strides = {p.inner_st[0], a_sm, a_sk};
        l.b_dims = {p.inner_st[1] == 0 ? 1 : bs, K, ns};
        l.b_strides = {p.inner_st[1], b_sk, b_sn};
        l.c_dims = {bs, ms, ns};
        l.c_strides = {p.inner_st[2], N, 1};
        canonicalize(l.a_dims, l.a_strides);
        canonicalize(l.b_dims, l.b_strides);
        canonicalize(l.c_dims, l.c_strides);
        prims[x][y][z] = primitive_cache().get(l);
        if (!prims[x][y][z]->ok || (prims[x][y][z]->is_ref && !allow_ref)) return false;
      }

  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  const int64_t n_units = shape_numel(p.outer) * n_b * n_m * n_n;
  std::mutex error_mutex;
  std::string error;
  parallel_for(0, n_units, 1, [&](int64_t u0, int64_t u1) {
    const ScopedOmpThreads one_thread(1);  // the unit's oneDNN call must not thread
    try {
      for (int64_t u = u0; u < u1; ++u) {
        // Unit index = ((outer * n_b + ib) * n_m + im) * n_n + in.
        int64_t r = u;
        const int64_t in = r % n_n;
        r /= n_n;
        const int64_t im = r % n_m;
        r /= n_m;
        const int64_t ib = r % n_b;
        r /= n_b;
        int64_t oa = 0, ob = 0, oc = 0;
        for (int64_t k = int64_t(p.outer.size()) - 1; k >= 0; --k) {
          const int64_t idx = r % p.outer[k];
          r /= p.outer[k];
          oa += idx * p.outer_st[0][k];
          ob += idx * p.outer_st[1][k];
          oc += idx * p.outer_st[2][k];
        }
        const int64_t b0 = ib * p.bb, i0 = im * p.mb, j0 = in * p.nb;
        oa += b0 * p.inner_st[0] + i0 * a_sm;
        ob += b0 * p.inner_st[1] + j0 * b_sn;
        oc += b0 * p.inner_st[2] + i0 * N + j0;
        run_unit(*prims[ib == n_b - 1][im == n_m - 1][in == n_n - 1], pa + oa, pb + ob, pc + oc);
      }
    } catch (const std::exception& e) {  // exceptions must not leave an OpenMP region
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (error.empty()) error = e.what();
    }
  });
  NL_CHECK(error.empty(), "matmul_onednn: oneDNN failed on a ", to_string(a.shape()), " x b ", to_string(b.shape()),
           ": ", error);
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public entry points

Tensor matmul_ref(const Tensor& a, const Tensor& b) {
  const MatmulDims d = check_args(a, b, "matmul_ref");
  Tensor c = empty(d.out, a.dtype());
  if (c.numel() == 0) return c;
  NL_DISPATCH_FLOATING(a.dtype(), "matmul_ref", [&] { matmul_ref_kernel<scalar_t>(a, b, c, d); });
  return c;
}

Tensor matmul_onednn(const Tensor& a_in, const Tensor& b_in) {
  const MatmulDims d = check_args(a_in, b_in, "matmul_onednn");
  NL_CHECK(a_in.dtype() == DType::f32, "matmul_onednn: expected f32 inputs (a: ", describe(a_in),
           ", b: ", describe(b_in), "); oneDNN has no f64 matmul, use matmul or matmul_ref");
  Tensor c = empty(d.out, DType::f32);
  if (c.numel() == 0) return c;
  if (d.K == 0) {
    c.zero_();
    return c;
  }
  // Matrices oneDNN cannot take as they are are copied. So is a transposed b (x @ w^T) whose
  // rows are cut: every unit would transpose all of b again, while one tiled copy up front
  // costs little (measured: 1.06x of one oneDNN primitive at 1 thread, against 1.2x when
  // cutting only columns of b instead).
  const bool a_cols = is_plain(a_in) && a_in.strides().back() != 1 && d.K > 1;
  const bool b_cols = is_plain(b_in) && b_in.strides().back() != 1 && d.N > 1;
  const Split split = make_split(d, a_cols);
  const Tensor a = is_plain(a_in) ? a_in : compact(a_in);
  const Tensor b = is_plain(b_in) && (!b_cols || split.mb == d.M) ? b_in : compact(b_in);
  if (run_onednn(a, b, c, d, split, /*allow_ref=*/false)) return c;
  // oneDNN rejects this layout or would run it with its slow reference code (e.g. unusual
  // batch strides): retry with compact matrices, and as a last resort use the reference kernel.
  const Tensor ac = compact(a), bc = compact(b);
  if (run_onednn(ac, bc, c, d, split, /*allow_ref=*/true)) return c;
  matmul_ref_kernel<float>(ac, bc, c, d);
  return c;
}

namespace {

// The live recorder's calls; null when none is alive. matmul() may run on several threads.
std::mutex recorder_mutex;
std::vector<MatmulCall>* recorded = nullptr;
std::atomic<bool> recording{false};

bool transposed_view(const Tensor& x) {
  const Shape& s = x.strides();
  const size_t r = s.size();
  return x.shape()[r - 1] > 1 && x.shape()[r - 2] > 1 && s[r - 2] == 1 && s[r - 1] != 1;
}

void record(const Tensor& a, const Tensor& b) {
  const std::lock_guard<std::mutex> lock(recorder_mutex);
  if (recorded) recorded->push_back({a.shape(), b.shape(), transposed_view(a), transposed_view(b), a.dtype()});
}

}  // namespace

double MatmulCall::flops() const {
  double batch = 1;
  const size_t ra = a.size(), rb = b.size(), r = std::max(ra, rb);
  for (size_t i = 2; i < r; ++i)  // the broadcast batch dims, aligned from the right
    batch *= double(std::max(i < ra ? a[ra - 1 - i] : 1, i < rb ? b[rb - 1 - i] : 1));
  return 2.0 * batch * double(a[ra - 2]) * double(b[rb - 1]) * double(a[ra - 1]);
}

MatmulRecorder::MatmulRecorder() {
  const std::lock_guard<std::mutex> lock(recorder_mutex);
  NL_CHECK(recorded == nullptr, "MatmulRecorder: one is alive already");
  recorded = new std::vector<MatmulCall>;
  recording = true;
}

MatmulRecorder::~MatmulRecorder() {
  const std::lock_guard<std::mutex> lock(recorder_mutex);
  recording = false;
  delete recorded;
  recorded = nullptr;
}

std::vector<MatmulCall> MatmulRecorder::calls() const {
  const std::lock_guard<std::mutex> lock(recorder_mutex);
  return *recorded;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_args(a, b, "matmul");
  if (recording.load(std::memory_order_relaxed)) record(a, b);
  return a.dtype() == DType::f32 ? matmul_onednn(a, b) : matmul_ref(a, b);
}

MatmulCacheStats matmul_cache_stats() { return primitive_cache().stats(); }
int64_t matmul_cache_size() { return primitive_cache().stats().size; }
void matmul_cache_clear() { primitive_cache().clear(); }
int64_t matmul_cache_capacity() { return primitive_cache().capacity(); }
void set_matmul_cache_capacity(int64_t capacity) {
  NL_CHECK(capacity >= 1, "set_matmul_cache_capacity: capacity must be >= 1, got ", capacity);
  primitive_cache().set_capacity(capacity);
}

}  // namespace normlab
