"""Generate the detection benchmark: real small models trained on CPU with injected faults.

Usage (from the repository root)::

    python bench/detection/generate.py --all            # full cache (~200 runs)
    python bench/detection/generate.py --quick          # a handful, for a smoke test
    python bench/detection/generate.py --only lr_jump,healthy
    python bench/detection/generate.py --all --jobs 1   # sequential (the default)
    python bench/detection/generate.py --set mech --all --jobs 2   # the mechanism set
    python bench/detection/generate.py --only healthy --seed-offset 3100 --batch-mult 4 \
        --setups mlp_digits,mlp_bcancer --out /tmp/bs4   # the same runs at 4x the batch
    python bench/detection/generate.py --only healthy --lr-mult 2 --out /tmp/lrx2  # at 2x the lr

``--set mech`` generates the failure-mechanism set of ``mechanisms.py`` (15 more fault
kinds, plain SGD, RMSprop and Adafactor, a 1.1M-parameter MLP, healthy variants) into
``bench/detection/cache_mech/``.

Each run is written to ``bench/detection/cache/<run_id>.csv.gz`` (one row per step: step,
time, lr, loss, grad_norm, update_norm, param_norm, processivity, noise, max_abs_grad,
event) and described in ``bench/detection/cache/manifest.json``. (The folder is not
called ``runs/`` because the repository's .gitignore ignores every ``runs/``.)

Everything is deterministic given the seeds, except the ``time`` column (wall clock).
Labels come from :func:`collapse.collapse_step` -- the one collapse definition.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import collapse  # noqa: E402
import data  # noqa: E402
import mechanisms  # noqa: E402

CACHE = os.path.join(HERE, "cache")
CACHE_MECH = os.path.join(HERE, "cache_mech")
COLUMNS = [
    "step",
    "time",
    "lr",
    "loss",
    "grad_norm",
    "update_norm",
    "param_norm",
    "processivity",
    "noise",
    "max_abs_grad",
    "event",
]

# ----------------------------------------------------------------------------- setups
SETUPS: Dict[str, Dict[str, Any]] = {
    "mlp_digits": dict(family="mlp", dataset="digits", n_steps=500, bs=64),
    "mlp_bcancer": dict(family="mlp", dataset="breast_cancer", n_steps=400, bs=32),
    "cnn_digits": dict(family="cnn", dataset="digits", n_steps=400, bs=64),
    "tfm_stdlib": dict(family="transformer", dataset="stdlib_text", n_steps=400, bs=16, ctx=64),
    "gru_stdlib": dict(family="gru", dataset="stdlib_text", n_steps=400, bs=16, ctx=48),
}
BASE_LR = {
    ("mlp", "adamw"): 2e-3,
    ("mlp", "sgd"): 0.05,
    ("cnn", "adamw"): 3e-3,
    ("cnn", "sgd"): 0.05,
    ("transformer", "adamw"): 3e-3,
    ("transformer", "sgd"): 0.3,
    ("gru", "adamw"): 5e-3,
    ("gru", "sgd"): 1.0,
}
# setups of the mech set only (kept out of SETUPS so that plan() is unchanged)
MECH_SETUPS: Dict[str, Dict[str, Any]] = {
    "mlp_wide_digits": dict(
        family="mlp", dataset="digits", n_steps=300, bs=64, hidden=(1024, 1024)
    ),  # 1.13M parameters
    "cnnbn_digits": dict(family="cnn_bn", dataset="digits", n_steps=400, bs=64),
}
ALL_SETUPS: Dict[str, Dict[str, Any]] = {**SETUPS, **MECH_SETUPS}
BASE_LR[("cnn_bn", "adamw")] = BASE_LR[("cnn", "adamw")]
BASE_LR[("cnn_bn", "sgd")] = BASE_LR[("cnn", "sgd")]
for _fam in ("mlp", "cnn", "cnn_bn", "transformer", "gru"):
    # plain SGD: 5x the momentum-0.9 lr (half its effective step); RMSprop: half the
    # AdamW lr; Adafactor (torch's, no relative step): 5x the AdamW lr
    BASE_LR[(_fam, "sgd_plain")] = 5.0 * BASE_LR[(_fam, "sgd")]
    BASE_LR[(_fam, "rmsprop")] = 0.5 * BASE_LR[(_fam, "adamw")]
    BASE_LR[(_fam, "adafactor")] = 5.0 * BASE_LR[(_fam, "adamw")]
BASE_LR[("cnn_bn", "sgd_plain")] = BASE_LR[("cnn_bn", "sgd")]  # 5x never learns (frozen BN)
BENIGN = [
    "none",
    "lr_step_decay",
    "cosine_restarts",
    "warmup_end",
    "reshuffle",
    "batch_size_change",
    "curriculum",
    "outlier_batch",
    "grad_clip",
]
FAULTS = [
    "lr_jump",
    "high_lr_no_warmup",
    "corrupt_shard",
    "loss_scale",
    "grad_sign",
    "attn_logit_growth",
    "dead_relu",
    "adam_instability",
    "lr_ramp",
]
# planned after the others (own seed range) so that adding it kept the earlier seeds
LATE_KINDS = ("lr_ramp",)
ONSET_ZERO = {"high_lr_no_warmup", "attn_logit_growth", "adam_instability"}
# held out entirely for the test split
TEST_FAMILIES = {"gru"}
TEST_KINDS = {"adam_instability"}
SPLIT_RULE = (
    "test if family in {gru} (recurrent LM held out entirely) or kind == adam_instability "
    "(held out entirely) or seed % 4 == 1; otherwise train. seed = 100 * group + replicate."
)


def _n_reps(setup: str, kind: str) -> int:
    fam = SETUPS[setup]["family"]
    if fam == "gru":  # held-out family: fewer, slower runs
        return {"healthy": 1, "attn_logit_growth": 0, "dead_relu": 0}.get(kind, 2)
    if kind == "healthy":
        return 3
    if kind == "attn_logit_growth":
        return 5 if fam == "transformer" else 0
    if kind == "dead_relu":
        return 3 if fam in ("mlp", "cnn") else 0
    return {"lr_jump": 4, "corrupt_shard": 4}.get(kind, 3)


def split_of(family: str, kind: str, seed: int) -> str:
    if family in TEST_FAMILIES or kind in TEST_KINDS or seed % 4 == 1:
        return "test"
    return "train"


def plan(seed_offset: int = 0) -> List[Dict[str, Any]]:
    """The full list of run specs (deterministic). ``seed_offset`` shifts every seed: the
    same plan on fresh seeds (a set that no choice was made on; replicates stay < 10)."""
    specs = []
    group = 0
    for setup in SETUPS:
        for kind in ["healthy", *FAULTS]:
            if kind in LATE_KINDS:
                continue
            events = BENIGN if kind == "healthy" else [None]
            for ev in events:
                group += 1
                for rep in range(_n_reps(setup, kind)):
                    seed = 100 * group + rep + seed_offset
                    specs.append(_make_spec(setup, kind, ev, seed, rep))
    group = 100
    for kind in LATE_KINDS:
        for setup in SETUPS:
            group += 1
            for rep in range(_n_reps(setup, kind)):
                seed = 100 * group + rep + seed_offset
                specs.append(_make_spec(setup, kind, None, seed, rep))
    return specs


MECH_SEED_GROUP = 200  # the mech set's seeds are 100 * group + replicate, group >= 200


def plan_mech(seed_offset: int = 0) -> List[Dict[str, Any]]:
    """The run specs of the ``mech`` set (deterministic; seeds from 20000 on, so that
    no seed of :func:`plan` is reused). Split: seed % 4 == 1 is test, as in plan()."""
    specs = []
    group = MECH_SEED_GROUP
    todo = [(k, None, r) for k, r in mechanisms.MECH_RUNS.items()]
    todo += [("healthy", ev, r) for ev, r in mechanisms.MECH_HEALTHY.items()]
    todo += [(k, None, r) for k, r in mechanisms.MECH_LATE.items()]
    for kind, ev, runs in todo:
        group += 1
        for rep, (setup, opt) in enumerate(runs):
            seed = 100 * group + rep + seed_offset
            fam = ALL_SETUPS[setup]["family"]
            spec = mechanisms.mech_spec(
                ALL_SETUPS, BASE_LR, setup, kind, ev, seed, opt, split_of(fam, kind, seed)
            )
            spec["set"] = "mech"
            specs.append(spec)
    return specs


def _make_spec(setup: str, kind: str, event: Optional[str], seed: int, rep: int) -> Dict:
    S = SETUPS[setup]
    fam = S["family"]
    n = S["n_steps"]
    rng = np.random.default_rng(seed)
    opt = "adamw" if rep % 2 == 0 else "sgd"
    if kind in ("adam_instability", "attn_logit_growth"):
        opt = "adamw"
    lr = BASE_LR[(fam, opt)]
    mag: Dict[str, Any] = {}
    onset: Optional[int] = None
    ev_steps: Dict[str, List[int]] = {}

    def logu(a, b):
        return float(math.exp(rng.uniform(math.log(a), math.log(b))))

    if kind == "healthy":
        e = int(rng.uniform(0.3, 0.7) * n)
        if event == "lr_step_decay":
            mag = {"factor": 0.1}
            ev_steps["lr_step_decay"] = [e]
        elif event == "cosine_restarts":
            P = n // 3
            mag = {"period": P}
            ev_steps["cosine_restart"] = [P, 2 * P]
        elif event == "warmup_end":
            W = int(rng.uniform(0.1, 0.3) * n)
            mag = {"warmup": W, "peak_mult": 2.0}
            ev_steps["warmup_end"] = [W]
        elif event == "reshuffle":
            ev_steps["reshuffle"] = [e]  # moved to the next epoch boundary at run time
        elif event == "batch_size_change":
            mag = {"bs_mult": 4.0 if rng.uniform() < 0.5 else 0.25}
            ev_steps["batch_size_change"] = [e]
        elif event == "curriculum":
            ev_steps["curriculum_switch"] = [e]
        elif event == "outlier_batch":
            mode = "scale" if rng.uniform() < 0.5 else "label_noise"
            mag = {"mode": mode, "scale": logu(2, 5), "noise_frac": float(rng.uniform(0.3, 0.5))}
            ev_steps["outlier_batch"] = [e]
        elif event == "grad_clip":
            mag = {"clip": None}  # set at run time from the median early grad norm
            ev_steps["grad_clip"] = [0]
    else:
        onset = 0 if kind in ONSET_ZERO else int(rng.uniform(0.3, 0.6) * n)
        if kind == "lr_jump":
            mag = {"lr_mult": logu(10, 300)}
        elif kind == "lr_ramp":
            mag = {"growth_per_step": logu(0.01, 0.04)}
        elif kind == "high_lr_no_warmup":
            mag = {"lr_mult": logu(3, 60)}
        elif kind == "corrupt_shard":
            modes = ["scale", "permute"] if fam in ("mlp", "cnn") else ["garbage", "permute"]
            mag = {
                "mode": modes[int(rng.integers(2))],
                "scale": logu(10, 1000),
                "k": int(rng.integers(3, 16)),
            }
        elif kind == "loss_scale":
            mag = {"loss_mult": logu(1e3, 1e6)}
        elif kind == "grad_sign":
            mag = {"sign": -1}
        elif kind == "attn_logit_growth":
            mag = {"lr": logu(0.03, 0.3), "warmup": 20, "qk_norm": False, "weight_decay": 0.0}
        elif kind == "dead_relu":
            mag = {"lr_mult": logu(300, 3000) if opt == "sgd" else logu(100, 1000)}
        elif kind == "adam_instability":
            mag = {"beta2": float(rng.uniform(0.9, 0.95)), "eps": 1e-12, "lr_mult": logu(5, 30)}
        ev_steps[kind] = [onset]
    rid = f"{setup}-{kind}" + (f"-{event}" if event else "") + f"-s{seed}"
    return dict(
        run_id=rid,
        setup=setup,
        family=fam,
        dataset=S["dataset"],
        optimizer=opt,
        kind=kind,
        benign=event,
        seed=seed,
        onset=onset,
        magnitude=mag,
        base_lr=lr,
        n_steps=n,
        events=ev_steps,
        split=split_of(fam, kind, seed),
    )


# ----------------------------------------------------------------------------- training
def _mech_optimizer(name: str, groups: List[Dict[str, Any]], lr: float):
    """The optimizers of the mech set: AdamW, SGD (momentum 0.9), plain SGD, RMSprop,
    Adafactor (torch's)."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "sgd_plain":
        return torch.optim.SGD(groups, lr=lr, momentum=0.0)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.99)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


