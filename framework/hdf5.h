// HDF5 reading and writing (HDF5 C API): an RAII file handle, tensors as datasets, and
// scalar attributes on groups and datasets.
//
// Paths are absolute HDF5 paths ("/params/blocks.0.attn.q.weight"); only '/' separates
// groups (dots are part of a name), empty components are ignored, and a path without a
// leading '/' is taken from the root. Writers create missing intermediate groups.
//
// Tensors: f32 -> NATIVE_FLOAT, f64 -> NATIVE_DOUBLE, i64 -> NATIVE_INT64, and bf16 and f16 ->
// uint16 bits with the attribute normlab_dtype="bf16" or "f16". A 0-d tensor is a scalar
// dataspace. read_tensor also reads datasets written by other tools (h5py): any float
// type up to 4 bytes reads as f32, wider floats as f64, any integer type as i64.
//
// Files use the HDF5 1.8 object format (readable by HDF5 >= 1.8, h5py, and others),
// which keeps large attributes in dense storage and checksums all metadata. Datasets are
// chunked (one chunk when small, chunks of at most 1 MiB along the leading dimensions
// otherwise) with the Fletcher32 checksum filter, and scalars live in their (checksummed)
// object header, so a damaged byte gives an error rather than a wrong number. HDF5 does
// not reclaim the space of a replaced dataset; h5repack compacts a file.
//
// Writable files are built in memory: HDF5 never writes to disk itself (HDF5 1.10 crashes
// at exit after a failed close, e.g. on a full disk). close() writes the file out and
// syncs it, reporting any failure. write_file_atomically and update_file_atomically write
// through a temporary file renamed over the old one, so a failure leaves the old file.
//
// Errors throw normlab::Error naming the path, the file and HDF5's own reason; HDF5's
// automatic error printing is switched off. The serial HDF5 library is not thread-safe:
// do not call these functions from several threads at once.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "framework/tensor.h"

namespace normlab {

class H5File {
 public:
  enum class Mode {
    read,        // existing file, read-only
    read_write,  // existing file, loaded into memory and written back by close()
    create,      // new file (an existing one is truncated now), written by close()
  };

  H5File(const std::string& path, Mode mode);
  // A writable file still open is written out (errors ignored: call close() to see them),
  // unless an exception thrown since it was opened is unwinding the stack: then its
  // changes are dropped.
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
  // Writes a writable file out to its path now (synced) and keeps it open; a no-op for a
  // read-only file.
  void flush();
  // Closes now. A writable file is first written out to its path and synced; throws if
  // that fails (the destructor cannot). The file is closed either way.
  void close();
  // Throws unless every global heap of the file is well-formed; done once per file before
  // reading a variable-length string (old files hold them there, without a checksum).
  void check_global_heaps() const;

 private:
  friend void write_file_atomically(const std::string& path, const std::function<void(H5File&)>& write);
  friend void update_file_atomically(const std::string& path, const std::function<void(H5File&)>& change);
  // A writable file named `path` that is written to the open descriptor `out` (owned from now on).
  H5File(const std::string& path, Mode mode, int out);
  // Writes a file made by `write` to path + ".tmp" and renames it over `path` (see below).
  static void replace(const std::string& path, Mode mode, const std::function<void(H5File&)>& write);
  void write_out();
  // What the destructor does: writes out a writable file (unless an exception is unwinding
  // since it was opened), dropping errors, and closes.
  void close_quietly() noexcept;
  void release() noexcept;  // closes without writing out

  hid_t id_ = H5I_INVALID_HID;
  std::string path_;
  Mode mode_ = Mode::read;
  int out_ = -1;                        // where a writable file is written out
  int uncaught_exceptions_ = 0;         // std::uncaught_exceptions() when opened
  mutable bool heaps_checked_ = false;  // the file's global heaps were found well-formed
};

// Writes a new file at `path` with `write`: the file is made in memory, written to
// path + ".tmp", synced, renamed over `path`, and the folder synced. On any failure
// (`write` throwing included) the temporary file is removed, `path` is left as it was, and
// the exception is rethrown.
void write_file_atomically(const std::string& path, const std::function<void(H5File&)>& write);
// Likewise, starting from the contents of the file at `path` (from an empty file when
// there is none): read, changed by `change`, and replaced as a whole.
void update_file_atomically(const std::string& path, const std::function<void(H5File&)>& change);

// Writes `t` (any layout; cpu) as a dataset at `path`, replacing an existing dataset.
void write_tensor(H5File& file, const std::string& path, const Tensor& t);
// Reads the dataset at `path` with its stored dtype and shape. Refuses (before allocating)
// a dataset larger than this machine's physical memory, and a damaged one.
Tensor read_tensor(const H5File& file, const std::string& path);

// 1-D f64 / i64 datasets from and to std::vector; the readers return {} for a missing
// dataset and throw for one of another dtype or rank.
void write_vector(H5File& file, const std::string& path, const std::vector<double>& v);
void write_vector(H5File& file, const std::string& path, const std::vector<int64_t>& v);
std::vector<double> read_doubles(const H5File& file, const std::string& path);
std::vector<int64_t> read_integers(const H5File& file, const std::string& path);

// Scalar attributes on the object at object_path ("/" is the root). Writing creates the
// object as a group when it is missing, and replaces an attribute of the same name.
// Strings are stored as fixed-length UTF-8 (null-padded) and must not contain '\0'; both
// fixed- and variable-length strings are read.
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
