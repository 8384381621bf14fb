#include "framework/hdf5.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <new>
#include <string_view>
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

// The main thread is silenced when the program starts, before any HDF5 call in it
// (HDF5's library initialisation included); other threads when they first call in here.
const bool silenced_at_start = (silence_hdf5(), true);

// HDF5's reason for the last failure on this thread: the most specific entry of its error
// stack, as one line. Clears the stack.
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
  if (reason.empty()) return "no reason given";
  // A failed read or write reads "file read failed: time = <ctime, with its newline>,
  // filename = ..., errno = 21, error message = 'Is a directory', buf = 0x..."; keep the
  // operation and errno's text.
  const size_t time = reason.find(": time = ");
  const size_t message = reason.find("error message = '");
  if (time != std::string::npos && message != std::string::npos) {
    const size_t text = message + std::strlen("error message = '");
    reason = reason.substr(0, time) + ": " + reason.substr(text, reason.find('\'', text) - text);
  }
  std::replace(reason.begin(), reason.end(), '\n', ' ');
  return reason;
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

// ---------------------------------------------------------------------------------------------
// Files on disk. HDF5 reads them; the bytes of a writable file, built in memory by HDF5's
// core driver, are written here with POSIX calls, so every write error is ours to report.

// Owns a file descriptor.
class Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {}
  Descriptor(Descriptor&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ~Descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  Descriptor& operator=(Descriptor&&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string errno_text(int err) { return std::strerror(err); }

// "1.5 GiB"
std::string format_bytes(double bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  size_t unit = 0;
  for (; bytes >= 1024 && unit + 1 < std::size(units); ++unit) bytes /= 1024;
  char text[64];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
  return text;
}

// Throws unless `bytes` fit in this machine's physical memory; `what` starts the message
// ("read_tensor: '/x' in 'f.h5' has shape [2, 3] of f32").
void check_fits_in_memory(double bytes, const std::string& what) {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return;  // unknown
  const double memory = double(pages) * double(page_size);
  NL_CHECK(bytes <= memory, what, " (", format_bytes(bytes), "), more than this machine's memory (",
           format_bytes(memory), ")");
}

// The whole file behind `fd`.
std::vector<char> read_all(int fd, const std::string& path) {
  struct stat st {};
  NL_CHECK(::fstat(fd, &st) == 0, "cannot read '", path, "': ", errno_text(errno));
  check_fits_in_memory(double(st.st_size), detail::concat("cannot read '", path, "' into memory"));
  std::vector<char> bytes(size_t(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pread(fd, bytes.data() + done, bytes.size() - done, off_t(done));
    if (n < 0 && errno == EINTR) continue;
    NL_CHECK(n >= 0, "cannot read '", path, "': ", errno_text(errno));
    if (n == 0) break;  // the file shrank meanwhile
    done += size_t(n);
  }
  bytes.resize(done);
  return bytes;
}

// Makes the file behind `fd` hold exactly `size` bytes from `data`, synced to the disk.
// `path` names the file in messages.
void write_all(int fd, const std::string& path, const char* data, size_t size) {
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, off_t(done));
    if (n < 0 && errno == EINTR) continue;
    NL_CHECK(n > 0, "cannot write '", path, "': ", n < 0 ? errno_text(errno) : "no progress");
    done += size_t(n);
  }
  NL_CHECK(::ftruncate(fd, off_t(size)) == 0, "cannot write '", path, "': ", errno_text(errno));
  NL_CHECK(::fsync(fd) == 0, "cannot write '", path, "': ", errno_text(errno));
}

// Syncs the folder holding `path`, so that a rename into it survives a crash.
void sync_folder_of(const std::string& path) {
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  const Descriptor fd(::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  NL_CHECK(fd.get() >= 0, "cannot sync the folder of '", path, "': ", errno_text(errno));
  // Some file systems cannot sync a folder (EINVAL); nothing more can be done there.
  NL_CHECK(::fsync(fd.get()) == 0 || errno == EINVAL, "cannot sync the folder of '", path, "': ",
           errno_text(errno));
}

constexpr char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};

// Whether a file of `size` bytes has the HDF5 signature at 0 or, after a user block, at
// 512, 1024, 2048, ...; read(offset, buf) reads 8 bytes (false when it cannot).
template <class Read>
bool has_signature(uint64_t size, const Read& read) {
  char bytes[8];
  for (uint64_t offset = 0; offset + 8 <= size; offset = offset == 0 ? 512 : offset * 2)
    if (read(offset, bytes) && std::memcmp(bytes, kSignature, 8) == 0) return true;
  return false;
}

// Opens `path` for reading, or throws one line saying why HDF5 cannot open it: missing, a
// folder, not a regular file, empty, or without the HDF5 signature.
Descriptor open_hdf5_file(const std::string& path, const char* verb) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    NL_CHECK(errno != ENOENT, "H5File: cannot ", verb, " '", path, "': no such file");
    NL_FAIL("H5File: cannot ", verb, " '", path, "': ", errno_text(errno));
  }
  NL_CHECK(!S_ISDIR(st.st_mode), "'", path, "' is a folder, not an HDF5 file");
  NL_CHECK(S_ISREG(st.st_mode), "'", path, "' is not a regular file, not an HDF5 file");
  Descriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  NL_CHECK(fd.get() >= 0, "H5File: cannot ", verb, " '", path, "': ", errno_text(errno));
  NL_CHECK(st.st_size > 0, "'", path, "' is empty, not an HDF5 file");
  const bool hdf5 = has_signature(uint64_t(st.st_size), [&](uint64_t offset, char* bytes) {
    return ::pread(fd.get(), bytes, 8, off_t(offset)) == 8;
  });
  NL_CHECK(hdf5, "'", path, "' is not an HDF5 file");
  return fd;
}