class Stream:
    """Epoch-based index stream over ``n_items`` (fixed or re-drawn permutation)."""

    def __init__(self, n_items: int, rng: np.random.Generator, reshuffle_each_epoch=True):
        self.n, self.rng, self.reshuffle = n_items, rng, reshuffle_each_epoch
        self.order = rng.permutation(n_items)
        self.pos = 0
        self.epoch = 0

    def next(self, bs: int):
        out = []
        crossed = False
        while len(out) < bs:
            if self.pos >= self.n:
                self.pos = 0
                self.epoch += 1
                crossed = True
                if self.reshuffle:
                    self.order = self.rng.permutation(self.n)
            take = min(bs - len(out), self.n - self.pos)
            out.extend(self.order[self.pos : self.pos + take].tolist())
            self.pos += take
        return np.asarray(out), crossed


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return format(float(v), ".6g")


def run_one(spec: Dict[str, Any], out_dir: str = CACHE, arm: Any = None) -> Dict[str, Any]:
    """Train one run of the benchmark, write its trace to ``out_dir`` and return its meta.

    ``arm`` (None for the benchmark's own runs, which it leaves unchanged): an object whose
    hooks ``bench/detection/rescue.py`` uses to rerun a run under a protection --
    ``setup(model, opt, params)`` once the optimizer exists; ``lr_scale() -> float``
    multiplies the hand-set lr of every step (``group_scale(i)`` that of param group i, in
    the runs whose groups have their own lrs); ``before_step(t, loss, params, grad_norm)``
    once the gradients are final, before ``optimizer.step()``; ``step(t, opt) -> bool``
    runs the step (False: the run was stopped; the loop ends); ``done(t, params_finite)
    -> bool`` replaces the early stop of failed faults (an arm run goes on to the planned
    last step unless it says it is done).
    """
    import models
    import torch
    from torch.nn import functional as F  # noqa: N812

    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    S = ALL_SETUPS[spec["setup"]]
    rng = np.random.default_rng(spec["seed"] + 7)
    fam, kind, mag = spec["family"], spec["kind"], spec["magnitude"]
    benign = spec["benign"]
    n_steps, bs = spec["n_steps"], S["bs"]
    if spec.get("batch_mult"):  # (--batch-mult: the same run at another batch size)
        bs = max(2, round(bs * spec["batch_mult"]))
    events = {k: list(v) for k, v in spec["events"].items()}
    onset = spec["onset"]

    # ---- data and model
    is_lm = spec["dataset"] == "stdlib_text"
    if is_lm:
        ctx_max = S["ctx"]
        text = data.stdlib_text()
        if benign == "reshuffle":
            text = text[:150_000]  # small pool so that an epoch ends inside the run
        stride = ctx_max + 1
        n_win = len(text) // stride
        T = torch.from_numpy(text[: n_win * stride].astype(np.int64)).view(n_win, stride)
        n_items = n_win
        n_classes = data.VOCAB
        ctx = ctx_max
        if benign == "curriculum":
            ctx = 16
        model = (
            models.CharTransformer(ctx=ctx_max, qk_norm=bool(mag.get("qk_norm", False)))
            if fam == "transformer"
            else models.CharGRU()
        )
        pool = np.arange(n_items)
    else:
        X, y, n_classes = data.classification(spec["dataset"])
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        if fam == "mlp":
            model = models.MLP(X.shape[1], n_classes, hidden=S.get("hidden", (128, 64)))
        elif fam == "cnn_bn":
            model = models.BNCNN(n_classes)
        else:
            model = models.SmallCNN(n_classes)
        pool = np.arange(len(y))
        if benign == "curriculum":
            if spec["dataset"] == "digits":
                pool = np.flatnonzero(y < 5)  # easy: classes 0-4 first
            else:
                from sklearn.linear_model import LogisticRegression

                p = LogisticRegression(max_iter=500).fit(X, y).predict_proba(X)
                pool = np.flatnonzero(p.max(1) > 0.99)  # easy: confidently separable
    chance = math.log(n_classes)
    reshuffle_at = events.get("reshuffle", [None])[0]
    if reshuffle_at is not None:
        events["reshuffle"] = []

    params = [p for p in model.parameters() if p.requires_grad]
    opt_name = spec["optimizer"]
    lr0 = spec["base_lr"]
    inj = mechanisms.Injector(spec, lr0) if spec.get("set") == "mech" else None
    if inj is not None:
        inj.prepare(model, None if is_lm else Xt[torch.from_numpy(rng.permutation(len(y)))])
        if benign == "finetune":  # first phase on one half of the items, then the other
            half = rng.permutation(len(pool))
            cut = len(pool) // 2
            ft_pools = (pool[np.sort(half[:cut])], pool[np.sort(half[cut:])])
            pool = ft_pools[0]
    if kind == "high_lr_no_warmup":
        lr0 = lr0 * mag["lr_mult"]
    if kind == "attn_logit_growth":
        lr0 = mag["lr"]
    if inj is not None:
        opt = _mech_optimizer(opt_name, inj.param_groups(model, params), lr0)
    elif kind == "adam_instability":
        lr0 = lr0 * mag["lr_mult"]
        opt = torch.optim.AdamW(params, lr=lr0, betas=(0.9, mag["beta2"]), eps=mag["eps"])
    elif opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr0, weight_decay=mag.get("weight_decay", 0.01))
    else:
        opt = torch.optim.SGD(params, lr=lr0, momentum=0.9)
    if arm is not None:
        arm.setup(model, opt, params)

    def lr_at(t: int) -> float:
        lr = lr0
        if benign == "lr_step_decay" and t >= events["lr_step_decay"][0]:
            lr *= mag["factor"]
        elif benign == "cosine_restarts":
            P = mag["period"]
            ph = (t % P) / P
            lr = lr0 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * ph)))
        elif benign == "warmup_end":
            W = mag["warmup"]
            lr = lr0 * mag["peak_mult"] * min(1.0, (t + 1) / W)
        if kind == "attn_logit_growth":
            lr = lr0 * min(1.0, (t + 1) / mag["warmup"])
        if kind == "lr_jump" and t >= onset:
            lr *= mag["lr_mult"]
        if kind == "lr_ramp" and t >= onset:
            lr *= (1.0 + mag["growth_per_step"]) ** (t - onset + 1)
        if kind == "dead_relu" and t == onset:
            lr *= mag["lr_mult"]
        return lr

    stream = Stream(len(pool), rng, reshuffle_each_epoch=(benign != "reshuffle"))
    flat = lambda ts: torch.cat([x.reshape(-1) for x in ts])  # noqa: E731
    m_ema = torch.zeros(sum(p.numel() for p in params))
    clip = None
    rows: List[List[str]] = []
    losses: List[float] = []
    first_nf = None
    max_attn = 0.0
    max_logit = 0.0
    entropy_min, entropy_pre = math.inf, None
    attn_at_onset = None
    t0 = time.perf_counter()
    for t in range(n_steps):
        ev_here = [k for k, v in events.items() if t in v]
        # ---- batch
        cur_bs = bs
        if benign == "batch_size_change" and t >= events["batch_size_change"][0]:
            cur_bs = max(4, int(bs * mag["bs_mult"]))
        if benign == "curriculum" and t == events["curriculum_switch"][0]:
            if is_lm:
                ctx = ctx_max
            else:
                pool = np.arange(len(y))
            stream = Stream(len(pool), rng)
        if inj is not None:
            cur_bs = inj.batch_size(t, cur_bs, rng)
            if benign == "finetune" and t == events["finetune_start"][0]:
                pool = ft_pools[1]
                stream = Stream(len(pool), rng)
        idx, crossed = stream.next(cur_bs)
        if reshuffle_at is not None and crossed and t >= reshuffle_at and not events["reshuffle"]:
            stream.reshuffle = True  # first re-drawn order from the next epoch on ...
            stream.order = rng.permutation(stream.n)  # ... and for the current one
            stream.pos = 0
            idx, _ = stream.next(cur_bs)
            events["reshuffle"] = [t]
            ev_here.append("reshuffle")
        idx = pool[idx]
        if is_lm:
            w = T[idx]
            xb, yb = w[:, :ctx].clone(), w[:, 1 : ctx + 1].clone()
        else:
            xb, yb = Xt[idx].clone(), yt[idx].clone()
        corrupt = kind == "corrupt_shard" and onset <= t < onset + mag["k"]
        if corrupt:
            mode = mag["mode"]
            if mode == "scale":
                xb = xb * mag["scale"]
            elif mode == "permute":
                yb = yb[torch.from_numpy(rng.permutation(len(yb)))]
            elif mode == "garbage":
                xb = torch.from_numpy(rng.integers(0, n_classes, size=tuple(xb.shape)))
                yb = torch.from_numpy(rng.integers(0, n_classes, size=tuple(yb.shape)))
        if benign == "outlier_batch" and t == events["outlier_batch"][0]:
            if mag["mode"] == "scale" and not is_lm:
                xb = xb * mag["scale"]
            else:
                k = int(mag["noise_frac"] * yb.numel())
                flat_y = yb.reshape(-1)
                pos = torch.from_numpy(rng.choice(flat_y.numel(), size=k, replace=False))
                flat_y[pos] = torch.from_numpy(rng.integers(0, n_classes, size=k))
                yb = flat_y.view_as(yb)
        if inj is not None:
            xb, yb = inj.batch(t, xb, yb, rng, n_classes)
            inj.before_step(t, model, opt, xb)
        # ---- step
        lr = lr_at(t)
        if arm is not None:
            lr *= arm.lr_scale()  # a Guard's slow-down applies to the hand-set schedule
        if inj is not None:
            lr = inj.lr(t, lr)
            for i, g in enumerate(opt.param_groups):
                g["lr"] = lr * inj.group_mult(t, i)
                if arm is not None:
                    g["lr"] *= arm.group_scale(i)
        else:
            for g in opt.param_groups:
                g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        if inj is not None:
            inj.output_hook(t, out)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
        loss_v = float(loss.detach())
        obj = loss
        if kind == "loss_scale" and t >= onset:
            obj = loss * mag["loss_mult"]
        if kind == "grad_sign" and t >= onset:
            obj = -loss  # sign bug: gradient ascent; p.grad is what a monitor sees
        if inj is not None:
            max_logit = max(max_logit, float(out.detach().abs().max()))
            if inj.sum_loss(t):
                obj = F.cross_entropy(
                    out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="sum"
                )
        obj.backward()
        if inj is not None:
            inj.after_backward(t, model)
        g = flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        g = g.detach()
        grad_norm = float(g.norm())
        max_abs = float(g.abs().max())
        m_ema.mul_(0.9).add_(g, alpha=0.1)
        noise = float((g - m_ema).norm())
        if benign == "grad_clip":
            if t == 10:
                clip = float(np.median([float(r[4]) for r in rows]))
                mag["clip"] = clip
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
        if arm is not None:
            arm.before_step(t, loss, params, grad_norm)
        before = flat([p.detach() for p in params]).clone()
        if arm is None:
            opt.step()
        elif not arm.step(t, opt):
            break
        if inj is not None:
            inj.after_step(t, params, lr)
        after = flat([p.detach() for p in params])
        d = after - before
        upd = float(d.norm())
        denom = grad_norm * upd
        proc = float(torch.dot(-g, d)) / denom if denom > 0 and math.isfinite(denom) else 0.0
        if not math.isfinite(denom):
            proc = math.nan
        if fam == "transformer":
            a = model.max_attn_logit()
            max_attn = max(max_attn, a) if math.isfinite(a) else max_attn
            if onset is not None and t == onset + 1:
                attn_at_onset = a
            if inj is not None:
                ent = model.min_attn_entropy()
                entropy_min = min(entropy_min, ent) if math.isfinite(ent) else entropy_min
                if onset is not None and t == onset - 1:
                    entropy_pre = ent
        elapsed = time.perf_counter() - t0
        rows.append(
            [
                str(t),
                format(elapsed, ".4f"),
                _fmt(lr),
                _fmt(loss_v),
                _fmt(grad_norm),
                _fmt(upd),
                _fmt(float(after.norm())),
                _fmt(proc),
                _fmt(noise),
                _fmt(max_abs),
                ";".join(ev_here),
            ]
        )
        losses.append(loss_v)
        if not math.isfinite(loss_v) and first_nf is None:
            first_nf = t
        if arm is not None:
            if arm.done(t, bool(torch.isfinite(after).all())):
                break
            continue
        # ---- early stop for faults that clearly failed
        if first_nf is not None and t >= first_nf + 3:
            break
        if kind != "healthy" and t % 25 == 24:
            c = collapse.collapse_step(losses, onset, chance)
            if c is not None and len(losses) >= c + collapse.K + 30:
                break
    early = False
    if kind == "healthy":
        label = "healthy"
        # sanity: a healthy run should not meet the collapse definition (onset 0); one
        # that does and never recovers diverged for good: a collapse of unknown onset
        coll = healthy_check = collapse.collapse_step(losses, 0, chance)
        if healthy_check is not None and collapse.stays_collapsed(losses, healthy_check):
            label = "collapsed"
    else:
        label, coll, early = label_fault(losses, onset, chance)
    lvl = collapse.CHANCE_FRAC * chance
    never_learned = not any(math.isfinite(v) and v < lvl for v in collapse.smoothed(losses))
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    buf.write(",".join(COLUMNS) + "\n")
    for r in rows:
        buf.write(",".join(r) + "\n")
    path = os.path.join(out_dir, spec["run_id"] + ".csv.gz")
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue().encode())
    benign_steps = sorted(
        s
        for k, v in events.items()
        if k not in FAULTS and k not in mechanisms.MECH_FAULTS
        for s in v
        if s < len(rows)
    )
    meta = {k: spec[k] for k in ("run_id", "family", "dataset", "optimizer", "kind", "seed")}
    meta.update(
        setup=spec["setup"],
        benign=spec["benign"],
        onset=onset,
        magnitude=mag,
        base_lr=spec["base_lr"],
        collapse_step=coll,
        label=label,
        events={k: v for k, v in events.items() if v},
        benign_event_steps=benign_steps,
        n_steps=len(rows),
        planned_steps=n_steps,
        first_nonfinite=first_nf,
        chance_loss=round(chance, 6),
        never_learned=bool(never_learned),
        final_loss=_fmt(losses[-1] if losses else math.nan),
        split=spec["split"],
        file=os.path.basename(path),
        wall_s=round(time.perf_counter() - t0, 2),
    )
    if kind == "healthy":
        meta["healthy_meets_collapse_rule"] = healthy_check
    elif early:  # diverged before its fault: a collapse of unknown onset
        meta.update(onset=None, fault_onset=onset)
    if spec.get("batch_mult"):
        meta["batch_size"] = bs
    if inj is not None:
        meta["max_output_logit"] = round(max_logit, 3) if math.isfinite(max_logit) else None
        if fam == "transformer" and math.isfinite(entropy_min):
            meta["min_attn_entropy"] = round(entropy_min, 4)
            if entropy_pre is not None:
                meta["attn_entropy_before_onset"] = round(entropy_pre, 4)
        meta["set"] = "mech"
    if fam == "transformer":
        meta["max_attn_logit"] = round(max_attn, 3)
        if attn_at_onset is not None:
            meta["attn_logit_after_onset"] = round(attn_at_onset, 3)
    return meta


