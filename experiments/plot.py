#!/usr/bin/env python3
"""Figures from a normlab sweep results file (HDF5, root attribute format="normlab-sweep").

Usage: plot.py RESULTS.h5 [--out DIR]      (DIR: RESULTS.h5 without ".h5"; created)

Columns are the values of the map_columns axis (usually depth); rows are the combinations of
the other axes' labels joined with "/" (an lr axis is just another row axis).

  stability.png           rows x columns, colour final/chance loss; diverged "div@<step>"
  loss_curves.png         train (smoothed) and eval loss vs step; panel per column, colour per row
  grad_norm_init.png      gradient norm per block at init; same panels (Xiong et al. 2020)
  residual_norm_init.png  residual-stream norm at init per layer; dashed sqrt(d_model)
  delta_f.png             ||F(x,theta_t) - F(x,theta_0)|| over the first steps; panel per row,
                          colour per column (DeepNet: Post-LN's update grows with depth)
  max_attn_logit.png      max over blocks of the attention logit vs step; panel per row
  log_z.png               mean log-partition of the output logits vs step; panel per row

Figures without data are skipped with a note. Non-finite values are masked; a curve over steps
of a diverged run (final loss NaN), or one whose last value is non-finite, ends in an 'x'.
Exit codes: 0 done, 2 not a readable results file, 3 numpy, h5py or matplotlib missing.
"""

import argparse
import math
import os
import sys

try:
    import numpy as np
    import h5py
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
except ImportError as e:
    print(f"plot.py: needs numpy, h5py and matplotlib ({e}); on Debian: "
          "apt-get install python3-h5py python3-matplotlib", file=sys.stderr)
    sys.exit(3)

DPI = 120
RATIO_MAX = 1.2  # the stability map's colour scale: final loss / chance loss in [0, 1.2]


def _val(v):
    """An HDF5 attribute as a plain Python value (bytes and numpy scalars converted)."""
    if isinstance(v, h5py.Empty):
        return ""
    if isinstance(v, (np.ndarray, np.generic)) and v.size == 1:
        v = v.item()
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _read_run(name, g, axes):
    a = {k: _val(v) for k, v in g.attrs.items()}
    parsed = dict(p.split("=", 1) for p in name.split(",") if "=" in p)
    run = {"name": name, "labels": {x: str(a.get(f"label.{x}", parsed.get(x, ""))) for x in axes},
           "config": {k: _val(v) for k, v in g["config"].attrs.items()} if "config" in g else {},
           "diverged": int(a.get("diverged", 0)), "diverged_step": int(a.get("diverged_step", 0)),
           "final_loss": float(a.get("final_loss", math.nan)),
           "chance_loss": float(a.get("chance_loss", math.nan))}
    for k in ("loss", "eval_loss", "layer_grad_norm", "residual_norm", "max_attn_logit", "log_z",
              "delta_f", "eval_step", "metric_step", "delta_f_step"):
        ok = k in g and isinstance(g[k], h5py.Dataset)
        run[k] = np.asarray(g[k][()], dtype=np.float64) if ok else None
    return run


