// An advisory lock that one process at a time holds, for a file two processes must not change
// at once (a sweep's results file, a training checkpoint). The lock is flock(2) on a separate
// lock file, not on the guarded file itself (HDF5 opens and locks that one on its own); the
// lock file holds its owner's pid as text, so a process that finds the lock taken can name the
// owner. The kernel drops the lock when its owner exits or dies, so a lock file left behind
// by a crash is simply taken again.
//
//   FileLock lock;
//   if (const pid_t owner = lock.try_lock(out + ".lock"))
//     NL_FAIL(out, " is in use (pid ", owner, ")");
//   ... change `out`; the lock is released (and its file removed) when `lock` goes away
//
// Only a process that exec's drops the lock file's descriptor (it is close-on-exec); a child
// that forks and lives on shares the lock until it exits.
#pragma once

#include <sys/types.h>

#include <string>

namespace normlab {

class FileLock {
 public:
  FileLock() = default;
  ~FileLock() { unlock(); }
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Takes the lock on `path` without waiting, creating the file when missing. Returns 0 when
  // this object holds the lock now (its pid is written into the file), else the pid of the
  // process holding it (-1 when that process has not written its pid yet). A lock this object
  // already holds is released first. Throws normlab::Error naming the path when the file
  // cannot be opened or locked.
  pid_t try_lock(const std::string& path);
  // Releases the lock and removes its file; a no-op when nothing is held.
  void unlock();

  bool locked() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  pid_t owner_ = 0;  // the process that took the lock: only it removes the file
  std::string path_;
};

}  // namespace normlab
