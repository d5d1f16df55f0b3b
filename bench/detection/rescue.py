"""Rescue benchmark: does a protection save a faulty run? (detection benchmark, item "Rescue")

Every selected fault run of the benchmark (``generate.plan()`` / ``plan_mech()``: the same
spec, seed, model, data, fault and number of steps as the cached run) is trained again
through ``generate.run_one`` itself (its ``arm=`` hooks; ``arm=None`` is the benchmark's
own run, unchanged) under four arms:

* ``none``   no protection (the fault as the benchmark recorded it, run to the last step);
* ``guard``  the default ``anet_lite.torch.Guard(model, optimizer)``: it may slow down
             (``guard.lr_scale`` multiplies the run's hand-set lr every step), skip,
             roll back or stop (``GuardStop``: the run ends on the model the Guard restored);
* ``clip``   ``clip_grad_norm_`` at a fixed max norm: the 90th percentile of the healthy
             twin's gradient norms over its whole run (a clip that touches ~10 % of
             healthy steps, chosen where a user would choose it: on a healthy run);
* ``zclip``  ZClip-style adaptive clipping (Kumar et al. 2025, arXiv 2504.02507), from its
             formula (see ``ZClip``): EMA mean / variance of the total gradient norm,
             z-score, clip spikes with z > 2.5 to ``mu + z_t * sigma * (z_t / z)``.

Each run's final model is judged on a fixed clean batch against its **healthy twin** (the
same spec and seed, no fault; see ``twin_spec``): ``rescued`` when its loss is at most the
twin's + max(5 % of the twin's, 0.05 nats). The batch: for the text models 64 windows of
held-out standard-library text (bytes 600k-700k, never trained on); for the tabular and
image sets the whole clean bundled dataset (the benchmark trains on all of it, so nothing
is held out there: the judge is the clean training loss).

Faults are classed ``transient`` (a bounded or one-time event: a corrupted shard, a stuck
loader that resumes, a one-step lr spike, optimizer state lost once, BN statistics
corrupted once), ``lr`` (an lr too high from the onset, that a slow-down undoes) or
``persistent`` (a bug that stays). Survivable = transient + lr. For a persistent bug a
Guard stop is scored ``kept_healthy`` when the model it leaves is within the same
tolerance of the twin's model at the onset step (the last healthy model).

Usage (from the repository root)::

    python bench/detection/rescue.py --set all --max-per-setup 1 --cheap-all  # committed results
    python bench/detection/rescue.py --report-only   # rebuild results/rescue.md from the JSONL
    python bench/detection/rescue.py --only corrupt_shard --setups mlp_digits --limit 2
    python bench/detection/rescue.py --check RUN_ID     # the hooks reproduce the cache
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import data  # noqa: E402
import generate  # noqa: E402

ARMS = ("none", "guard", "clip", "zclip")
REL_TOL, ABS_TOL = 0.05, 0.05
CLIP_PERCENTILE = 90.0
TRANSIENT = {
    "corrupt_shard",
    "dead_relu",
    "opt_state_reset",
    "stuck_loader",
    "bn_stats_corrupt",
}
LR_FAULTS = {
    "lr_jump",
    "high_lr_no_warmup",
    "attn_logit_growth",
    "adam_instability",
    "warmup_units",
    "unfreeze_high_lr",
}
HELD_OUT_TEXT = (600_000, 700_000)  # stdlib_text bytes the benchmark never trains on
EVAL_WINDOWS = 64


def fault_class(kind: str) -> str:
    """``transient``, ``lr`` (a slow-down undoes it) or ``persistent``."""
    if kind in TRANSIENT:
        return "transient"
    return "lr" if kind in LR_FAULTS else "persistent"


def within(loss: float, ref: float, rel: float = REL_TOL, abs_: float = ABS_TOL) -> bool:
    """True when ``loss`` (nats) is finite and at most ``ref + max(rel * ref, abs_)``."""
    if not (math.isfinite(loss) and math.isfinite(ref)):
        return False
    return loss <= ref + max(rel * abs(ref), abs_)


# ----------------------------------------------------------------------------- specs
def twin_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The healthy twin of a fault spec: same setup, optimizer, seed and steps, no fault.

    A fault that runs at a non-default lr on purpose keeps it in its twin:
    ``opt_state_reset`` (a high-but-stable lr) -> the ``high_stable_lr`` variant at the
    same multiplier; ``warmup_units`` (warm-up 100x too short) -> the correct long
    ``warmup_cosine`` warm-up to the same peak."""
    tw = copy.deepcopy(spec)
    tw.update(kind="healthy", benign=None, onset=None, magnitude={}, events={})
    tw["run_id"] = spec["run_id"] + "-twin"
    mag = spec["magnitude"]
    if spec["kind"] == "opt_state_reset":
        tw.update(benign="high_stable_lr", magnitude={"lr_mult": mag["lr_mult"]})
    elif spec["kind"] == "warmup_units":
        w = int(0.3 * spec["n_steps"])
        tw.update(benign="warmup_cosine", magnitude={"peak_mult": mag["peak_mult"], "warmup": w})
        tw["events"] = {"warmup_end": [w]}
    return tw


