#!/bin/sh
# mpi_sweep_check.sh NORMLAB WORKDIR MPIRUN PYTHON: a tiny sweep of the preset "quick" under
# `mpirun --oversubscribe -np 3` must write the same bytes (tests/same_results.py: every
# dataset and attribute, wall times aside) as a one-process sweep, also when a process dies:
#   1. a whole sweep under mpirun;
#   2. kill -9 of a run's worker process on rank 1 or 2: that run is reported failed, the
#      others are committed, and the same command finishes the sweep;
#   3. kill -9 of rank 1 under `mpirun --enable-recovery`: rank 0 notices the silence
#      ($NORMLAB_MPI_TIMEOUT) and hands the run out again; the sweep finishes;
#   4. kill -9 of rank 2 under plain mpirun (which then ends the job): nothing committed
#      is lost and the same command finishes the sweep;
#   5. kill -9 of rank 0: no process of the sweep survives it, nothing committed is lost, and
#      the same command finishes the sweep.
# Exits 77 (skipped) when MPIRUN is empty (normlab built without MPI) or missing, or without
# python3 with numpy and h5py.
normlab=$1
dir=$2
mpirun=$3
python=$4
[ -n "$mpirun" ] || { echo "skipped: normlab was built without MPI (NORMLAB_MPI=OFF or no libopenmpi-dev)"; exit 77; }
command -v "$mpirun" > /dev/null || { echo "skipped: no mpirun ($mpirun)"; exit 77; }
"$python" -c "import numpy, h5py" 2> /dev/null || { echo "skipped: $python lacks numpy or h5py"; exit 77; }
rm -rf "$dir"
mkdir -p "$dir/tmp" || exit 1
# Each rank's worker files go to a folder of its own in $TMPDIR.
export TMPDIR="$dir/tmp"
# mpirun refuses to run as root (CI) without these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# A rank that stopped answering counts as gone after 3 s (default 60).
export NORMLAB_MPI_TIMEOUT=3
# In the sanitizer build (make sanitize), LeakSanitizer reports OpenMPI's own allocations that
# its library and plugins keep until exit; leaks of normlab's code are checked by the other
# sweep tests, so leak checking is off here (every other ASan and UBSan check stays on).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
here=$(dirname "$0")

fail() {
  echo "mpi_sweep_check: $*" >&2
  exit 1
}

# The sweep's flags (without --out): 12 runs of 120 steps, each about a second.
flags="run quick --set steps=120 --set warmup=2 --set d_model=16 --set batch=2 --set seq_len=16 --set eval_every=2
       --set depth=1,2 --set metrics_every=2 --set delta_f_steps=2 --no-plots --quiet"
reference=$dir/one_process.h5
# shellcheck disable=SC2086
"$normlab" $flags --jobs 1 --out "$reference" > "$dir/one_process.log" 2>&1 ||
  { cat "$dir/one_process.log"; fail "the one-process sweep failed"; }

# mpi_sweep NAME [MPIRUN_FLAGS...]: the sweep under mpirun into out=$dir/NAME.h5, in the
# background (mpirun_pid).
mpi_sweep() {
  out=$dir/$1.h5
  shift
  # shellcheck disable=SC2086
  "$mpirun" "$@" --oversubscribe -np 3 "$normlab" $flags --out "$out" > "$out.log" 2>&1 &
  mpirun_pid=$!
}

# expect PATTERN WHAT: the sweep's output has a line matching PATTERN.
expect() {
  grep -q "$1" "$out.log" || { cat "$out.log"; fail "$2"; }
}

# wait_for PATTERN: the pid of the first process whose command line matches (within 20 s).
wait_for() {
  tries=0
  while :; do
    pid=$(pgrep -f -- "$1" | head -n 1)
    [ -n "$pid" ] && { echo "$pid"; return 0; }
    tries=$((tries + 1))
    [ "$tries" -le 400 ] || return 1
    sleep 0.05
  done
}