// Throws why HDF5 failed to open `path`, which has the HDF5 signature: a file locked by
// another process, or else a truncated or damaged one.
[[noreturn]] void fail_to_open(const std::string& path, const char* verb) {
  const std::string reason = hdf5_reason();
  NL_CHECK(reason.find("unable to lock") == std::string::npos, "H5File: cannot ", verb, " '", path,
           "' (HDF5: ", reason, ")");
  NL_FAIL("'", path, "' is truncated or damaged (HDF5: ", reason, ")");
}

// Bob Jenkins' lookup3 hash (hashlittle), HDF5's metadata checksum.
uint32_t lookup3(const unsigned char* k, size_t length) {
  auto rot = [](uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
  auto word = [](const unsigned char* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  };
  uint32_t a = 0xdeadbeef + uint32_t(length), b = a, c = a;
  for (; length > 12; length -= 12, k += 12) {
    a += word(k), b += word(k + 4), c += word(k + 8);
    a -= c, a ^= rot(c, 4), c += b;
    b -= a, b ^= rot(a, 6), a += c;
    c -= b, c ^= rot(b, 8), b += a;
    a -= c, a ^= rot(c, 16), c += b;
    b -= a, b ^= rot(a, 19), a += c;
    c -= b, c ^= rot(b, 4), b += a;
  }
  if (length == 0) return c;
  unsigned char tail[12] = {};  // the last 1 to 12 bytes, zero-padded
  std::memcpy(tail, k, length);
  a += word(tail), b += word(tail + 4), c += word(tail + 8);
  c ^= b, c -= rot(b, 14);
  a ^= c, a -= rot(c, 11);
  b ^= a, b -= rot(a, 25);
  c ^= b, c -= rot(b, 16);
  a ^= c, a -= rot(c, 4);
  b ^= a, b -= rot(a, 14);
  c ^= b, c -= rot(b, 24);
  return c;
}

// The bytes of a file, as HDF5 builds them in memory.
struct FileImage {
  std::unique_ptr<char[]> bytes;
  size_t size = 0;
};

// The image of the in-memory file `id`, as closing it would leave it on disk. HDF5 1.10's
// H5Fget_file_image clears the superblock's status flags (set while a file is open for
// writing) but keeps the checksum over them, so the checksum of a version 2+ superblock
// (signature, version, sizes, flags, four addresses) is computed again.
FileImage file_image(hid_t id, const std::string& path) {
  H5_CHECK(H5Fflush(id, H5F_SCOPE_LOCAL) >= 0, "cannot write '", path, "'");
  const ssize_t size = H5Fget_file_image(id, nullptr, 0);
  H5_CHECK(size >= 0, "cannot write '", path, "'");
  FileImage image;
  try {
    image = {std::make_unique_for_overwrite<char[]>(size_t(size)), size_t(size)};
  } catch (const std::bad_alloc&) {
    NL_FAIL("cannot write '", path, "': out of memory for its ", format_bytes(double(size)));
  }
  H5_CHECK(H5Fget_file_image(id, image.bytes.get(), image.size) == size, "cannot write '", path, "'");
  auto* superblock = reinterpret_cast<unsigned char*>(image.bytes.get());
  if (image.size >= 12 && std::memcmp(superblock, kSignature, 8) == 0 && superblock[8] >= 2) {
    const size_t covered = 12 + 4 * size_t(superblock[9]);
    if (covered + 4 <= image.size) {
      const uint32_t sum = lookup3(superblock, covered);
      for (size_t i = 0; i < 4; ++i) superblock[covered + i] = uint8_t(sum >> (8 * i));
    }
  }
  return image;
}

// A file access property list for a file in memory (HDF5's core driver without a backing
// file), in the 1.8 format, holding a copy of `contents` (the bytes of an existing file) if any.
Handle memory_file_access(const std::vector<char>& contents) {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5_CHECK(fapl, "H5File: cannot create a file access property list");
  // New objects in an opened file keep the 1.8 format too.
  H5_CHECK(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18) >= 0,
           "H5File: cannot set the file format");
  H5_CHECK(H5Pset_fapl_core(fapl.get(), size_t(1) << 20, /*backing_store=*/0) >= 0,
           "H5File: cannot set up a file in memory");
  if (!contents.empty())
    H5_CHECK(H5Pset_file_image(fapl.get(), const_cast<char*>(contents.data()), contents.size()) >= 0,
             "H5File: cannot set up a file in memory");
  return fapl;
}

