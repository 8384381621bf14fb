#!/usr/bin/env python3
"""Independent re-implementation check of normlab's toy transformer.

The model is rebuilt in numpy (float64) from README.md's "The toy transformer's math" and the
contents of a `normlab dump` file (config attributes, batch, parameters) only. For each dump:

  1. the numpy loss must reproduce /loss (f64 dumps: to ~1e-12 relative; f32 dumps, whose
     parameters are evaluated in float64 here: to ~1e-5 relative);
  2. every parameter gradient /grads/<name> is checked along a few random unit directions d
     against a 4-point central difference of the numpy loss,
        (8 (L(p + h d) - L(p - h d)) - (L(p + 2h d) - L(p - 2h d))) / 12h,
     which depends only on the numpy forward pass (f64 dumps; f32 dumps with a loose tolerance);
  3. the same dump taken with --recompute on must hold the same bytes in every dataset and
     attribute (recompute itself aside).

All perturbed parameter sets of a dump are evaluated in one vectorised forward pass: every
parameter carries a leading axis K of variants.

Usage: dump_check.py --normlab PATH/TO/normlab --workdir DIR [--verbose]
       dump_check.py --file F.h5 [--file G.h5 ...]        (check existing dumps)
Exits 0 when every check passes, 1 when one fails, 77 (skip) without numpy or h5py.
"""

import argparse
import math
import os
import subprocess
import sys
import time

try:
    import numpy as np
    import h5py
except ImportError as e:  # pragma: no cover
    print(f"dump_check: skipped, needs numpy and h5py ({e})")
    sys.exit(77)


# ----------------------------------------------------------------------------------------------
# Reading a dump


