#include "framework/hdf5.h"

#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

namespace normlab {

namespace {

// Switches off HDF5's automatic error-stack printing; failures become normlab::Error.
// The setting is per thread in thread-safe HDF5 builds, so each thread does it once.
void silence_hdf5() {
  thread_local const bool silenced = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)silenced;
}

// HDF5's reason for the last failure on this thread: the most specific entry of its error
// stack (e.g. "unable to open file: name = ..., errno = 2, ..."). Clears the stack.
std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
        if (n == 0 && err->desc) *static_cast<std::string*>(data) = err->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? std::string("no reason given") : reason;
}

}  // namespace

// H5_CHECK(cond, "message parts", ...): throws normlab::Error with the message and HDF5's reason.
// Use it right after the failing call: any HDF5 call in between clears the error stack.
#define H5_CHECK(cond, ...)                                         \
  do {                                                              \
    if (!(cond)) [[unlikely]]                                       \
      NL_FAIL(__VA_ARGS__, " (HDF5: ", hdf5_reason(), ")");         \
  } while (0)

namespace {

// Owns one hid_t and closes it with the matching H5*close function. An id < 0 (a failed
// HDF5 call) is held as invalid and never closed.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), close_(o.close_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      close_ = o.close_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0) close_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

using Parts = std::vector<std::string>;

// "/a//b.c/" -> {"a", "b.c"}: only '/' separates, empty components are dropped.
Parts split_path(const std::string& path) {
  Parts parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// The absolute path of the first `count` parts ("/" for none).
std::string join_path(const Parts& parts, size_t count) {
  if (count == 0) return "/";
  std::string out;
  for (size_t i = 0; i < count; ++i) out += "/" + parts[i];
  return out;
}
std::string join_path(const Parts& parts) { return join_path(parts, parts.size()); }

// "'/a/b' in 'file.h5'", for messages.
std::string describe(const H5File& file, const Parts& parts) {
  return detail::concat("'", join_path(parts), "' in '", file.path(), "'");
}

void require_open(const H5File& file, const char* op) {
  silence_hdf5();
  NL_CHECK(file.is_open(), op, ": HDF5 file '", file.path(), "' is closed");
}

void require_writable(const H5File& file, const char* op) {
  require_open(file, op);
  NL_CHECK(file.mode() != H5File::Mode::read, op, ": HDF5 file '", file.path(),
           "' is open read-only (open it with Mode::read_write or Mode::create)");
}

// Opens the object at the first `count` components of `parts` (any object type). With
// `create`, missing groups along the way are created and an ancestor that is not a group
// throws; without, a missing object or non-group ancestor gives an invalid Handle.
Handle open_object(const H5File& file, const Parts& parts, size_t count, bool create, const char* op) {
  Handle cur(H5Oopen(file.id(), "/", H5P_DEFAULT), H5Oclose);
  H5_CHECK(cur, op, ": cannot open the root group of '", file.path(), "'");
  for (size_t i = 0; i < count; ++i) {
    if (H5Iget_type(cur.get()) != H5I_GROUP) {
      if (!create) return {};
      NL_FAIL(op, ": cannot create '", join_path(parts, count), "' in '", file.path(), "': '",
              join_path(parts, i), "' is not a group");
    }
    const char* name = parts[i].c_str();
    const htri_t link = H5Lexists(cur.get(), name, H5P_DEFAULT);
    H5_CHECK(link >= 0, op, ": cannot look up '", join_path(parts, i + 1), "' in '", file.path(), "'");
    // A link may exist but dangle (a soft link to nothing): that counts as missing.
    const htri_t target = link > 0 ? H5Oexists_by_name(cur.get(), name, H5P_DEFAULT) : 0;
    H5_CHECK(target >= 0, op, ": cannot look up '", join_path(parts, i + 1), "' in '", file.path(), "'");
    Handle next;
    if (target > 0) {
      next = Handle(H5Oopen(cur.get(), name, H5P_DEFAULT), H5Oclose);
      H5_CHECK(next, op, ": cannot open '", join_path(parts, i + 1), "' in '", file.path(), "'");
    } else if (!create) {
      return {};
    } else {
      next = Handle(H5Gcreate2(cur.get(), name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Oclose);
      H5_CHECK(next, op, ": cannot create group '", join_path(parts, i + 1), "' in '", file.path(), "'");
    }
    cur = std::move(next);
  }
  return cur;
}

// The native HDF5 type a dtype is stored and read as (library-owned: never closed).
hid_t native_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return H5T_NATIVE_FLOAT;
    case DType::f64: return H5T_NATIVE_DOUBLE;
    case DType::bf16: return H5T_NATIVE_UINT16;  // raw bits; tagged by normlab_dtype="bf16"
    case DType::i64: return H5T_NATIVE_INT64;
  }
  NL_FAIL("hdf5: unknown dtype ", int(dtype));
}

const char* type_class_name(H5T_class_t cls) {
  switch (cls) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_TIME: return "time";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "variable-length";
    case H5T_ARRAY: return "array";
    default: return "unknown";
  }
}

