#!/bin/sh
# sweep_lock_check.sh NORMLAB WORKDIR: two sweeps on one results file. Sweep A (three small
# runs, one at a time) runs in the background; once it holds F.h5.lock, sweep B on the same
# file must exit with 2 within a second, naming A's pid, and touch nothing: A then finishes
# with exit 0 and the file holds all three runs. A lock file left by a dead sweep (a pid and
# no lock) does not stop the next one.
normlab=$1
dir=$2
rm -rf "$dir"
mkdir -p "$dir" || exit 1
out=$dir/shared.h5

# One thread per run: OpenMP threads that spin on a loaded machine make a tiny run crawl.
export OMP_NUM_THREADS=1

fail() {
  echo "sweep_lock_check: $*" >&2
  exit 1
}

flags="run quick --set norm=layer --set depth=1 --set steps=300 --set warmup=1 --set eval_every=100
       --set d_model=16 --set seq_len=16 --set batch=2 --jobs 1 --no-plots"

# shellcheck disable=SC2086
"$normlab" $flags --out "$out" > "$dir/a.log" 2>&1 &
a=$!
# A writes its pid into the lock file once it holds the lock.
tries=0
until [ -s "$out.lock" ]; do
  kill -0 "$a" 2>/dev/null || { cat "$dir/a.log"; fail "sweep A ended before it took the lock"; }
  tries=$((tries + 1))
  [ "$tries" -le 400 ] || fail "sweep A took no lock in 20 s"
  sleep 0.05
done

start=$(date +%s%N)
# shellcheck disable=SC2086
b_log=$("$normlab" $flags --out "$out" 2>&1)
b_rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
printf 'sweep B (%s ms): %s\n' "$ms" "$b_log"
[ "$b_rc" -eq 2 ] || fail "sweep B exited with $b_rc, expected 2"
case "$b_log" in
  *"$out is in use by another sweep (pid $a)"*) ;;
  *) fail "sweep B does not name sweep A (pid $a)" ;;
esac
[ "$ms" -lt 1000 ] || fail "sweep B took $ms ms to give up"

wait "$a"
a_rc=$?
cat "$dir/a.log"
[ "$a_rc" -eq 0 ] || fail "sweep A exited with $a_rc, expected 0"
"$normlab" report "$out" | grep -q "^quick ($out): 3 runs" || fail "the file does not hold sweep A's 3 runs"
[ ! -e "$out.lock" ] || fail "sweep A left $out.lock"
[ ! -e "$out.work" ] || fail "sweep A left $out.work"

# A dead sweep's lock file: a pid that holds no lock.
echo 999999999 > "$out.lock"
# shellcheck disable=SC2086
again=$("$normlab" $flags --out "$out" 2>&1) || { printf '%s\n' "$again"; fail "a stale lock file stopped the sweep"; }
case "$again" in
  *"quick: 3 runs, 3 already in $out"*) ;;
  *) printf '%s\n' "$again"; fail "the sweep after a stale lock file did not find the 3 runs" ;;
esac
echo "sweep_lock_check: ok"