def _attr(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return v


def load_dump(path):
    with h5py.File(path, "r") as f:
        cfg = {k: _attr(v) for k, v in f["config"].attrs.items()}
        tokens = np.asarray(f["batch/tokens"][()], dtype=np.int64)
        targets = np.asarray(f["batch/targets"][()], dtype=np.int64)
        params = {k: np.asarray(f["params"][k][()]) for k in f["params"].keys()}
        grads = {k: np.asarray(f["grads"][k][()]) for k in f["grads"].keys()}
        loss = float(f["loss"][()])
    return cfg, tokens, targets, params, grads, loss


# ----------------------------------------------------------------------------------------------
# The forward pass. Every parameter array has a leading axis K (variants); activations are
# [K, B, T, ...]. forward() returns the K losses.


class Model:
    def __init__(self, cfg, params):
        self.cfg = cfg
        self.p = params  # name -> [K, ...] float64
        self.used = set()
        self.D = int(cfg["d_model"])
        self.H = int(cfg["heads"])
        self.dh = self.D // self.H
        self.L = int(cfg["depth"])
        self.eps = float(cfg["norm_eps"])
        self.norm = str(cfg["norm"])
        self.placement = str(cfg["placement"])
        self.qk_norm = str(cfg["qk_norm"])
        self.activation = str(cfg["activation"])
        self.final_norm = bool(int(cfg["final_norm"]))
        self.bias = bool(int(cfg["bias"]))
        self.dyt_identity = bool(int(cfg.get("dyt_identity", 0)))
        self.groups = int(cfg.get("groups", 1))
        self.z_loss = float(cfg.get("z_loss", 0.0))
        self.V = int(cfg["vocab"])
        self.F = int(cfg["ffn_mult"]) * self.D
        self.precision = str(cfg.get("precision", "f32"))
        if self.precision not in ("f32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {self.precision!r}")
        if float(cfg.get("dropout", 0.0)) != 0.0:
            raise ValueError("dropout must be 0 in a dump")
        if self.H * self.dh != self.D:
            raise ValueError("heads must divide d_model")

    # -- parameter access

    def get(self, name, shape):
        """The parameter `name`, which must exist with the given shape."""
        if name not in self.p:
            raise KeyError(f"the dump has no parameter {name}")
        a = self.p[name]
        if tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(f"{name} has shape {a.shape[1:]}, expected {tuple(shape)}")
        self.used.add(name)
        return a

    def norm_param(self, prefix, leaf, shape):
        """A norm's parameter `leaf` under `prefix`. BatchNorm and GroupNorm keep theirs one
        level deeper, `<prefix>.norm.<leaf>`; both spellings are accepted."""
        for name in (f"{prefix}.{leaf}", f"{prefix}.norm.{leaf}"):
            if name in self.p:
                return self.get(name, shape)
        raise KeyError(f"the dump has no parameter {prefix}.{leaf}")

    @staticmethod
    def bc(a, ndim):
        """[K, n] -> [K, 1, ..., 1, n] with ndim dims in all."""
        return a.reshape((a.shape[0],) + (1,) * (ndim - 2) + (a.shape[-1],))

    # -- building blocks

    def R(self, x):
        """A stored value: x rounded to the dump's precision (README, "Precision"), through f32
        (the value an f32 kernel would hold) and then to bfloat16 or IEEE half, to nearest even."""
        if self.precision == "f32":
            return x
        x32 = np.asarray(x, dtype=np.float32)
        if self.precision == "fp16":
            with np.errstate(over="ignore"):
                return x32.astype(np.float16).astype(np.float64)
        u = x32.view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        r = np.where(np.isnan(x32), u.astype(np.uint32) | 0x00400000, r).astype(np.uint32)
        return r.view(np.float32).astype(np.float64)

    def linear(self, x, prefix, n_out, round_out=True):
        """x W^T + b with W and b stored (R), the output stored unless round_out is off."""
        W = self.R(self.get(prefix + ".weight", (n_out, x.shape[-1])))  # [K, out, in]
        Wt = np.swapaxes(W, -1, -2)
        Wt = Wt.reshape((W.shape[0],) + (1,) * (x.ndim - 3) + Wt.shape[1:])
        y = np.matmul(x, Wt)
        if self.bias:
            y = y + self.bc(self.R(self.get(prefix + ".bias", (n_out,))), y.ndim)
        return self.R(y) if round_out else y

    def N(self, kind, x, prefix, layer_bias=None):
        """A norm's stored output."""
        return self.R(self.apply_norm(kind, x, prefix, layer_bias))

    def apply_norm(self, kind, x, prefix, layer_bias=None):
        """Norm `kind` over the last dim of x [K, ..., n] (batch: per channel over every other
        axis but K). LayerNorm has a bias when `bias` is on, or when layer_bias says so."""
        eps = self.eps
        nd = x.ndim
        n = x.shape[-1]
        if kind == "none":
            return x
        if kind == "layer":
            w = self.norm_param(prefix, "weight", (n,))
            has_b = self.bias if layer_bias is None else layer_bias
            b = self.norm_param(prefix, "bias", (n,)) if has_b else None
            mu = x.mean(axis=-1, keepdims=True)
            xc = x - mu
            var = (xc * xc).mean(axis=-1, keepdims=True)
            y = xc / np.sqrt(var + eps) * self.bc(w, nd)
            if b is not None:
                y = y + self.bc(b, nd)
            return y
        if kind == "rms":
            w = self.norm_param(prefix, "weight", (n,))
            ms = (x * x).mean(axis=-1, keepdims=True)
            return x / np.sqrt(ms + eps) * self.bc(w, nd)
        if kind == "scale":
            g = self.norm_param(prefix, "g", (1,))
            nrm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
            return self.bc(g, nd) * x / np.maximum(nrm, eps)
        if kind == "l2":
            nrm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
            return x / np.maximum(nrm, eps)
        if kind == "dyt":
            w = self.norm_param(prefix, "weight", (n,))
            a = self.norm_param(prefix, "alpha", (1,))
            b = self.norm_param(prefix, "bias", (n,))
            ax = self.bc(a, nd) * x
            return (ax if self.dyt_identity else np.tanh(ax)) * self.bc(w, nd) + self.bc(b, nd)
        if kind == "batch":
            w = self.norm_param(prefix, "weight", (n,))
            b = self.norm_param(prefix, "bias", (n,))
            axes = tuple(range(1, nd - 1))
            mu = x.mean(axis=axes, keepdims=True)
            xc = x - mu
            var = (xc * xc).mean(axis=axes, keepdims=True)
            return xc / np.sqrt(var + eps) * self.bc(w, nd) + self.bc(b, nd)
        if kind == "group":
            w = self.norm_param(prefix, "weight", (n,))
            b = self.norm_param(prefix, "bias", (n,))
            G = self.groups
            if n % G:
                raise ValueError("groups must divide the normalized width")
            xg = x.reshape(x.shape[:-1] + (G, n // G))
            mu = xg.mean(axis=-1, keepdims=True)
            xc = xg - mu
            var = (xc * xc).mean(axis=-1, keepdims=True)
            return (xc / np.sqrt(var + eps)).reshape(x.shape) * self.bc(w, nd) + self.bc(b, nd)
        raise ValueError(f"unknown norm {kind!r}")

    def attention(self, a, prefix, hybrid):
        K, B, T, D = a.shape
        H, dh = self.H, self.dh
        a = self.R(a)
        q = self.linear(a, prefix + ".q", D)
        k = self.linear(a, prefix + ".k", D)
        v = self.linear(a, prefix + ".v", D)
        if hybrid:
            q = self.N(self.norm, q, prefix + ".q_norm")
            k = self.N(self.norm, k, prefix + ".k_norm")
            v = self.N(self.norm, v, prefix + ".v_norm")

        def heads(z):  # [K, B, T, D] -> [K, B, H, T, dh]
            return z.reshape(K, B, T, H, dh).transpose(0, 1, 3, 2, 4)

        q, k, v = heads(q), heads(k), heads(v)
        qn = self.qk_norm
        if qn == "none":
            S = np.matmul(q, np.swapaxes(k, -1, -2)) / math.sqrt(dh)
        elif qn in ("layer", "rms"):
            qq = self.N(qn, q, prefix + ".qk_norm.q_norm", layer_bias=True)
            kk = self.N(qn, k, prefix + ".qk_norm.k_norm", layer_bias=True)
            S = np.matmul(qq, np.swapaxes(kk, -1, -2)) / math.sqrt(dh)
        elif qn == "l2":
            g = self.get(prefix + ".qk_norm.g", (1,))
            qq = self.N("l2", q, None)
            kk = self.N("l2", k, None)
            S = self.bc(g, 5) * np.matmul(qq, np.swapaxes(kk, -1, -2))
        else:
            raise ValueError(f"unknown qk_norm {qn!r}")
        mask = np.triu(np.ones((T, T), dtype=bool), k=1)
        S = np.where(mask, -np.inf, S)
        S = S - S.max(axis=-1, keepdims=True)
        P = np.exp(S)
        P = P / P.sum(axis=-1, keepdims=True)
        O = np.matmul(P, v)  # [K, B, H, T, dh]
        O = self.R(O.transpose(0, 1, 3, 2, 4).reshape(K, B, T, D))
        return self.linear(O, prefix + ".out", D)

    def ffn(self, a, prefix):
        F = self.F
        a = self.R(a)
        if self.activation == "gelu":
            u = self.linear(a, prefix + ".up", F, round_out=False)
            h = 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))
        elif self.activation == "swiglu":
            gt = self.linear(a, prefix + ".gate", F, round_out=False)
            u = self.linear(a, prefix + ".up", F, round_out=False)
            h = gt / (1.0 + np.exp(-gt)) * u
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        return self.linear(self.R(h), prefix + ".down", self.D)

    # The residual stream is a pair (x, r) of value x + r, its last add pending for the norm that
    # reads the sum next (README, "fused residual add + norm"). A stored (bf16, fp16) model
    # stores the sum after every residual (README, "Precision"), so no add is pending there.

    @staticmethod
    def total(stream):
        x, r = stream
        return x if r is None else x + r

    def sum_and_norm(self, stream, name):
        x = self.total(stream)
        return x, self.N(self.norm, x, name)

    def stored(self, stream):
        return stream if self.precision == "f32" else (self.R(self.total(stream)), None)

    def residual(self, stream, f, form, res_prefix):
        name = lambda n: f"{res_prefix}.{n}"  # noqa: E731
        if form in ("none", "hybrid_attn"):
            x = self.total(stream)
            return x, f(x)
        if form == "pre":
            x, a = self.sum_and_norm(stream, name("norm"))
            return x, f(a)
        if form == "post":
            x = self.total(stream)
            return self.N(self.norm, self.R(x + f(x)), name("norm")), None
        if form == "peri":
            x, a = self.sum_and_norm(stream, name("norm_in"))
            return x, self.N(self.norm, f(a), name("norm_out"))
        if form == "deepnorm":
            alpha = (2.0 * self.L) ** 0.25
            x = self.total(stream)
            return self.N(self.norm, self.R(alpha * x + f(x)), name("norm")), None
        if form == "hybrid_ffn":
            z = self.sum_and_norm(stream, name("norm"))[1]
            return z, f(z)
        raise ValueError(f"unknown residual form {form!r}")

    def forward(self, tokens, targets):
        V, D = self.V, self.D
        B, T = tokens.shape
        tok = self.get("tok.weight", (V, D))  # [K, V, D]
        if "pos" not in self.p or self.p["pos"].shape[1] < T:
            raise ValueError("pos must have a row per position")
        pos = self.get("pos", (self.p["pos"].shape[1], D))  # [K, T_max, D]
        x = (self.R(tok[:, tokens] + pos[:, None, :T]), None)
        for l in range(self.L):
            pl = self.placement
            hybrid = pl == "hybrid" or (pl == "hybrid_star" and l >= 1)
            if pl == "hybrid_star" and l == 0:
                pl = "pre"
            pre = f"blocks.{l}."
            if hybrid:
                fa, ff = "hybrid_attn", "hybrid_ffn"
            else:
                fa = ff = pl
            x = self.stored(self.residual(x, lambda a: self.attention(a, pre + "attn", hybrid), fa,
                                          pre + "attn_res"))
            x = self.stored(self.residual(x, lambda a: self.ffn(a, pre + "ffn"), ff, pre + "ffn_res"))
        if self.final_norm:
            y = self.sum_and_norm(x, "final_norm")[1]
        else:
            y = self.R(self.total(x))
        W = self.R(self.get("head.weight", (V, D)))  # [K, V, D]
        logits = self.R(np.matmul(y, np.swapaxes(W, -1, -2)[:, None]))  # [K, B, T, V]
        m = logits.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[..., 0]
        valid = targets != -100
        tgt = np.where(valid, targets, 0)
        lt = np.take_along_axis(logits, np.broadcast_to(tgt[None, :, :, None],
                                                        logits.shape[:3] + (1,)), axis=-1)[..., 0]
        per = lse - lt + self.z_loss * lse * lse
        n = int(valid.sum())
        return (per * valid[None]).sum(axis=(1, 2)) / n


def config_problems(cfg):
    """Derived config attributes against the document's definitions."""
    out = []
    D, H = int(cfg["d_model"]), int(cfg["heads"])
    if "head_dim" in cfg and int(cfg["head_dim"]) != D // H:
        out.append(f"head_dim {cfg['head_dim']} != d_model / heads")
    if "ffn_hidden" in cfg and int(cfg["ffn_hidden"]) != int(cfg["ffn_mult"]) * D:
        out.append(f"ffn_hidden {cfg['ffn_hidden']} != ffn_mult * d_model")
    if str(cfg["placement"]) == "deepnorm" and "residual_alpha" in cfg:
        alpha = (2.0 * int(cfg["depth"])) ** 0.25
        if abs(float(cfg["residual_alpha"]) - alpha) > 1e-12 * alpha:
            out.append(f"residual_alpha {cfg['residual_alpha']} != (2 depth)^(1/4) = {alpha}")
    return out


def losses(cfg, tokens, targets, stacked):
    m = Model(cfg, stacked)
    out = m.forward(tokens, targets)
    return out, m.used


# ----------------------------------------------------------------------------------------------
# The checks


def check_dump(path, ndirs=3, seed=1234):
    """Returns a dict of results for one dump."""
    cfg, tokens, targets, params, grads, loss_dump = load_dump(path)
    dtype = str(cfg.get("dtype", "f64"))
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    base = {k: v[None] for k, v in p64.items()}
    (loss_np,), used = losses(cfg, tokens, targets, base)
    res = {"dtype": dtype, "loss_dump": loss_dump, "loss_np": loss_np,
           "loss_rel": abs(loss_np - loss_dump) / max(abs(loss_dump), 1e-300)}
    unused = sorted(set(params) - used)
    res["config"] = config_problems(cfg)
    res["unused"] = unused
    res["missing_grads"] = sorted(set(params) ^ set(grads))
    res["precision"] = str(cfg.get("precision", "f32"))
    if res["precision"] != "f32":
        # A stored model's loss is piecewise constant in its parameters (each R is a step
        # function), so finite differences say nothing about its gradient; the check is the
        # loss, which must move away from the unrounded model's by far more than it misses.
        (loss_unrounded,), _ = losses(dict(cfg, precision="f32"), tokens, targets, base)
        res["round_effect"] = abs(loss_unrounded - loss_dump) / max(abs(loss_dump), 1e-300)
        res.update(grad_err=0.0, grad_worst="-", grad_a=0.0, grad_n=0.0, ndirs=0, gnorm=0.0)
        return res

    # Directional derivatives: for each tensor, up to ndirs random unit directions, each
    # differenced with the 4-point stencil at two step sizes (8 losses per direction).
    rng = np.random.default_rng(seed)
    jobs = []  # (name, direction)
    for n in sorted(params):
        for _ in range(min(ndirs, params[n].size)):
            d = rng.standard_normal(params[n].shape)
            d /= np.linalg.norm(d)
            jobs.append((n, d))
    offsets = [s * h for h in STEPS for s in (-2.0, -1.0, 1.0, 2.0)]
    K = len(jobs) * len(offsets)
    stacked = {k: np.repeat(v[None], K, axis=0) for k, v in p64.items()}
    i = 0
    for n, d in jobs:
        for o in offsets:
            stacked[n][i] += o * d
            i += 1
    L, _ = losses(cfg, tokens, targets, stacked)
    L = L.reshape(len(jobs), len(STEPS), 4)
    h = np.array(STEPS)[None, :]
    numeric = (8.0 * (L[..., 2] - L[..., 1]) - (L[..., 3] - L[..., 0])) / (12.0 * h)
    analytic = np.array([float((grads[n].astype(np.float64) * d).sum()) for n, d in jobs])
    gnorm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    floor = TOL[dtype if dtype in TOL else "f32"]["floor"] * max(gnorm, 1.0)
    a = analytic[:, None]
    err = np.abs(a - numeric) / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), floor)
    best = err.argmin(axis=1)  # the step size that agrees best (see STEPS)
    err = err[np.arange(len(jobs)), best]
    worst = int(np.argmax(err))
    res.update(grad_err=float(err[worst]), grad_worst=jobs[worst][0],
               grad_a=float(analytic[worst]), grad_n=float(numeric[worst, best[worst]]),
               ndirs=len(jobs), gnorm=gnorm)
    return res