def all_fault_specs(which: str = "all") -> List[Dict[str, Any]]:
    """Every fault spec of the base set and/or the mech set, in plan order."""
    specs: List[Dict[str, Any]] = []
    if which in ("base", "all"):
        specs += generate.plan()
    if which in ("mech", "all"):
        specs += generate.plan_mech()
    return [s for s in specs if s["kind"] != "healthy"]


CHEAP_SETUPS = ("mlp_digits", "mlp_bcancer", "cnn_digits", "cnnbn_digits")


def select(
    specs: List[Dict[str, Any]],
    kinds: Optional[set] = None,
    setups: Optional[set] = None,
    max_per_setup: Optional[int] = None,
    cheap_all: bool = False,
) -> List[Dict[str, Any]]:
    """Filter specs by kind / setup; keep at most ``max_per_setup`` runs (the first seeds)
    per (kind, setup), except every run of the cheap setups (``CHEAP_SETUPS``) if
    ``cheap_all``. Ordered by replicate: every (kind, setup)'s first run comes first, so a
    run cut short still covers every mechanism."""
    out, seen = [], {}  # type: List[Tuple[int, int, Dict[str, Any]]], Dict[tuple, int]
    for i, s in enumerate(specs):
        if (kinds and s["kind"] not in kinds) or (setups and s["setup"] not in setups):
            continue
        key = (s["kind"], s["setup"])
        cheap = cheap_all and s["setup"] in CHEAP_SETUPS
        if max_per_setup is not None and not cheap and seen.get(key, 0) >= max_per_setup:
            continue
        seen[key] = seen.get(key, 0) + 1
        out.append((seen[key], i, s))
    return [s for _, _, s in sorted(out, key=lambda x: x[:2])]


def cached_meta(run_id: str) -> Optional[Dict[str, Any]]:
    """The cached run's manifest entry (label, collapse step), or None."""
    for folder in (generate.CACHE, generate.CACHE_MECH):
        path = os.path.join(folder, "manifest.json")
        if os.path.exists(path):
            with open(path) as fh:
                for r in json.load(fh)["runs"]:
                    if r["run_id"] == run_id:
                        return r
    return None


# ----------------------------------------------------------------------------- judging data
def eval_batch(spec: Dict[str, Any]) -> Tuple[Any, Any]:
    """The fixed clean batch a run's final model is judged on (see the module docstring)."""
    import torch

    if spec["dataset"] == "stdlib_text":
        ctx = generate.ALL_SETUPS[spec["setup"]]["ctx"]
        lo, hi = HELD_OUT_TEXT
        text = data.stdlib_text(max_bytes=hi)[lo:hi].astype(np.int64)
        starts = np.linspace(0, len(text) - ctx - 2, EVAL_WINDOWS).astype(int)
        w = torch.from_numpy(np.stack([text[s : s + ctx + 1] for s in starts]))
        return w[:, :ctx], w[:, 1:]
    X, y, _ = data.classification(spec["dataset"])
    return torch.from_numpy(X), torch.from_numpy(y)