def load(path):
    """The sweep's layout and runs; raises ValueError when `path` is not a results file."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot open as HDF5 ({e})")
    with f:
        root = {k: _val(v) for k, v in f.attrs.items()}
        if root.get("format") != "normlab-sweep":
            raise ValueError(f"{path}: not a normlab results file "
                             f"(format={root.get('format')!r}, expected 'normlab-sweep')")
        names = list(f["runs"].keys()) if "runs" in f else []
        axes = [a for a in str(root.get("axes", "")).split(",") if a] or [  # else from a name
            p.split("=", 1)[0] for p in (names[0].split(",") if names else []) if "=" in p]
        values = {a: [v for v in str(root.get(f"axis_values.{a}", "")).split("|") if v]
                  for a in axes}
        runs = []
        for name in names:
            try:  # a partly written run is left out, not fatal
                runs.append(_read_run(name, f["runs"][name], axes))
            except (OSError, KeyError, ValueError, TypeError) as e:
                print(f"plot.py: {path}: left out run {name}: {e}", file=sys.stderr)
    cols = root.get("map_columns") or ""
    if cols not in axes:  # as the sweep chooses: depth when swept, else the last axis
        cols = "depth" if "depth" in axes else (axes[-1] if axes else "")
    for x in axes:  # labels the axis_values attribute leaves out still get a place
        values[x] += [v for v in dict.fromkeys(r["labels"][x] for r in runs) if v not in values[x]]
    row_axes = [x for x in axes if x != cols]
    rows = [""]
    for x in row_axes:
        rows = [f"{r}/{v}" if r else v for r in rows for v in values[x]]
    for r in runs:
        r["row"] = "/".join(r["labels"][x] for x in row_axes)
        r["col"] = r["labels"][cols] if cols else ""
    title = root.get("experiment") or os.path.splitext(os.path.basename(path))[0]
    return {"experiment": str(title), "cols_axis": cols,
            "row_axes": row_axes, "rows": rows, "cols": values[cols] if cols else [""],
            "runs": runs}


def finite(y):
    """A float copy of y with non-finite entries as NaN (masked in the plots)."""
    y = np.array(y, dtype=np.float64)
    y[~np.isfinite(y)] = np.nan
    return y


def smooth(y, window):
    """Moving average over the finite entries of y (NaN where y is NaN)."""
    if window <= 1 or len(y) < 3:
        return y
    ok = np.isfinite(y)
    total = np.convolve(np.where(ok, y, 0.0), np.ones(window), mode="same")
    count = np.convolve(ok.astype(np.float64), np.ones(window), mode="same")
    return np.where(ok & (count > 0), total / np.maximum(count, 1), np.nan)


def curve(ax, x, raw, color, end_x=None, window=1, **style):
    """Plots raw vs x masked (and smoothed over `window`); returns what it drew. The curve ends
    in an 'x' at its last finite point when end_x, or (end_x None) when raw ends non-finite."""
    y = smooth(finite(raw), window)
    ax.plot(x, y, color=color, **style)
    ok = np.flatnonzero(np.isfinite(y))
    if len(ok) and (end_x or (end_x is None and not np.isfinite(raw[-1]))):
        ax.plot(x[ok[-1]], y[ok[-1]], "x", color=color, ms=9, mew=2, zorder=5)
    return y


def _num(v):
    return f"{v:.6g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.0e}"


class _PlainLogFormatter(ticker.LogFormatter):
    """Log-axis labels as plain numbers ("0.02", "300") instead of "2x10^-2"."""
    def __call__(self, x, pos=None):
        return _num(x) if super().__call__(x, pos) else ""


def scale_y(ax, shown, log):
    """log: "always" (log y when every value shown is positive), "spread" (and they span more
    than a factor 20) or "never". Log axes get plain labels, minor ones when the range is narrow."""
    vals = np.concatenate([np.ravel(v) for v in shown]) if shown else np.array([])
    vals = vals[np.isfinite(vals)]
    if log == "never" or not len(vals) or vals.min() <= 0:
        return
    if log == "always" or vals.max() / vals.min() > 20:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _num(v)))
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False,
                                                        minor_thresholds=(2, 0.5)))


def palette(labels, ordered=False):
    """Colours per label: a sequential map for ordered values (depths), else a qualitative one."""
    cmap = plt.get_cmap("viridis" if ordered else "tab10" if len(labels) <= 10 else "tab20")
    if ordered:
        return {l: cmap(0.9 * i / max(1, len(labels) - 1)) for i, l in enumerate(labels)}
    return {l: cmap(i % cmap.N) for i, l in enumerate(labels)}


def save(fig, out, name):
    """Writes the figure as out/name and says so; returns True."""
    path = os.path.join(out, name)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return True


def grid(d, out, name, title, runs, by_col, series, xlabel, ylabel, log, extra=None):
    """A panel per column value (by_col; a colour per row label) or per row label (a colour per
    column value). series(run) -> [(x, y, style)]; extra(ax, runs) draws more, returns values.
    Returns whether it wrote the figure (not without runs)."""
    if not runs:
        return False
    panel_key, colour_key = ("col", "row") if by_col else ("row", "col")
    present = {r[colour_key] for r in runs}
    colors = palette([k for k in d["rows" if by_col else "cols"] if k in present], not by_col)
    keys = [k for k in (d["cols"] if by_col else d["rows"]) if any(r[panel_key] == k for r in runs)]
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False,
                            layout="constrained")
    axs = list(axs.ravel())
    for ax in axs[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axs, keys):
        mine = [r for r in runs if r[panel_key] == k]
        shown = [curve(ax, x, y, colors.get(r[colour_key]), **style)
                 for r in mine for x, y, style in series(r)]
        shown += extra(ax, mine) if extra else []
        scale_y(ax, shown, log)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set(xlabel=xlabel, ylabel=ylabel,
               title=f"{d['cols_axis']} = {k}" if by_col and k else (k or "all runs"))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{d['experiment']}: {title}")
    handles = [Line2D([], [], color=c, label=k or "all") for k, c in colors.items()]
    legend_title = "/".join(d["row_axes"]) if by_col else d["cols_axis"]
    # outside the panels, on the right, so it never covers data
    fig.legend(handles=handles, title=legend_title or None, loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    return save(fig, out, name)


def failed(r):
    """Whether the run diverged (its final loss is then NaN)."""
    return bool(r["diverged"]) or not np.isfinite(r["final_loss"])


def has(r, *keys):
    return all(r[k] is not None and r[k].size > 0 for k in keys)


def at_init(r, key, first):
    """series() of a per-layer metric at metric step 0, layers numbered from `first`; or []."""
    if not has(r, "metric_step", key) or r[key].ndim != 2:
        return []
    hit = np.flatnonzero(r["metric_step"][: r[key].shape[0]] == 0)
    y = r[key][hit[0]] if len(hit) else []
    return [(np.arange(first, first + len(y)), y, dict(marker=".", lw=1.3))] if len(y) else []


def pair(r, xkey, ykey):
    """(x, y) of two datasets of a run, cut to the same length."""
    n = min(len(r[xkey]), len(r[ykey]))
    return r[xkey][:n], r[ykey][:n]


def fig_stability(d, out):
    """The stability map: rows x columns, colour = final / chance loss."""
    if not d["runs"]:
        return False
    rows, cols = d["rows"], d["cols"]
    ratio = np.full((len(rows), len(cols)), np.nan)
    div = np.zeros(ratio.shape, dtype=bool)
    text = [["-"] * len(cols) for _ in rows]
    for r in (r for r in d["runs"] if r["row"] in rows and r["col"] in cols):
        i, j = rows.index(r["row"]), cols.index(r["col"])
        fl, ch = r["final_loss"], r["chance_loss"]
        if r["diverged"]:
            div[i, j] = True
            text[i][j] = f"div@{r['diverged_step']}" if r["diverged_step"] > 0 else "div"
        else:
            text[i][j] = f"{fl:.3f}" if np.isfinite(fl) else "nan"
            ratio[i, j] = fl / ch if np.isfinite(fl) and np.isfinite(ch) and ch > 0 else np.nan
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cols) + 3.2),
                                    max(2.6, 0.45 * len(rows) + 1.6)), layout="constrained")
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#d9d9d9")
    im = ax.imshow(np.clip(ratio, 0, RATIO_MAX), cmap=cmap, vmin=0, vmax=RATIO_MAX,
                   aspect="auto", interpolation="nearest")
    ax.imshow(np.where(div, 1.0, np.nan), cmap=ListedColormap(["#7f0000"]), vmin=0, vmax=1,
              aspect="auto", interpolation="nearest")
    for i in range(len(rows)):
        for j in range(len(cols)):
            light = div[i, j] or ratio[i, j] < 0.75 * RATIO_MAX  # NaN compares False
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9,
                    color="white" if light else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), [s or "all" for s in rows])
    ax.set(xlabel=d["cols_axis"], ylabel="/".join(d["row_axes"]),
           title=f"{d['experiment']}: final loss (dark red: diverged, grey: missing)")
    fig.colorbar(im, ax=ax, label="final loss / chance loss", extend="max")
    return save(fig, out, "stability.png")


def fig_loss_curves(d, out):
    """Train loss (light, moving average over ~1/50 of the steps) and eval loss (dots)."""
    def series(r):
        n = len(r["loss"])
        lines = [(np.arange(1, n + 1), r["loss"],
                  dict(window=max(1, n // 50), alpha=0.45, lw=1.2, end_x=failed(r) or None))]
        if has(r, "eval_step", "eval_loss"):
            lines.append((*pair(r, "eval_step", "eval_loss"),
                          dict(marker="o", ms=3.5 if len(r["eval_step"]) <= 40 else 2,
                               lw=0.8, end_x=False)))
        return lines
    return grid(d, out, "loss_curves.png", "loss (light: train, smoothed; dots: eval)",
                [r for r in d["runs"] if has(r, "loss")], True, series, "step", "loss", "always")


def fig_grad_norm_init(d, out):
    """Per-block gradient norm at init vs block index (1-based)."""
    runs = [r for r in d["runs"] if at_init(r, "layer_grad_norm", 1)]
    return grid(d, out, "grad_norm_init.png", "gradient norm per block at init", runs, True,
                lambda r: at_init(r, "layer_grad_norm", 1), "block", "||grad||_F", "always")


def fig_residual_norm_init(d, out):
    """Residual-stream norm at init vs layer 0..depth, with sqrt(d_model) dashed."""
    def sqrt_d_model(ax, mine):
        dims = sorted({int(r["config"]["d_model"]) for r in mine
                       if isinstance(r["config"].get("d_model"), (int, float))})
        for dm in dims:
            ax.axhline(math.sqrt(dm), color="grey", ls="--", lw=1)
            ax.annotate(f"sqrt({dm})", (1.0, math.sqrt(dm)), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7, color="grey")
        return [np.sqrt(dims)]
    runs = [r for r in d["runs"] if at_init(r, "residual_norm", 0)]
    return grid(d, out, "residual_norm_init.png",
                "residual stream norm at init (dashed: sqrt(d_model))", runs, True,
                lambda r: at_init(r, "residual_norm", 0), "layer (0: embedding, depth: output)",
                "mean token norm", "spread", sqrt_d_model)


def fig_delta_f(d, out):
    """Model update over the first steps: a panel per row, a line per column value (depth)."""
    return grid(d, out, "delta_f.png", "model update ||F(x,theta_t) - F(x,theta_0)||",
                [r for r in d["runs"] if has(r, "delta_f_step", "delta_f")], False,
                lambda r: [(*pair(r, "delta_f_step", "delta_f"), dict(lw=1.4))],
                "step", "||delta F||", "spread")


def _per_step(r, y):
    """series() entry of a metric vs metric_step; a diverged run's curve ends in an 'x'."""
    return [(r["metric_step"][: len(y)], y[: len(r["metric_step"])],
             dict(lw=1.4, marker="." if len(y) <= 30 else None, end_x=failed(r) or None))]