# Tolerances. f64 dumps must agree with the float64 reimplementation up to rounding; f32 dumps
# are evaluated here in float64 from their f32 parameters, so their loss and gradients differ by
# float32 rounding. A gradient check's error is |a - n| / max(|a|, |n|, floor * max(|grad|, 1)),
# a and n the dump's and the finite-difference directional derivatives, |grad| the norm of the
# dump's whole gradient: directional derivatives far below |grad| (some are zero by symmetry, as
# for the key biases) are held to an absolute error instead of a relative one.
TOL = {"f64": {"loss": 1e-11, "grad": 1e-6, "floor": 1e-3},
       "f32": {"loss": 2e-5, "grad": 1e-3, "floor": 1e-2}}
# Stored (bf16, fp16) dumps: the loss to LOW_LOSS relative, and at least ROUND_EFFECT times
# further from the loss of the same parameters unrounded. Most agree to ~1e-8 against effects of
# 4e-5 to 1e-3; a value that the f32 kernels and the float64 model round to different sides of a
# rounding boundary is one unit (fp16: 2^-11) apart, which leaves fp16/hybrid_star at 1.6e-5
# against an effect of 6.4e-5.
LOW_LOSS, ROUND_EFFECT = 1e-4, 3.0

# Step sizes of the finite differences. The tiny models are strongly curved on the scale of
# their parameters (0.02-std embeddings, and norms over a few values with eps = 1e-5: a group of
# two channels is nearly a sign function), so the steps are small; each direction is
# differenced at both, and the closer agreement counts (a wrong gradient matches at neither).
STEPS = (1e-5, 2e-6)


