"""How well can ANY rule on the recorded columns catch a corrupted shard at its first step?

    python bench/detection/separability.py --train CACHE[:SPLIT] ... --test CACHE ... \
        [--declared]

Most collapses the Monitor still misses are corrupted shards that do their damage with
their first batch (collapse at the next step), so only a decision AT that step counts.
This script asks whether the numbers a loop records at that step (loss, gradient norm,
update norm, parameter norm, processivity, noise, max |g|, lr, each against the run's
own last 20 steps) tell such a step apart from the jumps healthy runs make: a
curriculum switch, an outlier batch, a batch-size change. It trains a gradient-boosted
classifier (scikit-learn) on the ``--train`` caches (candidate steps: the shard's first
step, and every step of a healthy run where the loss is >= 2x or the gradient >= 3x its
20-step median) and reports, on the ``--test`` caches: the share of shard first steps
it catches, the healthy runs it would alarm on, and both together with the Monitor's
own alarms (a run caught by either; a healthy run alarmed by either).

``--declared``: the loop declares its data changes (``Monitor(declared=True)`` scored
with the events passed); healthy candidates within 40 steps after a declared change are
left out, as the Monitor re-learns its levels there.

A classifier tuned to the pool is an optimistic stand-in for a hand-written rule on the
same numbers; where it cannot separate the two, no threshold on them will.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import anet_detector
import baselines
import score

FEATURES = (
    "loss / 20-step median",
    "loss / first loss",
    "grad_norm / median",
    "update_norm / median",
    "update_norm / param_norm",
    "processivity - median",
    "processivity median",
    "(noise / grad_norm) / median",
    "(max |g| / grad_norm) / median",
    "lr / previous lr",
    "previous loss / median",
)
PRE = 20  # steps of history each feature is measured against
DECLARED_QUIET = 40  # steps after a declared change left out with --declared


def _f(r: Dict[str, Any], k: str) -> float:
    return baselines._f(r.get(k))  # (NaN for a missing or unreadable value)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -30.0  # (exact zeros: a saturated batch)


def _ratio_median(pre: Sequence[Dict], num: str, den: str) -> float:
    vals = [_f(r, num) / _f(r, den) for r in pre if _f(r, den) > 0]
    return statistics.median(vals) if vals else 1.0


def features(rows: Sequence[Dict[str, Any]], t: int) -> List[float]:
    """The step-``t`` numbers against the run's previous ``PRE`` steps (logs of ratios)."""
    pre = rows[max(0, t - PRE) : t]
    med = {
        k: statistics.median(_f(r, k) for r in pre) for k in ("loss", "grad_norm", "update_norm")
    }
    proc = statistics.median(_f(r, "processivity") for r in pre)
    r = rows[t]
    g, u = _f(r, "grad_norm"), _f(r, "update_norm")
    noise = (_f(r, "noise") / g if g > 0 else 1.0) / _ratio_median(pre, "noise", "grad_norm")
    peak = (_f(r, "max_abs_grad") / g if g > 0 else 1.0) / _ratio_median(
        pre, "max_abs_grad", "grad_norm"
    )
    return [
        _log(_f(r, "loss") / med["loss"]),
        _log(_f(r, "loss") / _f(rows[0], "loss")),
        _log(g / med["grad_norm"]),
        _log(u / med["update_norm"]),
        _log(u / _f(r, "param_norm")),
        _f(r, "processivity") - proc,
        proc,
        _log(noise),
        _log(peak),
        _log(_f(r, "lr") / _f(rows[t - 1], "lr")),
        _log(_f(rows[t - 1], "loss") / med["loss"]),
    ]