def under_condition(
    specs: List[Dict[str, Any]], batch_mult: Optional[float] = None, lr_mult: Optional[float] = None
) -> List[Dict[str, Any]]:
    """The same runs under another condition (new dicts; run ids end in ``-bsxX`` /
    ``-lrxX``): every batch size x ``batch_mult`` (>= 2 examples), every base lr x
    ``lr_mult`` (the schedules, and faults that scale the lr, scale with it; attention-logit
    growth keeps its own lr)."""
    out = []
    for s in specs:
        s = dict(s)
        if batch_mult is not None:
            s["batch_mult"] = batch_mult
            s["run_id"] += f"-bsx{batch_mult:g}"
        if lr_mult is not None:
            s["base_lr"] = s["base_lr"] * lr_mult
            s["run_id"] += f"-lrx{lr_mult:g}"
        out.append(s)
    return out


# ----------------------------------------------------------------------------- manifest
def write_manifest(
    metas: List[Dict], out_dir: str = CACHE, merge: bool = True, which: str = "base"
) -> str:
    path = os.path.join(out_dir, "manifest.json")
    runs: Dict[str, Dict] = {}
    if merge and os.path.exists(path):
        with open(path) as fh:
            for r in json.load(fh).get("runs", []):
                runs[r["run_id"]] = r
    for m in metas:
        runs[m["run_id"]] = m
    order = {s["run_id"]: i for i, s in enumerate(plan_mech() if which == "mech" else plan())}
    doc = {
        "description": "anet-lite detection benchmark: small CPU models with injected faults",
        "columns": COLUMNS,
        "collapse": {
            "function": "bench/detection/collapse.py:collapse_step",
            "F": collapse.F,
            "K": collapse.K,
            "smooth": collapse.SMOOTH,
            "pre_window": collapse.PRE_WINDOW,
            "chance_frac": collapse.CHANCE_FRAC,
        },
        "set": which,
        "split_rule": SPLIT_RULE,
        "test_only_families": sorted(TEST_FAMILIES),
        "test_only_kinds": sorted(TEST_KINDS),
        "runs": sorted(runs.values(), key=lambda r: order.get(r["run_id"], 10**9)),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)
    return path


