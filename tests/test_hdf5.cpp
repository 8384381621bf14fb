// HDF5 helpers: tensor round trips (bit-exact, every dtype, 0-d to 3-d, strided views),
// groups, overwrites, attributes, exists(), and errors that name the path; damaged and
// hostile files (checksums, absurd shapes, bad global heaps); atomic writes that leave the
// old file when the writer throws or the disk is full.
#include <boost/test/unit_test.hpp>

#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "framework/hdf5.h"
#include "framework/tensor.h"
#include "tests/test_util.h"

using namespace normlab;
using testing::TempDir;
using testing::contains;
using testing::error_of;
namespace fs = std::filesystem;

namespace {

// Calls f(index) for every index of `shape` in row-major order (once for a 0-d shape).
template <class F> void for_each_index(const Shape& shape, const F& f) {
  if (shape_numel(shape) == 0) return;
  std::vector<int64_t> idx(shape.size(), 0);
  while (true) {
    f(idx);
    int64_t d = int64_t(shape.size()) - 1;
    while (d >= 0 && ++idx[size_t(d)] == shape[size_t(d)]) idx[size_t(d--)] = 0;
    if (d < 0) return;
  }
}

// Same dtype, shape, and bytes of every element (each read through its own strides).
void check_bit_equal(const Tensor& got, const Tensor& expected) {
  BOOST_TEST_REQUIRE(dtype_name(got.dtype()) == dtype_name(expected.dtype()));
  BOOST_TEST_REQUIRE(to_string(got.shape()) == to_string(expected.shape()));
  const size_t es = expected.element_size();
  int64_t mismatches = 0;
  for_each_index(expected.shape(), [&](const std::vector<int64_t>& idx) {
    const char* a = static_cast<const char*>(got.storage()->data()) + got.linear_offset(idx) * int64_t(es);
    const char* b = static_cast<const char*>(expected.storage()->data()) + expected.linear_offset(idx) * int64_t(es);
    if (std::memcmp(a, b, es) != 0) ++mismatches;
  });
  BOOST_TEST(mismatches == 0, "dtype " << dtype_name(expected.dtype()) << " shape " << to_string(expected.shape()));
}

// A tensor of `shape` and `dtype` with distinct values, including special bit patterns
// (NaN payloads, -0, infinities, subnormals, integer extremes) where there is room.
Tensor make_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Generator gen(seed);
  Tensor t = dtype == DType::i64 ? empty(shape, dtype) : randn(shape, gen, dtype);
  const int64_t n = t.numel();
  switch (dtype) {
    case DType::f32: {
      float* p = t.data<float>();
      const uint32_t specials[] = {0x7fc01234u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x00000001u};
      for (int64_t i = 0; i < n && i < 5; ++i) std::memcpy(&p[i], &specials[i], 4);
      break;
    }
    case DType::f64: {
      double* p = t.data<double>();
      const uint64_t specials[] = {0x7ff8000000abcdefull, 0x8000000000000000ull, 0x7ff0000000000000ull,
                                   0xfff0000000000000ull, 0x0000000000000001ull};
      for (int64_t i = 0; i < n && i < 5; ++i) std::memcpy(&p[i], &specials[i], 8);
      break;
    }
    case DType::bf16: {
      bf16* p = t.data<bf16>();
      const uint16_t specials[] = {0x7fc1u, 0x8000u, 0x7f80u, 0xff80u, 0x0001u};
      for (int64_t i = 0; i < n && i < 5; ++i) p[i].bits = specials[i];
      break;
    }
    case DType::f16: {
      f16* p = t.data<f16>();
      const uint16_t specials[] = {0x7e01u, 0x8000u, 0x7c00u, 0xfc00u, 0x0001u};
      for (int64_t i = 0; i < n && i < 5; ++i) p[i].bits = specials[i];
      break;
    }
    case DType::i64: {
      int64_t* p = t.data<int64_t>();
      for (int64_t i = 0; i < n; ++i) p[i] = int64_t(seed * 1000003u) + i * 7919 - 40000;
      if (n > 0) p[0] = std::numeric_limits<int64_t>::min();
      if (n > 1) p[1] = std::numeric_limits<int64_t>::max();
      if (n > 2) p[2] = -1;
      break;
    }
  }
  return t;
}

// Runs `f` and checks it throws normlab::Error whose message contains every one of `parts`.
template <class F> void check_error(const F& f, const std::vector<std::string>& parts) {
  try {
    f();
    BOOST_ERROR("expected normlab::Error containing '" << parts.front() << "'");
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts) BOOST_TEST(msg.find(part) != std::string::npos, "'" << part << "' in: " << msg);
  }
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// The offset of the only occurrence of `part` in `bytes`.
size_t only_offset(const std::string& bytes, const std::string& part) {
  const size_t at = bytes.find(part);
  BOOST_TEST_REQUIRE(at != std::string::npos);
  BOOST_TEST_REQUIRE(bytes.find(part, at + 1) == std::string::npos);
  return at;
}

// The file at `path` with bit `bit` of byte `offset` flipped.
void flip_bit(const std::string& path, size_t offset, int bit) {
  std::string bytes = read_bytes(path);
  BOOST_TEST_REQUIRE(offset < bytes.size());
  bytes[offset] = char(bytes[offset] ^ (1 << bit));
  write_bytes(path, bytes);
}

