#!/usr/bin/env python3
"""Check of experiments/plot.py on synthetic sweep results files.

Builds, in a temporary folder, files in the layout of a sweep's results file (root attributes
format, version, experiment, axes, map_columns, axis_values.<axis>; a group /runs/<name> per
run with its attributes, datasets and config group):

  quick.h5   axes norm in {layer, rms} x depth in {2, 4} (map_columns = depth): norm=layer,depth=4
             diverged (NaN/inf losses and metrics at the end), norm=rms,depth=4 missing,
             norm=rms,depth=2 with zero delta_f steps and no norm_input_rms dataset;
  multi.h5   four axes (norm, placement, lr, depth), some combinations missing, no delta_f
             anywhere (the figure must be skipped);
  empty.h5   a results file with no runs yet;
  other.h5   format="other"; notes.txt, not HDF5 at all; absent.h5, no file (all exit with 2).

plot.py must exit 0 on the results files, write every expected PNG (a valid, non-trivial PNG)
and print "wrote <path>" for each. Exits 0 on success, 1 on a failure (with a message), 77
(skip) without numpy, h5py or matplotlib.

Usage: plot_check.py [--plot experiments/plot.py] [--keep DIR]   (--keep: leave the files there)
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import h5py
    import matplotlib
    del matplotlib  # only checked for: plot.py needs it
except ImportError as e:
    print(f"plot_check: skipped, needs numpy, h5py and matplotlib ({e})")
    sys.exit(77)

FIGURES = ["stability", "loss_curves", "grad_norm_init", "residual_norm_init", "delta_f",
           "max_attn_logit", "log_z"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_root(f, experiment, axes, values, map_columns):
    # fixed-length strings (as the C++ writer may store them) next to variable-length ones
    f.attrs["format"] = np.bytes_(b"normlab-sweep")
    f.attrs["version"] = np.int64(1)
    f.attrs["experiment"] = experiment
    f.attrs["axes"] = ",".join(axes)
    f.attrs["map_columns"] = np.bytes_(map_columns.encode())
    for a in axes:
        f.attrs[f"axis_values.{a}"] = "|".join(values[a])


def write_run(f, labels, depth, rng, steps=200, diverge_at=0, delta_f_steps=20,
              norm_inputs=True, post=False, d_model=16):
    name = ",".join(f"{k}={v}" for k, v in labels)
    g = f.create_group(f"runs/{name}")
    for k, v in labels:
        g.attrs[f"label.{k}"] = v
    chance = float(np.log(64))
    n = diverge_at if diverge_at else steps
    t = np.arange(1, n + 1)
    loss = 2.0 + (chance - 2.0) * np.exp(-t / 40.0) + 0.05 * rng.standard_normal(n)
    if diverge_at:
        loss[-8:] = np.geomspace(5, 1e4, 8)
        loss[-2:] = [np.inf, np.nan]
    g["loss"] = loss
    g["grad_norm"] = np.abs(1.0 + 0.1 * rng.standard_normal(n))
    g["lr"] = np.minimum(t / 20.0, 1.0) * 1e-3
    eval_step = np.arange(20, n + 1, 20, dtype=np.int64)
    eval_loss = loss[eval_step - 1].copy()
    if diverge_at:
        eval_step = np.append(eval_step, n).astype(np.int64)
        eval_loss = np.append(eval_loss, np.nan)
    g["eval_step"], g["eval_loss"] = eval_step, eval_loss

    metric_step = np.array([s for s in (0, 50, 100, 150, 200) if s < n] + [n], dtype=np.int64)
    blocks = np.arange(1, depth + 1)
    growth = 1.6 ** blocks if post else np.ones(depth)
    res = np.sqrt(d_model) * (np.ones(depth + 1) if post else np.sqrt(1 + np.arange(depth + 1)))
    metrics = {"metric_step": metric_step,
               "layer_grad_norm": np.outer(1 + metric_step / 400.0, 0.02 * growth),
               "residual_norm": np.outer(1 + metric_step / 1000.0, res),
               "max_attn_logit": np.outer(1 + metric_step / 30.0, 1 + 0.3 * blocks),
               "log_z": np.log(64) + 0.01 * metric_step.astype(np.float64)}
    if diverge_at:  # the last probe saw the blow-up
        for k in ("layer_grad_norm", "max_attn_logit"):
            metrics[k][-1] = np.nan
            metrics[k][-1, 0] = np.inf
        metrics["log_z"][-1] = np.nan
    for k, v in metrics.items():
        g[k] = v
    if norm_inputs:
        g["norm_input_rms"] = np.ones((len(metric_step), 2 * depth + 1))
        g.attrs["norm_names"] = ",".join([f"block{i}.norm{j}" for i in blocks for j in (1, 2)]
                                         + ["final"])
    u = min(delta_f_steps, n)
    g["delta_f_step"] = np.arange(1, u + 1, dtype=np.int64)
    g["delta_f"] = 0.01 * np.arange(1, u + 1) * (depth if post else 1.0)

    g.attrs["diverged"] = np.int64(1 if diverge_at else 0)
    g.attrs["diverged_step"] = np.int64(diverge_at)
    g.attrs["diverged_reason"] = "loss is not finite" if diverge_at else ""
    g.attrs["initial_loss"] = float(loss[0]) if np.isfinite(loss[0]) else chance
    g.attrs["final_loss"] = np.nan if diverge_at else float(eval_loss[-1])
    g.attrs["chance_loss"] = chance
    g.attrs["seconds"] = 1.5
    g.attrs["tokens_per_second"] = 12345.0
    c = g.create_group("config")
    c.attrs["depth"] = np.int64(depth)
    c.attrs["d_model"] = np.int64(d_model)
    c.attrs["lr"] = 1e-3
    c.attrs["warmup"] = np.int64(20)
    for k, v in labels:
        if k not in ("depth", "lr"):
            c.attrs[k] = v


def build_quick(path, rng):
    with h5py.File(path, "w") as f:
        axes = ["norm", "depth"]
        write_root(f, "quick", axes, {"norm": ["layer", "rms"], "depth": ["2", "4"]}, "depth")
        write_run(f, [("norm", "layer"), ("depth", "2")], 2, rng, post=True)
        write_run(f, [("norm", "layer"), ("depth", "4")], 4, rng, diverge_at=120, post=True)
        write_run(f, [("norm", "rms"), ("depth", "2")], 2, rng, delta_f_steps=0,
                  norm_inputs=False)
        # norm=rms,depth=4 is missing


def build_multi(path, rng):
    values = {"norm": ["layer", "rms"], "placement": ["pre", "post"], "lr": ["0.001", "0.01"],
              "depth": ["2", "3", "6"]}
    with h5py.File(path, "w") as f:
        write_root(f, "multi", list(values), values, "depth")
        for norm in values["norm"]:
            for pl in values["placement"]:
                for lr in values["lr"]:
                    for depth in values["depth"]:
                        if (norm, depth) == ("rms", "6") or (pl, lr) == ("post", "0.01"):
                            continue
                        labels = [("norm", norm), ("placement", pl), ("lr", lr), ("depth", depth)]
                        write_run(f, labels, int(depth), rng, delta_f_steps=0, post=(pl == "post"),
                                  diverge_at=90 if (pl, depth, lr) == ("post", "6", "0.001") else 0)
        for name in f["runs"]:
            for k in ("delta_f", "delta_f_step"):
                del f[f"runs/{name}/{k}"]


def run_plot(plot, args):
    p = subprocess.run([sys.executable, plot] + args, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def check_pngs(out_dir, names, stdout, errors, label):
    for n in names:
        path = os.path.join(out_dir, n + ".png")
        if not os.path.isfile(path):
            errors.append(f"{label}: {path} was not written")
            continue
        with open(path, "rb") as fh:
            head = fh.read(8)
        size = os.path.getsize(path)
        if head != PNG_MAGIC:
            errors.append(f"{label}: {path} is not a PNG")
        elif size < 5000:
            errors.append(f"{label}: {path} is only {size} bytes")
        if f"wrote {path}" not in stdout:
            errors.append(f"{label}: no 'wrote {path}' line in the output")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plot", help="path to plot.py (default: experiments/plot.py next to tests/)",
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                         "experiments", "plot.py"))
    ap.add_argument("--keep", help="write the files here and keep them (to look at the PNGs)")
    args = ap.parse_args()
    plot = os.path.abspath(args.plot)
    work = args.keep or tempfile.mkdtemp(prefix="plot_check_")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(7)
    errors = []
    try:
        quick = os.path.join(work, "quick.h5")
        build_quick(quick, rng)
        rc, out, err = run_plot(plot, [quick])  # default output folder: quick.h5 -> quick/
        if rc != 0:
            errors.append(f"quick.h5: exit code {rc}, expected 0\n{out}{err}")
        else:
            check_pngs(os.path.join(work, "quick"), FIGURES, out, errors, "quick.h5")

        multi = os.path.join(work, "multi.h5")
        build_multi(multi, rng)
        rc, out, err = run_plot(plot, [multi, "--out", os.path.join(work, "multi_plots")])
        if rc != 0:
            errors.append(f"multi.h5: exit code {rc}, expected 0\n{out}{err}")
        else:
            check_pngs(os.path.join(work, "multi_plots"), [f for f in FIGURES if f != "delta_f"],
                       out, errors, "multi.h5")
            if "skipped delta_f" not in out:
                errors.append(f"multi.h5: no 'skipped delta_f' note\n{out}")
            if os.path.exists(os.path.join(work, "multi_plots", "delta_f.png")):
                errors.append("multi.h5: delta_f.png written although no run has delta_f")

        empty = os.path.join(work, "empty.h5")
        with h5py.File(empty, "w") as f:
            write_root(f, "empty", ["depth"], {"depth": ["2"]}, "depth")
        rc, out, err = run_plot(plot, [empty])
        if rc != 0 or "skipped stability: no data" not in out:
            errors.append(f"empty.h5: exit code {rc}, expected 0 and notes on skipping\n{out}{err}")

        other = os.path.join(work, "other.h5")
        with h5py.File(other, "w") as f:
            f.attrs["format"] = "other"
        notes = os.path.join(work, "notes.txt")
        with open(notes, "w") as fh:
            fh.write("not a results file\n")
        for bad in (other, notes, os.path.join(work, "absent.h5")):
            rc, out, err = run_plot(plot, [bad])
            if rc != 2:
                errors.append(f"{os.path.basename(bad)}: exit code {rc}, expected 2\n{out}{err}")
            elif bad not in err:
                errors.append(f"{os.path.basename(bad)}: the message does not name the file: {err}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if errors:
        print("plot_check: FAILED\n  " + "\n  ".join(errors))
        return 1
    print("plot_check: ok (quick.h5, multi.h5, empty.h5, and three files that must be refused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
