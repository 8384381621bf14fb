#!/usr/bin/env python3
"""Damaged files never crash normlab.

Makes a real results file (a tiny `normlab run quick`) and a real checkpoint (a tiny
`normlab train`), then damages copies of them: single-bit flips at random bytes and
truncations at random lengths. `normlab report` reads each damaged results file and
`normlab train --resume` each damaged checkpoint (continuing it for two steps). Each must
either exit 0 with the same output as the undamaged file (the damage was in bytes nothing
reads, or was harmless), or exit 2 with exactly one clean line on stderr ("normlab report:
..." / "normlab train: ..."), never an HDF5 error stack. A signal, a hang or any other exit
code fails the check.

The damage is drawn from --seed (printed; pass it again to reproduce a failure). Only the
Python standard library is needed.
"""
import argparse
import concurrent.futures
import os
import random
import shutil
import subprocess
import sys
import tempfile

RUN = ["run", "quick", "--set", "steps=4", "--set", "warmup=1", "--set", "eval_every=2", "--set", "d_model=16",
       "--set", "seq_len=16", "--set", "batch=2", "--set", "depth=1,2", "--jobs", "1", "--no-plots", "--quiet"]
TRAIN = ["train", "--depth", "1", "--d-model", "16", "--steps", "4", "--batch", "2", "--seq-len", "16", "--quiet"]
TIMEOUT = 60  # seconds for one case; a damaged file must not make normlab hang

# Every file is read under this name, in a folder of its own, so that outputs naming it compare.
NAME = "damaged.h5"

# What reads each kind of file, and the program whose name starts its error line.
READERS = {
    "results": (["report", NAME], "normlab report: "),
    "checkpoint": (["train", "--resume", NAME, "--steps", "6", "--quiet"], "normlab train: "),
}


# The environment of every normlab run; see suppress_hdf5_leaks.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def suppress_hdf5_leaks(workdir):
    """Under LeakSanitizer (make sanitize), HDF5 1.10 leaks a little on its error paths for some
    damaged files; those leaks, allocated inside libhdf5, are suppressed (a leak of normlab's
    own still fails the check)."""
    suppressions = os.path.join(workdir, "lsan_suppressions.txt")
    with open(suppressions, "w") as f:
        f.write("leak:libhdf5\n")
    options = os.environ.get("LSAN_OPTIONS", "")
    ENV["LSAN_OPTIONS"] = (options + ":" if options else "") + "print_suppressions=0:suppressions=" + suppressions


def run(normlab, args, cwd):
    try:
        p = subprocess.run([normlab] + args, cwd=cwd, env=ENV, capture_output=True, text=True, errors="replace",
                           timeout=TIMEOUT)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", ""


def comparable(stdout):
    """The output without its one measured line (the training speed)."""
    return "\n".join(line for line in stdout.splitlines() if not line.lstrip().startswith("tokens/s"))


def read_damaged(normlab, kind, data, workdir):
    """Runs the reader of `kind` on the file holding `data`: (exit code or None on a hang, stdout, stderr)."""
    folder = tempfile.mkdtemp(dir=workdir)
    try:
        with open(os.path.join(folder, NAME), "wb") as f:
            f.write(data)
        code, out, err = run(normlab, READERS[kind][0], folder)
        return code, comparable(out), err
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def judge(kind, result, expected):
    """None when the result is one of the two good outcomes, else what is wrong. `expected`
    is the undamaged file's result."""
    code, out, err = result
    if code is None:
        return f"no exit within {TIMEOUT} s"
    if code < 0 or code >= 128:
        return f"killed by signal {-code if code < 0 else code - 128}"
    if code == 0:
        return None if (out, err) == expected[1:] else "exit 0 with other output than the undamaged file's"
    if code != 2:
        return f"exit code {code}"
    lines = err.splitlines()
    prefix = READERS[kind][1]
    if len(lines) != 1 or not lines[0].startswith(prefix) or "HDF5-DIAG" in err or "#0" in err:
        return f"exit 2 without one clean '{prefix.strip()}' line on stderr"
    return None


def make_files(normlab, workdir):
    files = {"results": os.path.join(workdir, "results.h5"), "checkpoint": os.path.join(workdir, "checkpoint.h5")}
    for path in files.values():
        if os.path.exists(path):
            os.remove(path)
    for args in (RUN + ["--out", files["results"]], TRAIN + ["--checkpoint", files["checkpoint"]]):
        code, out, err = run(normlab, args, workdir)
        if code != 0:
            sys.exit(f"fuzz_check: normlab {' '.join(args)} failed ({code}):\n{out}{err}")
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--normlab", required=True, help="the normlab program")
    ap.add_argument("--workdir", required=True, help="a folder for the files (created)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--flips", type=int, default=300, help="single-bit flips of each file")
    ap.add_argument("--truncations", type=int, default=50, help="truncations of each file")
    ap.add_argument("--jobs", type=int, default=max(2, min(4, os.cpu_count() or 1)))
    a = ap.parse_args()
    normlab = os.path.abspath(a.normlab)
    os.makedirs(a.workdir, exist_ok=True)
    workdir = os.path.abspath(a.workdir)
    suppress_hdf5_leaks(workdir)
    print(f"fuzz_check: seed {a.seed}, {a.flips} flips and {a.truncations} truncations of each file")
    rng = random.Random(a.seed)
    files = make_files(normlab, workdir)

    cases = []  # (kind, damage ("flip", "truncation" or None), description, damaged bytes)
    for kind, path in files.items():
        with open(path, "rb") as f:
            data = f.read()
        cases.append((kind, None, "undamaged", data))
        for _ in range(a.flips):
            offset, bit = rng.randrange(len(data)), rng.randrange(8)
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            cases.append((kind, "flip", f"bit {bit} of byte {offset} flipped", bytes(damaged)))
        for _ in range(a.truncations):
            length = rng.randrange(len(data))
            cases.append((kind, "truncation", f"truncated to {length} bytes", data[:length]))

    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda c: read_damaged(normlab, c[0], c[3], workdir), cases))

    expected = {kind: result for (kind, damage, _, _), result in zip(cases, results) if damage is None}
    for kind, (code, out, err) in expected.items():
        if code != 0:
            sys.exit(f"fuzz_check: the undamaged {kind} file does not read: exit {code}\n{err}")
    failures = []
    counts = {}  # (kind, damage) -> {"exit 0": n, "exit 2": n, "failed": n}
    for (kind, damage, what, _), result in zip(cases, results):
        if damage is None:
            continue
        count = counts.setdefault((kind, damage), {"exit 0": 0, "exit 2": 0, "failed": 0})
        problem = judge(kind, result, expected[kind])
        if problem:
            count["failed"] += 1
            failures.append(f"{kind}, {what}: {problem}\n    stderr: {result[2].strip()[:600]}")
        else:
            count[f"exit {result[0]}"] += 1
    for (kind, damage), c in counts.items():
        print(f"{kind}, {sum(c.values())} {damage}s: {c['exit 0']} read as undamaged (exit 0), "
              f"{c['exit 2']} refused (exit 2), {c['failed']} failed")
    for f in failures[:20]:
        print("FAILED:", f)
    print(f"fuzz_check: {len(failures)} failures (reproduce with --seed {a.seed})" if failures else
          "fuzz_check: every damaged file was read as undamaged or refused with one clean line")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