// A variable-length UTF-8 C string type.
Handle vlen_string_type() {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5_CHECK(type, "hdf5: cannot create a string type");
  H5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE) >= 0, "hdf5: cannot create a string type");
  H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8) >= 0, "hdf5: cannot create a string type");
  return type;
}

// Writes a scalar attribute `name` on `obj`, replacing one of the same name.
// `where` describes obj for messages ("'/a' in 'file.h5'").
void put_attribute(hid_t obj, const std::string& name, hid_t type, const void* value, const std::string& where,
                   const char* op) {
  NL_CHECK(!name.empty(), op, ": empty attribute name for ", where);
  const htri_t found = H5Aexists(obj, name.c_str());
  H5_CHECK(found >= 0, op, ": cannot look up attribute '", name, "' of ", where);
  if (found > 0)
    H5_CHECK(H5Adelete(obj, name.c_str()) >= 0, op, ": cannot replace attribute '", name, "' of ", where);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5_CHECK(space, op, ": cannot create a scalar dataspace");
  Handle attr(H5Acreate2(obj, name.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  H5_CHECK(attr, op, ": cannot create attribute '", name, "' of ", where);
  H5_CHECK(H5Awrite(attr.get(), type, value) >= 0, op, ": cannot write attribute '", name, "' of ", where);
}

// Opens attribute `name` of `obj`, which must hold exactly one element.
Handle open_attribute(hid_t obj, const std::string& name, const std::string& where, const char* op) {
  const htri_t found = H5Aexists(obj, name.c_str());
  H5_CHECK(found >= 0, op, ": cannot look up attribute '", name, "' of ", where);
  NL_CHECK(found > 0, op, ": ", where, " has no attribute '", name, "'");
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  H5_CHECK(attr, op, ": cannot open attribute '", name, "' of ", where);
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  H5_CHECK(space, op, ": cannot read the dataspace of attribute '", name, "' of ", where);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  NL_CHECK(n == 1, op, ": attribute '", name, "' of ", where, " has ", n, " elements, expected a scalar");
  return attr;
}

H5T_class_t attribute_class(hid_t attr, const std::string& name, const std::string& where, const char* op) {
  Handle type(H5Aget_type(attr), H5Tclose);
  H5_CHECK(type, op, ": cannot read the type of attribute '", name, "' of ", where);
  return H5Tget_class(type.get());
}

// Reads a string attribute, fixed-length (any padding) or variable-length.
std::string get_string_attribute(hid_t attr, const std::string& name, const std::string& where, const char* op) {
  Handle type(H5Aget_type(attr), H5Tclose);
  H5_CHECK(type, op, ": cannot read the type of attribute '", name, "' of ", where);
  const H5T_class_t cls = H5Tget_class(type.get());
  NL_CHECK(cls == H5T_STRING, op, ": attribute '", name, "' of ", where, " is ", type_class_name(cls),
           ", expected string");
  const htri_t variable = H5Tis_variable_str(type.get());
  H5_CHECK(variable >= 0, op, ": cannot read the type of attribute '", name, "' of ", where);
  if (variable > 0) {
    Handle mem = vlen_string_type();
    H5_CHECK(H5Tset_cset(mem.get(), H5Tget_cset(type.get())) >= 0, op, ": cannot read attribute '", name,
             "' of ", where);
    char* raw = nullptr;
    H5_CHECK(H5Aread(attr, mem.get(), &raw) >= 0, op, ": cannot read attribute '", name, "' of ", where);
    const std::unique_ptr<char, herr_t (*)(void*)> owned(raw, H5free_memory);
    return raw ? std::string(raw) : std::string();
  }
  const size_t size = H5Tget_size(type.get());
  std::string value(size, '\0');
  H5_CHECK(H5Aread(attr, type.get(), value.data()) >= 0, op, ": cannot read attribute '", name, "' of ", where);
  if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) {
    value.erase(value.find_last_not_of(' ') + 1);
  } else if (const size_t nul = value.find('\0'); nul != std::string::npos) {
    value.resize(nul);
  }
  return value;
}

// The dtype a dataset reads back as: bf16 when tagged normlab_dtype="bf16", else from
// its HDF5 type class and size.
DType stored_dtype(hid_t dset, const std::string& where) {
  constexpr const char* op = "read_tensor";
  Handle type(H5Dget_type(dset), H5Tclose);
  H5_CHECK(type, op, ": cannot read the type of ", where);
  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  const htri_t tagged = H5Aexists(dset, "normlab_dtype");
  H5_CHECK(tagged >= 0, op, ": cannot look up attribute 'normlab_dtype' of ", where);
  if (tagged > 0) {
    Handle attr = open_attribute(dset, "normlab_dtype", where, op);
    const std::string tag = get_string_attribute(attr.get(), "normlab_dtype", where, op);
    NL_CHECK(tag == "bf16", op, ": ", where, " has normlab_dtype '", tag, "', expected 'bf16'");
    NL_CHECK(cls == H5T_INTEGER && size == 2, op, ": ", where, " is tagged bf16 but stores ", size, "-byte ",
             type_class_name(cls), " values, expected 2-byte integers");
    return DType::bf16;
  }
  if (cls == H5T_FLOAT) return size <= 4 ? DType::f32 : DType::f64;
  if (cls == H5T_INTEGER) return DType::i64;
  NL_FAIL(op, ": ", where, " holds ", type_class_name(cls), " values, expected float or integer");
}

Shape stored_shape(hid_t dset, const std::string& where) {
  constexpr const char* op = "read_tensor";
  Handle space(H5Dget_space(dset), H5Sclose);
  H5_CHECK(space, op, ": cannot read the dataspace of ", where);
  const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  if (cls == H5S_SCALAR) return {};
  NL_CHECK(cls == H5S_SIMPLE, op, ": ", where, " has a null or unknown dataspace, expected scalar or simple");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  H5_CHECK(rank >= 0, op, ": cannot read the rank of ", where);
  std::vector<hsize_t> dims(size_t(rank), 0);
  H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) >= 0, op, ": cannot read the shape of ",
           where);
  return Shape(dims.begin(), dims.end());
}

