// FileLock: one holder at a time, in this process or another; the holder's pid is reported to
// the others; the lock goes with its object (and its file is removed) or with its process (and
// a file left behind is taken again).
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "framework/error.h"
#include "framework/file_lock.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;
namespace fs = std::filesystem;

namespace {

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A forked child that runs `f` (returning its exit code) and never returns into the test.
template <class F>
pid_t fork_child(F&& f) {
  const pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 100;
    try {
      code = f();
    } catch (...) {
    }
    ::_exit(code);
  }
  return pid;
}

// The exit code of the child `pid`; -1 when it did not exit normally.
int exit_code_of(pid_t pid) {
  int status = 0;
  BOOST_REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(file_lock)

BOOST_AUTO_TEST_CASE(a_free_lock_is_taken_and_holds_the_pid) {
  TempDir tmp("normlab_test_file_lock");
  const std::string path = tmp.file("a.lock");
  FileLock lock;
  BOOST_TEST(!lock.locked());
  BOOST_TEST(lock.try_lock(path) == 0);
  BOOST_TEST(lock.locked());
  BOOST_TEST(lock.path() == path);
  BOOST_TEST(text_of(path) == std::to_string(::getpid()) + "\n");
}

BOOST_AUTO_TEST_CASE(a_second_lock_in_this_process_is_busy_until_the_first_goes) {
  TempDir tmp("normlab_test_file_lock");
  const std::string path = tmp.file("a.lock");
  FileLock second;
  {
    FileLock first;
    BOOST_REQUIRE(first.try_lock(path) == 0);
    BOOST_TEST(second.try_lock(path) == ::getpid());
    BOOST_TEST(!second.locked());
  }
  BOOST_TEST(!fs::exists(path));  // removed with its lock
  BOOST_TEST(second.try_lock(path) == 0);
  second.unlock();
  BOOST_TEST(!second.locked());
  BOOST_TEST(!fs::exists(path));
}

BOOST_AUTO_TEST_CASE(another_process_finds_it_busy_and_names_the_holder) {
  TempDir tmp("normlab_test_file_lock");
  const std::string path = tmp.file("a.lock");
  FileLock lock;
  BOOST_REQUIRE(lock.try_lock(path) == 0);
  const pid_t parent = ::getpid();
  // The child reports 0 when it found the lock held by this process.
  const pid_t child = fork_child([&] {
    FileLock theirs;
    return theirs.try_lock(path) == parent && !theirs.locked() ? 0 : 1;
  });
  BOOST_TEST(exit_code_of(child) == 0);
  // The child's exit left this process's lock and its file as they were.
  BOOST_TEST(lock.locked());
  BOOST_TEST(text_of(path) == std::to_string(parent) + "\n");
}

BOOST_AUTO_TEST_CASE(a_lock_dies_with_its_process) {
  TempDir tmp("normlab_test_file_lock");
  const std::string path = tmp.file("a.lock");
  int ready[2];
  BOOST_REQUIRE(::pipe(ready) == 0);
  const pid_t child = fork_child([&] {
    FileLock theirs;
    if (theirs.try_lock(path) != 0) return 1;
    const char byte = 1;
    if (::write(ready[1], &byte, 1) != 1) return 2;
    while (true) ::pause();  // holds the lock until killed
  });
  ::close(ready[1]);
  char byte = 0;
  BOOST_REQUIRE(::read(ready[0], &byte, 1) == 1);
  ::close(ready[0]);

  FileLock lock;
  BOOST_TEST(lock.try_lock(path) == child);
  ::kill(child, SIGKILL);
  BOOST_TEST(exit_code_of(child) == -1);
  // The killed holder left its file, holding its pid: the lock is free all the same.
  BOOST_TEST(text_of(path) == std::to_string(child) + "\n");
  BOOST_TEST(lock.try_lock(path) == 0);
  BOOST_TEST(text_of(path) == std::to_string(::getpid()) + "\n");
}

BOOST_AUTO_TEST_CASE(a_moved_lock_stays_held) {
  TempDir tmp("normlab_test_file_lock");
  const std::string path = tmp.file("a.lock");
  FileLock lock;
  BOOST_REQUIRE(lock.try_lock(path) == 0);
  FileLock moved(std::move(lock));
  BOOST_TEST(moved.locked());
  BOOST_TEST(moved.path() == path);
  FileLock other;
  BOOST_TEST(other.try_lock(path) == ::getpid());
  other = std::move(moved);
  BOOST_TEST(other.locked());
  BOOST_TEST(fs::exists(path));
}

BOOST_AUTO_TEST_CASE(a_lock_file_that_cannot_be_created_throws_naming_it) {
  FileLock lock;
  const std::string path = "/nonexistent/folder/a.lock";
  try {
    lock.try_lock(path);
    BOOST_FAIL("no error for " << path);
  } catch (const Error& e) {
    BOOST_TEST(contains(e.what(), path), e.what());
  }
  BOOST_TEST(!lock.locked());
}

BOOST_AUTO_TEST_SUITE_END()
