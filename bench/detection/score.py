"""Score detectors on the cached detection benchmark (no torch needed).

Usage (from the repository root)::

    python bench/detection/score.py                       # split=test, all baselines
    python bench/detection/score.py --split train --json
    python bench/detection/score.py --detectors zclip,megatron_10x
    python bench/detection/score.py --real-logs ../shared/data/real-logs
    python bench/detection/score.py --extra anet_detector:DETECTORS   # plug in more
    # the failure-mechanism set, per mechanism, leave-one-mechanism-out, loss only
    python bench/detection/score.py --cache bench/detection/cache_mech --split all \
        --by-mechanism --lomo --loss-only --extra anet_detector:DETECTORS

Each run of the cache (``bench/detection/cache``) is replayed row by row through a
fresh instance of every detector (see ``baselines.py`` for the interface). The
``event`` field is blanked before a detector sees it (``--pass-benign-events`` passes
the benign events a training loop knows about itself -- schedule changes, batch-size
changes, curriculum switches, reshuffles, clipping -- never fault names and never
``outlier_batch``).

Metrics (``score_run`` per run, ``aggregate`` over runs):

* collapsing fault runs: *caught* = first alarm in ``[onset, collapse)`` (onset 0 for
  onset-unknown kinds); *late* = no alarm in that window but one at/after collapse;
  *missed* = no alarm at/after onset. Lead = collapse - first alarm in the window, in
  steps and seconds (``time`` column); median and 25th percentile over caught runs.
  Slow failures (collapse - onset >= 20): median of lead / (collapse - onset) over all
  slow runs, a run not caught counting 0.
* every fault run with onset > 0: an alarm before onset is a false alarm.
* healthy runs: share with any alarm, alarms per 1,000 steps, alarms within 50 steps
  after a benign event (events at step 0, i.e. clipping on from the start, excluded).
* survived fault runs: share with an alarm at/after onset (informative, not scored).
* real public logs: logs with any alarm, alarms per 1,000 steps (all false alarms).
* cost: mean wall microseconds per ``update`` call.

Modes:

* ``--cache`` may be given several times: the runs of every cache are pooled.
* ``--loss-only``: detectors see ``step`` and ``loss`` only; every other column is
  ``None`` (a column the log lacks, as in the real logs) -- what ``anet-lite analyze``
  gets from most logs.
* ``--logged every:K`` / ``mean:K``: the runs as a log written every K-th step, or as
  K-step means (what most loggers write); collapse and onset stay in steps, an alarm
  counts at the step of its row. The real logs are scored as they are.
* ``--by-mechanism``: one table row per fault kind (runs, collapsed, caught / late /
  missed, median lead in steps and as a fraction of onset -> collapse, pre-onset false
  alarms, survived runs alarmed), one row per healthy variant, and the healthy totals
  (runs alarmed, alarms per 10k healthy steps).
* ``--lomo`` (leave one mechanism out): a detector factory may have an optional hook
  ``calibrate(healthy, faults) -> factory`` (``healthy`` and ``faults``: lists of
  ``(manifest entry, rows as the detector sees them)``). The runs of mechanism M are
  scored with ``calibrate(every healthy run, the fault runs of every other mechanism)``;
  healthy run i with ``calibrate(the healthy runs of the other parity fold, every fault
  run)``; real logs with ``calibrate(every run)`` (they never calibrate anything). A
  detector without the hook is its own calibration: its LOMO score is its plain score,
  and the output says so; one whose factory sets ``calibrate_uses_faults = False`` is fit
  once on every healthy run for all mechanisms (its LOMO fault scores equal that fit's),
  and the output says that.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

CACHE = os.path.join(HERE, "cache")
# shared/ lies beside the repository checkout
REAL_LOGS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "real-logs"
)
REAL_LOGS_2 = REAL_LOGS + "-2"
DEFAULT_REAL_LOGS = (REAL_LOGS, REAL_LOGS_2)
CACHE_MECH = os.path.join(HERE, "cache_mech")
NUM_COLUMNS = (
    "time",
    "lr",
    "loss",
    "grad_norm",
    "update_norm",
    "param_norm",
    "processivity",
    "noise",
    "max_abs_grad",
)
KNOWN_TO_LOOP = {
    "lr_step_decay",
    "cosine_restart",
    "warmup_end",
    "reshuffle",
    "batch_size_change",
    "curriculum_switch",
    "grad_clip",
}
EVENT_WINDOW = 50
SLOW_MIN = 20


# ----------------------------------------------------------------------------- loading
def cache_spec(spec: str) -> Tuple[str, str]:
    """ "CACHE[:SPLIT]" (a command-line argument) -> (cache folder, split; "all" if none)."""
    cache, _, split = spec.partition(":")
    return cache, split or "all"


def load_manifest(cache: str = CACHE) -> Dict[str, Any]:
    with open(os.path.join(cache, "manifest.json")) as fh:
        return json.load(fh)


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.nan


def load_run(path: str) -> List[Dict[str, Any]]:
    """Rows of a cached run as dicts (floats; ``step`` int; ``event`` str)."""
    with gzip.open(path, "rt", newline="") as fh:
        rows = []
        for r in csv.DictReader(fh):
            rec: Dict[str, Any] = {"step": int(r["step"])}
            for c in NUM_COLUMNS:
                rec[c] = _num(r[c])
            rec["event"] = r.get("event") or ""
            rows.append(rec)
    return rows


def load_real_log(path: str) -> List[Dict[str, Any]]:
    """A real public log (step, loss, time, val_loss): rows with a loss only; columns
    the log lacks are ``None``."""
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if not r.get("loss"):
                continue
            rec: Dict[str, Any] = {c: None for c in NUM_COLUMNS}
            t = r.get("time")
            rec.update(step=int(r["step"]), loss=_num(r["loss"]), time=_num(t) if t else None)
            rec["event"] = ""
            rows.append(rec)
    return rows


def detector_view(
    rows: Sequence[Dict[str, Any]], pass_benign: bool = False, loss_only: bool = False
) -> List[Dict]:
    """Copies of the rows as a detector may see them (event blanked / filtered; with
    ``loss_only`` every column but step and loss is ``None``)."""
    out = []
    for r in rows:
        d = dict(r)
        if loss_only:
            d.update({c: None for c in NUM_COLUMNS if c != "loss"})
        if pass_benign:
            d["event"] = ";".join(e for e in r["event"].split(";") if e in KNOWN_TO_LOOP)
        else:
            d["event"] = ""
        out.append(d)
    return out


def logged_as(rows: Sequence[Dict[str, Any]], spec: str = "") -> List[Dict]:
    """The rows as a log written less often: ``"every:K"`` keeps the rows whose step is a
    multiple of K (``if step % K == 0: log(...)``); ``"mean:K"`` writes one row per K steps,
    at the interval's last step, each numeric column the mean over the interval (a
    non-finite value makes the mean non-finite, as a logger's average does; a column
    missing on any row is missing) and the interval's events joined; ``""``: every row."""
    if not spec:
        return list(rows)
    how, k = parse_logged(spec)
    if how == "every":
        return [r for r in rows if int(r["step"]) % k == 0]
    out, buf = [], []
    for r in rows:
        buf.append(r)
        if int(r["step"]) % k == k - 1:
            d = dict(r)
            for c in NUM_COLUMNS:
                vals = [b.get(c) for b in buf]
                d[c] = None if any(v is None for v in vals) else float(np.mean(vals))
            d["event"] = ";".join(e for b in buf for e in [b.get("event") or ""] if e)
            out.append(d)
            buf = []
    return out


