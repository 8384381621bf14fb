// HDF5 reading and writing (HDF5 C API): an RAII file handle, tensors as datasets, and
// scalar attributes on groups and datasets.
//
// Paths are absolute HDF5 paths ("/params/blocks.0.attn.q.weight"); only '/' separates
// groups (dots are part of a name), empty components are ignored, and a path without a
// leading '/' is taken from the root. Writers create missing intermediate groups.
//
// Tensors: f32 -> NATIVE_FLOAT, f64 -> NATIVE_DOUBLE, i64 -> NATIVE_INT64, and bf16 ->
// uint16 bits with the attribute normlab_dtype="bf16". A 0-d tensor is a scalar
// dataspace. read_tensor also reads datasets written by other tools (h5py): any float
// type up to 4 bytes reads as f32, wider floats as f64, any integer type as i64.
//
// Files use the HDF5 1.8 object format (readable by HDF5 >= 1.8, h5py, and others),
// which keeps large attributes in dense storage. HDF5 does not reclaim the space of a
// replaced dataset; h5repack compacts a file.
//
// Errors throw normlab::Error naming the path, the file and HDF5's own reason; HDF5's
// automatic error printing is switched off. The serial HDF5 library is not thread-safe:
// do not call these functions from several threads at once.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "framework/tensor.h"

namespace normlab {

class H5File {
 public:
  enum class Mode {
    read,        // existing file, read-only
    read_write,  // existing file
    create,      // new file, truncating an existing one
  };

  H5File(const std::string& path, Mode mode);
  ~H5File();
  H5File(H5File&& other) noexcept;
  H5File& operator=(H5File&& other) noexcept;
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  hid_t id() const { return id_; }  // H5I_INVALID_HID once closed or moved from
  bool is_open() const { return id_ >= 0; }
  const std::string& path() const { return path_; }
  Mode mode() const { return mode_; }

  // Whether an object (group or dataset) exists at object_path; "/" always exists.
  // False, not an error, when any ancestor is missing or is not a group.
  bool exists(const std::string& object_path) const;
  // Unlinks the group or dataset at object_path (with everything below it) when it exists;
  // a no-op for a missing object and for the root "/".
  void remove(const std::string& object_path);
  // The names of the members of the group at group_path, in name order; empty when the
  // group is missing.
  std::vector<std::string> list(const std::string& group_path) const;
  void flush();
  // Closes now, throwing if HDF5 fails to write the file out (the destructor cannot).
  void close();

 private:
  hid_t id_ = H5I_INVALID_HID;
  std::string path_;
  Mode mode_ = Mode::read;
};

// Writes `t` (any layout; cpu) as a dataset at `path`, replacing an existing dataset.
void write_tensor(H5File& file, const std::string& path, const Tensor& t);
// Reads the dataset at `path` with its stored dtype and shape.
Tensor read_tensor(const H5File& file, const std::string& path);

// 1-D f64 / i64 datasets from and to std::vector; the readers return {} for a missing
// dataset and throw for one of another dtype or rank.
void write_vector(H5File& file, const std::string& path, const std::vector<double>& v);
void write_vector(H5File& file, const std::string& path, const std::vector<int64_t>& v);
std::vector<double> read_doubles(const H5File& file, const std::string& path);
std::vector<int64_t> read_integers(const H5File& file, const std::string& path);

// Scalar attributes on the object at object_path ("/" is the root). Writing creates the
// object as a group when it is missing, and replaces an attribute of the same name.
// Strings are stored as variable-length UTF-8 and must not contain '\0'.
void write_attribute(H5File& file, const std::string& object_path, const std::string& name, double value);
void write_attribute(H5File& file, const std::string& object_path, const std::string& name, int64_t value);
void write_attribute(H5File& file, const std::string& object_path, const std::string& name,
                     const std::string& value);
void write_attribute(H5File& file, const std::string& object_path, const std::string& name, const char* value);
// Other integer types (int, unsigned, ...) store as int64; bool is rejected at compile time.
template <class T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
void write_attribute(H5File& file, const std::string& object_path, const std::string& name, T value) {
  if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(int64_t))
    NL_CHECK(value <= T(INT64_MAX), "write_attribute: value ", value, " of attribute '", name,
             "' does not fit in int64");
  write_attribute(file, object_path, name, static_cast<int64_t>(value));
}
void write_attribute(H5File& file, const std::string& object_path, const std::string& name, bool value) = delete;

double read_attribute_double(const H5File& file, const std::string& object_path, const std::string& name);  // float or integer
int64_t read_attribute_int(const H5File& file, const std::string& object_path, const std::string& name);   // integer only
std::string read_attribute_string(const H5File& file, const std::string& object_path, const std::string& name);
// False when the object or the attribute is missing.
bool has_attribute(const H5File& file, const std::string& object_path, const std::string& name);

}  // namespace normlab