def eval_loss(model: Any, batch: Tuple[Any, Any]) -> float:
    """Mean cross-entropy (nats) of ``model`` on ``batch``; no gradient, mode unchanged."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    x, y = batch
    with torch.no_grad():
        out = model(x)
        return float(F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)))


# ----------------------------------------------------------------------------- ZClip
class ZClip:
    """ZClip-style adaptive gradient clipping, from the paper's formulas (Kumar et al. 2025).

    For the total gradient norm g_t: during ``warmup`` steps buffer g (no clipping here:
    the library's fixed 1.0 warm-up clip is an LLM-scale norm, not these models'), then
    mu, sigma^2 = mean and variance of the buffer. Afterwards z_t = (g_t - mu) / (sigma +
    eps); if z_t > z_thresh the norm is clipped to ``mu + z_thresh * sigma * (z_thresh /
    z_t)`` (reciprocal, the paper's adaptive mode; ``mode="zscore"``: ``mu + z_thresh *
    sigma``). The EMAs are updated with the clipped norm (alpha = 0.97) so a spike does
    not inflate sigma: mu <- a mu + (1-a) g', sigma^2 <- a sigma^2 + (1-a) (g' - mu)^2.
    A non-finite norm is left alone (nothing to scale to) and not learned from.
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup: int = 25,
        mode: str = "adaptive",
        eps: float = 1e-6,
    ) -> None:
        if mode not in ("adaptive", "zscore"):
            raise ValueError(f"mode must be 'adaptive' or 'zscore', got {mode!r}")
        self.alpha, self.z_thresh, self.warmup = alpha, z_thresh, int(warmup)
        self.mode, self.eps = mode, eps
        self.buf: List[float] = []
        self.mu: Optional[float] = None
        self.var = 0.0
        self.n_clipped = 0

    def threshold(self, g: float) -> Optional[float]:
        """Feed this step's total norm; return the norm to clip to, or None (no clip)."""
        if not math.isfinite(g):
            return None
        if self.mu is None:
            self.buf.append(g)
            if len(self.buf) >= self.warmup:
                self.mu = float(np.mean(self.buf))
                self.var = float(np.var(self.buf))
            return None
        sigma = math.sqrt(max(self.var, 0.0))
        z = (g - self.mu) / (sigma + self.eps)
        thr = None
        if z > self.z_thresh:
            scale = self.z_thresh / z if self.mode == "adaptive" else 1.0
            thr = self.mu + self.z_thresh * sigma * scale
            self.n_clipped += 1
        g_c = g if thr is None else thr
        a = self.alpha
        self.mu = a * self.mu + (1 - a) * g_c
        self.var = a * self.var + (1 - a) * (g_c - self.mu) ** 2
        return thr


# ----------------------------------------------------------------------------- arms
class Arm:
    """No protection (``generate.run_one``'s ``arm=`` hooks; the base of the others).

    Records the total gradient norm of every step, the model's clean loss before the
    update of ``eval_at`` (the onset: the last healthy model), and ends a run whose
    parameters are no longer finite (nothing can bring them back)."""

    name = "none"

    def __init__(self, batch: Tuple[Any, Any], eval_at: Optional[int] = None) -> None:
        self.batch, self.eval_at = batch, eval_at
        self.model: Any = None
        self.grad_norms: List[float] = []
        self.loss_at: Optional[float] = None
        self.stopped_at: Optional[int] = None
        self.last_t = -1

    def setup(self, model: Any, opt: Any, params: List[Any]) -> None:
        self.model, self.opt = model, opt

    def lr_scale(self) -> float:
        return 1.0

    def group_scale(self, i: int) -> float:
        return 1.0

    def before_step(self, t: int, loss: Any, params: List[Any], grad_norm: float) -> None:
        self.grad_norms.append(grad_norm)
        if t == self.eval_at:
            self.loss_at = eval_loss(self.model, self.batch)

    def step(self, t: int, opt: Any) -> bool:
        opt.step()
        self.last_t = t
        return True

    def done(self, t: int, params_finite: bool) -> bool:
        return not params_finite

    def summary(self) -> Dict[str, Any]:
        return {}


class ClipArm(Arm):
    """``clip_grad_norm_`` at a fixed ``max_norm`` (see the module docstring)."""

    name = "clip"

    def __init__(self, batch: Tuple[Any, Any], max_norm: float) -> None:
        super().__init__(batch)
        self.max_norm, self.n_clipped = float(max_norm), 0

    def before_step(self, t: int, loss: Any, params: List[Any], grad_norm: float) -> None:
        import torch

        super().before_step(t, loss, params, grad_norm)
        self.n_clipped += int(grad_norm > self.max_norm)
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)

    def summary(self) -> Dict[str, Any]:
        return {"max_norm": self.max_norm, "clipped_steps": self.n_clipped}