// A 1-D f64 tensor 0.5, 1.5, 2.5, ...: its raw bytes are easy to find in a file.
Tensor counting(int64_t n) {
  Tensor t = empty({n}, DType::f64);
  for (int64_t i = 0; i < n; ++i) t.data<double>()[i] = double(i) + 0.5;
  return t;
}

std::string raw_bytes(const Tensor& t, int64_t first, int64_t count) {
  return std::string(static_cast<const char*>(t.raw_data()) + first * int64_t(t.element_size()),
                     size_t(count) * t.element_size());
}

// A variable-length string attribute `name` on `obj`, as files from before strings were
// fixed-length hold them (in the file's global heap).
void write_variable_length_string(hid_t obj, const char* name, const char* value) {
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  BOOST_TEST_REQUIRE(H5Awrite(attr, type, &value) >= 0);
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

// While it lives, writes past `bytes` into any file fail with EFBIG (RLIMIT_FSIZE, with
// SIGXFSZ ignored instead of killing the process); the limit and the signal are restored.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    BOOST_TEST_REQUIRE(getrlimit(RLIMIT_FSIZE, &old_) == 0);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lower = old_;
    lower.rlim_cur = bytes;
    BOOST_TEST_REQUIRE(setrlimit(RLIMIT_FSIZE, &lower) == 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit old_{};
  void (*old_handler_)(int) = SIG_DFL;
};

// A tmpfs of `size` (e.g. "64k") mounted on `dir` while it lives, when this process may
// mount one (root, and a kernel or container that allows it); else why not.
class SmallDisk {
 public:
  SmallDisk(const std::string& dir, const std::string& size) : dir_(dir) {
    fs::create_directories(dir);
    if (geteuid() != 0) {
      why_not_ = "not root";
    } else if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) != 0) {
      why_not_ = std::strerror(errno);
    }
  }
  ~SmallDisk() {
    if (mounted()) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  SmallDisk(const SmallDisk&) = delete;
  SmallDisk& operator=(const SmallDisk&) = delete;
  bool mounted() const { return why_not_.empty(); }
  const std::string& why_not() const { return why_not_; }

 private:
  std::string dir_, why_not_;
};

// Writing `f` over the file at `path` fails with an Error containing `reason`, and leaves
// the old file byte for byte and no temporary file.
template <class Write>
void check_write_fails_and_keeps_old_file(const std::string& path, const Write& write, const std::string& reason) {
  const std::string before = read_bytes(path);
  BOOST_TEST_REQUIRE(!before.empty());
  check_error(write, {reason, path});
  BOOST_TEST((read_bytes(path) == before), "the old file changed");
  BOOST_TEST(!fs::exists(path + ".tmp"));
  H5File f(path, H5File::Mode::read);  // still readable
  BOOST_TEST(read_attribute_string(f, "/", "version") == "old");
}

const DType all_dtypes[] = {DType::f32, DType::f64, DType::bf16, DType::i64, DType::f16};
const Shape all_shapes[] = {{}, {1}, {3, 5}, {2, 3, 4}, {0, 3}};

}  // namespace

BOOST_AUTO_TEST_SUITE(hdf5)

BOOST_AUTO_TEST_CASE(tensor_round_trip_every_dtype_and_shape) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("tensors.h5");
  std::vector<std::pair<std::string, Tensor>> written;
  {
    H5File f(path, H5File::Mode::create);
    uint64_t seed = 1;
    for (DType dtype : all_dtypes) {
      for (const Shape& shape : all_shapes) {
        const std::string name = std::string("/t/") + dtype_name(dtype) + "/shape" + to_string(shape);
        Tensor t = make_tensor(shape, dtype, seed++);
        write_tensor(f, name, t);
        written.emplace_back(name, t);
      }
    }
    // Read back through the still-open file too.
    for (const auto& [name, t] : written) check_bit_equal(read_tensor(f, name), t);
  }
  H5File f(path, H5File::Mode::read);
  for (const auto& [name, t] : written) {
    BOOST_TEST_CONTEXT(name) {
      const Tensor got = read_tensor(f, name);
      BOOST_TEST(got.is_contiguous());
      check_bit_equal(got, t);
    }
  }
}

BOOST_AUTO_TEST_CASE(non_contiguous_views_round_trip) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("views.h5");
  std::vector<std::pair<std::string, Tensor>> written;
  {
    H5File f(path, H5File::Mode::create);
    uint64_t seed = 100;
    for (DType dtype : all_dtypes) {
      const Tensor base = make_tensor({2, 3, 4}, dtype, seed++);
      const std::string prefix = std::string("/views/") + dtype_name(dtype);
      const std::vector<std::pair<std::string, Tensor>> views = {
          {prefix + "/transpose", base.transpose(0, 2)},
          {prefix + "/permute", base.permute({1, 2, 0})},
          {prefix + "/slice", base.slice(2, 1, 4, 2)},
          {prefix + "/select", base.select(1, 2)},
          {prefix + "/expand", base.select(2, 0).unsqueeze(2).expand({2, 3, 5})},
          {prefix + "/matrix_t", make_tensor({3, 5}, dtype, seed++).transpose(0, 1)},
      };
      for (const auto& [name, view] : views) {
        write_tensor(f, name, view);
        written.emplace_back(name, view);
      }
    }
  }
  BOOST_TEST(!written[0].second.is_contiguous());
  H5File f(path, H5File::Mode::read);
  for (const auto& [name, view] : written) {
    BOOST_TEST_CONTEXT(name) { check_bit_equal(read_tensor(f, name), view); }
  }
}

