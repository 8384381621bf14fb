// Sweeps across MPI ranks (README, "MPI"). Rank 0 plans the sweep and is the only writer of
// the results file: it runs some runs in worker processes of its own and hands one run at a
// time to each other rank. A rank runs its run in a worker process, as a local sweep does (a
// run that crashes is reported, the rank goes on), and sends back the run file's bytes; rank 0
// writes them into the work folder and commits them as it commits its own workers' files.
//
// Both sides notice the other stopping without MPI's help (OpenMPI 4 has no fault tolerance):
// rank 0 pings every rank, a busy rank sends its run's progress twice a second, and silence
// longer than $NORMLAB_MPI_TIMEOUT seconds (default 60) counts as a rank that stopped. Rank 0
// then hands that rank's run out again (only possible when mpirun keeps the job going after
// a rank dies: mpirun --enable-recovery); a rank that lost rank 0 kills its run and exits.
#include "experiments/sweep_mpi.h"

#include <mpi.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "experiments/sweep_jobs.h"
#include "framework/error.h"
#include "framework/parallel.h"

namespace normlab {

namespace fs = std::filesystem;

namespace {

// Rank 0 -> rank: kRun (a spec file's bytes), kPing (rank 0 is there), kStop (no more runs;
// "lost" when a rank stopped, so that the ranks skip MPI_Finalize).
// Rank -> rank 0: kProgress (step and steps, while a run goes), kResult (pack_result), kStopped.
// kBroken marks a message whose sender died while it arrived.
enum Tag : int { kRun = 1, kPing, kStop, kProgress, kResult, kStopped, kBroken };

struct World {
  bool active = false;  // MPI_Init was called
  int rank = 0, size = 1;
  int threads = 1;         // per run on this rank
  double timeout = 60;     // seconds of silence after which the other side counts as stopped
  std::vector<bool> lost;  // rank 0: ranks that stopped answering
  bool released = false;   // rank 0: the ranks were let go
  // A rank stopped: MPI_Finalize would wait for it forever, so every rank exits without it.
  bool skip_finalize = false;