def parse_logged(spec: str) -> Tuple[str, int]:
    """``"every:K"`` / ``"mean:K"`` -> (how, K); ValueError naming the form otherwise."""
    how, _, k = spec.partition(":")
    if how not in ("every", "mean") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"expected every:K or mean:K with an integer K >= 1, got {spec!r}")
    return how, int(k)


# ----------------------------------------------------------------------------- replay
def replay(factory: Callable[[], Any], recs: Sequence[Dict[str, Any]]) -> Tuple[List[int], float]:
    """Feed ``recs`` to a fresh detector; return (alarm steps, seconds spent in update)."""
    det = factory()
    upd = det.update
    alarms = []
    t0 = time.perf_counter()
    for r in recs:
        if upd(r):
            alarms.append(r["step"])
    return alarms, time.perf_counter() - t0


# ----------------------------------------------------------------------------- scoring
def score_run(
    alarms: Iterable[int],
    meta: Dict[str, Any],
    times: Optional[Sequence[float]] = None,
    event_window: int = EVENT_WINDOW,
) -> Dict[str, Any]:
    """Score one run. ``alarms``: steps with an alarm; ``meta``: a manifest entry (uses
    label, onset, collapse_step, benign_event_steps, n_steps); ``times``: the ``time``
    column indexed by step (for leads in seconds)."""
    al = sorted({int(a) for a in alarms})
    label = meta["label"]
    out: Dict[str, Any] = {
        "run_id": meta.get("run_id"),
        "kind": meta.get("kind"),
        "label": label,
        "n_steps": int(meta["n_steps"]),
        "n_alarms": len(al),
    }
    if label == "healthy":
        ev = [int(e) for e in meta.get("benign_event_steps") or [] if int(e) > 0]
        near = [a for a in al if any(e <= a <= e + event_window for e in ev)]
        out.update(
            any_alarm=bool(al),
            alarms_near_event=len(near),
            run_alarm_near_event=bool(near),
            has_event=bool(ev),
        )
        return out
    onset = int(meta.get("onset") or 0)
    pre = [a for a in al if a < onset]
    out.update(onset=onset, pre_onset_alarms=len(pre), false_alarm_pre_onset=bool(pre))
    if label == "collapsed":
        c = int(meta["collapse_step"])
        window = [a for a in al if onset <= a < c]
        after = [a for a in al if a >= c]
        out.update(collapse_step=c, possible_lead=c - onset)
        if window:
            first = window[0]
            out.update(outcome="caught", first_alarm=first, lead=c - first)
            if times is not None and c < len(times) and first < len(times):
                out["lead_s"] = float(times[c]) - float(times[first])
        elif after:
            out.update(outcome="late", first_alarm=after[0], delay=after[0] - c)
        else:
            out.update(outcome="missed", first_alarm=None)
    else:
        out["alarm_after_onset"] = any(a >= onset for a in al)
    return out


