#!/usr/bin/env python3
"""A full disk fails `normlab train --checkpoint` and `normlab run` cleanly.

Each command runs with its output file where writing fails: under a file size limit
(`ulimit -f`, always), and on a tiny tmpfs (when this process may mount one: root, and a
machine that allows it). Each must exit with a code from 1 to 127 (never a signal: HDF5
1.10 used to crash at exit after failing to close a file), print a line on stderr saying
that writing failed and why, leave no *.tmp file, and leave a results file or checkpoint
that was there before byte for byte as it was. Only the Python standard library is needed.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys

TRAIN = ["train", "--depth", "1", "--d-model", "16", "--steps", "4", "--batch", "2", "--seq-len", "16", "--quiet"]
RUN = ["run", "quick", "--set", "steps=4", "--set", "warmup=1", "--set", "eval_every=2", "--set", "d_model=16",
       "--set", "seq_len=16", "--set", "batch=2", "--set", "depth=1", "--jobs", "1", "--no-plots"]
# The same sweep with one more depth: it has runs to add to a results file of RUN.
RUN_MORE = [a if a != "depth=1" else "depth=1,2" for a in RUN]

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAILED:", what)


def run(normlab, args, file_size_limit=None):
    def limit():
        # The child starts with SIGXFSZ at its default (killing); normlab must ignore it.
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([normlab] + args, capture_output=True, text=True, errors="replace", env=env, timeout=120,
                       preexec_fn=limit if file_size_limit is not None else None)
    return p.returncode, p.stdout, p.stderr


def tmp_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".tmp")]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def expect_write_failure(name, normlab, args, out, reason, file_size_limit=None):
    """Runs normlab with `args` writing `out`, where writing fails with `reason`."""
    before = read(out) if os.path.exists(out) else None
    code, stdout, stderr = run(normlab, args, file_size_limit)
    program = "normlab " + args[0] + ": "
    said = [line for line in stderr.splitlines()
            if line.startswith(program) and "cannot write" in line and reason in line]
    check(0 < code < 128, f"{name}: exit code {code} (expected 1..127; a negative code is a signal)")
    check(said, f"{name}: no line '{program}... cannot write ...: {reason}' on stderr:\n{stderr}{stdout[-2000:]}")
    check(not tmp_files(os.path.dirname(out)), f"{name}: left {tmp_files(os.path.dirname(out))}")
    if before is not None:
        check(os.path.exists(out) and read(out) == before, f"{name}: {out} changed")
    print(f"{name}: exit {code}; {said[0] if said else stderr.strip()}")


def make_existing(normlab, folder):
    """A checkpoint and a results file, written where writing works."""
    ck, results = os.path.join(folder, "existing_ck.h5"), os.path.join(folder, "existing_results.h5")
    for args in (TRAIN + ["--checkpoint", ck], RUN + ["--quiet", "--out", results]):
        code, stdout, stderr = run(normlab, args)
        if code != 0:
            sys.exit(f"disk_full_check: normlab {' '.join(args)} failed ({code}):\n{stdout}{stderr}")
    return ck, results


def cases(existing):
    """(name, arguments without the output, the output's name, the file it starts as or None)."""
    ck, results = existing
    return [
        ("train, new checkpoint", TRAIN, "new_ck.h5", None),
        ("train, over a checkpoint", TRAIN, "ck.h5", ck),
        ("run, new results", RUN, "new_results.h5", None),
        ("run, adding to results", RUN_MORE, "results.h5", results),
    ]


def check_case(normlab, case, folder, reason, file_size_limit=None):
    name, args, out, copy_of = case
    path = os.path.join(folder, out)
    if copy_of:
        shutil.copyfile(copy_of, path)
    flag = "--checkpoint" if args[0] == "train" else "--out"
    expect_write_failure(f"{name} ({reason})", normlab, args + [flag, path], path, reason, file_size_limit)


def mount_tmpfs(folder, size_kib):
    """Mounts a tmpfs of `size_kib` on `folder`; why not when it cannot (not root, not allowed)."""
    os.makedirs(folder)
    if os.geteuid() != 0:
        return "not root"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", folder], capture_output=True,
                       text=True)
    return None if p.returncode == 0 else p.stderr.strip() or f"mount exited with {p.returncode}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--normlab", required=True, help="the normlab program")
    ap.add_argument("--workdir", required=True, help="a folder for the files (emptied)")
    a = ap.parse_args()
    normlab = os.path.abspath(a.normlab)
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    workdir = os.path.abspath(a.workdir)
    existing = make_existing(normlab, workdir)

    # A file size limit below every file written (the smallest, a new results file's
    # header, takes a few KiB).
    limited = os.path.join(workdir, "limited")
    os.makedirs(limited)
    for case in cases(existing):
        check_case(normlab, case, limited, "File too large", file_size_limit=1024)

    # For each case, a tmpfs with room for the file it starts from and one page more.
    for i, case in enumerate(cases(existing)):
        disk = os.path.join(workdir, f"small_disk{i}")
        size_kib = (os.path.getsize(case[3]) if case[3] else 0) // 1024 + 8
        why_not = mount_tmpfs(disk, size_kib)
        if why_not:
            print(f"disk_full_check: no tmpfs ({why_not}); a full disk was tested with a file size limit only")
            break
        try:
            check_case(normlab, case, disk, "No space left on device")
        finally:
            subprocess.run(["umount", "-l", disk])

    if failures:
        print(f"disk_full_check: {len(failures)} failures")
        return 1
    print("disk_full_check: every write to a full disk failed cleanly and left the old files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