  // How long this rank waits for the other side. The other ranks wait longer for rank 0, which
  // may itself spend a timeout waiting on a rank that died.
  double patience() const { return rank == 0 ? timeout : 2 * timeout + 5; }
};

World& world() {
  static World w;
  return w;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  NL_CHECK(out.flush().good(), "cannot write ", path);
}

// Sends and waits until the receiver took it; false when it did not within the timeout (a rank
// that stopped). Small messages return at once.
bool send(const std::string& bytes, int to, int tag) {
  NL_CHECK(bytes.size() < size_t(INT_MAX), "a message of ", bytes.size(), " bytes is too large for MPI");
  MPI_Request request;
  if (MPI_Isend(bytes.data(), int(bytes.size()), MPI_BYTE, to, tag, MPI_COMM_WORLD, &request) != MPI_SUCCESS)
    return false;
  const auto start = Clock::now();
  while (true) {
    int done = 0;
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
    if (done) return true;
    if (seconds_since(start) > world().patience()) {
      MPI_Request_free(&request);  // left to MPI: cancelling a send to a dead rank may block
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

struct Message {
  int from, tag;
  std::string bytes;
};

// The next message from `from` (or MPI_ANY_SOURCE) when one has arrived; its tag is kBroken
// when it did not arrive whole within the timeout (its sender died while sending it).
std::optional<Message> try_receive(int from) {
  int arrived = 0;
  MPI_Message handle;
  MPI_Status status;
  if (MPI_Improbe(from, MPI_ANY_TAG, MPI_COMM_WORLD, &arrived, &handle, &status) != MPI_SUCCESS || !arrived)
    return {};
  int count = 0;
  MPI_Get_count(&status, MPI_BYTE, &count);
  auto bytes = std::make_unique<std::string>(size_t(std::max(count, 0)), '\0');
  MPI_Request request;
  if (MPI_Imrecv(bytes->data(), count, MPI_BYTE, &handle, &request) == MPI_SUCCESS) {
    const auto start = Clock::now();
    while (seconds_since(start) <= world().patience()) {
      int done = 0;
      if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
      if (done) return Message{status.MPI_SOURCE, status.MPI_TAG, std::move(*bytes)};
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // MPI may still write into the buffer of a receive it was left: the buffer is kept.
    MPI_Request_free(&request);
    static std::vector<std::unique_ptr<std::string>> abandoned;
    abandoned.push_back(std::move(bytes));
  }
  return Message{status.MPI_SOURCE, kBroken, ""};
}

// A finished run: its worker's wait status, its run file (empty when it wrote none) and its log.
struct RunOutput {
  int32_t wait_status = 0;
  std::string result, log;
};

std::string pack_result(const RunOutput& r) {
  const uint64_t result_size = r.result.size();
  std::string bytes(sizeof r.wait_status + sizeof result_size, '\0');
  std::memcpy(bytes.data(), &r.wait_status, sizeof r.wait_status);
  std::memcpy(bytes.data() + sizeof r.wait_status, &result_size, sizeof result_size);
  return bytes + r.result + r.log;
}

std::optional<RunOutput> unpack_result(const std::string& bytes) {
  RunOutput r;
  uint64_t result_size = 0;
  const size_t head = sizeof r.wait_status + sizeof result_size;
  if (bytes.size() < head) return {};
  std::memcpy(&r.wait_status, bytes.data(), sizeof r.wait_status);
  std::memcpy(&result_size, bytes.data() + sizeof r.wait_status, sizeof result_size);
  if (result_size > bytes.size() - head) return {};
  r.result = bytes.substr(head, result_size);
  r.log = bytes.substr(head + result_size);
  return r;
}

// ---- The other ranks ----

volatile std::sig_atomic_t g_terminated = 0;  // SIGTERM or SIGINT (mpirun ending the job)
void on_terminate(int) { g_terminated = 1; }

// Runs what rank 0 hands out, one run at a time, in a worker process; returns when rank 0 lets
// this rank go. Exits the process when rank 0 stops answering (MPI_Finalize would wait for it).
int serve_runs() {
  World& w = world();
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/normlab-rank" + std::to_string(w.rank) + "-XXXXXX";
  pid_t child = 0;
  auto stop = [&](int code, const std::string& why) {
    if (child > 0) {
      ::kill(child, SIGKILL);
      ::waitpid(child, nullptr, 0);
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (!why.empty()) std::fprintf(stderr, "normlab rank %d: %s\n", w.rank, why.c_str());
    if (code != 0) {
      std::fflush(nullptr);
      _exit(code);
    }
  };
  // mpirun ends a job with SIGTERM: the run is killed and the folder removed first.
  std::signal(SIGTERM, on_terminate);
  std::signal(SIGINT, on_terminate);
  try {
    NL_CHECK(::mkdtemp(dir.data()), "cannot create a folder in ", tmp ? tmp : "/tmp", ": ", std::strerror(errno));
    const Job job{0, dir + "/run.spec.h5", dir + "/run.h5", dir + "/run.log", {}};
    const std::string exe = fs::read_symlink("/proc/self/exe").string();
    auto heard = Clock::now(), reported = Clock::now();
    while (true) {
      while (const std::optional<Message> m = try_receive(0)) {
        heard = Clock::now();
        if (m->tag == kBroken) stop(1, "a message from rank 0 broke off (it stopped); stopping");
        if (m->tag == kStop) {
          w.skip_finalize = !m->bytes.empty();
          stop(0, "");
          send("", 0, kStopped);
          return 0;
        }
        if (m->tag != kRun || child > 0) continue;
        write_bytes(job.spec, m->bytes);
        fs::remove(job.result);
        std::ofstream(progress_path(job.result));  // the worker reports its steps into it
        child = start_worker(exe, job, w.threads);
        reported = Clock::now();
      }
      if (child > 0) {
        int status = 0;
        const pid_t pid = ::waitpid(child, &status, WNOHANG);
        if (pid == child) {
          child = 0;
          RunOutput out{status, fs::exists(job.result) ? read_bytes(job.result) : "", read_bytes(job.log)};
          constexpr size_t kLogTail = 64 * 1024;
          if (out.log.size() > kLogTail) out.log = "..." + out.log.substr(out.log.size() - kLogTail);
          for (const std::string& f : {job.spec, job.result, job.log, progress_path(job.result)}) fs::remove(f);
          if (!send(pack_result(out), 0, kResult)) stop(1, "rank 0 did not take a finished run; stopping");
        } else if (seconds_since(reported) >= 0.5) {
          const Progress p = read_progress(job.result);
          const int64_t steps[2] = {p.step, p.steps};
          if (!send(std::string(reinterpret_cast<const char*>(steps), sizeof steps), 0, kProgress))
            stop(1, "rank 0 did not take a progress message; stopping");
          reported = Clock::now();
        }
      }
      if (g_terminated) stop(1, "");
      if (seconds_since(heard) > w.patience()) {
        char why[96];
        std::snprintf(why, sizeof why, "rank 0 sent nothing for %.0f s (it stopped); stopping", w.patience());
        stop(1, why);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  } catch (const std::exception& err) {
    stop(1, err.what());
  }
  return 1;
}

// Rank 0: tells every rank that there are no more runs and waits until each has stopped (or
// stopped answering).
void release_ranks() {
  World& w = world();
  if (!w.active || w.rank != 0 || w.released) return;
  w.released = true;
  w.skip_finalize = std::count(w.lost.begin(), w.lost.end(), true) > 0;
  std::vector<bool> waiting(size_t(w.size), false);
  for (int r = 1; r < w.size; ++r)
    waiting[size_t(r)] = !w.lost[size_t(r)] && send(w.skip_finalize ? "lost" : "", r, kStop);
  const auto start = Clock::now();
  while (std::count(waiting.begin(), waiting.end(), true) > 0) {
    if (seconds_since(start) > w.timeout) {
      w.skip_finalize = true;
      break;
    }
    // Other messages (a run finishing as the sweep stopped early) are dropped.
    while (const std::optional<Message> m = try_receive(MPI_ANY_SOURCE)) {
      if (m->tag == kBroken) w.lost[size_t(m->from)] = w.skip_finalize = true;
      if (m->tag == kStopped || m->tag == kBroken) waiting[size_t(m->from)] = false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// ---- Rank 0's runner ----

class MpiRunner : public JobRunner {
 public:
  MpiRunner(const std::string& exe, int local_jobs, int threads)
      : local_(exe, local_jobs, threads), local_jobs_(local_jobs), remotes_(size_t(world().size)) {}
  ~MpiRunner() override { release_ranks(); }
  MpiRunner(const MpiRunner&) = delete;
  MpiRunner& operator=(const MpiRunner&) = delete;

  bool has_room() const override { return local_.has_room() || free_rank() > 0; }

  void start(const Job& job) override {
    if (local_.has_room()) return local_.start(job);
    const int r = free_rank();
    NL_CHECK(r > 0, "no MPI rank is free");
    Remote& remote = remotes_[size_t(r)];
    remote.busy = true;
    remote.job = job;
    remote.heard = Clock::now();
    if (!send(read_bytes(job.spec), r, kRun)) lose(r, "it did not take the run");
  }

  std::vector<FinishedJob> poll() override {
    std::vector<FinishedJob> finished = local_.poll();
    finished.insert(finished.end(), lost_.begin(), lost_.end());
    lost_.clear();
    while (const std::optional<Message> m = try_receive(MPI_ANY_SOURCE)) {
      Remote& remote = remotes_[size_t(m->from)];
      if (world().lost[size_t(m->from)] || !remote.busy) continue;  // late news from a lost rank
      if (m->tag == kBroken) {
        lose(m->from, "its message broke off");
        continue;
      }
      remote.heard = Clock::now();
      if (m->tag == kProgress && m->bytes.size() == 2 * sizeof(int64_t)) {
        int64_t steps[2];
        std::memcpy(steps, m->bytes.data(), sizeof steps);
        ProgressReporter(remote.job.result).report({steps[0], steps[1]});
      } else if (m->tag == kResult) {
        remote.busy = false;
        const std::optional<RunOutput> out = unpack_result(m->bytes);
        // A garbled message counts as a failed run (no run file), with a note in its log.
        if (out && !out->result.empty()) write_bytes(remote.job.result, out->result);
        write_bytes(remote.job.log, out ? out->log : "rank " + std::to_string(m->from) + " sent a garbled run\n");
        finished.push_back({remote.job, out ? out->wait_status : W_EXITCODE(1, 0)});
      }
    }
    for (int r = 1; r < int(remotes_.size()); ++r) {
      if (!remotes_[size_t(r)].busy || seconds_since(remotes_[size_t(r)].heard) <= world().timeout) continue;
      char why[64];
      std::snprintf(why, sizeof why, "it sent nothing for %.0f s", world().timeout);
      lose(r, why);
    }
    // Every rank hears from rank 0 well within its timeout.
    if (seconds_since(pinged_) >= std::min(1.0, world().timeout / 4)) {
      pinged_ = Clock::now();
      for (int r = 1; r < int(remotes_.size()); ++r)
        if (!world().lost[size_t(r)] && !send("", r, kPing)) lose(r, "it did not take a ping");
    }
    finished.insert(finished.end(), lost_.begin(), lost_.end());
    lost_.clear();
    return finished;
  }

  std::vector<const Job*> running() const override {
    std::vector<const Job*> jobs = local_.running();
    for (const Remote& remote : remotes_)
      if (remote.busy) jobs.push_back(&remote.job);
    for (const FinishedJob& f : lost_) jobs.push_back(&f.job);  // until poll() hands them back
    return jobs;
  }

  int slots() const override { return local_jobs_ + world().size - 1; }

  std::string describe() const override {
    // "3 at a time: 1 on rank 0 (1 thread) and one on each of 2 other MPI ranks"
    const int ranks = world().size - 1, threads = local_.threads();
    return std::to_string(slots()) + " at a time: " + std::to_string(local_jobs_) + " on rank 0 (" +
           std::to_string(threads) + " thread" + (threads == 1 ? "" : "s") + (local_jobs_ == 1 ? "" : " each") +
           ") and one on each of " + std::to_string(ranks) + " other MPI rank" + (ranks == 1 ? "" : "s");
  }

 private:
  struct Remote {
    bool busy = false;
    Job job{};
    Clock::time_point heard{};
  };

  // A rank with no run, or 0 when none is free.
  int free_rank() const {
    for (int r = 1; r < int(remotes_.size()); ++r)
      if (!remotes_[size_t(r)].busy && !world().lost[size_t(r)]) return r;
    return 0;
  }

  // Counts rank r as stopped: its run (if any) is handed back by the next poll().
  void lose(int r, const std::string& why) {
    world().lost[size_t(r)] = true;
    Remote& remote = remotes_[size_t(r)];
    if (remote.busy) lost_.push_back({remote.job, 0, true, "rank " + std::to_string(r) + " stopped (" + why + ")"});
    remote.busy = false;
  }

  LocalWorkers local_;
  int local_jobs_;
  std::vector<Remote> remotes_;  // by rank; [0] unused
  std::vector<FinishedJob> lost_;
  Clock::time_point pinged_{};
};

// Threads per run on this rank: $OMP_NUM_THREADS when set, else this node's cores shared by
// the ranks on it (and no more than the cores mpirun bound this rank to).
int threads_per_run(int node_ranks) {
  const int hardware = int(std::max(1u, std::thread::hardware_concurrency()));
  if (std::getenv("OMP_NUM_THREADS")) return std::max(1, num_threads());
  return std::max(1, std::min(num_threads(), hardware / std::max(1, node_ranks)));
}

}  // namespace

int mpi_ranks() { return world().active ? world().size : 1; }

std::unique_ptr<JobRunner> make_mpi_runner(const std::string& exe, int local_jobs) {
  NL_CHECK(world().active && world().rank == 0, "make_mpi_runner: not rank 0 of an MPI sweep");
  const int jobs = std::max(1, local_jobs);
  return std::make_unique<MpiRunner>(exe, jobs, std::max(1, world().threads / jobs));
}

int mpi_main(int argc, char** argv, int (*cli)(int, char**)) {
  const std::string command = argc >= 2 ? argv[1] : "";
  if (launched_ranks() <= 1 || command == "__worker") return cli(argc, argv);
  const bool speaks = launched_rank() == 0;  // only rank 0 prints what is wrong
  if (command != "run") {
    if (speaks)
      std::fprintf(stderr, "normlab: only `normlab run` uses several MPI ranks; start '%s' without mpirun\n",
                   command.c_str());
    return 2;
  }
  World& w = world();
  if (const char* v = std::getenv("NORMLAB_MPI_TIMEOUT")) {
    char* end = nullptr;
    w.timeout = std::strtod(v, &end);
    if (!*v || *end != '\0' || !(w.timeout >= 1 && w.timeout <= 86400)) {
      if (speaks)
        std::fprintf(stderr, "normlab: bad NORMLAB_MPI_TIMEOUT '%s' (expected seconds, 1 to 86400)\n", v);
      return 2;
    }
  }
  if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
    if (speaks) std::fprintf(stderr, "normlab: MPI_Init failed\n");
    return 1;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  MPI_Comm node;
  int node_ranks = 1;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &node_ranks);
  MPI_Comm_free(&node);
  w.threads = threads_per_run(node_ranks);
  w.lost.assign(size_t(w.size), false);
  w.active = true;
  int code = 0;
  if (w.rank == 0) {
    code = cli(argc, argv);
    release_ranks();
  } else {
    code = serve_runs();
  }
  if (w.skip_finalize) {
    std::fflush(nullptr);
    _exit(code);
  }
  MPI_Finalize();
  return code;
}

}  // namespace normlab