def fig_max_attn_logit(d, out):
    """Max over blocks of the pre-softmax attention logit vs step."""
    def series(r):
        v = finite(r["max_attn_logit"])
        top = np.full(v.shape[0], np.nan)
        ok = np.isfinite(v).any(axis=1)  # NaN where every block is non-finite
        top[ok] = np.nanmax(v[ok], axis=1)
        return _per_step(r, top)
    runs = [r for r in d["runs"]
            if has(r, "metric_step", "max_attn_logit") and r["max_attn_logit"].ndim == 2]
    return grid(d, out, "max_attn_logit.png", "max attention logit (max over blocks)", runs,
                False, series, "step", "max logit", "always")


def fig_log_z(d, out):
    """Mean log-partition of the output logits vs step."""
    runs = [r for r in d["runs"] if has(r, "metric_step", "log_z") and r["log_z"].ndim == 1]
    return grid(d, out, "log_z.png", "mean log Z of the output logits", runs, False,
                lambda r: _per_step(r, r["log_z"]), "step", "log Z", "never")


FIGURES = [("stability", fig_stability), ("loss_curves", fig_loss_curves),
           ("grad_norm_init", fig_grad_norm_init), ("residual_norm_init", fig_residual_norm_init),
           ("delta_f", fig_delta_f), ("max_attn_logit", fig_max_attn_logit), ("log_z", fig_log_z)]


def main(argv=None):
    p = argparse.ArgumentParser(description="Figures from a normlab sweep results file.")
    p.add_argument("results", help="the results file (results/<experiment>.h5)")
    p.add_argument("--out", help="output folder (default: the results path without .h5)")
    args = p.parse_args(argv)
    try:
        d = load(args.results)
    except ValueError as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 2
    stem, ext = os.path.splitext(args.results)
    out = args.out or (stem if ext.lower() in (".h5", ".hdf5") else args.results + "_plots")
    os.makedirs(out, exist_ok=True)
    for name, figure in FIGURES:
        if not figure(d, out):
            print(f"skipped {name}: no data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
