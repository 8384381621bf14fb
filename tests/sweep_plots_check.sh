#!/bin/sh
# sweep_plots_check.sh CASE NORMLAB WORKDIR: `normlab run` starts plot.py as a program with
# an argument list (no shell). A fake plot.py ($NORMLAB_PLOT, run by python3 like the real
# one) stands in, so matplotlib is not needed; without python3 the test is skipped (77).
#   quoted-path  --out "WORKDIR/a b';touch PWNED;'.h5": exit 0, the fake receives exactly
#                that path, and no file PWNED appears
#   failing      a plot.py that exits 1: the command exits 1 and says the plots failed
case=$1
normlab=$2
dir=$3
rm -rf "$dir"
mkdir -p "$dir" || exit 1

# One thread per run: OpenMP threads that spin on a loaded machine make a tiny run crawl.
export OMP_NUM_THREADS=1

fail() {
  echo "sweep_plots_check $case: $*" >&2
  exit 1
}

command -v python3 > /dev/null || [ -x /usr/bin/python3 ] || { echo "skipped: no python3"; exit 77; }

# One tiny run.
flags="run quick --set norm=layer --set placement=pre --set depth=1 --set steps=4 --set warmup=1
       --set eval_every=2 --set d_model=16 --set seq_len=16 --set batch=2"
fake=$dir/fake_plot.py
cd "$dir" || exit 1  # where an injected `touch PWNED` would write

case "$case" in
  quoted-path)
    # The fake writes its arguments, one a line, to fake_plot.py.argv.
    cat > "$fake" <<'PY'
import sys
with open(sys.argv[0] + ".argv", "w") as f:
    f.write("\n".join(sys.argv[1:]) + "\n")
PY
    out="$dir/a b';touch PWNED;'.h5"
    # shellcheck disable=SC2086
    log=$(NORMLAB_PLOT=$fake "$normlab" $flags --out "$out" 2>&1)
    rc=$?
    printf '%s\n' "$log"
    [ "$rc" -eq 0 ] || fail "exit code $rc, expected 0"
    [ -f "$out" ] || fail "no results file at $out"
    [ -f "$fake.argv" ] || fail "the fake plot.py did not run"
    [ "$(cat "$fake.argv")" = "$out" ] || fail "the fake plot.py got '$(cat "$fake.argv")', expected '$out'"
    found=$(find "$dir" -name PWNED)
    [ -z "$found" ] || fail "the path ran a command: $found"
    ;;
  failing)
    printf 'import sys\nprint("fake plot.py: broken", file=sys.stderr)\nsys.exit(1)\n' > "$fake"
    # shellcheck disable=SC2086
    log=$(NORMLAB_PLOT=$fake "$normlab" $flags --out "$dir/failing.h5" 2>&1)
    rc=$?
    printf '%s\n' "$log"
    [ "$rc" -eq 1 ] || fail "exit code $rc, expected 1"
    case "$log" in
      *"plots: fake_plot.py failed (exit 1)"*) ;;
      *) fail "the output does not say the plots failed" ;;
    esac
    case "$log" in
      *"fake plot.py: broken"*) ;;
      *) fail "the output lacks plot.py's own message" ;;
    esac
    ;;
  *) fail "unknown case" ;;
esac
echo "sweep_plots_check $case: ok"