def _pct(xs: Sequence[float], q: float) -> Optional[float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.percentile(xs, q)) if xs else None


def aggregate(scores: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Aggregate per-run scores (from ``score_run``) into one row of metrics."""
    col = [s for s in scores if s["label"] == "collapsed"]
    caught = [s for s in col if s.get("outcome") == "caught"]
    slow = [s for s in col if s["possible_lead"] >= SLOW_MIN]
    healthy = [s for s in scores if s["label"] == "healthy"]
    faults = [s for s in scores if s["label"] in ("collapsed", "survived")]
    fa_runs = [s for s in faults if s["onset"] > 0]
    surv = [s for s in scores if s["label"] == "survived"]
    h_steps = sum(s["n_steps"] for s in healthy)
    h_ev = [s for s in healthy if s["has_event"]]
    row: Dict[str, Any] = {
        "n_collapsed": len(col),
        "n_no_possible_lead": sum(s["possible_lead"] <= 0 for s in col),
        "caught": len(caught),
        "recall": len(caught) / len(col) if col else None,
        "late": sum(s.get("outcome") == "late" for s in col),
        "missed": sum(s.get("outcome") == "missed" for s in col),
        "lead_med": _pct([s["lead"] for s in caught], 50),
        "lead_p25": _pct([s["lead"] for s in caught], 25),
        "lead_s_med": _pct([s.get("lead_s") for s in caught], 50),
        "lead_s_p25": _pct([s.get("lead_s") for s in caught], 25),
        "n_slow": len(slow),
        "slow_lead_frac_med": _pct(
            [
                (s.get("lead", 0) / s["possible_lead"]) if s.get("outcome") == "caught" else 0.0
                for s in slow
            ],
            50,
        ),
        "n_healthy": len(healthy),
        "healthy_alarm_share": (
            sum(s["any_alarm"] for s in healthy) / len(healthy) if healthy else None
        ),
        "healthy_alarms_per_1k": 1000.0 * sum(s["n_alarms"] for s in healthy) / h_steps
        if h_steps
        else None,
        "n_healthy_with_event": len(h_ev),
        "alarms_near_event": sum(s["alarms_near_event"] for s in h_ev),
        "runs_alarm_near_event": sum(s["run_alarm_near_event"] for s in h_ev),
        "n_fault_onset_gt0": len(fa_runs),
        "pre_onset_fa_runs": sum(s["false_alarm_pre_onset"] for s in fa_runs),
        "pre_onset_fa_share": (
            sum(s["false_alarm_pre_onset"] for s in fa_runs) / len(fa_runs) if fa_runs else None
        ),
        "n_survived": len(surv),
        "survived_alarm_share": (
            sum(s["alarm_after_onset"] for s in surv) / len(surv) if surv else None
        ),
    }
    return row


def score_real_logs(
    factory: Callable[[], Any], logs: Dict[str, List[Dict[str, Any]]]
) -> Tuple[Dict[str, Any], float, int]:
    n_alarm_logs = 0
    n_alarms = 0
    n_steps = 0
    secs = 0.0
    per = {}
    for name, recs in logs.items():
        al, dt = replay(factory, recs)
        secs += dt
        n_steps += len(recs)
        n_alarms += len(al)
        n_alarm_logs += bool(al)
        per[name] = len(al)
    return (
        {
            "real_logs": len(logs),
            "real_logs_with_alarm": n_alarm_logs,
            "real_alarms_per_1k": 1000.0 * n_alarms / n_steps if n_steps else None,
            "real_alarms_per_log": per,
        },
        secs,
        n_steps,
    )


# ----------------------------------------------------------------------------- driver
def load_extra(spec: str) -> Dict[str, Callable[[], Any]]:
    """``module:attr`` -> factories. ``attr`` is a factory or a dict of factories."""
    mod_name, _, attr = spec.partition(":")
    mod = importlib.import_module(mod_name)
    obj = getattr(mod, attr or "DETECTORS")
    if isinstance(obj, dict):
        return dict(obj)
    name = getattr(obj, "name", None) or attr
    return {name: obj}


Loaded = Tuple[Dict[str, Any], List[Dict[str, Any]], List[float]]


def _as_list(x: Any) -> List[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else [v for v in x if v]


def load_runs(
    caches: Any,
    split: str = "all",
    pass_benign: bool = False,
    loss_only: bool = False,
    logged: str = "",
) -> List[Loaded]:
    """(manifest entry, detector view, time column) of every run of ``caches`` (one
    folder or several, pooled) in ``split``; ``logged``: see ``logged_as``."""
    loaded = []
    for cache in _as_list(caches):
        for meta in load_manifest(cache)["runs"]:
            if split != "all" and meta["split"] != split:
                continue
            rows = load_run(os.path.join(cache, meta["file"]))
            view = logged_as(detector_view(rows, pass_benign, loss_only), logged)
            loaded.append((meta, view, [r["time"] for r in rows]))
    return loaded


def load_real_logs(folders: Any, loss_only: bool = False) -> Dict[str, List[Dict[str, Any]]]:
    """Every ``*.csv`` of the given folders (missing folders skipped), by file stem."""
    logs = {}
    for folder in _as_list(folders):
        if not os.path.isdir(folder):
            continue
        for fn in sorted(os.listdir(folder)):
            if fn.endswith(".csv"):
                logs[fn[:-4]] = detector_view(
                    load_real_log(os.path.join(folder, fn)), loss_only=loss_only
                )
    return logs


NO_HOOK = "no calibrate hook: LOMO = plain score"


def lomo_factories(
    fac: Callable[[], Any], loaded: Sequence[Loaded]
) -> Tuple[Callable[[Dict[str, Any]], Callable[[], Any]], Callable[[], Any], str]:
    """Leave-one-mechanism-out factories: (factory for a run's manifest entry, factory
    for the real logs, note). See the module doc for who is calibrated on what."""
    cal = getattr(fac, "calibrate", None)
    if cal is None:
        return (lambda meta: fac), fac, NO_HOOK
    healthy = [(m, v) for m, v, _ in loaded if m["label"] == "healthy"]
    faults = [(m, v) for m, v, _ in loaded if m["label"] != "healthy"]
    kinds = sorted({m["kind"] for m, _ in faults})
    if getattr(fac, "calibrate_uses_faults", True):
        by_kind = {k: cal(healthy, [f for f in faults if f[0]["kind"] != k]) for k in kinds}
        note = f"calibrated without each of {len(kinds)} mechanisms"
    else:  # declared healthy-only: one fit serves every mechanism
        one = cal(healthy, [])
        by_kind = {k: one for k in kinds}
        note = "calibrated on healthy runs alone: LOMO = its fit on every healthy run"
    fold_of = {m["run_id"]: i % 2 for i, (m, _) in enumerate(healthy)}
    folds = [
        cal([h for h in healthy if fold_of[h[0]["run_id"]] != i], faults) for i in (0, 1)
    ]

    def pick(meta: Dict[str, Any]) -> Callable[[], Any]:
        if meta["label"] == "healthy":
            return folds[fold_of[meta["run_id"]]]
        return by_kind[meta["kind"]]

    return pick, cal(healthy, faults), note


def evaluate(
    detectors: Dict[str, Callable[[], Any]],
    split: str = "test",
    cache: Any = CACHE,
    real_logs: Any = REAL_LOGS,
    pass_benign: bool = False,
    loss_only: bool = False,
    lomo: bool = False,
    logged: str = "",
) -> Dict[str, Any]:
    """Replay every run of ``cache`` (one folder or several) in ``split`` and the real
    logs through every detector; ``lomo``: leave-one-mechanism-out calibration;
    ``logged``: the runs as a sparser log (``logged_as``; the real logs as they are)."""
    loaded = load_runs(cache, split, pass_benign, loss_only, logged)
    logs = load_real_logs(real_logs, loss_only)
    table = []
    per_run = {}
    notes = {}
    for name, fac in detectors.items():
        pick, real_fac, note = (
            lomo_factories(fac, loaded) if lomo else ((lambda meta, f=fac: f), fac, "")
        )
        notes[name] = note
        scores = []
        secs = 0.0
        n_upd = 0
        for meta, recs, times in loaded:
            al, dt = replay(pick(meta), recs)
            secs += dt
            n_upd += len(recs)
            scores.append(score_run(al, meta, times))
        row = {"detector": name, **aggregate(scores)}
        if logs:
            rl, dt, n = score_real_logs(real_fac, logs)
            row.update(rl)
            secs += dt
            n_upd += n
        row["us_per_update"] = 1e6 * secs / n_upd if n_upd else None
        table.append(row)
        per_run[name] = scores
    counts: Dict[str, int] = {}
    for meta, _, _ in loaded:
        counts[meta["label"]] = counts.get(meta["label"], 0) + 1
    return {
        "split": split,
        "n_runs": len(loaded),
        "labels": counts,
        "loss_only": loss_only,
        "lomo": lomo,
        "notes": notes,
        "rows": table,
        "per_run": per_run,
        "benign_of": {m["run_id"]: m.get("benign") for m, _, _ in loaded},
    }


def by_mechanism(
    scores: Sequence[Dict[str, Any]], benign_of: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Per fault kind and per healthy variant, from one detector's per-run scores."""
    kinds: Dict[str, List[Dict[str, Any]]] = {}
    for s in scores:
        if s["label"] != "healthy":
            kinds.setdefault(s["kind"], []).append(s)
    per_kind = {}
    for k in sorted(kinds):
        runs = kinds[k]
        col = [s for s in runs if s["label"] == "collapsed"]
        caught = [s for s in col if s.get("outcome") == "caught"]
        surv = [s for s in runs if s["label"] == "survived"]
        frac = [
            s["lead"] / s["possible_lead"] if s.get("outcome") == "caught" else 0.0
            for s in col
            if s["possible_lead"] > 0
        ]
        per_kind[k] = {
            "runs": len(runs),
            "collapsed": len(col),
            "caught": len(caught),
            "late": sum(s.get("outcome") == "late" for s in col),
            "missed": sum(s.get("outcome") == "missed" for s in col),
            "lead_med": _pct([s["lead"] for s in caught], 50),
            "lead_frac_med": _pct(frac, 50),
            "possible_med": _pct([s["possible_lead"] for s in col], 50),
            "pre_onset_fa": sum(s.get("false_alarm_pre_onset", False) for s in runs),
            "survived": len(surv),
            "survived_alarmed": sum(s.get("alarm_after_onset", False) for s in surv),
        }
    healthy = [s for s in scores if s["label"] == "healthy"]
    variants: Dict[str, List[Dict[str, Any]]] = {}
    for s in healthy:
        v = (benign_of or {}).get(s["run_id"]) or "none"
        variants.setdefault(v, []).append(s)
    steps = sum(s["n_steps"] for s in healthy)
    return {
        "kinds": per_kind,
        "healthy_variants": {
            v: {"runs": len(r), "alarmed": sum(s["any_alarm"] for s in r)}
            for v, r in sorted(variants.items())
        },
        "healthy_runs": len(healthy),
        "healthy_alarmed": sum(s["any_alarm"] for s in healthy),
        "healthy_alarms_per_10k": 1e4 * sum(s["n_alarms"] for s in healthy) / steps
        if steps
        else None,
    }


def markdown_by_mechanism(res: Dict[str, Any]) -> str:
    """The per-mechanism tables of every detector of an ``evaluate`` result."""
    out = []
    mode = ("loss only" if res.get("loss_only") else "every column") + (
        ", leave-one-mechanism-out" if res.get("lomo") else ""
    )
    for name, scores in res["per_run"].items():
        bm = by_mechanism(scores, res.get("benign_of"))
        note = res.get("notes", {}).get(name)
        out.append(f"### {name} ({mode}{'; ' + note if note else ''})")
        out.append("")
        out.append(
            "| mechanism | runs | collapsed | caught | late | missed | lead med (steps) "
            "| lead / possible med | possible med | pre-onset FA | survived alarmed |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k, r in bm["kinds"].items():
            out.append(
                f"| {k} | {r['runs']} | {r['collapsed']} | {r['caught']} | {r['late']} "
                f"| {r['missed']} | {_f(r['lead_med'])} | {_f(r['lead_frac_med'], '{:.2f}')} "
                f"| {_f(r['possible_med'])} | {r['pre_onset_fa']} "
                f"| {r['survived_alarmed']}/{r['survived']} |"
            )
        out.append("")
        hv = ", ".join(f"{v} {r['alarmed']}/{r['runs']}" for v, r in bm["healthy_variants"].items())
        out.append(
            f"Healthy runs alarmed: {bm['healthy_alarmed']}/{bm['healthy_runs']}; "
            f"alarms per 10k healthy steps: {_f(bm['healthy_alarms_per_10k'], '{:.1f}')}. "
            f"By variant (alarmed/runs): {hv}."
        )
        out.append("")
    return "\n".join(out)


def manifest_summary(cache: str = CACHE) -> str:
    """Markdown: runs per kind x label x split, steps and cache size."""
    man = load_manifest(cache)
    cnt: Dict[Tuple[str, str, str], int] = {}
    for r in man["runs"]:
        key = (r["kind"], r["label"], r["split"])
        cnt[key] = cnt.get(key, 0) + 1
    kinds = sorted({k[0] for k in cnt}, key=lambda k: (k != "healthy", k))
    cols = [(lab, sp) for lab in ("healthy", "collapsed", "survived") for sp in ("train", "test")]
    out = ["| kind | " + " | ".join(f"{lab} {sp}" for lab, sp in cols) + " |"]
    out.append("|---|" + "---:|" * len(cols))
    for k in kinds:
        out.append(f"| {k} | " + " | ".join(str(cnt.get((k, *c), 0)) for c in cols) + " |")
    size = sum(
        os.path.getsize(os.path.join(cache, r["file"]))
        for r in man["runs"]
        if os.path.exists(os.path.join(cache, r["file"]))
    )
    steps = sum(r["n_steps"] for r in man["runs"])
    out.append("")
    out.append(f"{len(man['runs'])} runs, {steps} steps, {size / 1e6:.2f} MB of csv.gz")
    return "\n".join(out)


def _f(x, fmt="{:.0f}") -> str:
    if x is None:
        return "-"
    return fmt.format(x)


def markdown(res: Dict[str, Any]) -> str:
    rows = res["rows"]
    lab = ", ".join(f"{k} {v}" for k, v in sorted(res["labels"].items()))
    mode = []
    if res.get("loss_only"):
        mode.append("loss only")
    if res.get("lomo"):
        notes = "; ".join(f"{k}: {v}" for k, v in res.get("notes", {}).items())
        mode.append(f"leave-one-mechanism-out ({notes})")
    head = f"Split `{res['split']}`: {res['n_runs']} runs ({lab})."
    out = [head + (" Mode: " + ", ".join(mode) + "." if mode else ""), ""]
    out.append(
        "| detector | recall | caught/late/missed | lead steps med (p25) | lead s med (p25) "
        "| slow: lead/possible med (n) | pre-onset FA runs | survived runs alarmed |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        out.append(
            f"| {r['detector']} | {_f(r['recall'], '{:.2f}')} "
            f"| {r['caught']}/{r['late']}/{r['missed']} of {r['n_collapsed']} "
            f"({r['n_no_possible_lead']} at onset) "
            f"| {_f(r['lead_med'])} ({_f(r['lead_p25'])}) "
            f"| {_f(r['lead_s_med'], '{:.2f}')} ({_f(r['lead_s_p25'], '{:.2f}')}) "
            f"| {_f(r['slow_lead_frac_med'], '{:.2f}')} ({r['n_slow']}) "
            f"| {r['pre_onset_fa_runs']}/{r['n_fault_onset_gt0']} "
            f"| {_f(r['survived_alarm_share'], '{:.2f}')} |"
        )
    out.append("")
    out.append(
        "| detector | healthy runs alarmed | healthy alarms /1k steps "
        "| alarms <=50 steps after benign event (runs) | real logs alarmed "
        "| real alarms /1k steps | µs / update |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        real = f"{r['real_logs_with_alarm']}/{r['real_logs']}" if "real_logs" in r else "-"
        out.append(
            f"| {r['detector']} "
            f"| {_f(r['healthy_alarm_share'], '{:.2f}')} ({r['n_healthy']}) "
            f"| {_f(r['healthy_alarms_per_1k'], '{:.1f}')} "
            f"| {r['alarms_near_event']} "
            f"({r['runs_alarm_near_event']}/{r['n_healthy_with_event']}) "
            f"| {real} | {_f(r.get('real_alarms_per_1k'), '{:.2f}')} "
            f"| {_f(r['us_per_update'], '{:.1f}')} |"
        )
    for r in rows:
        alarmed = sorted(k for k, v in r.get("real_alarms_per_log", {}).items() if v)
        if alarmed:
            out.append("")
            out.append(f"Real logs alarmed by {r['detector']}: {', '.join(alarmed)}")
    return "\n".join(out)


def main(argv=None) -> int:
    import baselines

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--split", choices=["train", "test", "all"], default="test")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--per-run", action="store_true", help="include per-run scores in JSON")
    ap.add_argument("--detectors", help="comma-separated names (default: all)")
    ap.add_argument("--extra", action="append", default=[], help="module:factory_or_dict")
    ap.add_argument(
        "--real-logs",
        action="append",
        help="folder of real logs, repeatable ('' = skip; default: real-logs and real-logs-2)",
    )
    ap.add_argument("--cache", action="append", help="cache folder, repeatable (default: cache/)")
    ap.add_argument("--pass-benign-events", action="store_true")
    ap.add_argument(
        "--loss-only", action="store_true", help="detectors see step and loss only"
    )
    ap.add_argument(
        "--by-mechanism", action="store_true", help="also print the per-mechanism tables"
    )
    ap.add_argument(
        "--lomo",
        action="store_true",
        help="leave-one-mechanism-out: calibrate(...) hooks fit without the scored mechanism",
    )
    ap.add_argument(
        "--logged",
        default="",
        metavar="every:K|mean:K",
        help="score the runs as a log of every K-th step or of K-step means",
    )
    ap.add_argument("--summary", action="store_true", help="print the manifest summary only")
    a = ap.parse_args(argv)
    if a.logged:
        try:
            parse_logged(a.logged)
        except ValueError as e:
            ap.error(f"argument --logged: {e}")
    caches = a.cache or [CACHE]
    for c in caches:
        if not os.path.isfile(os.path.join(c, "manifest.json")):
            ap.error(f"argument --cache: no manifest.json in {c!r}")
    real = DEFAULT_REAL_LOGS if a.real_logs is None else [r for r in a.real_logs if r]
    if a.summary:
        print("\n\n".join(manifest_summary(c) for c in caches))
        return 0
    dets: Dict[str, Callable[[], Any]] = dict(baselines.BASELINES)
    for spec in a.extra:
        try:
            dets.update(load_extra(spec))
        except (ImportError, AttributeError) as e:
            ap.error(f"argument --extra {spec!r}: {e}")
    if a.detectors:
        want = a.detectors.split(",")
        unknown = [w for w in want if w not in dets]
        if unknown:
            ap.error(f"unknown detectors {unknown}; known: {sorted(dets)}")
        dets = {k: dets[k] for k in want}
    res = evaluate(
        dets, a.split, caches, real, a.pass_benign_events, a.loss_only, a.lomo, a.logged
    )
    if a.json:
        if a.by_mechanism:
            res["by_mechanism"] = {
                k: by_mechanism(v, res["benign_of"]) for k, v in res["per_run"].items()
            }
        if not a.per_run:
            res.pop("per_run")
        res.pop("benign_of")
        print(json.dumps(res, indent=1, default=float))
    else:
        print(markdown(res))
        if a.by_mechanism:
            print()
            print(markdown_by_mechanism(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