def candidates(cache: str, split: str, declared: bool) -> Tuple[list, list, list]:
    """(features, labels, (cache, run_id)) of every candidate step in one cache."""
    X, y, key = [], [], []
    for meta in score.load_manifest(cache)["runs"]:
        if split != "all" and meta["split"] != split:
            continue
        shard = meta["label"] == "collapsed" and meta["kind"] == "corrupt_shard"
        if not (shard or meta["label"] == "healthy"):
            continue
        rows = score.load_run(os.path.join(cache, meta["file"]))
        marks = [
            i
            for i, r in enumerate(rows)
            if any(e in score.KNOWN_TO_LOOP for e in str(r.get("event") or "").split(";"))
        ]
        steps = [meta["onset"]] if shard else range(PRE + 5, len(rows))
        for t in steps:
            if not math.isfinite(_f(rows[t], "loss")):
                continue
            if not shard and declared and any(0 <= t - e <= DECLARED_QUIET for e in marks):
                continue
            f = features(rows, t)
            # a healthy step is a candidate if its loss jumped >= 2x or its gradient >= 3x
            if not shard and not (f[0] >= math.log(2.0) or f[2] >= math.log(3.0)):
                continue
            X.append(f)
            y.append(int(shard))
            key.append((cache, meta["run_id"]))
    return X, y, key


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, help="CACHE[:SPLIT] to fit on")
    ap.add_argument("--test", nargs="+", required=True, help="CACHE[:SPLIT] to report on")
    ap.add_argument("--declared", action="store_true", help="the loop declares its changes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier

    def gather(specs: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, list]:
        X, y, key = [], [], []
        for s in specs:
            parts = candidates(*score.cache_spec(s), a.declared)
            X += parts[0]
            y += parts[1]
            key += parts[2]
        return np.asarray(X), np.asarray(y), key

    Xa, ya, _ = gather(a.train)
    clf = HistGradientBoostingClassifier(
        max_depth=3, max_iter=200, learning_rate=0.05, class_weight="balanced", random_state=0
    ).fit(Xa, ya)
    Xb, yb, keys = gather(a.test)
    p = clf.predict_proba(Xb)[:, 1]
    from sklearn.inspection import permutation_importance

    imp = permutation_importance(
        clf, Xb, yb, scoring="average_precision", n_repeats=3, random_state=0
    ).importances_mean
    ranked = sorted(zip(imp.tolist(), FEATURES), reverse=True)
    factory = anet_detector.AnetMonitorDeclared if a.declared else anet_detector.AnetMonitor
    runs: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for s in a.test:
        cache, split = score.cache_spec(s)
        res = score.evaluate({"m": factory}, split, cache, None, a.declared)
        runs.update({(cache, r["run_id"]): r for r in res["per_run"]["m"]})
    coll = [k for k, r in runs.items() if r["label"] == "collapsed"]
    heal = [k for k, r in runs.items() if r["label"] == "healthy"]
    caught = {k for k in coll if runs[k]["outcome"] == "caught"}
    alarmed = {k for k in heal if runs[k]["any_alarm"]}
    rows = []
    for thr in (0.5, 0.9, 0.98):
        hit = {k for k, pk in zip(keys, p) if pk >= thr}
        onsets = [bool(pk >= thr) for pk, yk in zip(p, yb) if yk]
        rows.append(
            {
                "threshold": thr,
                "shard_first_steps_caught": sum(onsets),
                "shard_first_steps": len(onsets),
                "healthy_runs_alarmed_by_classifier": len(hit & set(heal)),
                "with_monitor_caught": len(caught | (hit & set(coll))),
                "with_monitor_healthy_alarmed": len(alarmed | (hit & set(heal))),
            }
        )
    out = {
        "declared": a.declared,
        "train_candidates": [len(ya), int(ya.sum())],
        "monitor": {
            "caught": len(caught),
            "collapsed": len(coll),
            "healthy_alarmed": len(alarmed),
            "healthy": len(heal),
        },
        "rows": rows,
        "importance": [[name, round(v, 3)] for v, name in ranked],
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    m = out["monitor"]
    print(
        f"Monitor ({'declared=True, events passed' if a.declared else 'default'}): "
        f"caught {m['caught']}/{m['collapsed']}, "
        f"healthy runs alarmed {m['healthy_alarmed']}/{m['healthy']}"
    )
    print(
        "\n| threshold | shard first steps caught | healthy runs alarmed (classifier) "
        "| with the Monitor: caught | with the Monitor: healthy alarmed |"
    )
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['threshold']} | {r['shard_first_steps_caught']}/{r['shard_first_steps']} "
            f"| {r['healthy_runs_alarmed_by_classifier']}/{m['healthy']} "
            f"| {r['with_monitor_caught']}/{m['collapsed']} "
            f"| {r['with_monitor_healthy_alarmed']}/{m['healthy']} |"
        )
    top = ", ".join(f"{name} {v:.2f}" for name, v in out["importance"][:4])
    print(f"\nWhat the classifier leans on (drop in average precision when shuffled): {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