// Opens the HDF5 file `path` read-only.
hid_t open_for_reading(const std::string& path) {
  open_hdf5_file(path, "open for reading");
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) fail_to_open(path, "open for reading");
  return id;
}

// A new file in memory, or (read_write) a copy in memory of the file at `path`.
hid_t open_in_memory(const std::string& path, H5File::Mode mode) {
  const bool existing = mode == H5File::Mode::read_write;
  const std::vector<char> contents =
      existing ? read_all(open_hdf5_file(path, "open for writing").get(), path) : std::vector<char>();
  const Handle fapl = memory_file_access(contents);
  // Chunk index nodes of 8 entries, not HDF5's 64: most datasets here are one chunk, and
  // each node takes its full size (at 64, half of a results file).
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5_CHECK(fcpl, "H5File: cannot create a file creation property list");
  H5_CHECK(H5Pset_istore_k(fcpl.get(), 4) >= 0, "H5File: cannot set the chunk index size");
  // The core driver refuses to open an image under the name of a file that exists.
  const std::string name = path + " (in memory)";
  const hid_t id = existing ? H5Fopen(name.c_str(), H5F_ACC_RDWR, fapl.get())
                            : H5Fcreate(name.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get());
  if (id < 0 && existing) fail_to_open(path, "open for writing");
  H5_CHECK(id >= 0, "H5File: cannot create '", path, "'");
  return id;
}

// The descriptor a writable file is written out to: `path`, created (truncating an
// existing file) or opened for writing; -1 for a read-only file.
int open_output(const std::string& path, H5File::Mode mode) {
  if (mode == H5File::Mode::read) return -1;
  const bool create = mode == H5File::Mode::create;
  const char* verb = create ? "create" : "open for writing";
  std::error_code ec;
  NL_CHECK(!std::filesystem::is_directory(path, ec), "'", path, "' is a folder, not an HDF5 file");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0666);
  if (fd < 0) {
    const int err = errno;
    NL_CHECK(create || err != ENOENT, "H5File: cannot ", verb, " '", path, "': no such file");
    NL_FAIL("H5File: cannot ", verb, " '", path, "': ", errno_text(err));
  }
  return fd;
}