BOOST_AUTO_TEST_CASE(dots_are_names_and_groups_nest) {
  TempDir tmp("normlab_test_hdf5");
  H5File f(tmp.file("groups.h5"), H5File::Mode::create);
  const Tensor w = make_tensor({4, 4}, DType::f32, 7);
  write_tensor(f, "/params/blocks.0.attn.q.weight", w);
  BOOST_TEST(f.exists("/params"));
  BOOST_TEST(f.exists("/params/blocks.0.attn.q.weight"));
  BOOST_TEST(!f.exists("/params/blocks"));
  BOOST_TEST(!f.exists("/params/blocks/0"));
  check_bit_equal(read_tensor(f, "/params/blocks.0.attn.q.weight"), w);

  // Deep nesting, redundant slashes, and a relative path all land on the same dataset.
  write_tensor(f, "/a/b/c/d/e", w);
  for (const char* p : {"/a", "/a/b", "/a/b/c", "/a/b/c/d"}) BOOST_TEST(f.exists(p), p);
  check_bit_equal(read_tensor(f, "a//b/c/d/e/"), w);
  BOOST_TEST(H5Iget_type(f.id()) == H5I_FILE);

  // A dataset cannot be used as a group, nor a group overwritten by a dataset.
  check_error([&] { write_tensor(f, "/a/b/c/d/e/f", w); }, {"/a/b/c/d/e", "not a group"});
  check_error([&] { write_tensor(f, "/a/b", w); }, {"/a/b", "not a dataset"});
  check_error([&] { read_tensor(f, "/a/b"); }, {"/a/b", "not a dataset"});
  check_error([&] { write_tensor(f, "/", w); }, {"root"});
  check_error([&] { write_tensor(f, "/x", Tensor()); }, {"/x", "undefined"});
}

BOOST_AUTO_TEST_CASE(exists_on_nested_and_missing_paths) {
  TempDir tmp("normlab_test_hdf5");
  H5File f(tmp.file("exists.h5"), H5File::Mode::create);
  BOOST_TEST(f.exists("/"));
  BOOST_TEST(f.exists(""));
  BOOST_TEST(!f.exists("/a"));
  BOOST_TEST(!f.exists("/a/b/c"));
  write_tensor(f, "/g/x", zeros({2}));
  BOOST_TEST(f.exists("/g"));
  BOOST_TEST(f.exists("/g/x"));
  BOOST_TEST(!f.exists("/g/y"));
  BOOST_TEST(!f.exists("/g/x/y"));  // x is a dataset, not a group
  BOOST_TEST(!f.exists("/g/y/z"));
  f.flush();
}

BOOST_AUTO_TEST_CASE(remove_unlinks_groups_and_datasets) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("remove.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_tensor(f, "/g/x", zeros({2}));
    write_tensor(f, "/g/sub/y", zeros({3}));
    write_tensor(f, "/h", zeros({1}));
    f.remove("g//x/");  // the path's spelling does not matter
    BOOST_TEST(!f.exists("/g/x"));
    BOOST_TEST(f.exists("/g/sub/y"));
    f.remove("/g");  // a group goes with everything below it
    BOOST_TEST(!f.exists("/g"));
    BOOST_TEST(!f.exists("/g/sub/y"));
    f.remove("/missing/path");  // no-op
    f.remove("/");              // no-op
    BOOST_TEST(f.exists("/h"));
  }
  H5File r(path, H5File::Mode::read);
  BOOST_TEST(contains(error_of([&] { r.remove("/h"); }), "read-only"));
  BOOST_TEST(r.exists("/h"));
}

BOOST_AUTO_TEST_CASE(list_names_group_members_in_name_order) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("list.h5");
  H5File f(path, H5File::Mode::create);
  write_tensor(f, "/runs/b=2,c=1/x", zeros({1}));
  write_tensor(f, "/runs/a.0", zeros({1}));
  write_attribute(f, "/runs/z", "k", int64_t(1));
  BOOST_TEST(f.list("/runs") == (std::vector<std::string>{"a.0", "b=2,c=1", "z"}), boost::test_tools::per_element());
  BOOST_TEST(f.list("/runs/b=2,c=1") == std::vector<std::string>{"x"}, boost::test_tools::per_element());
  BOOST_TEST(f.list("/").size() == 1u);
  BOOST_TEST(f.list("/missing").empty());
  BOOST_TEST(f.list("/runs/a.0").empty());  // a dataset has no members
}

BOOST_AUTO_TEST_CASE(overwrite_replaces_dataset) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("overwrite.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_tensor(f, "/w", make_tensor({2, 3, 4}, DType::bf16, 1));
    write_attribute(f, "/w", "note", "stale");
    write_tensor(f, "/w", make_tensor({3, 5}, DType::f32, 2));  // new shape and dtype
    BOOST_TEST(!has_attribute(f, "/w", "normlab_dtype"));
    BOOST_TEST(!has_attribute(f, "/w", "note"));
    write_tensor(f, "/v", make_tensor({5}, DType::f64, 3));
  }
  {
    H5File f(path, H5File::Mode::read_write);
    check_bit_equal(read_tensor(f, "/w"), make_tensor({3, 5}, DType::f32, 2));
    write_tensor(f, "/v", make_tensor({}, DType::i64, 4));
    write_tensor(f, "/w", make_tensor({1}, DType::bf16, 5));
  }
  H5File f(path, H5File::Mode::read);
  check_bit_equal(read_tensor(f, "/v"), make_tensor({}, DType::i64, 4));
  check_bit_equal(read_tensor(f, "/w"), make_tensor({1}, DType::bf16, 5));
}