class ZClipArm(Arm):
    """ZClip-style adaptive clipping (``ZClip``) of the total gradient norm."""

    name = "zclip"

    def __init__(self, batch: Tuple[Any, Any], zclip: Optional[ZClip] = None) -> None:
        super().__init__(batch)
        self.zclip = zclip if zclip is not None else ZClip()

    def before_step(self, t: int, loss: Any, params: List[Any], grad_norm: float) -> None:
        import torch

        super().before_step(t, loss, params, grad_norm)
        thr = self.zclip.threshold(grad_norm)
        if thr is not None:
            torch.nn.utils.clip_grad_norm_(params, thr)

    def summary(self) -> Dict[str, Any]:
        return {"clipped_steps": self.zclip.n_clipped}


class GuardArm(Arm):
    """The default ``anet_lite.torch.Guard``; a ``GuardStop`` ends the run on the model the
    Guard restored. Its lr scale multiplies the run's hand-set lr every step."""

    name = "guard"

    def setup(self, model: Any, opt: Any, params: List[Any]) -> None:
        from anet_lite.torch import Guard

        super().setup(model, opt, params)
        self.guard = Guard(model, opt)

    def lr_scale(self) -> float:
        return float(self.guard.lr_scale)

    def group_scale(self, i: int) -> float:
        scales = self.guard.group_lr_scale  # an lr jump in one group undone in that group
        return float(scales[i]) if i < len(scales) else 1.0

    def before_step(self, t: int, loss: Any, params: List[Any], grad_norm: float) -> None:
        super().before_step(t, loss, params, grad_norm)
        self.guard.observe(loss)

    def step(self, t: int, opt: Any) -> bool:
        from anet_lite.torch import GuardStop

        try:
            opt.step()
        except GuardStop:
            self.stopped_at = t
            return False
        self.last_t = t
        return True

    def done(self, t: int, params_finite: bool) -> bool:
        return False  # a rollback can bring non-finite weights back

    def summary(self) -> Dict[str, Any]:
        acts = [
            {
                "t": (a.step - 1) if a.step is not None else None,  # the Guard counts from 1
                "kind": a.kind,
                "cause": str(a.evidence.get("cause", "")),
                "factor": round(a.factor, 4),
            }
            for a in self.guard.actions
        ]
        counts = {k: sum(a["kind"] == k for a in acts) for k in ("slow_down", "skip_step")}
        counts.update({k: sum(a["kind"] == k for a in acts) for k in ("rollback", "stop")})
        return {
            "actions": acts,
            "counts": counts,
            "rolled_back": [[a - 1, b - 1] for a, b in self.guard.rolled_back],
            "lr_scale_end": self.guard.lr_scale,
        }


# ----------------------------------------------------------------------------- one run
def make_arm(name: str, batch: Tuple[Any, Any], clip_norm: float) -> Arm:
    """A fresh arm by name (``ARMS``)."""
    if name == "none":
        return Arm(batch)
    if name == "guard":
        return GuardArm(batch)
    if name == "clip":
        return ClipArm(batch, clip_norm)
    if name == "zclip":
        return ZClipArm(batch)
    raise ValueError(f"unknown arm {name!r} (choose from {', '.join(ARMS)})")