// Old files (before strings were fixed-length) keep variable-length strings in global heap
// collections, which have no checksum; HDF5 1.10 copies a heap object by the size its
// collection states, so a damaged collection reads and writes past HDF5's buffers. Every
// collection ("GCOL", version 1) in the file behind `fd` must be well-formed: its objects
// laid end to end inside it, no object index twice. (Sizes of lengths are taken as 8 bytes,
// HDF5's default.)
void check_global_heaps(int fd, const std::string& path) {
  const std::vector<char> file = read_all(fd, path);
  auto u16 = [&](size_t at) { return uint64_t(uint8_t(file[at])) | uint64_t(uint8_t(file[at + 1])) << 8; };
  auto u64 = [&](size_t at) {
    uint64_t v = 0;
    for (size_t i = 8; i-- > 0;) v = v << 8 | uint8_t(file[at + i]);
    return v;
  };
  constexpr size_t kHeader = 16;  // of a collection and of each object in it
  const std::string_view bytes(file.data(), file.size());
  for (size_t start = bytes.find("GCOL\x01"); start != std::string_view::npos;
       start = bytes.find("GCOL\x01", start + 4)) {
    const uint64_t collection = start + kHeader <= file.size() ? u64(start + 8) : 0;
    NL_CHECK(collection >= 4096 && collection <= file.size() - start, "'", path,
             "' is damaged (its global heap at byte ", start, " has a bad size)");
    const size_t end = start + size_t(collection);
    std::vector<bool> seen(65536, false);
    // A tail too small for an object header is free space.
    for (size_t at = start + kHeader; at + kHeader <= end;) {
      const uint64_t index = u16(at), size = u64(at + 8), room = end - at;
      // Object 0 is the free space, its size counting its header; the others are padded to 8.
      const uint64_t need = index == 0 ? size : size <= room - kHeader ? kHeader + (size + 7) / 8 * 8 : room + 1;
      NL_CHECK(need >= kHeader && need <= room && !seen[index], "'", path,
               "' is damaged (an object in its global heap at byte ", start, " is malformed)");
      seen[index] = index != 0;
      at += need;
    }
  }
}

// The native HDF5 type a dtype is stored and read as (library-owned: never closed).
hid_t native_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return H5T_NATIVE_FLOAT;
    case DType::f64: return H5T_NATIVE_DOUBLE;
    case DType::bf16:  // raw bits, tagged by normlab_dtype="bf16" or "f16"
    case DType::f16: return H5T_NATIVE_UINT16;
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

// A UTF-8 C string type: variable-length (H5T_VARIABLE), or fixed-length of `size` bytes,
// null-padded.
Handle string_type(size_t size) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5_CHECK(type, "hdf5: cannot create a string type");
  H5_CHECK(H5Tset_size(type.get(), size) >= 0, "hdf5: cannot create a string type of ", size, " bytes");
  H5_CHECK(H5Tset_strpad(type.get(), H5T_STR_NULLPAD) >= 0, "hdf5: cannot create a string type");
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

// Reads a string attribute of `file`, fixed-length (any padding) or variable-length.
std::string get_string_attribute(const H5File& file, hid_t attr, const std::string& name, const std::string& where,
                                 const char* op) {
  Handle type(H5Aget_type(attr), H5Tclose);
  H5_CHECK(type, op, ": cannot read the type of attribute '", name, "' of ", where);
  const H5T_class_t cls = H5Tget_class(type.get());
  NL_CHECK(cls == H5T_STRING, op, ": attribute '", name, "' of ", where, " is ", type_class_name(cls),
           ", expected string");
  const htri_t variable = H5Tis_variable_str(type.get());
  H5_CHECK(variable >= 0, op, ": cannot read the type of attribute '", name, "' of ", where);
  if (variable > 0) {
    file.check_global_heaps();
    Handle mem = string_type(H5T_VARIABLE);
    H5_CHECK(H5Tset_cset(mem.get(), H5Tget_cset(type.get())) >= 0, op, ": cannot read attribute '", name,
             "' of ", where);
    char* raw = nullptr;
    H5_CHECK(H5Aread(attr, mem.get(), &raw) >= 0, op, ": cannot read attribute '", name, "' of ", where);
    const std::unique_ptr<char, herr_t (*)(void*)> owned(raw, H5free_memory);
    return raw ? std::string(raw) : std::string();
  }
  const size_t size = H5Tget_size(type.get());
  check_fits_in_memory(double(size), detail::concat(op, ": attribute '", name, "' of ", where, " is a string"));
  std::string value(size, '\0');
  H5_CHECK(H5Aread(attr, type.get(), value.data()) >= 0, op, ": cannot read attribute '", name, "' of ", where);
  if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) {
    value.erase(value.find_last_not_of(' ') + 1);
  } else if (const size_t nul = value.find('\0'); nul != std::string::npos) {
    value.resize(nul);
  }
  return value;
}