def merge_flags(base, flags):
    """base then flags as one flag list, a flag in `flags` replacing the same flag in `base`
    (normlab refuses a flag given twice)."""
    merged = {}
    for i in range(0, len(base), 2):
        merged[base[i]] = base[i + 1]
    for i in range(0, len(flags), 2):
        merged[flags[i]] = flags[i + 1]
    return [x for kv in merged.items() for x in kv]


BASE = ["--d-model", "8", "--heads", "2", "--depth", "2", "--seq-len", "8", "--batch", "2",
        "--task", "copy", "--symbols", "4", "--dtype", "f64"]


def C(name, *flags):
    return name, list(flags)


CONFIGS = [
    # every norm, pre placement
    C("layer/pre", "--norm", "layer", "--placement", "pre"),
    C("rms/pre", "--norm", "rms", "--placement", "pre"),
    C("scale/pre", "--norm", "scale", "--placement", "pre"),
    C("dyt/pre", "--norm", "dyt", "--placement", "pre"),
    C("dyt-identity/pre", "--norm", "dyt", "--dyt-identity", "on", "--placement", "pre"),
    C("batch/pre", "--norm", "batch", "--placement", "pre"),
    C("group2/pre", "--norm", "group", "--groups", "2", "--placement", "pre"),
    C("group4/pre", "--norm", "group", "--groups", "4", "--placement", "pre"),
    C("none/none", "--norm", "none", "--placement", "none", "--final-norm", "off"),
    # every placement
    C("layer/none", "--norm", "layer", "--placement", "none"),
    C("layer/post", "--norm", "layer", "--placement", "post"),
    C("rms/post", "--norm", "rms", "--placement", "post"),
    C("rms/peri", "--norm", "rms", "--placement", "peri"),
    C("scale/peri", "--norm", "scale", "--placement", "peri"),
    C("layer/deepnorm", "--norm", "layer", "--placement", "deepnorm", "--init", "deepnorm",
      "--depth", "3"),
    C("layer/hybrid", "--norm", "layer", "--placement", "hybrid"),
    C("rms/hybrid_star", "--norm", "rms", "--placement", "hybrid_star", "--depth", "3"),
    C("dyt/hybrid", "--norm", "dyt", "--placement", "hybrid", "--activation", "swiglu"),
    C("group/hybrid_star", "--norm", "group", "--groups", "2", "--placement", "hybrid_star"),
    C("batch/post", "--norm", "batch", "--placement", "post", "--bias", "off"),
    C("scale/hybrid", "--norm", "scale", "--placement", "hybrid"),
    C("batch/hybrid_star", "--norm", "batch", "--placement", "hybrid_star"),
    C("dyt/peri", "--norm", "dyt", "--placement", "peri", "--bias", "off"),
    C("group/deepnorm", "--norm", "group", "--groups", "2", "--placement", "deepnorm",
      "--init", "deepnorm"),
    # qk_norm
    C("qk-layer", "--norm", "layer", "--qk-norm", "layer"),
    C("qk-rms/bias-off", "--norm", "rms", "--qk-norm", "rms", "--bias", "off"),
    C("qk-layer/bias-off", "--norm", "layer", "--qk-norm", "layer", "--bias", "off"),
    C("qk-l2", "--norm", "rms", "--qk-norm", "l2"),
    C("qk-l2/post", "--norm", "scale", "--placement", "post", "--qk-norm", "l2"),
    # activation, bias, final norm, z-loss
    C("swiglu", "--norm", "layer", "--activation", "swiglu"),
    C("layer/bias-off", "--norm", "layer", "--bias", "off"),
    C("dyt/bias-off/swiglu", "--norm", "dyt", "--bias", "off", "--activation", "swiglu"),
    C("final-norm-off", "--norm", "layer", "--final-norm", "off"),
    C("z-loss", "--norm", "rms", "--z-loss", "1e-3"),
    C("z-loss/deepnorm", "--norm", "rms", "--placement", "deepnorm", "--init", "deepnorm",
      "--z-loss", "1e-3"),
    C("normal-init/peri", "--norm", "layer", "--placement", "peri", "--init", "normal"),
    # other tasks (targets with -100 in other places)
    C("reverse", "--task", "reverse", "--norm", "layer", "--qk-norm", "rms"),
    C("modadd", "--task", "modadd", "--norm", "rms", "--activation", "swiglu", "--symbols", "5"),
    C("recall", "--task", "recall", "--seq-len", "16", "--symbols", "4", "--norm", "layer",
      "--depth", "1"),
    # float32
    C("f32/layer/pre", "--dtype", "f32", "--norm", "layer"),
    C("f32/rms/hybrid", "--dtype", "f32", "--norm", "rms", "--placement", "hybrid",
      "--qk-norm", "none", "--activation", "swiglu", "--z-loss", "1e-3"),
    C("f32/group/peri", "--dtype", "f32", "--norm", "group", "--groups", "2", "--placement",
      "peri", "--qk-norm", "l2"),
    # stored in bf16 and fp16 (forward only: see check_dump)
    C("bf16/layer/pre", "--dtype", "f32", "--precision", "bf16", "--norm", "layer"),
    C("fp16/rms/peri", "--dtype", "f32", "--precision", "fp16", "--norm", "rms",
      "--placement", "peri", "--qk-norm", "layer"),
    C("bf16/post/swiglu", "--dtype", "f32", "--precision", "bf16", "--norm", "layer",
      "--placement", "post", "--activation", "swiglu", "--qk-norm", "l2"),
    C("fp16/hybrid_star", "--dtype", "f32", "--precision", "fp16", "--norm", "layer",
      "--placement", "hybrid_star", "--depth", "3"),
    C("bf16/none", "--dtype", "f32", "--precision", "bf16", "--norm", "none", "--placement",
      "none", "--final-norm", "off"),
    C("fp16/deepnorm/batch", "--dtype", "f32", "--precision", "fp16", "--norm", "batch",
      "--placement", "deepnorm", "--init", "deepnorm"),
]


