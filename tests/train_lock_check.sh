#!/bin/sh
# train_lock_check.sh NORMLAB WORKDIR: two `normlab train` runs on one checkpoint path. Run A
# (long) holds F.h5.lock; run B on the same --checkpoint must exit with 2 at once, naming A's
# pid, before training. After A is killed (kill -9: its lock file stays behind, holding a pid
# and no lock), a run on the same path trains and saves.
normlab=$1
dir=$2
rm -rf "$dir"
mkdir -p "$dir" || exit 1
ckpt=$dir/shared.h5
export OMP_NUM_THREADS=1

fail() {
  echo "train_lock_check: $*" >&2
  exit 1
}

tiny="--depth 1 --d-model 16 --batch 2 --seq-len 16 --quiet"
# shellcheck disable=SC2086
"$normlab" train $tiny --steps 1000000 --checkpoint "$ckpt" > "$dir/a.log" 2>&1 &
a=$!
tries=0
until [ -s "$ckpt.lock" ]; do
  kill -0 "$a" 2>/dev/null || { cat "$dir/a.log"; fail "run A ended before it took the lock"; }
  tries=$((tries + 1))
  [ "$tries" -le 400 ] || fail "run A took no lock in 20 s"
  sleep 0.05
done
# shellcheck disable=SC2086
b_log=$("$normlab" train $tiny --steps 4 --checkpoint "$ckpt" 2>&1)
b_rc=$?
printf 'run B: %s\n' "$b_log"
kill -9 "$a"
wait "$a" 2>/dev/null
[ "$b_rc" -eq 2 ] || fail "run B exited with $b_rc, expected 2"
case "$b_log" in
  *"$ckpt is in use by another run (pid $a)"*) ;;
  *) fail "run B does not name run A (pid $a)" ;;
esac
[ -e "$ckpt" ] && fail "run B wrote the checkpoint"
[ -e "$ckpt.lock" ] || fail "the killed run's lock file is gone (the stale-lock case is not tested)"
# shellcheck disable=SC2086
c_log=$("$normlab" train $tiny --steps 4 --checkpoint "$ckpt" 2>&1) || { printf '%s\n' "$c_log"; fail "run C after a stale lock failed"; }
case "$c_log" in
  *"checkpoint $ckpt (step 4)"*) ;;
  *) printf '%s\n' "$c_log"; fail "run C saved no checkpoint" ;;
esac
echo "train_lock_check: ok"