def relabel(out_dir: str = CACHE) -> List[Dict]:
    """Recompute collapse_step / label of every cached run with the current collapse
    definition (no training)."""
    import csv

    path = os.path.join(out_dir, "manifest.json")
    with open(path) as fh:
        runs = json.load(fh)["runs"]
    for m in runs:
        with gzip.open(os.path.join(out_dir, m["file"]), "rt") as fh:
            losses = [float(r["loss"]) for r in csv.DictReader(fh)]
        if m["kind"] == "healthy":
            c = collapse.collapse_step(losses, 0, m["chance_loss"])
            m["healthy_meets_collapse_rule"] = c
            if c is not None and collapse.stays_collapsed(losses, c):
                m["label"], m["collapse_step"] = "collapsed", c  # diverged for good
        else:
            onset = m.get("fault_onset", m["onset"])
            m["label"], m["collapse_step"], early = label_fault(losses, onset, m["chance_loss"])
            m["onset"] = None if early else onset
            if early:
                m["fault_onset"] = onset
            else:
                m.pop("fault_onset", None)
    return runs


def label_fault(
    losses: List[float], onset: Optional[int], chance: float
) -> Tuple[str, Optional[int], bool]:
    """(label, collapse step, diverged before the onset) of a fault's run. A run that
    collapsed before its fault's onset and stayed collapsed never met its fault: it is a
    collapse of unknown onset, as a healthy setting's run that diverged for good is (the
    manifest keeps the fault's onset as ``fault_onset`` and ``onset`` None)."""
    pre = collapse.before_onset(losses, onset, chance)
    if pre is not None:
        return "collapsed", pre, True
    c = collapse.collapse_step(losses, onset or 0, chance)
    return ("collapsed" if c is not None else "survived"), c, False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--all", action="store_true", help="every planned run")
    g.add_argument("--quick", action="store_true", help="a handful of runs (smoke test)")
    g.add_argument("--only", help="comma-separated kinds (fault names and/or 'healthy')")
    g.add_argument("--list", action="store_true", help="print the plan and exit")
    g.add_argument(
        "--relabel", action="store_true", help="recompute labels of the cache (no training)"
    )
    ap.add_argument("--setups", help="comma-separated setups to keep (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument(
        "--set",
        choices=["base", "mech"],
        default="base",
        help="base: the original nine kinds (cache/); mech: the failure-mechanism set of "
        "mechanisms.py (cache_mech/)",
    )
    ap.add_argument("--out", default=None, help="output folder (default: the set's cache)")
    ap.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="shift every seed (e.g. 50 with --out elsewhere: a fresh set on new seeds)",
    )
    ap.add_argument(
        "--lr-mult",
        type=float,
        default=None,
        help="every run's base lr x this (schedules and faults scale with it; run ids end "
        "in -lrxMULT): another condition no threshold was chosen on (its own --out folder)",
    )
    ap.add_argument(
        "--batch-mult",
        type=float,
        default=None,
        help="every run's batch size x this (>= 2 examples; run ids end in -bsxMULT): a "
        "condition no threshold was chosen on (give it its own --out folder)",
    )
    a = ap.parse_args(argv)
    default_out = CACHE_MECH if a.set == "mech" else CACHE
    for flag, mult in (("--batch-mult", a.batch_mult), ("--lr-mult", a.lr_mult)):
        if mult is not None and not (mult > 0 and math.isfinite(mult)):
            ap.error(f"{flag} must be a positive number, got {mult}")
        if mult is not None and os.path.abspath(a.out or default_out) == os.path.abspath(
            default_out
        ):
            ap.error(f"{flag} writes a different set: give it its own --out folder")
    a.out = a.out or default_out
    if a.seed_offset and os.path.abspath(a.out) == os.path.abspath(default_out):
        ap.error("--seed-offset writes a different set: give it its own --out folder")
    if a.relabel:
        runs = relabel(a.out)
        print("relabelled", len(runs), "runs:", write_manifest(runs, a.out, True, a.set))
        return 0
    specs = plan_mech(a.seed_offset) if a.set == "mech" else plan(a.seed_offset)
    if a.only:
        kinds = set(a.only.split(","))
        specs = [s for s in specs if s["kind"] in kinds]
    if a.quick:
        want = {"healthy", "lr_jump", "grad_sign", "dead_relu", "corrupt_shard"}
        seen = set()
        keep = []
        for s in specs:
            key = (s["setup"], s["kind"])
            if s["kind"] in want and s["setup"] in ("mlp_digits",) and key not in seen:
                seen.add(key)
                keep.append(s)
        specs = keep
    if a.setups:
        keep_setups = set(a.setups.split(","))
        specs = [s for s in specs if s["setup"] in keep_setups]
    specs = under_condition(specs, a.batch_mult, a.lr_mult)
    if a.list:
        for s in specs:
            print(s["run_id"], s["split"], s["onset"], json.dumps(s["magnitude"]))
        print(len(specs), "runs")
        return 0
    metas = []
    t0 = time.time()
    if a.jobs > 1:
        from multiprocessing import Pool

        with Pool(a.jobs) as pool:
            for i, m in enumerate(pool.imap(functools.partial(run_one, out_dir=a.out), specs)):
                metas.append(m)
                print(f"[{i + 1}/{len(specs)}] {m['run_id']} {m['label']}", flush=True)
    else:
        for i, s in enumerate(specs):
            m = run_one(s, a.out)
            metas.append(m)
            print(
                f"[{i + 1}/{len(specs)}] {m['run_id']} {m['label']} coll={m['collapse_step']} "
                f"n={m['n_steps']} final={m['final_loss']} {m['wall_s']}s "
                f"(total {time.time() - t0:.0f}s)",
                flush=True,
            )
    path = write_manifest(metas, a.out, merge=not a.all, which=a.set)
    print("manifest:", path, "runs:", len(metas), f"{time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