def run_arm(spec: Dict[str, Any], arm: Arm, scratch: str) -> Dict[str, Any]:
    """Train ``spec`` under ``arm`` (trace written to ``scratch``); the final model's clean
    loss, the steps run and the arm's own bookkeeping."""
    t0 = time.perf_counter()
    meta = generate.run_one(copy.deepcopy(spec), scratch, arm=arm)
    out = {
        "final": eval_loss(arm.model, arm.batch),
        "steps": meta["n_steps"],
        "stopped_at": arm.stopped_at,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    out.update(arm.summary())
    return out


def clip_norm_of(grad_norms: List[float]) -> float:
    """The fixed clip of the ``clip`` arm: the CLIP_PERCENTILE-th percentile of the
    healthy twin's finite gradient norms."""
    g = [x for x in grad_norms if math.isfinite(x)]
    if not g:
        raise ValueError("the healthy twin has no finite gradient norm")
    return float(np.percentile(g, CLIP_PERCENTILE))


def rescue_one(
    spec: Dict[str, Any], arms: Tuple[str, ...] = ARMS, scratch: Optional[str] = None
) -> Dict[str, Any]:
    """Run the healthy twin, then ``spec`` under each arm; judge every final model."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = scratch or tmp
        batch = eval_batch(spec)
        onset = spec["onset"] or 0
        twin = Arm(batch, eval_at=onset)
        run_arm(twin_spec(spec), twin, scratch)
        twin_final = eval_loss(twin.model, batch)
        clip = clip_norm_of(twin.grad_norms)
        meta = cached_meta(spec["run_id"]) or {}
        res: Dict[str, Any] = {
            "run_id": spec["run_id"],
            "kind": spec["kind"],
            "class": fault_class(spec["kind"]),
            "setup": spec["setup"],
            "optimizer": spec["optimizer"],
            "onset": spec["onset"],
            "n_steps": spec["n_steps"],
            "cached_label": meta.get("label"),
            "twin_final": twin_final,
            "twin_pre_onset": twin.loss_at,
            "clip_norm": clip,
            "arms": {},
        }
        for name in arms:
            out = run_arm(spec, make_arm(name, batch, clip), scratch)
            out["rescued"] = within(out["final"], twin_final)
            if out["stopped_at"] is not None:
                out["kept_healthy"] = within(out["final"], twin.loss_at or math.nan)
            res["arms"][name] = out
    if "guard" in res["arms"]:
        res["guard_verdict"] = guard_verdict(res)
    return res


def guard_verdict(res: Dict[str, Any]) -> Dict[str, Any]:
    """What the Guard did with one run: its outcome and what it did wrong, if anything."""
    g, arms = res["arms"]["guard"], res["arms"]
    onset = res["onset"] or 0
    acts = g.get("actions", [])
    first = acts[0]["t"] if acts else None
    stopped = g["stopped_at"] is not None
    if g["rescued"]:
        outcome = "rescued"
    elif stopped:
        outcome = "stop_kept_healthy" if g.get("kept_healthy") else "stop_not_healthy"
    else:
        outcome = "lost"
    wrong = []
    if first is not None and onset > 0 and first < onset:
        wrong.append(f"acted before the onset (t{first} < t{onset})")
    if stopped and res["class"] != "persistent":
        wrong.append("stopped a survivable run")
    if stopped and not g.get("kept_healthy"):
        wrong.append("the model kept at the stop is not the pre-onset one")
    if outcome == "lost" and res["class"] == "persistent":
        wrong.append("a persistent bug ran to the end, worse than its twin")
    if outcome == "lost" and res["class"] != "persistent":
        wrong.append("a survivable fault ran to the end, worse than its twin")
    if arms.get("none", {}).get("rescued") and not g["rescued"]:
        wrong.append("the unprotected run was fine: the Guard made it worse")
    rb = g.get("rolled_back", [])
    if rb and not g["rescued"]:
        a, b = rb[-1]
        left = (g["stopped_at"] if stopped else res["n_steps"]) - b - 1
        if left > 0 and not [x for x in acts if x["t"] > b]:
            wrong.append(
                f"its last rollback (t{b}, back to the state before t{a}) was followed by "
                f"{left} steps without any action"
            )
    if not acts and not g["rescued"]:
        wrong.append("no action at all")
    return {"outcome": outcome, "first_action_t": first, "wrong": wrong}


# ----------------------------------------------------------------------------- checks
def _trace(path: str) -> List[List[str]]:
    """A cached trace's rows without the wall-clock ``time`` column."""
    with gzip.open(path, "rt") as fh:
        return [[v for k, v in r.items() if k != "time"] for r in csv.DictReader(fh)]


def _max_rel_diff(a: List[List[str]], b: List[List[str]]) -> float:
    """The largest relative difference between two traces' numeric cells (inf when their
    shapes or text cells differ)."""
    if len(a) != len(b):
        return math.inf
    worst = 0.0
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if x == y:
                continue
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                return math.inf
            worst = max(worst, abs(fx - fy) / max(abs(fx), abs(fy), 1e-12))
    return worst


def check_reproduces(run_id: str) -> Dict[str, Any]:
    """Rerun a cached run with ``arm=None`` and with the unprotected ``Arm``; compare the
    traces (every column but the wall clock, as written: 6 significant digits). The arm
    run goes on past the cache's early stop, so its prefix is compared. On the machine
    that runs them the hooks change nothing, bit for bit (``arm_prefix_identical``);
    against a cache written on another CPU, float rounding can move the last written
    digit (``plain_identical`` tells; ``cache_max_rel_diff`` by how much)."""
    spec = next((s for s in generate.plan() + generate.plan_mech() if s["run_id"] == run_id), None)
    if spec is None:
        raise ValueError(f"no run {run_id!r} in the benchmark's plans")
    folder = generate.CACHE_MECH if spec.get("set") == "mech" else generate.CACHE
    cached = _trace(os.path.join(folder, run_id + ".csv.gz"))
    out: Dict[str, Any] = {"run_id": run_id, "cached_rows": len(cached)}
    with tempfile.TemporaryDirectory() as tmp:
        generate.run_one(copy.deepcopy(spec), tmp)
        plain = _trace(os.path.join(tmp, run_id + ".csv.gz"))
        generate.run_one(copy.deepcopy(spec), tmp, arm=Arm(eval_batch(spec)))
        hooked = _trace(os.path.join(tmp, run_id + ".csv.gz"))
    out["plain_identical"] = plain == cached
    out["cache_max_rel_diff"] = _max_rel_diff(plain, cached)
    out["arm_prefix_identical"] = hooked[: len(plain)] == plain
    out["arm_rows"] = len(hooked)
    return out


# ----------------------------------------------------------------------------- report
def _share(rows: List[Dict[str, Any]], arm: str) -> str:
    ok = [r for r in rows if arm in r["arms"]]
    if not ok:
        return "-"
    k = sum(bool(r["arms"][arm]["rescued"]) for r in ok)
    return f"{k}/{len(ok)}"


def _guard_counts(rows: List[Dict[str, Any]]) -> Dict[str, int]:
    tot = {"slow_down": 0, "skip_step": 0, "rollback": 0, "stop": 0}
    for r in rows:
        for k, v in r["arms"].get("guard", {}).get("counts", {}).items():
            tot[k] += v
    return tot


def _guard_good(r: Dict[str, Any]) -> bool:
    """Rescued, or (a persistent bug) stopped on the last healthy model."""
    g = r["arms"]["guard"]
    return bool(g["rescued"] or (r["class"] == "persistent" and g.get("kept_healthy")))


def _row(label: str, cls: str, rows: List[Dict[str, Any]]) -> str:
    c = _guard_counts(rows)
    stops = [r for r in rows if r["arms"].get("guard", {}).get("stopped_at") is not None]
    kept = sum(bool(r["arms"]["guard"].get("kept_healthy")) for r in stops)
    coll = sum(r["cached_label"] == "collapsed" for r in rows)
    before = sum(
        any("before the onset" in w for w in r.get("guard_verdict", {}).get("wrong", []))
        for r in rows
    )
    cells = [label, cls, str(len(rows)), str(coll)]
    cells += [_share(rows, a) for a in ARMS]
    good = [r for r in rows if "guard" in r["arms"]]
    n_good = sum(_guard_good(r) for r in good)
    cells.append(f"{n_good}/{len(good)}" if good else "-")
    cells += [f"{len(stops)} ({kept})", str(c["rollback"]), str(c["skip_step"])]
    cells += [str(c["slow_down"]), str(before)]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| mechanism | class | runs | collapse unprotected | rescued: none | guard | clip | zclip "
    "| guard rescued or stop kept healthy | guard stops (kept healthy) | rollbacks | skips "
    "| slow-downs | guard acted before onset |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table(results: List[Dict[str, Any]]) -> str:
    """The per-mechanism and overall markdown table."""
    lines = [HEADER]
    kinds = sorted({r["kind"] for r in results}, key=lambda k: (fault_class(k), k))
    for k in kinds:
        lines.append(_row(k, fault_class(k), [r for r in results if r["kind"] == k]))
    surv = [r for r in results if r["class"] != "persistent"]
    groups = [
        ("**survivable (transient + lr)**", "", surv),
        ("**transient**", "", [r for r in surv if r["class"] == "transient"]),
        ("**persistent**", "", [r for r in results if r["class"] == "persistent"]),
        ("**all**", "", results),
        (
            "**survivable, collapsing unprotected**",
            "",
            [r for r in surv if r["cached_label"] == "collapsed"],
        ),
        (
            "**all, collapsing unprotected**",
            "",
            [r for r in results if r["cached_label"] == "collapsed"],
        ),
    ]
    for label, cls, rows in groups:
        if rows:
            lines.append(_row(label, cls, rows))
    return "\n".join(lines)


def _actions_text(acts: List[Dict[str, Any]], limit: int = 8) -> str:
    """``t212 skip(non_finite) x2, t214 rollback(...)``: consecutive repeats folded."""
    out: List[List[Any]] = []
    for a in acts:
        key = f"{a['kind']}({a['cause']})" if a["cause"] else a["kind"]
        if out and out[-1][1] == key:
            out[-1][2] += 1
        else:
            out.append([a["t"], key, 1])
    parts = [f"t{t} {k}" + (f" x{n}" if n > 1 else "") for t, k, n in out[:limit]]
    return ", ".join(parts) + (" ..." if len(out) > limit else "")


WRONG_KINDS = (
    ("acted before the onset", "acted before the fault's onset (a false alarm)"),
    ("stopped a survivable", "stopped a survivable (transient or lr) run"),
    ("not the pre-onset", "a stop left a model worse than the pre-onset one"),
    ("a persistent bug ran", "a persistent bug ran to the end, worse than its twin"),
    ("a survivable fault ran", "a survivable fault ran to the end, worse than its twin"),
    ("made it worse", "the unprotected run was rescued, the Guard's was not"),
    ("without any action", "its last rollback was followed by steps without any action"),
    ("no action at all", "not rescued, and no action at all"),
)


def wrong_counts(results: List[Dict[str, Any]]) -> str:
    """How many runs each kind of Guard mistake was seen on (a run can have several)."""
    lines = ["| what the Guard did wrong | runs |", "|---|---|"]
    for key, words in WRONG_KINDS:
        n = sum(any(key in w for w in r.get("guard_verdict", {}).get("wrong", [])) for r in results)
        lines.append(f"| {words} | {n} |")
    return "\n".join(lines)


def guard_notes(results: List[Dict[str, Any]]) -> str:
    """One line per run the Guard did not get right: its actions and what went wrong."""
    lines = [
        "| run | class | onset | outcome | final / twin (pre-onset) | actions | what went wrong |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r.get("guard_verdict")
        if not v or not v["wrong"]:
            continue
        g = r["arms"]["guard"]
        pre = r["twin_pre_onset"]
        loss = f"{g['final']:.3g} / {r['twin_final']:.3g} ({pre:.3g})" if pre else "-"
        lines.append(
            f"| {r['run_id']} | {r['class']} | {r['onset']} | {v['outcome']} | {loss} "
            f"| {_actions_text(g.get('actions', [])) or '-'} | {'; '.join(v['wrong'])} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def _load_jsonl(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def below_twin(results: List[Dict[str, Any]]) -> str:
    """Per arm: how many final losses are below half the twin's, and how many are 0."""
    parts = []
    for arm in ARMS:
        fin = [(r["arms"][arm]["final"], r["twin_final"]) for r in results if arm in r["arms"]]
        low = sum(math.isfinite(f) and f < 0.5 * t for f, t in fin)
        zero = sum(f == 0.0 for f, _ in fin)
        parts.append(f"{arm} {low} ({zero} at exactly 0)")
    return ", ".join(parts)


def strict_shares(results: List[Dict[str, Any]]) -> str:
    """Per arm and class group: the share rescued under the relative 5 % alone."""
    groups = [
        ("survivable", [r for r in results if r["class"] != "persistent"]),
        ("persistent", [r for r in results if r["class"] == "persistent"]),
    ]
    parts = []
    for label, rows in groups:
        cells = []
        for arm in ARMS:
            ok = [r for r in rows if arm in r["arms"]]
            k = sum(within(r["arms"][arm]["final"], r["twin_final"], REL_TOL, 0.0) for r in ok)
            cells.append(f"{arm} {k}/{len(ok)}")
        parts.append(f"{label}: " + ", ".join(cells))
    return "; ".join(parts)


def write_markdown(results: List[Dict[str, Any]], path: str, command: str) -> None:
    """The results file: the commands, the rules, the table and the Guard's mistakes."""
    made_by = sorted({str(r.get("command", "(not recorded)")) for r in results})
    doc = [
        "# Rescue benchmark: does a protection save a faulty run?",
        "",
        "Runs made by: "
        + ", ".join(f"`{c}`" for c in made_by)
        + f"; this file by `{command}` (from the repository root; rules in "
        "`bench/detection/rescue.py`'s docstring).",
        "",
        f"Rescued = final clean loss <= twin + max({REL_TOL:.0%} of the twin's, {ABS_TOL} nats) "
        "(the twin: the same spec and seed without the fault). `clip`: clip_grad_norm_ at the "
        f"p{CLIP_PERCENTILE:.0f} of the twin's gradient norms; `zclip`: z > 2.5, alpha 0.97, "
        "25 warm-up steps. Guard stops: (kept healthy) = the model left is within the same "
        "tolerance of the twin's model at the onset step. 'collapse unprotected' = the "
        "cached run's collapse label.",
        "",
        "Final losses below half the twin's (all counted rescued): " + below_twin(results) + ". "
        "On the tabular and image sets the judge is the clean *training* loss: a higher "
        "effective lr fits it better than the twin, and weights grown by a bug can drive it to "
        "0 in float32 while every training example stays classified right.",
        "",
        f"Rescued under the relative {REL_TOL:.0%} alone (no {ABS_TOL}-nat floor; most twins "
        "of the digits and breast-cancer runs end below 0.05 nats, where the floor lets a "
        "model left near its onset level pass): " + strict_shares(results) + ".",
        "",
        table(results),
        "",
        "## What the Guard did wrong",
        "",
        wrong_counts(results),
        "",
        "## Runs the Guard did not get right",
        "",
        guard_notes(results),
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(doc))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", choices=["base", "mech", "all"], default="all")
    ap.add_argument("--only", help="comma-separated fault kinds")
    ap.add_argument("--setups", help="comma-separated setups")
    ap.add_argument("--max-per-setup", type=int, help="at most N runs per (kind, setup)")
    ap.add_argument(
        "--cheap-all",
        action="store_true",
        help="with --max-per-setup: every run of mlp_digits/mlp_bcancer/cnn_digits",
    )
    ap.add_argument("--limit", type=int, help="at most N runs in all")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    ap.add_argument(
        "--jsonl",
        default=os.path.join(HERE, "results", "rescue_runs.jsonl"),
        help="per-run results (appended; runs already there are not rerun)",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "rescue.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild --out from --jsonl")
    ap.add_argument("--check", metavar="RUN_ID", help="check the hooks reproduce a cached run")
    return ap


def _selected(a: argparse.Namespace, ap: argparse.ArgumentParser) -> List[Dict[str, Any]]:
    specs = all_fault_specs(a.set)
    known_k = {s["kind"] for s in specs}
    kinds = set(a.only.split(",")) if a.only else None
    setups = set(a.setups.split(",")) if a.setups else None
    if kinds and not kinds <= known_k:
        ap.error(f"unknown fault kind(s): {', '.join(sorted(kinds - known_k))}")
    if setups and not setups <= set(generate.ALL_SETUPS):
        ap.error(f"unknown setup(s): {', '.join(sorted(setups - set(generate.ALL_SETUPS)))}")
    chosen = select(specs, kinds, setups, a.max_per_setup, a.cheap_all)
    return chosen[: a.limit] if a.limit else chosen


def main(argv: Optional[List[str]] = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    logging.getLogger("anet_lite").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", RuntimeWarning)
    if a.check:
        try:
            print(json.dumps(check_reproduces(a.check)))
        except (ValueError, FileNotFoundError) as exc:
            ap.error(str(exc))
        return 0
    arms = tuple(a.arms.split(","))
    if not set(arms) <= set(ARMS):
        ap.error(f"--arms: choose from {', '.join(ARMS)}")
    command = "python bench/detection/rescue.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if not a.report_only:
        done = {r["run_id"] for r in _load_jsonl(a.jsonl)}
        todo = [s for s in _selected(a, ap) if s["run_id"] not in done]
        os.makedirs(os.path.dirname(os.path.abspath(a.jsonl)), exist_ok=True)
        t0 = time.time()
        for i, s in enumerate(todo):
            r = rescue_one(s, arms)
            r["command"] = command
            with open(a.jsonl, "a") as fh:
                fh.write(json.dumps(r) + "\n")
            ok = " ".join(f"{k}={'Y' if v['rescued'] else 'n'}" for k, v in r["arms"].items())
            print(
                f"[{i + 1}/{len(todo)}] {s['run_id']} {ok} "
                f"{r.get('guard_verdict', {}).get('outcome', '')} ({time.time() - t0:.0f}s)",
                flush=True,
            )
    results = _load_jsonl(a.jsonl)
    for r in results:  # judged again: the verdict's words follow this file's rules
        if "guard" in r["arms"]:
            r["guard_verdict"] = guard_verdict(r)
    if not results:
        ap.error(f"no results in {a.jsonl}")
    write_markdown(results, a.out, command)
    print("wrote", a.out, len(results), "runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
