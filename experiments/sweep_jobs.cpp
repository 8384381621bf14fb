#include "experiments/sweep_jobs.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "framework/error.h"

namespace normlab {

// ---- Progress files ----

std::string progress_path(const std::string& result) { return result + ".progress"; }

ProgressReporter::ProgressReporter(const std::string& result)
    : fd_(::open(progress_path(result).c_str(), O_WRONLY | O_CLOEXEC)) {}

ProgressReporter::~ProgressReporter() {
  if (fd_ >= 0) ::close(fd_);
}

void ProgressReporter::report(const Progress& p) {
  if (fd_ < 0) return;
  char text[48];
  const int n = std::snprintf(text, sizeof text, "%20lld %20lld\n", (long long)p.step, (long long)p.steps);
  // Best effort: a failed write only leaves the sweep's progress line behind.
  [[maybe_unused]] const ssize_t written = ::pwrite(fd_, text, size_t(n), 0);
}

Progress read_progress(const std::string& result) {
  std::ifstream in(progress_path(result));
  long long step = 0, steps = 0;
  if (!(in >> step >> steps) || step < 0 || steps <= 0) return {};
  return {step, steps};
}

// ---- Worker processes ----

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "exit " + std::to_string(WEXITSTATUS(status));
}

pid_t start_worker(const std::string& exe, const Job& job, int threads) {
  const std::string threads_arg = std::to_string(threads);
  std::vector<const char*> argv = {exe.c_str(), "__worker", job.spec.c_str(), job.result.c_str(),
                                   threads_arg.c_str(), nullptr};
  const pid_t parent = getpid();
  const int log = ::open(job.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  NL_CHECK(log >= 0, "cannot write the worker log ", job.log);
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    execv(exe.c_str(), const_cast<char* const*>(argv.data()));
    _exit(127);
  }
  ::close(log);
  NL_CHECK(pid > 0, "cannot start a worker process for ", exe);
  return pid;
}

LocalWorkers::~LocalWorkers() {
  // Workers still running when the sweep leaves early (an exception).
  for (const auto& [pid, job] : running_) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
}

void LocalWorkers::start(const Job& job) { running_.emplace(start_worker(exe_, job, threads_), job); }

std::vector<FinishedJob> LocalWorkers::poll() {
  std::vector<FinishedJob> finished;
  for (auto it = running_.begin(); it != running_.end();) {
    int wait_status = 0;
    const pid_t pid = ::waitpid(it->first, &wait_status, WNOHANG);
    if (pid == 0 || (pid < 0 && errno == EINTR)) {
      ++it;
      continue;
    }
    NL_CHECK(pid > 0, "waiting for the workers failed: ", std::strerror(errno));
    finished.push_back({it->second, wait_status});
    it = running_.erase(it);
  }
  return finished;
}

std::vector<const Job*> LocalWorkers::running() const {
  std::vector<const Job*> jobs;
  for (const auto& [pid, job] : running_) jobs.push_back(&job);
  return jobs;
}

std::string LocalWorkers::describe() const {
  return std::to_string(jobs_) + " at a time, " + std::to_string(threads_) + " thread" + (threads_ == 1 ? "" : "s") +
         " each";
}

// ---- Launched by mpirun ----

namespace {

// The first of the variables that is set and a whole number >= 0; -1 when none is.
int env_count(const char* first, const char* second) {
  for (const char* name : {first, second}) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end == '\0' && n >= 0 && n < (1 << 30)) return int(n);
  }
  return -1;
}

}  // namespace

int launched_ranks() { return std::max(1, env_count("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")); }
int launched_rank() { return std::max(0, env_count("OMPI_COMM_WORLD_RANK", "PMI_RANK")); }

}  // namespace normlab