// Opens the object that an attribute lives on, creating it as a group when asked.
Handle attribute_owner(const H5File& file, const std::string& object_path, bool create, std::string& where,
                       const char* op) {
  const Parts parts = split_path(object_path);
  where = describe(file, parts);
  return open_object(file, parts, parts.size(), create, op);
}

void write_attribute_raw(H5File& file, const std::string& object_path, const std::string& name, hid_t type,
                         const void* value) {
  constexpr const char* op = "write_attribute";
  require_writable(file, op);
  std::string where;
  Handle obj = attribute_owner(file, object_path, /*create=*/true, where, op);
  put_attribute(obj.get(), name, type, value, where, op);
}

// Opens attribute `name` of the object at object_path for reading; throws if either is missing.
Handle open_attribute_at(const H5File& file, const std::string& object_path, const std::string& name,
                         std::string& where, const char* op) {
  require_open(file, op);
  Handle obj = attribute_owner(file, object_path, /*create=*/false, where, op);
  NL_CHECK(obj, op, ": no object ", where, " (reading attribute '", name, "')");
  return open_attribute(obj.get(), name, where, op);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// H5File

H5File::H5File(const std::string& path, Mode mode) : path_(path), mode_(mode) {
  silence_hdf5();
  const char* verb = mode == Mode::read ? "open for reading" : mode == Mode::read_write ? "open for writing" : "create";
  if (mode != Mode::create) {
    std::error_code ec;
    NL_CHECK(std::filesystem::exists(path, ec), "H5File: cannot ", verb, " '", path, "': no such file");
  }
  // New files use the 1.8 object format: readable by every current HDF5 and without the
  // 64 KiB limit on attributes. An opened file keeps the format it was created with.
  // (fapl lives until after the check below: closing it would clear HDF5's error stack.)
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5_CHECK(fapl, "H5File: cannot create a file access property list");
  H5_CHECK(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18) >= 0,
           "H5File: cannot set the file format");
  switch (mode) {
    case Mode::read: id_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT); break;
    case Mode::read_write: id_ = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT); break;
    case Mode::create: id_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()); break;
  }
  H5_CHECK(id_ >= 0, "H5File: cannot ", verb, " '", path, "'");
}