BOOST_AUTO_TEST_CASE(attributes_round_trip_on_root_group_and_dataset) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("attrs.h5");
  const std::string big(200000, 'x');  // beyond HDF5's 64 KiB compact-attribute limit
  const std::string utf8 = "\xce\xb1=0.5, \xe2\x88\x9a" "d";
  const char* objects[] = {"/", "/run/0", "/run/0/loss"};
  {
    H5File f(path, H5File::Mode::create);
    write_tensor(f, "/run/0/loss", make_tensor({10}, DType::f32, 9));
    BOOST_TEST(!f.exists("/meta"));
    write_attribute(f, "/meta/config", "lr", 1e-3);  // creates the groups
    BOOST_TEST(f.exists("/meta/config"));
    for (const char* obj : objects) {
      write_attribute(f, obj, "lr", 3e-4);
      write_attribute(f, obj, "steps", int64_t(-123456789012345));
      write_attribute(f, obj, "layers", 1000);  // int
      write_attribute(f, obj, "norm", "layer_norm");
      write_attribute(f, obj, "placement", std::string("pre"));
      write_attribute(f, obj, "empty", "");
      write_attribute(f, obj, "utf8", utf8);
      write_attribute(f, obj, "nan", std::nan(""));
      // Overwrites, including a change of type.
      write_attribute(f, obj, "placement", std::string("peri"));
      write_attribute(f, obj, "retyped", 1.5);
      write_attribute(f, obj, "retyped", "now a string");
    }
    write_attribute(f, "/run/0", "config", big);
  }
  // Attributes can be added to a reopened file (large ones too).
  {
    H5File f(path, H5File::Mode::read_write);
    write_attribute(f, "/", "config", big);
    write_attribute(f, "/run/0/loss", "diverged_step", int64_t(42));
  }
  H5File f(path, H5File::Mode::read);
  BOOST_TEST(read_attribute_double(f, "/meta/config", "lr") == 1e-3);
  for (const char* obj : objects) {
    BOOST_TEST_CONTEXT(obj) {
      BOOST_TEST(read_attribute_double(f, obj, "lr") == 3e-4);
      BOOST_TEST(read_attribute_int(f, obj, "steps") == int64_t(-123456789012345));
      BOOST_TEST(read_attribute_int(f, obj, "layers") == 1000);
      BOOST_TEST(read_attribute_double(f, obj, "layers") == 1000.0);  // integers read as double
      BOOST_TEST(read_attribute_string(f, obj, "norm") == "layer_norm");
      BOOST_TEST(read_attribute_string(f, obj, "placement") == "peri");
      BOOST_TEST(read_attribute_string(f, obj, "empty") == "");
      BOOST_TEST(read_attribute_string(f, obj, "utf8") == utf8);
      BOOST_TEST(std::isnan(read_attribute_double(f, obj, "nan")));
      BOOST_TEST(read_attribute_string(f, obj, "retyped") == "now a string");
      BOOST_TEST(has_attribute(f, obj, "lr"));
      BOOST_TEST(!has_attribute(f, obj, "missing"));
      check_error([&] { read_attribute_int(f, obj, "lr"); }, {"lr", "float", "expected integer"});
      check_error([&] { read_attribute_double(f, obj, "norm"); }, {"norm", "string"});
      check_error([&] { read_attribute_string(f, obj, "steps"); }, {"steps", "integer", "expected string"});
      check_error([&] { read_attribute_double(f, obj, "missing"); }, {"missing", "no attribute"});
    }
  }
  BOOST_TEST(read_attribute_string(f, "/", "config") == big);
  BOOST_TEST(read_attribute_string(f, "/run/0", "config") == big);
  BOOST_TEST(read_attribute_int(f, "/run/0/loss", "diverged_step") == 42);
  check_bit_equal(read_tensor(f, "/run/0/loss"), make_tensor({10}, DType::f32, 9));
  BOOST_TEST(!has_attribute(f, "/nowhere", "lr"));
  check_error([&] { read_attribute_double(f, "/nowhere/deeper", "lr"); }, {"/nowhere/deeper", "lr", "attrs.h5"});
  check_error([&] { write_attribute(f, "/", "x", 1.0); }, {"read-only", "attrs.h5"});
  check_error([&] { write_tensor(f, "/x", ones({1})); }, {"read-only", "attrs.h5"});
}

BOOST_AUTO_TEST_CASE(missing_paths_and_files_throw_naming_the_path) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("missing.h5");
  check_error([&] { H5File f(path, H5File::Mode::read); }, {path, "no such file"});
  check_error([&] { H5File f(path, H5File::Mode::read_write); }, {path});
  const std::string unwritable = tmp.file("no_such_dir/out.h5");
  check_error([&] { H5File f(unwritable, H5File::Mode::create); }, {unwritable, "No such file or directory"});
  {
    std::ofstream(tmp.file("not_hdf5.h5")) << "plain text";
  }
  check_error([&] { H5File f(tmp.file("not_hdf5.h5"), H5File::Mode::read); }, {tmp.file("not_hdf5.h5")});

  H5File f(path, H5File::Mode::create);
  write_tensor(f, "/params/w", ones({2}));
  check_error([&] { read_tensor(f, "/params/missing.weight"); }, {"/params/missing.weight", path});
  check_error([&] { read_tensor(f, "/nope/a/b"); }, {"/nope/a/b", path});
  check_error([&] { read_tensor(f, "/params/w/x"); }, {"/params/w/x", path});

  // A moved-from or closed file refuses politely.
  H5File g = std::move(f);
  BOOST_TEST(!f.is_open());
  BOOST_TEST(g.is_open());
  check_error([&] { f.exists("/"); }, {"closed"});
  check_bit_equal(read_tensor(g, "/params/w"), ones({2}));
  g.close();
  check_error([&] { read_tensor(g, "/params/w"); }, {"closed", path});
}