# rank_pid OUT RANK: the pid of that rank of the sweep writing OUT (mpirun tells each its rank
# through the environment).
rank_pid() {
  for pid in $(pgrep -f -- "normlab run quick .*--out $1"); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2> /dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# kill_rank OUT RANK: kill -9 of that rank, once it runs a run.
kill_rank() {
  if [ "$2" = 0 ]; then pattern="__worker $1.work/"; else pattern="__worker $TMPDIR/normlab-rank$2-"; fi
  wait_for "$pattern" > /dev/null || fail "no worker process of rank $2 appeared"
  pid=$(rank_pid "$1" "$2") || fail "rank $2 of the sweep writing $1 not found"
  kill -9 "$pid" || fail "cannot kill rank $2 (pid $pid)"
}

# same OUT WHAT: OUT holds what the one-process sweep wrote.
same() {
  "$python" "$here/same_results.py" "$reference" "$1" || fail "$2: the results differ from the one-process sweep's"
}

# runs_in F.h5: the number of runs in the file.
. "$here/runs_in.sh"

# resume OUT WHAT: after a kill, OUT is readable, and the same command finishes the sweep
# with the one-process sweep's results.
resume() {
  # No process of the killed sweep may survive it.
  tries=0
  while pgrep -f -- "--out $1" > /dev/null || pgrep -f -- "__worker ($1.work|$TMPDIR)/" > /dev/null; do
    tries=$((tries + 1))
    [ "$tries" -le 200 ] || fail "$2: a process of the killed sweep outlived it"
    sleep 0.05
  done
  before=$(runs_in "$1") || fail "$2: normlab report cannot read $1 after the kill"
  [ "$before" -lt 12 ] || fail "$2: the kill came after the sweep's end"
  echo "$2: $before of 12 runs committed before the kill"
  mpi_sweep "$(basename "$1" .h5)"
  wait "$mpirun_pid" || { cat "$1.log"; fail "$2: the resumed sweep failed"; }
  grep -q "quick: 12 runs, [0-9]* already in $1" "$1.log" || { cat "$1.log"; fail "$2: the resumed sweep's first line"; }
  same "$1" "$2"
}

# 1. The whole sweep.
mpi_sweep whole
wait "$mpirun_pid" || { cat "$out.log"; fail "mpirun -np 3 failed"; }
expect "one on each of 2 other MPI ranks" "the sweep did not use 3 ranks"
same "$out" "mpirun -np 3"
echo "mpirun -np 3: the same results as one process"

# 2. A run's worker process on another rank killed: reported failed, then resumed.
# A run takes a fraction of a second: a kill that lands as the worker exits misses, and the
# sweep succeeds; then it is tried again.
for try in 1 2 3 4; do
  [ "$try" -le 3 ] || fail "every kill of a worker came after its run's end"
  mpi_sweep worker_killed
  worker=$(wait_for "__worker $TMPDIR/normlab-rank") || fail "no worker process of rank 1 or 2 appeared"
  kill -9 "$worker"
  wait "$mpirun_pid" || break
  echo "the kill of worker $worker came after its run's end; again"
  rm -rf "$out" "$out".*
done
expect "FAILED (killed by signal 9)" "the killed worker's run was not reported"
resume "$out" "a rank's worker killed"

# 3. A rank killed under --enable-recovery: its run is handed out again.
mpi_sweep rank_killed_recovery --enable-recovery
kill_rank "$out" 1
wait "$mpirun_pid" || { cat "$out.log"; fail "the sweep that lost a rank under --enable-recovery failed"; }
expect "handed out again: rank 1 stopped" "the lost rank's run was not handed out again"
same "$out" "a rank killed, mpirun --enable-recovery"
echo "a rank killed, mpirun --enable-recovery: its run handed out again, the same results"

# 4. A rank killed under plain mpirun, which ends the job: resumed.
mpi_sweep rank_killed
kill_rank "$out" 2
wait "$mpirun_pid" && fail "plain mpirun went on after a rank was killed"
resume "$out" "a rank killed, plain mpirun"

# 5. Rank 0 killed once it has committed a run, under plain mpirun and under
# --enable-recovery (where the other ranks stop on their own): resumed.
for recovery in "" --enable-recovery; do
  mpi_sweep "rank0_killed${recovery:+_recovery}" $recovery
  tries=0
  while [ "$(runs_in "$out")" -lt 1 ]; do
    tries=$((tries + 1))
    [ "$tries" -le 400 ] || fail "rank 0 committed no runs"
    sleep 0.05
  done
  kill_rank "$out" 0
  if [ -z "$recovery" ]; then
    wait "$mpirun_pid" && fail "mpirun exited with 0 after rank 0 was killed"
  else
    # mpirun --enable-recovery exits with 0 once every rank has gone.
    wait "$mpirun_pid"
    expect "rank [12]: rank 0 \(sent nothing\|did not take\)" "the other ranks did not notice that rank 0 stopped"
  fi
  resume "$out" "rank 0 killed${recovery:+, mpirun $recovery}"
done
echo "mpi_sweep_check: ok"