H5File::~H5File() {
  if (id_ >= 0) H5Fclose(id_);
}

H5File::H5File(H5File&& other) noexcept
    : id_(std::exchange(other.id_, H5I_INVALID_HID)), path_(other.path_), mode_(other.mode_) {}

H5File& H5File::operator=(H5File&& other) noexcept {
  if (this != &other) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = std::exchange(other.id_, H5I_INVALID_HID);
    path_ = other.path_;
    mode_ = other.mode_;
  }
  return *this;
}

bool H5File::exists(const std::string& object_path) const {
  require_open(*this, "exists");
  const Parts parts = split_path(object_path);
  return bool(open_object(*this, parts, parts.size(), /*create=*/false, "exists"));
}

void H5File::remove(const std::string& object_path) {
  require_writable(*this, "remove");
  const Parts parts = split_path(object_path);
  if (parts.empty() || !exists(object_path)) return;
  H5_CHECK(H5Ldelete(id_, join_path(parts).c_str(), H5P_DEFAULT) >= 0, "remove: cannot unlink ",
           describe(*this, parts));
}

std::vector<std::string> H5File::list(const std::string& group_path) const {
  require_open(*this, "list");
  const Parts parts = split_path(group_path);
  const Handle group = open_object(*this, parts, parts.size(), /*create=*/false, "list");
  std::vector<std::string> names;
  if (!group || H5Iget_type(group.get()) != H5I_GROUP) return names;
  auto add = [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  H5_CHECK(H5Literate(group.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, add, &names) >= 0,
           "list: cannot list the members of ", describe(*this, parts));
  return names;
}

void H5File::flush() {
  require_open(*this, "flush");
  if (mode_ == Mode::read) return;  // nothing to write
  H5_CHECK(H5Fflush(id_, H5F_SCOPE_GLOBAL) >= 0, "flush: cannot flush '", path_, "'");
}

void H5File::close() {
  if (id_ < 0) return;
  silence_hdf5();
  const hid_t id = std::exchange(id_, H5I_INVALID_HID);
  H5_CHECK(H5Fclose(id) >= 0, "H5File: closing '", path_, "' failed");
}

// ---------------------------------------------------------------------------------------------
// Tensors

void write_tensor(H5File& file, const std::string& path, const Tensor& t) {
  constexpr const char* op = "write_tensor";
  require_writable(file, op);
  const Parts parts = split_path(path);
  const std::string where = describe(file, parts);
  NL_CHECK(!parts.empty(), op, ": dataset path '", path, "' names the root group, expected a dataset name");
  NL_CHECK(t.defined(), op, ": tensor for ", where, " is undefined");
  NL_CHECK(t.device() == Device::cpu(), op, ": tensor for ", where, " is on ", t.device(), ", expected cpu");

  Handle parent = open_object(file, parts, parts.size() - 1, /*create=*/true, op);
  NL_CHECK(H5Iget_type(parent.get()) == H5I_GROUP, op, ": cannot create ", where, ": '",
           join_path(parts, parts.size() - 1), "' is not a group");

  // Replace an existing dataset (or a dangling link) of that name; never a group.
  const char* name = parts.back().c_str();
  const htri_t link = H5Lexists(parent.get(), name, H5P_DEFAULT);
  H5_CHECK(link >= 0, op, ": cannot look up ", where);
  if (link > 0) {
    Handle old = open_object(file, parts, parts.size(), /*create=*/false, op);
    NL_CHECK(!old || H5Iget_type(old.get()) == H5I_DATASET, op, ": ", where, " exists and is not a dataset");
    old.reset();
    H5_CHECK(H5Ldelete(parent.get(), name, H5P_DEFAULT) >= 0, op, ": cannot replace ", where);
  }

  const Tensor c = t.contiguous();
  const hid_t type = native_type(c.dtype());
  Handle space;
  if (c.dim() == 0) {
    space = Handle(H5Screate(H5S_SCALAR), H5Sclose);
  } else {
    const std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
    space = Handle(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  }
  H5_CHECK(space, op, ": cannot create a dataspace of shape ", to_string(c.shape()), " for ", where);
  Handle dset(H5Dcreate2(parent.get(), name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  H5_CHECK(dset, op, ": cannot create dataset ", where);
  if (c.numel() > 0)
    H5_CHECK(H5Dwrite(dset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw_data()) >= 0, op,
             ": cannot write dataset ", where);
  if (c.dtype() == DType::bf16) {
    Handle str = vlen_string_type();
    const char* tag = "bf16";
    put_attribute(dset.get(), "normlab_dtype", str.get(), &tag, where, op);
  }
}

Tensor read_tensor(const H5File& file, const std::string& path) {
  constexpr const char* op = "read_tensor";
  require_open(file, op);
  const Parts parts = split_path(path);
  const std::string where = describe(file, parts);
  Handle dset = open_object(file, parts, parts.size(), /*create=*/false, op);
  NL_CHECK(dset, op, ": no dataset ", where);
  NL_CHECK(H5Iget_type(dset.get()) == H5I_DATASET, op, ": ", where, " is not a dataset");

  const Shape shape = stored_shape(dset.get(), where);
  const DType dtype = stored_dtype(dset.get(), where);
  Tensor out = empty(shape, dtype);
  if (out.numel() > 0)
    H5_CHECK(H5Dread(dset.get(), native_type(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.raw_data()) >= 0, op,
             ": cannot read dataset ", where, " as ", dtype_name(dtype));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Attributes

void write_attribute(H5File& file, const std::string& object_path, const std::string& name, double value) {
  write_attribute_raw(file, object_path, name, H5T_NATIVE_DOUBLE, &value);
}

void write_attribute(H5File& file, const std::string& object_path, const std::string& name, int64_t value) {
  write_attribute_raw(file, object_path, name, H5T_NATIVE_INT64, &value);
}

void write_attribute(H5File& file, const std::string& object_path, const std::string& name,
                     const std::string& value) {
  NL_CHECK(value.find('\0') == std::string::npos, "write_attribute: string value of attribute '", name,
           "' on '", object_path, "' contains a '\\0' byte");
  silence_hdf5();
  Handle type = vlen_string_type();
  const char* chars = value.c_str();
  write_attribute_raw(file, object_path, name, type.get(), &chars);
}

void write_attribute(H5File& file, const std::string& object_path, const std::string& name, const char* value) {
  NL_CHECK(value != nullptr, "write_attribute: null string value for attribute '", name, "' on '",
           object_path, "'");
  write_attribute(file, object_path, name, std::string(value));
}

double read_attribute_double(const H5File& file, const std::string& object_path, const std::string& name) {
  constexpr const char* op = "read_attribute_double";
  std::string where;
  Handle attr = open_attribute_at(file, object_path, name, where, op);
  const H5T_class_t cls = attribute_class(attr.get(), name, where, op);
  NL_CHECK(cls == H5T_FLOAT || cls == H5T_INTEGER, op, ": attribute '", name, "' of ", where, " is ",
           type_class_name(cls), ", expected float or integer");
  double value = 0;
  H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value) >= 0, op, ": cannot read attribute '", name, "' of ",
           where);
  return value;
}

int64_t read_attribute_int(const H5File& file, const std::string& object_path, const std::string& name) {
  constexpr const char* op = "read_attribute_int";
  std::string where;
  Handle attr = open_attribute_at(file, object_path, name, where, op);
  const H5T_class_t cls = attribute_class(attr.get(), name, where, op);
  NL_CHECK(cls == H5T_INTEGER, op, ": attribute '", name, "' of ", where, " is ", type_class_name(cls),
           ", expected integer");
  int64_t value = 0;
  H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value) >= 0, op, ": cannot read attribute '", name, "' of ",
           where);
  return value;
}

std::string read_attribute_string(const H5File& file, const std::string& object_path, const std::string& name) {
  constexpr const char* op = "read_attribute_string";
  std::string where;
  Handle attr = open_attribute_at(file, object_path, name, where, op);
  return get_string_attribute(attr.get(), name, where, op);
}

bool has_attribute(const H5File& file, const std::string& object_path, const std::string& name) {
  constexpr const char* op = "has_attribute";
  require_open(file, op);
  std::string where;
  Handle obj = attribute_owner(file, object_path, /*create=*/false, where, op);
  if (!obj || name.empty()) return false;
  const htri_t found = H5Aexists(obj.get(), name.c_str());
  H5_CHECK(found >= 0, op, ": cannot look up attribute '", name, "' of ", where);
  return found > 0;
}

}  // namespace normlab

namespace normlab {

namespace {

template <class T>
void write_vector_as(H5File& file, const std::string& path, const std::vector<T>& v, DType dtype) {
  Tensor t = empty({int64_t(v.size())}, dtype);
  std::copy(v.begin(), v.end(), t.data<T>());
  write_tensor(file, path, t);
}

template <class T>
std::vector<T> read_vector_as(const H5File& file, const std::string& path, DType dtype) {
  if (!file.exists(path)) return {};
  const Tensor t = read_tensor(file, path).contiguous();
  NL_CHECK(t.dim() == 1 && t.dtype() == dtype, "read_vector: '", path, "' in '", file.path(), "' is ",
           to_string(t.shape()), " ", dtype_name(t.dtype()), ", expected a 1-D ", dtype_name(dtype), " dataset");
  return std::vector<T>(t.data<T>(), t.data<T>() + t.numel());
}

}  // namespace

void write_vector(H5File& file, const std::string& path, const std::vector<double>& v) {
  write_vector_as(file, path, v, DType::f64);
}
void write_vector(H5File& file, const std::string& path, const std::vector<int64_t>& v) {
  write_vector_as(file, path, v, DType::i64);
}
std::vector<double> read_doubles(const H5File& file, const std::string& path) {
  return read_vector_as<double>(file, path, DType::f64);
}
std::vector<int64_t> read_integers(const H5File& file, const std::string& path) {
  return read_vector_as<int64_t>(file, path, DType::i64);
}

}  // namespace normlab