BOOST_AUTO_TEST_CASE(reads_datasets_written_by_other_tools) {
  // A dataset written with plain HDF5 calls (big-endian int32, as another tool might) reads
  // back converted to i64; a compound dataset is refused with its type named.
  TempDir tmp("normlab_test_hdf5");
  H5File f(tmp.file("foreign.h5"), H5File::Mode::create);
  const hsize_t dims[2] = {2, 3};
  const int32_t values[6] = {1, -2, 3, -4, 5, 2147483647};
  const hid_t space = H5Screate_simple(2, dims, nullptr);
  const hid_t dset = H5Dcreate2(f.id(), "/i32be", H5T_STD_I32BE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  BOOST_TEST_REQUIRE(dset >= 0);
  BOOST_TEST(H5Dwrite(dset, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) >= 0);
  H5Dclose(dset);
  const hid_t compound = H5Tcreate(H5T_COMPOUND, 8);
  H5Tinsert(compound, "a", 0, H5T_NATIVE_INT32);
  H5Tinsert(compound, "b", 4, H5T_NATIVE_FLOAT);
  const hid_t cdset = H5Dcreate2(f.id(), "/compound", compound, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  BOOST_TEST_REQUIRE(cdset >= 0);
  H5Dclose(cdset);
  H5Tclose(compound);
  H5Sclose(space);

  const Tensor t = read_tensor(f, "/i32be");
  BOOST_TEST(dtype_name(t.dtype()) == "i64");
  BOOST_TEST(to_string(t.shape()) == "[2, 3]");
  const std::vector<int64_t> got = t.to_vector<int64_t>();
  BOOST_TEST(got == std::vector<int64_t>(values, values + 6), boost::test_tools::per_element());
  check_error([&] { read_tensor(f, "/compound"); }, {"/compound", "compound"});
}

BOOST_AUTO_TEST_CASE(no_hdf5_objects_leak) {
  // No file, group, dataset or attribute stays open after any call, failures included.
  // (HDF5 1.10 cannot count transient dataspaces and types; Handle owns those too.)
  TempDir tmp("normlab_test_hdf5");
  const auto open_objects = [] { return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); };
  BOOST_TEST(open_objects() == 0);
  const auto workload = [&] {
    const std::string path = tmp.file("leaks.h5");
    {
      H5File f(path, H5File::Mode::create);
      write_tensor(f, "/a/b/x", make_tensor({2, 3}, DType::bf16, 1).transpose(0, 1));
      write_tensor(f, "/a/b/x", make_tensor({}, DType::f64, 2));
      write_attribute(f, "/a/b/x", "s", "text");
      write_attribute(f, "/a", "d", 1.0);
      write_attribute(f, "/c", "i", 3);
      BOOST_TEST(f.exists("/a/b/x"));
      BOOST_TEST(!f.exists("/a/b/x/y"));
      BOOST_TEST(has_attribute(f, "/a", "d"));
      (void)read_tensor(f, "/a/b/x");
      (void)read_attribute_string(f, "/a/b/x", "s");
      (void)read_attribute_double(f, "/a", "d");
      (void)read_attribute_int(f, "/c", "i");
      check_error([&] { read_tensor(f, "/a/missing"); }, {"/a/missing"});
      check_error([&] { read_tensor(f, "/a"); }, {"/a"});
      check_error([&] { write_tensor(f, "/a/b/x/y", ones({1})); }, {"/a/b/x"});
      check_error([&] { write_tensor(f, "/a", ones({1})); }, {"/a"});
      check_error([&] { read_attribute_int(f, "/a/b/x", "s"); }, {"s"});
      check_error([&] { read_attribute_string(f, "/a", "none"); }, {"none"});
      check_error([&] { H5File g(path, H5File::Mode::create); }, {path});
      BOOST_TEST(H5Fget_obj_count(f.id(), H5F_OBJ_ALL) == 1);  // only the file itself
    }
    check_error([&] { H5File g(tmp.file("none.h5"), H5File::Mode::read); }, {"none.h5"});
    check_error([&] { H5File g(tmp.file("none/x.h5"), H5File::Mode::create); }, {"none/x.h5"});
    check_error([&] { write_file_atomically(path, [](H5File&) { NL_FAIL("the writer failed"); }); },
                {"the writer failed"});
    check_error([&] { update_file_atomically(path, [](H5File& g) { read_tensor(g, "/missing"); }); }, {"/missing"});
    const std::string truncated = tmp.write("truncated.h5", read_bytes(path).substr(0, 100));
    check_error([&] { H5File g(truncated, H5File::Mode::read); }, {"truncated or damaged"});
    H5File g(path, H5File::Mode::read);
    check_bit_equal(read_tensor(g, "/a/b/x"), make_tensor({}, DType::f64, 2));
  };
  workload();
  BOOST_TEST(open_objects() == 0);
}

BOOST_AUTO_TEST_CASE(strings_are_fixed_length_and_old_variable_length_ones_still_read) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("strings.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_attribute(f, "/", "name", "layer_norm");
    write_attribute(f, "/", "empty", "");
    write_tensor(f, "/w", make_tensor({2}, DType::bf16, 1));
    write_tensor(f, "/h", make_tensor({2}, DType::f16, 1));
    write_variable_length_string(f.id(), "old", "variable-length");
  }
  H5File f(path, H5File::Mode::read);
  const auto stored = [&](const char* object, const char* name) {
    const hid_t attr = H5Aopen_by_name(f.id(), object, name, H5P_DEFAULT, H5P_DEFAULT);
    const hid_t type = H5Aget_type(attr);
    const std::pair<htri_t, size_t> variable_and_size(H5Tis_variable_str(type), H5Tget_size(type));
    H5Tclose(type);
    H5Aclose(attr);
    return variable_and_size;
  };
  BOOST_TEST((stored("/", "name") == std::pair<htri_t, size_t>(0, 10)));
  BOOST_TEST((stored("/", "empty") == std::pair<htri_t, size_t>(0, 1)));
  BOOST_TEST((stored("/w", "normlab_dtype") == std::pair<htri_t, size_t>(0, 4)));
  BOOST_TEST(read_attribute_string(f, "/", "name") == "layer_norm");
  BOOST_TEST(read_attribute_string(f, "/", "empty") == "");
  BOOST_TEST(read_attribute_string(f, "/", "old") == "variable-length");
  BOOST_TEST(dtype_name(read_tensor(f, "/w").dtype()) == "bf16");
  BOOST_TEST((stored("/h", "normlab_dtype") == std::pair<htri_t, size_t>(0, 3)));
  BOOST_TEST(read_attribute_string(f, "/h", "normlab_dtype") == "f16");
  BOOST_TEST(dtype_name(read_tensor(f, "/h").dtype()) == "f16");
}

