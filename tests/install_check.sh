#!/bin/sh
# install_check.sh CMAKE BUILD SOURCE WORKDIR VERSION [CMAKE_ARGS...]: installs the normlab build
# BUILD into WORKDIR/prefix (cmake --install), then builds the outside project
# SOURCE/tests/install_project against it with find_package(normlab VERSION's major.minor)
# and checks that
#   - the headers, libraries, program, plot.py and package are where the README says;
#   - the project's targets take no include directory from the source tree;
#   - its own program computes a LayerNorm through normlab::normlab;
#   - normlab --version, the project's normlab_add_experiment program's --version, the
#     package's normlab_VERSION and VERSION (the project(VERSION) of the build) agree;
#   - find_package refuses a 0.x release of another minor version (SameMinorVersion);
#   - the program lists and runs its own experiment, and the installed normlab runs a sweep,
#     both using the installed plot.py (a stand-in put there after comparing the real one).
# CMAKE_ARGS (compiler, launcher) go to the project's configure.
set -u
cmake=$1 build=$2 source=$3 work=$4 version=$5
shift 5
fail() { echo "install_check: $*" >&2; exit 1; }
run() {  # runs a command, showing its output only when it fails
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; fail "failed: $*"; }
}

rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
run "$cmake" --install "$build" --prefix "$prefix"
for f in bin/normlab lib/libnormlab.a lib/libnormlab_experiments.a include/normlab/framework/tensor.h \
         include/normlab/experiments/sweep.h share/normlab/main.cpp share/normlab/plot.py \
         lib/cmake/normlab/normlabConfig.cmake lib/cmake/normlab/normlabConfigVersion.cmake; do
  [ -f "$prefix/$f" ] || fail "cmake --install did not install $f"
done
cmp -s "$source/experiments/plot.py" "$prefix/share/normlab/plot.py" || fail "the installed plot.py differs"

# The outside project, asking for this major.minor.
request=$(echo "$version" | cut -d. -f1,2)
project=$work/project
run "$cmake" -S "$source/tests/install_project" -B "$project" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DNORMLAB_REQUEST="$request" "$@"
run "$cmake" --build "$project" -j 2
if grep -rqE --include=flags.make -e "(-I|-isystem )$source/?( |\$)" "$project/CMakeFiles"; then
  fail "the project's include directories reach into the source tree $source"
fi

# Versions: the package, the installed program, the project's program and project(VERSION).
package_version=$(cat "$project/normlab_version.txt")
[ "$package_version" = "$version" ] || fail "the package's normlab_VERSION is '$package_version', expected '$version'"
for program in "$prefix/bin/normlab" "$project/my_study"; do
  printed=$("$program" --version) || fail "$program --version failed"
  [ "$printed" = "normlab $version" ] || fail "$program --version printed '$printed', expected 'normlab $version'"
done
echo "versions agree: $version"

# A 0.x package is compatible with its own minor version only.
major=$(echo "$version" | cut -d. -f1) minor=$(echo "$version" | cut -d. -f2)
if [ "$major" = 0 ]; then
  other=0.$((minor + 1))
  [ "$minor" -gt 0 ] && other=0.$((minor - 1))
  if "$cmake" -S "$source/tests/install_project" -B "$work/other_version" -DCMAKE_PREFIX_PATH="$prefix" \
       -DNORMLAB_REQUEST="$other" "$@" >"$work/other_version.log" 2>&1; then
    fail "find_package(normlab $other) accepted normlab $version"
  fi
  grep -q "$version" "$work/other_version.log" || fail "find_package(normlab $other) failed without naming $version"
fi

# The project's own program on the library.
out=$("$project/layer_norm_check") || fail "layer_norm_check failed: $out"
echo "$out"
case "$out" in
  *"y = -1.3416 -0.4472 0.4472 1.3416"*"|dx| < 1e-3: yes"*) ;;
  *) fail "layer_norm_check printed an unexpected result" ;;
esac

# The installed plot.py, replaced by a stand-in that records its argument, shows which
# plot.py each program runs (and keeps matplotlib out of the test).
unset NORMLAB_PLOT
if command -v python3 >/dev/null 2>&1 || [ -x /usr/bin/python3 ]; then
  cat >"$prefix/share/normlab/plot.py" <<PY
import sys
open("$work/plotted.txt", "a").write(sys.argv[1] + "\n")
PY
  plots=yes
else
  echo "no python3: the plot.py lookup is not checked"
  plots=no
fi
tiny="--set steps=4 --set warmup=1 --set eval_every=2 --set d_model=16 --set seq_len=16 --set batch=2"
out=$("$project/my_study" list 2>&1) || fail "my_study list failed: $out"
case "$out" in
  *install-check*quick*|*quick*install-check*) ;;
  *) printf '%s\n' "$out"; fail "my_study list does not show install-check beside the presets" ;;
esac
run "$project/my_study" run install-check --jobs 2 --out "$work/mine.h5"
case "$out" in
  *"claims and verdicts"*"both runs finish"*agrees*) ;;
  *) printf '%s\n' "$out"; fail "my_study run install-check did not reach its verdict" ;;
esac
run "$prefix/bin/normlab" run quick --set norm=rms --set placement=pre --set depth=1,2 $tiny --jobs 2 \
    --out "$work/quick.h5"
case "$out" in
  *"norm=rms,placement=pre,depth=2"*) ;;
  *) printf '%s\n' "$out"; fail "the installed normlab did not run its sweep" ;;
esac
if [ "$plots" = yes ]; then
  expected=$(printf '%s\n%s' "$work/mine.h5" "$work/quick.h5")
  [ "$(cat "$work/plotted.txt" 2>/dev/null)" = "$expected" ] ||
    fail "the programs did not run the installed plot.py on their results (plotted: $(cat "$work/plotted.txt" 2>/dev/null))"
fi
echo "install_check: passed"
