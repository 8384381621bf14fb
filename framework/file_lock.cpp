#include "framework/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "framework/error.h"

namespace normlab {

namespace {

// Whether the open file `fd` is still the file at `path` (not removed or replaced).
bool is_file_at(int fd, const std::string& path) {
  struct stat open_file {}, named_file {};
  return ::fstat(fd, &open_file) == 0 && ::stat(path.c_str(), &named_file) == 0 &&
         open_file.st_dev == named_file.st_dev && open_file.st_ino == named_file.st_ino;
}

// The pid a lock file holds; 0 when it holds none.
pid_t pid_in(int fd) {
  char text[32] = {};
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  if (n <= 0) return 0;
  char* end = nullptr;
  const long pid = std::strtol(text, &end, 10);
  return end != text && pid > 0 ? pid_t(pid) : 0;
}

// The pid of the process holding the lock on `fd`'s file. An owner writes its pid just after
// it takes the lock, so an empty file is read again for a little while.
pid_t owner_of(int fd) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (const pid_t pid = pid_in(fd)) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return -1;
}

}  // namespace

FileLock::FileLock(FileLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), owner_(std::exchange(other.owner_, 0)), path_(std::move(other.path_)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    unlock();
    fd_ = std::exchange(other.fd_, -1);
    owner_ = std::exchange(other.owner_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

pid_t FileLock::try_lock(const std::string& path) {
  unlock();
  // An owner removes the lock file when it releases the lock. A file opened just before that
  // is no longer the lock file once it is locked, so then the path is opened again.
  while (true) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    NL_CHECK(fd >= 0, "cannot open the lock file ", path, ": ", std::strerror(errno));
    int locked = ::flock(fd, LOCK_EX | LOCK_NB);
    while (locked != 0 && errno == EINTR) locked = ::flock(fd, LOCK_EX | LOCK_NB);
    if (locked != 0) {
      const int err = errno;
      const pid_t owner = err == EWOULDBLOCK ? owner_of(fd) : 0;
      ::close(fd);
      NL_CHECK(err == EWOULDBLOCK, "cannot lock ", path, ": ", std::strerror(err));
      return owner;
    }
    if (!is_file_at(fd, path)) {
      ::close(fd);
      continue;
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
      const int err = errno;
      ::close(fd);
      NL_FAIL("cannot write the lock file ", path, ": ", std::strerror(err));
    }
    fd_ = fd;
    owner_ = ::getpid();
    path_ = path;
    return 0;
  }
}

void FileLock::unlock() {
  if (fd_ < 0) return;
  // Removed while still locked, and only when it is still this lock's file, so that a process
  // waiting for it finds either the lock taken or the file gone.
  if (owner_ == ::getpid() && is_file_at(fd_, path_)) ::unlink(path_.c_str());
  ::close(fd_);
  fd_ = -1;
  owner_ = 0;
  path_.clear();
}

}  // namespace normlab