BOOST_AUTO_TEST_CASE(a_damaged_global_heap_is_refused_not_read) {
  // HDF5 1.10 copies a variable-length string by the size its global heap states: a flipped
  // size byte made it read past its buffers (a crash). The heap is checked first.
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("heap.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_variable_length_string(f.id(), "s", "a string in the global heap");
  }
  const size_t heap = only_offset(read_bytes(path), "GCOL");
  {
    H5File f(path, H5File::Mode::read);
    BOOST_TEST(read_attribute_string(f, "/", "s") == "a string in the global heap");
  }
  flip_bit(path, heap + 16 + 8 + 5, 3);  // the first object's size (after the collection's and its own header)
  H5File f(path, H5File::Mode::read);
  check_error([&] { read_attribute_string(f, "/", "s"); }, {path, "damaged", "global heap"});
  flip_bit(path, heap + 16 + 8 + 5, 3);
  flip_bit(path, heap + 8 + 6, 0);  // the collection's size
  H5File g(path, H5File::Mode::read);
  check_error([&] { read_attribute_string(g, "/", "s"); }, {path, "damaged", "global heap"});
}

BOOST_AUTO_TEST_CASE(datasets_are_chunked_with_checksums) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("layout.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_tensor(f, "/small", make_tensor({3, 5}, DType::f32, 1));
    write_tensor(f, "/rows", zeros({600, 1000}));                 // 2.4 MB of f32: chunks of 262 rows
    write_tensor(f, "/wide", zeros({2, 300000}, DType::f64));    // a row of 2.4 MB: chunks within a row
    write_tensor(f, "/scalar", make_tensor({}, DType::f64, 2));
    write_tensor(f, "/empty", zeros({0, 3}));
  }
  H5File f(path, H5File::Mode::read);
  const auto layout = [&](const char* name) {
    const hid_t dset = H5Dopen2(f.id(), name, H5P_DEFAULT);
    const hid_t dcpl = H5Dget_create_plist(dset);
    const H5D_layout_t kind = H5Pget_layout(dcpl);
    std::string text = kind == H5D_CHUNKED ? "chunked" : kind == H5D_COMPACT ? "compact" : "contiguous";
    if (kind == H5D_CHUNKED) {
      hsize_t chunk[2] = {0, 0};
      const int rank = H5Pget_chunk(dcpl, 2, chunk);
      for (int d = 0; d < rank; ++d) text += " " + std::to_string(chunk[d]);
      unsigned flags = 0, config = 0;
      size_t n = 0;
      if (H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &n, nullptr, 0, nullptr, &config) >= 0)
        text += " fletcher32";
    }
    H5Pclose(dcpl);
    H5Dclose(dset);
    return text;
  };
  BOOST_TEST(layout("/small") == "chunked 3 5 fletcher32");
  BOOST_TEST(layout("/rows") == "chunked 262 1000 fletcher32");
  BOOST_TEST(layout("/wide") == "chunked 1 131072 fletcher32");
  BOOST_TEST(layout("/scalar") == "compact");
  BOOST_TEST(layout("/empty") == "contiguous");
  check_bit_equal(read_tensor(f, "/rows"), zeros({600, 1000}));
  check_bit_equal(read_tensor(f, "/wide"), zeros({2, 300000}, DType::f64));
  check_bit_equal(read_tensor(f, "/scalar"), make_tensor({}, DType::f64, 2));
  check_bit_equal(read_tensor(f, "/empty"), zeros({0, 3}));
}

