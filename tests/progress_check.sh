#!/bin/sh
# progress_check.sh NORMLAB WORKDIR: long work shows progress. On a terminal (script(1) gives
# the sweep one), a sweep draws a line with its running runs' steps and ETA; with stdout
# redirected to a file, lines reach the file as they are printed (line-buffered), while the
# program still runs. Skipped (77) without script(1).
normlab=$1
dir=$2
rm -rf "$dir"
mkdir -p "$dir" || exit 1
export OMP_NUM_THREADS=1
fail() {
  echo "progress_check: $*" >&2
  exit 1
}
command -v script > /dev/null || { echo "progress_check: no script(1); skipped"; exit 77; }

sweep="run quick --set norm=layer --set placement=pre --set depth=1 --set steps=3000 --set warmup=1
       --set eval_every=1000 --set d_model=16 --set seq_len=16 --set batch=2 --jobs 1 --no-plots"
sweep=$(echo $sweep)  # one line: script -c runs it as a shell command
# shellcheck disable=SC2086
script -qec "stty cols 120; $normlab $sweep --out $dir/tty.h5" /dev/null > "$dir/tty.log" 2>&1 ||
  { cat "$dir/tty.log"; fail "the sweep on a terminal failed"; }
grep -q "1 running: norm=layer,placement=pre,depth=1 step [0-9]*/3000 (ETA " "$dir/tty.log" ||
  { cat "$dir/tty.log"; fail "no progress line with the run's step and ETA"; }

# shellcheck disable=SC2086
"$normlab" train --depth 1 --d-model 16 --batch 2 --seq-len 16 --steps 1000000 --eval-every 100 > "$dir/train.log" 2>&1 &
pid=$!
tries=0
until grep -q "eval loss" "$dir/train.log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$dir/train.log"; fail "train ended early"; }
  tries=$((tries + 1))
  [ "$tries" -le 400 ] || { kill "$pid"; fail "no eval line reached the file in 20 s (output not line-buffered)"; }
  sleep 0.05
done
kill "$pid"
wait "$pid" 2>/dev/null
echo "progress_check: ok"
