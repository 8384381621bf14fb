// HDF5 helpers: tensor round trips (bit-exact, every dtype, 0-d to 3-d, strided views),
// groups, overwrites, attributes, exists(), and errors that name the path.
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
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

const DType all_dtypes[] = {DType::f32, DType::f64, DType::bf16, DType::i64};
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
    H5File g(path, H5File::Mode::read);
    check_bit_equal(read_tensor(g, "/a/b/x"), make_tensor({}, DType::f64, 2));
  };
  workload();
  BOOST_TEST(open_objects() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