BOOST_AUTO_TEST_CASE(a_flipped_bit_in_dataset_data_is_an_error_not_a_wrong_number) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("data.h5");
  const Tensor small = counting(1000), large = counting(300000);  // one chunk; three chunks
  for (const auto& [name, t, at] :
       {std::tuple{"/small", small, int64_t(500)}, std::tuple{"/large", large, int64_t(299990)}}) {
    BOOST_TEST_CONTEXT(name) {
      {
        H5File f(path, H5File::Mode::create);
        write_tensor(f, name, t);
      }
      flip_bit(path, only_offset(read_bytes(path), raw_bytes(t, at, 4)) + 9, 6);
      H5File f(path, H5File::Mode::read);
      check_error([&] { read_tensor(f, name); }, {name, path, "cannot read"});
    }
  }
}

BOOST_AUTO_TEST_CASE(a_damaged_chunk_index_is_an_error_not_zeros) {
  // The chunk index (a version 1 B-tree) has no checksum: a chunk whose key is damaged is not
  // found, and HDF5 would read it as zeros; one with its filter mask flipped skips the checksum.
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("index.h5");
  const Tensor t = counting(1000);
  {
    H5File f(path, H5File::Mode::create);
    write_tensor(f, "/x", t);
  }
  // A leaf node: "TREE", type 1, level 0, 2 bytes of entries, two sibling addresses, then the
  // first key: chunk size (4), filter mask (4), offset in each dim and in the element (8 each).
  // (HDF5 finds a chunk by its offset / the chunk size: damage below bit 10 of the offset
  // here is harmless.)
  const size_t node = only_offset(read_bytes(path), "TREE");
  const size_t key = node + 4 + 1 + 1 + 2 + 8 + 8;
  const std::string good = read_bytes(path);
  for (const auto& [offset, problem] : {std::pair{key + 4 + 4 + 1, "missing"}, std::pair{key + 4 + 4 + 3, "missing"},
                                        std::pair{key + 4, "stored without its checksum"}}) {
    BOOST_TEST_CONTEXT(offset - key) {
      write_bytes(path, good);
      flip_bit(path, offset, 2);
      H5File f(path, H5File::Mode::read);
      check_error([&] { read_tensor(f, "/x"); }, {"/x", path, "damaged", problem});
    }
  }
}

BOOST_AUTO_TEST_CASE(an_absurd_shape_is_refused_before_allocating) {
  TempDir tmp("normlab_test_hdf5");
  H5File f(tmp.file("huge.h5"), H5File::Mode::create);
  // Datasets that claim 2^40 elements (8 TiB of f64) and 2^80 (more than 64 bits count),
  // with no data written.
  const auto create = [&](const char* name, std::vector<hsize_t> dims) {
    const hid_t space = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
    const hid_t dset = H5Dcreate2(f.id(), name, H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    BOOST_TEST_REQUIRE(dset >= 0);
    H5Dclose(dset);
    H5Sclose(space);
  };
  create("/huge", {hsize_t(1) << 40});
  create("/overflowing", {hsize_t(1) << 40, hsize_t(1) << 40});
  check_error([&] { read_tensor(f, "/huge"); }, {"/huge", "[1099511627776]", "8.0 TiB", "memory"});
  check_error([&] { read_tensor(f, "/overflowing"); }, {"/overflowing", "[1099511627776, 1099511627776]", "memory"});
  check_error([&] { read_doubles(f, "/huge"); }, {"/huge", "memory"});
}

BOOST_AUTO_TEST_CASE(opening_what_is_not_an_hdf5_file_says_what_it_is) {
  TempDir tmp("normlab_test_hdf5");
  const std::string good = tmp.file("good.h5");
  {
    H5File f(good, H5File::Mode::create);
    write_tensor(f, "/x", counting(100));
  }
  const std::string truncated = tmp.write("truncated.h5", read_bytes(good).substr(0, 1000));
  const std::string text = tmp.write("text.h5", "plain text, long enough to hold a signature\n");
  const std::string empty_file = tmp.write("empty.h5", "");
  for (const H5File::Mode mode : {H5File::Mode::read, H5File::Mode::read_write}) {
    const std::string folder = tmp.dir.string();
    check_error([&] { H5File f(folder, mode); }, {"'" + folder + "' is a folder, not an HDF5 file"});
    check_error([&] { H5File f(text, mode); }, {"'" + text + "' is not an HDF5 file"});
    check_error([&] { H5File f(empty_file, mode); }, {"'" + empty_file + "' is empty"});
    check_error([&] { H5File f(truncated, mode); }, {"'" + truncated + "' is truncated or damaged", "truncated file"});
    const std::string message = error_of([&] { H5File f(truncated, mode); });
    BOOST_TEST(message.find('\n') == std::string::npos, message);
  }
  check_error([&] { H5File f("/dev/null", H5File::Mode::read); }, {"'/dev/null' is not a regular file"});
}

BOOST_AUTO_TEST_CASE(writable_files_are_written_out_on_close_and_dropped_by_an_exception) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("w.h5");
  {
    H5File f(path, H5File::Mode::create);
    write_attribute(f, "/", "version", "old");
    f.flush();  // on disk now
    H5File r(path, H5File::Mode::read);
    BOOST_TEST(read_attribute_string(r, "/", "version") == "old");
  }
  // Changes made before an exception leaves the scope are dropped.
  try {
    H5File f(path, H5File::Mode::read_write);
    write_attribute(f, "/", "version", "new");
    throw std::runtime_error("the writer failed");
  } catch (const std::runtime_error&) {
  }
  {
    H5File f(path, H5File::Mode::read);
    BOOST_TEST(read_attribute_string(f, "/", "version") == "old");
  }
  // An H5File closed during the unwinding of an exception thrown before it was opened is
  // written out as usual.
  try {
    struct Writer {
      std::string path;
      ~Writer() {
        H5File f(path, H5File::Mode::read_write);
        write_attribute(f, "/", "note", "written while unwinding");
      }
    } writer{path};
    throw std::runtime_error("unrelated");
  } catch (const std::runtime_error&) {
  }
  H5File f(path, H5File::Mode::read);
  BOOST_TEST(read_attribute_string(f, "/", "note") == "written while unwinding");
}