def dump_differences(a, b, ignore=("recompute",)):
    """Datasets and attributes whose bytes differ between HDF5 files a and b (the attributes
    named in `ignore` aside: by default recompute, which two dumps may differ in)."""
    out = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        if sorted(names_a) != sorted(names_b):
            return ["objects " + ",".join(sorted(set(names_a) ^ set(names_b)))]
        for name in ["/"] + names_a:
            oa, ob = fa[name], fb[name]
            if isinstance(oa, h5py.Dataset):
                xa, xb = np.asarray(oa[()]), np.asarray(ob[()])
                if xa.dtype != xb.dtype or xa.shape != xb.shape or xa.tobytes() != xb.tobytes():
                    out.append(name)
            keys = (set(oa.attrs) | set(ob.attrs)) - set(ignore)
            for k in sorted(keys):
                if k not in oa.attrs or k not in ob.attrs or \
                        np.asarray(oa.attrs[k]).tobytes() != np.asarray(ob.attrs[k]).tobytes():
                    out.append(f"{name} attribute {k}")
    return out


def run_configs(normlab, workdir, verbose):
    os.makedirs(workdir, exist_ok=True)
    failures = 0
    worst_loss = {"f64": 0.0, "f32": 0.0}
    worst_grad = {"f64": 0.0, "f32": 0.0}
    for i, (name, flags) in enumerate(CONFIGS):
        out = os.path.join(workdir, f"dump_{i:02d}.h5")
        if os.path.exists(out):
            os.remove(out)
        cmd = [normlab, "dump"] + merge_flags(BASE, flags) + ["--out", out]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(f"FAIL {name:22s} normlab dump failed ({r.returncode}): {r.stdout.strip()}")
            print("     " + " ".join(cmd))
            failures += 1
            continue
        ok, line = report(name, out, verbose)
        recomputed = out[:-3] + "_recompute.h5"
        if os.path.exists(recomputed):
            os.remove(recomputed)
        r = subprocess.run(cmd[:-1] + [recomputed, "--recompute", "on"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        differ = [f"--recompute on failed ({r.returncode}): {r.stdout.strip()}"] if r.returncode \
            else dump_differences(out, recomputed)
        if differ:
            ok = None
            line += "\n     FAIL the dump with --recompute on differs: " + "; ".join(differ)
        print(line, flush=True)
        if not ok:
            failures += 1
            print("     " + " ".join(cmd))
        else:
            dt = ok["dtype"] if ok["precision"] == "f32" else "low"
            worst_loss[dt] = max(worst_loss.get(dt, 0.0), ok["loss_rel"])
            worst_grad[dt] = max(worst_grad.get(dt, 0.0), ok["grad_err"])
    return failures, worst_loss, worst_grad


def report(name, path, verbose):
    try:
        res = check_dump(path)
    except Exception as e:  # a model the reimplementation cannot build is a failure
        return None, f"FAIL {name:22s} {type(e).__name__}: {e}"
    tol = TOL.get(res["dtype"], TOL["f32"])
    problems = []
    low = res["precision"] != "f32"
    if not res["loss_rel"] <= (LOW_LOSS if low else tol["loss"]):
        problems.append("loss")
    if low and not res["round_effect"] >= ROUND_EFFECT * max(res["loss_rel"], 1e-7):
        problems.append(f"the rounding moves the loss by {res['round_effect']:.1e} only")
    if not res["grad_err"] <= tol["grad"]:
        problems.append("grad")
    if res["config"]:
        problems += res["config"]
    if res["unused"]:
        problems.append("unused params " + ",".join(res["unused"]))
    if res["missing_grads"]:
        problems.append("params and grads differ in " + ",".join(res["missing_grads"]))
    status = "ok  " if not problems else "FAIL"
    line = (f"{status} {name:22s} {res['dtype']} loss {res['loss_dump']:.12f} "
            f"rel.diff {res['loss_rel']:.1e}  ")
    if low:
        line += f"{res['precision']}: rounding moves it by {res['round_effect']:.1e} (no gradient check)"
    else:
        line += f"grad dirs {res['ndirs']:3d} worst rel.err {res['grad_err']:.1e} ({res['grad_worst']})"
    if problems:
        line += "\n     " + "; ".join(problems) + (
            f"; numpy loss {res['loss_np']!r}, dump loss {res['loss_dump']!r}; worst grad: "
            f"analytic {res['grad_a']!r}, numeric {res['grad_n']!r}")
    elif verbose:
        line += f"\n     |grad| {res['gnorm']:.3e}"
    return (res if not problems else None), line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--normlab", help="path to the normlab executable")
    ap.add_argument("--workdir", default="dump_check", help="folder for the dumps")
    ap.add_argument("--file", action="append", default=[], help="check an existing dump")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    if args.file:
        bad = 0
        for path in args.file:
            ok, line = report(os.path.basename(path), path, args.verbose)
            print(line)
            bad += not ok
        return 1 if bad else 0
    if not args.normlab:
        ap.error("--normlab or --file is required")
    failures, wl, wg = run_configs(args.normlab, args.workdir, args.verbose)
    print(f"{len(CONFIGS)} configs, {failures} failed; worst loss rel.diff f64 {wl['f64']:.1e}, "
          f"f32 {wl['f32']:.1e}, bf16/fp16 {wl.get('low', 0.0):.1e}; worst grad rel.err f64 {wg['f64']:.1e}, f32 {wg['f32']:.1e}; "
          f"{time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
