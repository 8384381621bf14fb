#!/bin/sh
# shard_merge_check.sh NORMLAB WORKDIR [PYTHON]: a sweep run as shards 0/2 and 1/2 and joined
# with `normlab merge` holds exactly the runs and numbers of the same sweep run in one process
# (every dataset and attribute but the timings, compared with PYTHON's h5py when it has it, and
# the `normlab report` outputs); merging into a file that holds some runs adds the others;
# merging shards whose same-named run has different configs, a file into itself, or a file a
# sweep is writing, exits 2 with one line and writes nothing.
normlab=$1
dir=$2
python=${3:-python3}
cli_check="$(dirname "$0")/cli_check.sh"
rm -rf "$dir"
mkdir -p "$dir" || exit 1
# One thread per run: OpenMP threads that spin on a loaded machine make a tiny run crawl.
export OMP_NUM_THREADS=1

fail() {
  echo "shard_merge_check: $*" >&2
  exit 1
}

# Six runs (placement pre/post/deepnorm x depth 1, 2), a few steps each.
flags="run quick --set norm=layer --set depth=1,2 --set steps=20 --set warmup=1 --set eval_every=10
       --set metrics_every=10 --set delta_f_steps=3 --set d_model=16 --set seq_len=16 --set batch=2
       --no-plots --quiet"

# shellcheck disable=SC2086
"$normlab" $flags --jobs 2 --out "$dir/one.h5" > "$dir/one.log" 2>&1 || { cat "$dir/one.log"; fail "the one-process sweep failed"; }
for i in 0 1; do
  # shellcheck disable=SC2086
  "$normlab" $flags --jobs 1 --shard $i/2 --out "$dir/shard$i.h5" > "$dir/shard$i.log" 2>&1 ||
    { cat "$dir/shard$i.log"; fail "shard $i/2 failed"; }
  "$normlab" report "$dir/shard$i.h5" | grep -q "^quick ($dir/shard$i.h5): 3 runs" || fail "shard $i/2 does not hold 3 runs"
done
# Plan order: placement (pre, post, deepnorm), then depth; shard 0 takes runs 0, 2 and 4: depth 1.
names() {
  "$python" -c 'import h5py, sys; print(" ".join(sorted(h5py.File(sys.argv[1], "r")["runs"])))' "$1" 2>/dev/null
}
if "$python" -c "import h5py" 2>/dev/null; then
  have_h5py=1
  [ "$(names "$dir/shard0.h5")" = "norm=layer,placement=deepnorm,depth=1 norm=layer,placement=post,depth=1 norm=layer,placement=pre,depth=1" ] ||
    fail "shard 0/2 holds $(names "$dir/shard0.h5"), expected runs 0, 2 and 4 of the plan"
else
  have_h5py=0
fi

"$normlab" merge "$dir/merged.h5" "$dir/shard0.h5" "$dir/shard1.h5" || fail "merge failed"
# Into a file that holds shard 0 already (and shard 0 again: taken once).
cp "$dir/shard0.h5" "$dir/grown.h5"
msg=$("$normlab" merge "$dir/grown.h5" "$dir/shard1.h5" "$dir/shard0.h5") || fail "merge into an existing file failed"
echo "$msg"
case "$msg" in
  *"3 runs added from 2 files (3 already there, 0 found again in a later file)"*) ;;
  *) fail "merge into a file with shard 0 did not add exactly shard 1's runs" ;;
esac

for f in merged grown; do
  "$normlab" report "$dir/$f.h5" | sed 1d > "$dir/$f.report" || fail "normlab report $f.h5 failed"
  "$normlab" report "$dir/one.h5" | sed 1d > "$dir/one.report"
  cmp -s "$dir/one.report" "$dir/$f.report" || { diff "$dir/one.report" "$dir/$f.report"; fail "report of $f.h5 differs from the one-process sweep's"; }
done

if [ "$have_h5py" = 1 ]; then
  for f in merged grown; do
    "$python" - "$dir/one.h5" "$dir/$f.h5" <<'PY' || fail "$f.h5 differs from the one-process sweep"
import sys
import h5py
import numpy as np

TIMINGS = {"seconds", "tokens_per_second"}  # wall-clock measurements, not results

def items(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for k, v in obj.attrs.items():
                if k not in TIMINGS:
                    out[f"{name}@{k}"] = np.asarray(v).tobytes() if not isinstance(v, (str, bytes)) else v
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj.shape, obj[()].tobytes())
        for k, v in f.attrs.items():
            out[f"/@{k}"] = v
        f.visititems(visit)
    return out

a, b = items(sys.argv[1]), items(sys.argv[2])
bad = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
runs = [k for k in a if k.startswith("runs/") and k.count("/") == 1 and "@" not in k]
print(f"{sys.argv[2]}: {len(a)} datasets and attributes compared, {len(bad)} differ")
for k in bad[:10]:
    print(f"  {k}: {a.get(k)!r:.80} against {b.get(k)!r:.80}")
sys.exit(1 if bad or not any(k.endswith("/loss") for k in a) else 0)
PY
  done
else
  echo "shard_merge_check: $python has no h5py; compared the reports only"
fi

# The same-named run with another config (seed): refused, naming both files, the run and the key.
# shellcheck disable=SC2086
"$normlab" $flags --jobs 1 --shard 1/2 --set seed=7 --out "$dir/other1.h5" > "$dir/other1.log" 2>&1 ||
  { cat "$dir/other1.log"; fail "shard 1/2 with seed 7 failed"; }
sh "$cli_check" 2 "$dir/shard1.h5 and $dir/other1.h5 hold run norm=layer,placement=pre,depth=2 with different configs: seed=0 and seed=7" \
  "$normlab" merge "$dir/bad.h5" "$dir/shard0.h5" "$dir/shard1.h5" "$dir/other1.h5" || fail "a conflicting merge was not refused"
[ ! -e "$dir/bad.h5" ] || fail "a refused merge wrote $dir/bad.h5"
before=$(cksum < "$dir/grown.h5")
sh "$cli_check" 2 "$dir/grown.h5 and $dir/other1.h5 hold run" "$normlab" merge "$dir/grown.h5" "$dir/other1.h5" ||
  fail "a conflicting merge into an existing file was not refused"
sh "$cli_check" 2 "is both the output and an input" "$normlab" merge "$dir/grown.h5" "$dir/shard0.h5" "$dir/grown.h5" ||
  fail "merging a file into itself was not refused"
# A file a sweep (here: a process holding its lock) is writing.
# shellcheck disable=SC2016
sh -c 'exec 9>"$1" && flock 9 && exec sleep 30' sh "$dir/shard1.h5.lock" > /dev/null 2>&1 &
holder=$!  # the sleep itself, holding the lock
tries=0
until ! flock -n "$dir/shard1.h5.lock" true; do
  tries=$((tries + 1))
  [ "$tries" -le 100 ] || fail "no process took $dir/shard1.h5.lock"
  sleep 0.05
done
sh "$cli_check" 2 "$dir/shard1.h5 is in use by another sweep" "$normlab" merge "$dir/late.h5" "$dir/shard0.h5" "$dir/shard1.h5" ||
  fail "a merge of a file in use was not refused"
kill "$holder"
wait "$holder" 2>/dev/null
[ ! -e "$dir/late.h5" ] || fail "a refused merge wrote $dir/late.h5"
[ "$(cksum < "$dir/grown.h5")" = "$before" ] || fail "a refused merge changed $dir/grown.h5"
echo "shard_merge_check: ok"
