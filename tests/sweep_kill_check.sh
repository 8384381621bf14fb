#!/bin/sh
# sweep_kill_check.sh NORMLAB WORKDIR: kills `normlab run` (SIGKILL) at several moments of a
# tiny sweep of the preset "quick", resuming the same results file each time. After every
# kill the file, when it exists, must be a complete results file (`normlab report` reads
# every dataset of every run and exits 0), hold at least the runs it held before, and no
# worker of the killed sweep may survive it. Finally the sweep runs to the end, finds the
# runs the killed sweeps committed, and the file holds all 12 runs.
normlab=$1
dir=$2
rm -rf "$dir"
mkdir -p "$dir" || exit 1
out=$dir/kill.h5

fail() {
  echo "sweep_kill_check: $*" >&2
  exit 1
}

# The sweep's flags (without --out): each run is tiny.
flags="run quick --set steps=6 --set warmup=2 --set d_model=16 --set batch=2 --set seq_len=16 --set eval_every=2
       --set depth=1,2 --set metrics_every=2 --set delta_f_steps=2 --jobs 2 --no-plots --quiet"

# runs_in F.h5: the number of runs in the file.
. "$(dirname "$0")/runs_in.sh"

# Whether a process still runs a worker of this sweep (its arguments name $out.work).
workers_alive() {
  pgrep -f -- "__worker $out.work/" > /dev/null
}

before=0
for delay in 0.1 0.2 0.25 0.3 0.35 0.4 0.45 0.5 1.5; do
  # $! is normlab itself (not a subshell), so the kill hits the sweep.
  # shellcheck disable=SC2086
  "$normlab" $flags --out "$out" > "$dir/sweep.log" 2>&1 &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  # The workers die with the sweep (PR_SET_PDEATHSIG); give the kernel a moment.
  tries=0
  while workers_alive; do
    tries=$((tries + 1))
    [ "$tries" -le 40 ] || fail "a worker outlived the sweep killed after $delay s"
    sleep 0.05
  done
  now=$(runs_in "$out") || fail "normlab report cannot read $out after a kill at $delay s"
  [ -n "$now" ] || fail "normlab report printed no run count after a kill at $delay s"
  [ "$now" -ge "$before" ] || fail "the file held $before runs, and $now after a kill at $delay s"
  echo "killed after $delay s: $now of 12 runs in the file"
  before=$now
done

# shellcheck disable=SC2086
final=$("$normlab" $flags --out "$out" 2>&1) || { printf '%s\n' "$final"; fail "the last sweep failed"; }
printf '%s\n' "$final"
# Finished runs a killed sweep had not committed yet are committed now, not run again.
recovered=$(printf '%s\n' "$final" | sed -n 's/^quick: committed \([0-9]*\) finished runs* left in .*/\1/p')
expected=$((before + ${recovered:-0}))
case "$final" in
  *"quick: 12 runs, $expected already in $out"*) ;;
  *) fail "the last sweep did not find the $before runs already in the file (and ${recovered:-0} recovered)" ;;
esac
[ "$(runs_in "$out")" = 12 ] || fail "the file does not hold 12 runs at the end"
# A failed run leaves its log in $out.work: reported, not failed.
if [ -e "$out.work" ]; then
  echo "note: $out.work was left behind, holding:" $(ls "$out.work")
fi
echo "sweep_kill_check: ok"
