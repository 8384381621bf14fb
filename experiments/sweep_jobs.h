// The jobs of a sweep (run_sweep): each planned run still to do becomes a job, its files in the
// work folder `<out>.work`, run by a worker process of this program (`normlab __worker`) or, under
// mpirun, by another MPI rank (README, "MPI"). The sweep starts jobs while a runner has room,
// polls it, and commits or reports each job that ended.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace normlab {

using Clock = std::chrono::steady_clock;

struct Job {
  size_t run;  // index into the plan
  std::string spec, result, log;  // the worker's input, output and stdout+stderr
  Clock::time_point start;
};

struct FinishedJob {
  Job job;
  int wait_status = 0;  // how its worker process ended (waitpid's status)
  bool lost = false;    // its MPI rank stopped answering: the run is to be handed out again
  std::string lost_reason = "";  // "rank 2 sent nothing for 60 s"
};

// Runs jobs whose spec file is written; polled by the sweep, never blocking.
class JobRunner {
 public:
  virtual ~JobRunner() = default;
  virtual bool has_room() const = 0;
  virtual void start(const Job& job) = 0;
  // The jobs that ended since the last call.
  virtual std::vector<FinishedJob> poll() = 0;
  virtual std::vector<const Job*> running() const = 0;
  virtual int slots() const = 0;  // jobs at once
  // For the sweep's first line: "2 at a time, 1 thread each".
  virtual std::string describe() const = 0;
};

// Jobs as worker processes of this machine (`exe __worker spec result threads`), `jobs` at once.
// The workers die with this process (PR_SET_PDEATHSIG), and with the runner.
class LocalWorkers : public JobRunner {
 public:
  LocalWorkers(std::string exe, int jobs, int threads) : exe_(std::move(exe)), jobs_(jobs), threads_(threads) {}
  ~LocalWorkers() override;
  LocalWorkers(const LocalWorkers&) = delete;
  LocalWorkers& operator=(const LocalWorkers&) = delete;

  bool has_room() const override { return int(running_.size()) < jobs_; }
  void start(const Job& job) override;
  std::vector<FinishedJob> poll() override;
  std::vector<const Job*> running() const override;
  int slots() const override { return jobs_; }
  std::string describe() const override;
  int threads() const { return threads_; }

 private:
  std::string exe_;
  int jobs_, threads_;
  std::map<pid_t, Job> running_;
};

// Starts `exe __worker spec result threads` with stdout and stderr to `log`; the worker dies
// with this process.
pid_t start_worker(const std::string& exe, const Job& job, int threads);
// How a child process ended: "exit 1", "killed by signal 9".
std::string describe_exit(int status);

// A worker reports its progress to the sweep through the file `<result>.progress`: the sweep
// creates it before it starts the worker, and the worker overwrites it with "step steps" after
// each step (fixed width, so that each write replaces the whole previous one).
std::string progress_path(const std::string& result);

struct Progress {
  int64_t step = 0, steps = 0;  // 0 steps: nothing reported yet
};

class ProgressReporter {
 public:
  // Opens the run's progress file when it exists (a worker of a sweep); else reports nothing.
  explicit ProgressReporter(const std::string& result);
  ~ProgressReporter();
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  void report(const Progress& p);

 private:
  int fd_;
};

// What the worker writing `result` reported last.
Progress read_progress(const std::string& result);

// ---- MPI (experiments/sweep_mpi.cpp; without MPI, experiments/sweep_mpi_stub.cpp) ----

// What mpirun told this process through its environment (OpenMPI's OMPI_COMM_WORLD_SIZE and
// _RANK, or PMI_SIZE and PMI_RANK): the number of ranks (1 when not started by mpirun) and its own.
int launched_ranks();
int launched_rank();
// The ranks of this sweep: 1 unless `normlab run` was started by mpirun with several ranks.
int mpi_ranks();
// Under mpirun, the runner of rank 0: `local_jobs` worker processes of its own (0: its share
// of this node's cores) and one job at a time on each other rank.
std::unique_ptr<JobRunner> make_mpi_runner(const std::string& exe, int local_jobs);

}  // namespace normlab