BOOST_AUTO_TEST_CASE(files_made_by_other_tools_open_for_writing) {
  // A file in HDF5's oldest format (as h5py makes by default) gets new objects.
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("old_format.h5");
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  BOOST_TEST_REQUIRE(file >= 0);
  const hsize_t n = 4;
  const hid_t space = H5Screate_simple(1, &n, nullptr);
  const hid_t dset = H5Dcreate2(file, "/a", H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  const double values[4] = {1, 2, 3, 4};
  BOOST_TEST_REQUIRE(H5Dwrite(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) >= 0);
  H5Dclose(dset);
  H5Sclose(space);
  BOOST_TEST_REQUIRE(H5Fclose(file) >= 0);
  update_file_atomically(path, [](H5File& f) {
    write_tensor(f, "/b", counting(3));
    write_attribute(f, "/", "version", "new");
  });
  H5File f(path, H5File::Mode::read);
  BOOST_TEST(read_doubles(f, "/a") == (std::vector<double>{1, 2, 3, 4}), boost::test_tools::per_element());
  check_bit_equal(read_tensor(f, "/b"), counting(3));
  BOOST_TEST(read_attribute_string(f, "/", "version") == "new");
}

BOOST_AUTO_TEST_CASE(atomic_writes_replace_the_file_or_leave_it) {
  TempDir tmp("normlab_test_hdf5");
  const std::string path = tmp.file("atomic.h5");
  write_file_atomically(path, [](H5File& f) {
    write_attribute(f, "/", "version", "old");
    write_tensor(f, "/x", counting(10));
  });
  BOOST_TEST(!fs::exists(path + ".tmp"));
  // A writer that throws: the exception comes through, the old file stays.
  for (const bool update : {false, true}) {
    BOOST_TEST_CONTEXT("update " << update) {
      const auto throwing = [](H5File& f) {
        write_attribute(f, "/", "version", "new");
        NL_FAIL("the writer failed on '", f.path(), "'");
      };
      check_write_fails_and_keeps_old_file(
          path, [&] { update ? update_file_atomically(path, throwing) : write_file_atomically(path, throwing); },
          "the writer failed");
    }
  }
  // update_file_atomically keeps what it does not change; write_file_atomically starts anew.
  update_file_atomically(path, [](H5File& f) { write_attribute(f, "/", "version", "new"); });
  {
    H5File f(path, H5File::Mode::read);
    BOOST_TEST(read_attribute_string(f, "/", "version") == "new");
    check_bit_equal(read_tensor(f, "/x"), counting(10));
  }
  write_file_atomically(path, [](H5File& f) { write_attribute(f, "/", "version", "newer"); });
  H5File f(path, H5File::Mode::read);
  BOOST_TEST(!f.exists("/x"));
  BOOST_TEST(!fs::exists(path + ".tmp"));
  // A missing file is created by update_file_atomically.
  update_file_atomically(tmp.file("new.h5"), [](H5File& g) { write_attribute(g, "/", "version", "first"); });
  H5File g(tmp.file("new.h5"), H5File::Mode::read);
  BOOST_TEST(read_attribute_string(g, "/", "version") == "first");
}

BOOST_AUTO_TEST_CASE(a_full_disk_fails_the_write_and_leaves_the_old_file) {
  // HDF5 1.10 crashed at exit after failing to close a file on a full disk; now the failure
  // is an Error, the old file stays, and no temporary file is left. A file size limit
  // (RLIMIT_FSIZE) always; a tiny tmpfs too where this process may mount one.
  TempDir tmp("normlab_test_hdf5");
  const auto write_old = [](const std::string& path) {
    write_file_atomically(path, [](H5File& f) { write_attribute(f, "/", "version", "old"); });
  };
  const Tensor big = counting(200000);  // 1.6 MB
  const auto write_big = [&](H5File& f) { write_tensor(f, "/big", big); };
  const auto check_full = [&](const std::string& path, const std::string& reason) {
    check_write_fails_and_keeps_old_file(path, [&] { write_file_atomically(path, write_big); }, reason);
    check_write_fails_and_keeps_old_file(path, [&] { update_file_atomically(path, write_big); }, reason);
    // A plain H5File reports it from close(), and HDF5 is left in order (no crash at exit).
    const std::string plain = path + ".plain";
    check_error(
        [&] {
          H5File f(plain, H5File::Mode::create);
          write_big(f);
          f.close();
        },
        {reason, plain});
    fs::remove(plain);
  };
  {
    const std::string path = tmp.file("limited.h5");
    write_old(path);
    FileSizeLimit limit(256 * 1024);
    check_full(path, "File too large");
  }
  const std::string mounted = tmp.file("small_disk");
  SmallDisk disk(mounted, "256k");
  if (!disk.mounted()) {
    BOOST_TEST_MESSAGE("no tmpfs (" << disk.why_not() << "): the full disk was tested with a file size limit only");
    return;
  }
  const std::string path = mounted + "/full.h5";
  write_old(path);
  check_full(path, "No space left on device");
  BOOST_TEST(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0);
}

BOOST_AUTO_TEST_SUITE_END()