// The dtype a dataset reads back as: bf16 or f16 when tagged normlab_dtype="bf16" or "f16", else
// from its HDF5 type class and size.
DType stored_dtype(const H5File& file, hid_t dset, const std::string& where) {
  constexpr const char* op = "read_tensor";
  Handle type(H5Dget_type(dset), H5Tclose);
  H5_CHECK(type, op, ": cannot read the type of ", where);
  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  const htri_t tagged = H5Aexists(dset, "normlab_dtype");
  H5_CHECK(tagged >= 0, op, ": cannot look up attribute 'normlab_dtype' of ", where);
  if (tagged > 0) {
    Handle attr = open_attribute(dset, "normlab_dtype", where, op);
    const std::string tag = get_string_attribute(file, attr.get(), "normlab_dtype", where, op);
    NL_CHECK(tag == "bf16" || tag == "f16", op, ": ", where, " has normlab_dtype '", tag,
             "', expected 'bf16' or 'f16'");
    NL_CHECK(cls == H5T_INTEGER && size == 2, op, ": ", where, " is tagged ", tag, " but stores ", size, "-byte ",
             type_class_name(cls), " values, expected 2-byte integers");
    return tag == "bf16" ? DType::bf16 : DType::f16;
  }
  if (cls == H5T_FLOAT) return size <= 4 ? DType::f32 : DType::f64;
  if (cls == H5T_INTEGER) return DType::i64;
  NL_FAIL(op, ": ", where, " holds ", type_class_name(cls), " values, expected float or integer");
}

// The dims of a dataset; none for a scalar.
std::vector<hsize_t> stored_dims(hid_t dset, const std::string& where) {
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
  return dims;
}

// "[2, 3]"
std::string dims_text(const std::vector<hsize_t>& dims) {
  std::string text = "[";
  for (size_t d = 0; d < dims.size(); ++d) text += (d ? ", " : "") + std::to_string(dims[d]);
  return text + "]";
}

constexpr hsize_t kMaxChunkBytes = hsize_t(1) << 20;

// The chunk of a dataset of `dims` (none 0) and `element_size`-byte elements: the whole
// dataset when it fits in kMaxChunkBytes, else as many slabs along dim 0 as fit (and along
// the next dims, one index at a time, while one slab is larger).
std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, size_t element_size) {
  std::vector<hsize_t> chunk(dims), slab(dims.size());  // slab[d]: bytes of one index of dim d
  hsize_t bytes = element_size;
  for (size_t d = dims.size(); d-- > 0;) slab[d] = bytes, bytes *= dims[d];
  for (size_t d = 0; d < dims.size(); ++d) {
    chunk[d] = std::clamp<hsize_t>(kMaxChunkBytes / slab[d], 1, dims[d]);
    if (slab[d] <= kMaxChunkBytes) break;  // the later dims stay whole
  }
  return chunk;
}

// How a dataset of tensor `t` is stored: chunked with the Fletcher32 checksum; a scalar
// (which cannot be chunked) compact, in its checksummed object header; an empty one
// contiguous, with no data.
Handle dataset_layout(const Tensor& t, const std::string& where) {
  constexpr const char* op = "write_tensor";
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5_CHECK(dcpl, op, ": cannot create the properties of ", where);
  if (t.dim() == 0) {
    H5_CHECK(H5Pset_layout(dcpl.get(), H5D_COMPACT) >= 0, op, ": cannot lay out ", where);
  } else if (t.numel() > 0) {
    const std::vector<hsize_t> chunk = chunk_dims({t.shape().begin(), t.shape().end()}, t.element_size());
    H5_CHECK(H5Pset_chunk(dcpl.get(), int(chunk.size()), chunk.data()) >= 0, op, ": cannot chunk ", where, " as ",
             dims_text(chunk));
    H5_CHECK(H5Pset_fletcher32(dcpl.get()) >= 0, op, ": cannot add a checksum to ", where);
  }
  return dcpl;
}

// A dataset written with the Fletcher32 filter (as here) must have every chunk, each with
// its filters applied. Its chunk index (a B-tree, without a checksum in the 1.8 format)
// could otherwise lose a chunk to damage, which would read as zeros, or skip a checksum.
void check_chunks(hid_t dset, const std::vector<hsize_t>& dims, const std::string& where) {
  constexpr const char* op = "read_tensor";
  Handle dcpl(H5Dget_create_plist(dset), H5Pclose);
  H5_CHECK(dcpl, op, ": cannot read the properties of ", where);
  if (H5Pget_layout(dcpl.get()) != H5D_CHUNKED) return;
  unsigned flags = 0, config = 0;
  size_t values = 0;
  if (H5Pget_filter_by_id2(dcpl.get(), H5Z_FILTER_FLETCHER32, &flags, &values, nullptr, 0, nullptr, &config) < 0) {
    H5Eclear2(H5E_DEFAULT);  // no checksum: written elsewhere, perhaps with chunks left out on purpose
    return;
  }
  const int rank = int(dims.size());
  std::vector<hsize_t> chunk(dims.size()), offset(dims.size(), 0);
  H5_CHECK(H5Pget_chunk(dcpl.get(), rank, chunk.data()) == rank, op, ": cannot read the chunks of ", where);
  for (bool more = true; more;) {
    unsigned filters_skipped = 0;
    haddr_t address = HADDR_UNDEF;
    hsize_t size = 0;
    H5_CHECK(H5Dget_chunk_info_by_coord(dset, offset.data(), &filters_skipped, &address, &size) >= 0, op, ": ",
             where, " is damaged (its chunk index cannot be read)");
    // Reading finds a chunk by more of its key than the call above compares; this call
    // finds it as reading does (and fails when it is not there).
    const bool found = H5Dget_chunk_storage_size(dset, offset.data(), &size) >= 0 && size > 0;
    if (!found) H5Eclear2(H5E_DEFAULT);
    NL_CHECK(found && address != HADDR_UNDEF && filters_skipped == 0, op, ": ", where, " is damaged (its chunk at ",
             dims_text(offset), " is ", found && address != HADDR_UNDEF ? "stored without its checksum" : "missing",
             ")");
    more = false;
    for (size_t d = dims.size(); d-- > 0 && !more;) {
      offset[d] += chunk[d];
      more = offset[d] < dims[d];
      if (!more) offset[d] = 0;
    }
  }
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

H5File::H5File(const std::string& path, Mode mode) : H5File(path, mode, open_output(path, mode)) {}

H5File::H5File(const std::string& path, Mode mode, int out)
    : path_(path), mode_(mode), out_(out), uncaught_exceptions_(std::uncaught_exceptions()) {
  silence_hdf5();
  try {
    id_ = mode == Mode::read ? open_for_reading(path) : open_in_memory(path, mode);
  } catch (...) {
    release();
    throw;
  }
}

H5File::~H5File() { close_quietly(); }

H5File::H5File(H5File&& other) noexcept
    : id_(std::exchange(other.id_, H5I_INVALID_HID)),
      path_(other.path_),
      mode_(other.mode_),
      out_(std::exchange(other.out_, -1)),
      uncaught_exceptions_(other.uncaught_exceptions_),
      heaps_checked_(other.heaps_checked_) {}

H5File& H5File::operator=(H5File&& other) noexcept {
  if (this != &other) {
    close_quietly();
    id_ = std::exchange(other.id_, H5I_INVALID_HID);
    path_ = other.path_;
    mode_ = other.mode_;
    out_ = std::exchange(other.out_, -1);
    uncaught_exceptions_ = other.uncaught_exceptions_;
    heaps_checked_ = other.heaps_checked_;
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
  // In HDF5's own order, sorted here: for a name order, HDF5 1.10 first builds a table of a
  // large group's links and, when damage stops it halfway, frees the entries it never filled.
  H5_CHECK(H5Literate(group.get(), H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, add, &names) >= 0,
           "list: cannot list the members of ", describe(*this, parts));
  std::sort(names.begin(), names.end());
  return names;
}

void H5File::flush() {
  require_open(*this, "flush");
  if (out_ >= 0) write_out();
}

void H5File::close() {
  if (id_ < 0) return;
  silence_hdf5();
  try {
    if (out_ >= 0) write_out();
  } catch (...) {
    release();
    throw;
  }
  const hid_t id = std::exchange(id_, H5I_INVALID_HID);
  const int out = std::exchange(out_, -1);
  // Each is closed once, whatever the other does.
  const bool closed = H5Fclose(id) >= 0;
  const std::string reason = closed ? "" : hdf5_reason();
  const bool out_closed = out < 0 || ::close(out) == 0;
  const int err = errno;
  NL_CHECK(closed, "H5File: closing '", path_, "' failed (HDF5: ", reason, ")");
  NL_CHECK(out_closed, "cannot write '", path_, "': ", errno_text(err));
}

void H5File::write_out() {
  const FileImage image = file_image(id_, path_);
  write_all(out_, path_, image.bytes.get(), image.size);
}

void H5File::close_quietly() noexcept {
  silence_hdf5();
  if (out_ >= 0 && id_ >= 0 && std::uncaught_exceptions() <= uncaught_exceptions_) {
    try {
      close();
    } catch (...) {
      // The destructor cannot report it; close() would have.
    }
  }
  release();
}

void H5File::release() noexcept {
  if (id_ >= 0) H5Fclose(std::exchange(id_, H5I_INVALID_HID));
  if (out_ >= 0) ::close(std::exchange(out_, -1));
}

void H5File::check_global_heaps() const {
  if (heaps_checked_ || mode_ == Mode::create) return;  // a new file's heaps are all HDF5's own work
  normlab::check_global_heaps(open_hdf5_file(path_, "read").get(), path_);
  heaps_checked_ = true;
}

void H5File::replace(const std::string& path, Mode mode, const std::function<void(H5File&)>& write) {
  const std::string tmp = path + ".tmp";
  try {
    const int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    NL_CHECK(out >= 0, "cannot write '", path, "': cannot create '", tmp, "': ", errno_text(errno));
    struct stat old {};  // a replaced file keeps its permissions
    if (mode == Mode::read_write && ::stat(path.c_str(), &old) == 0) ::fchmod(out, old.st_mode & 07777);
    H5File file(path, mode, out);
    write(file);  // when it throws, `file` is dropped unwritten
    file.close();
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    NL_CHECK(!ec, "cannot move '", tmp, "' to '", path, "': ", ec.message());
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  sync_folder_of(path);
}

void write_file_atomically(const std::string& path, const std::function<void(H5File&)>& write) {
  H5File::replace(path, H5File::Mode::create, write);
}

void update_file_atomically(const std::string& path, const std::function<void(H5File&)>& change) {
  std::error_code ec;
  const bool existing = std::filesystem::exists(path, ec);
  H5File::replace(path, existing ? H5File::Mode::read_write : H5File::Mode::create, change);
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
  const Handle layout = dataset_layout(c, where);
  Handle dset(H5Dcreate2(parent.get(), name, type, space.get(), H5P_DEFAULT, layout.get(), H5P_DEFAULT), H5Dclose);
  H5_CHECK(dset, op, ": cannot create dataset ", where);
  if (c.numel() > 0)
    H5_CHECK(H5Dwrite(dset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw_data()) >= 0, op,
             ": cannot write dataset ", where);
  if (is_low_precision(c.dtype())) {
    const std::string tag = dtype_name(c.dtype());
    put_attribute(dset.get(), "normlab_dtype", string_type(tag.size()).get(), tag.c_str(), where, op);
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

  const std::vector<hsize_t> dims = stored_dims(dset.get(), where);
  const DType dtype = stored_dtype(file, dset.get(), where);
  // Bytes to allocate, refused (before allocating) beyond this machine's memory: a damaged
  // or hostile file may claim any shape.
  double bytes = double(dtype_size(dtype));
  for (hsize_t d : dims) bytes *= double(d);
  check_fits_in_memory(bytes,
                       detail::concat(op, ": ", where, " has shape ", dims_text(dims), " of ", dtype_name(dtype)));
  check_chunks(dset.get(), dims, where);
  Tensor out;
  try {
    out = empty(Shape(dims.begin(), dims.end()), dtype);
  } catch (const std::bad_alloc&) {
    NL_FAIL(op, ": out of memory for ", where, " of shape ", dims_text(dims), " (", format_bytes(bytes), ")");
  }
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
  // Fixed-length: a variable-length string lives in a global heap, which has no checksum.
  // HDF5 needs at least one byte; "" is stored as one '\0' (c_str() has it).
  Handle type = string_type(std::max<size_t>(value.size(), 1));
  write_attribute_raw(file, object_path, name, type.get(), value.c_str());
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
  return get_string_attribute(file, attr.get(), name, where, op);
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
