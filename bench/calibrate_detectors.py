"""Calibrate the Monitor's detectors on healthy runs only (no failure is ever used).

    python bench/calibrate_detectors.py bench/detection/cache /tmp/h1000 /tmp/h1050

Replays every healthy run of the given benchmark caches (``generate.py --only healthy
--seed-offset N --out DIR`` makes more) through each default detector, fed as the
Monitor feeds them (``Monitor.update`` with loss, grad_norm, step_norm, lr, param_norm),
and prints per detector (healthy variants that reached NaN/inf or diverged for good anyway
are left out):
the largest value of its statistic over the healthy runs, the healthy runs and steps on
which it would alarm, and (for ``LossCusum``) the threshold the rule "largest healthy S
x 1.1" gives, and how many healthy runs per 50,000 steps reach the threshold in use (the
target is at most one). The thresholds in ``src/anet_lite/monitor/detectors/*.py`` and
the ``oversized_update`` ratio (``monitor/_rules.py``) are set from this output; a
threshold chosen this way holds every failure mechanism out of its choice
(leave-one-mechanism-out by construction).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import deque
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "detection"))
import score

from anet_lite import Monitor
from anet_lite.monitor import _rules
from anet_lite.monitor.detectors import loss_cusum, loss_regression, loss_trend, norm_growth


def healthy_runs(cache: str) -> List[Dict[str, Any]]:
    """The healthy runs of a benchmark cache, rows read by the scorer (numbers or None)."""
    man = score.load_manifest(cache)
    runs = man.get("runs", man)
    runs = list(runs.values()) if isinstance(runs, dict) else runs
    return [
        {"id": m["run_id"], "rows": score.load_run(os.path.join(cache, m["file"]))}
        for m in runs
        if m.get("kind") == "healthy"
        and m.get("label", "healthy") == "healthy"  # (not a healthy setting that diverged)
        and m.get("first_nonfinite") is None
    ]


def replay(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    m = Monitor()
    cus = next(d for d in m.detectors if d.name == "loss_cusum")
    ng = next(d for d in m.detectors if d.name == "norm_growth")
    lr_ = next(d for d in m.detectors if d.name == "loss_regression")
    tr = next(d for d in m.detectors if d.name == "loss_trend")
    trend_max = -math.inf  # largest LossTrend statistic (both windows' t, rise >= MIN_RISE)
    s_max, accel_max, far_max, back_max, alarms = 0.0, 0.0, 0, 0, {}
    rise_max = 0  # longest streak far above the best at a step where it is not falling
    first_max = 0  # longest streak >= BLOWUP x the first loss
    blow_max = 0  # longest streak >= BLOWUP x the best level
    worse_max = 0  # longest streak >= WORSE x the first loss, after the run had learned
    over_x = 0.0  # largest update ratio of an update >= max_rel_update x ||theta||
    jump_x = 0.0  # largest min(gradient, update ratio) on a step whose loss did not rise
    give = [0.0, 0.0]  # largest share of the progress given back while S >= H, >= H / 2
    grow_x = 1.0  # largest growth of ||θ|| over 2 * SPAN steps, not slowing down
    shrink_x = 1.0  # smallest ||θ|| over ||θ|| SPAN steps before (after 3 * SPAN steps)
    ratios, held_x = deque(maxlen=norm_growth.HOLD_LONG), 0.0  # the growth ratio held longest
    for r in rows:
        gp, lp = m.gr_prev, m.loss_x_prev  # (the step before's: a scale jump's echo is not one)
        snap = m.update(
            math.nan if r["loss"] is None else r["loss"],
            step=r["step"],
            grad_norm=r["grad_norm"],
            step_norm=r["update_norm"],
            lr=r["lr"],
            param_norm=r["param_norm"],
        )
        s_max = max(s_max, cus.s)
        q = cus.given_back()
        if cus.s >= loss_cusum.H / 2 and q == q:
            give = [max(give[0], q if cus.s >= loss_cusum.H else 0.0), max(give[1], q)]
        ev = snap.evidence
        held = m.shift_x is not None or m.t < m.grace_until  # (waits there: _rules)
        big = ev.get("rel_update", 0.0) >= m.max_rel_update
        if big and not held and not m._loss_accounts_for(math.log(ev.get("update_ratio", 1.0))):
            over_x = max(over_x, ev.get("update_ratio", 0.0))
        far_max = max(far_max, lr_.far)
        if lr_.not_falling():
            rise_max = max(rise_max, lr_.far)
        gr, ur = ev.get("grad_ratio"), ev.get("update_ratio")
        echo = gr is not None and _rules.echo_of_larger_jump(gr, gp, lp)
        if gr is not None and ur is not None and m.ref is not None and not echo:
            jump_x = max(jump_x, m._unexplained_jump(min(gr, ur)))
        ts, ms = tr.ts, tr.ms
        if len(ts) == ts.maxlen and ms[-1] - ms[0] >= loss_trend.MIN_RISE:
            trend_max = max(trend_max, min(ts[-1], ts[0]))
        back_max = max(back_max, lr_.back)
        first_max = max(first_max, lr_.over_first)
        blow_max = max(blow_max, lr_.blow)
        worse_max = max(worse_max, lr_.worse)
        h = ng.hist
        sp = norm_growth.SPAN
        steady = ng.calm > 2 * sp and h[-1] - h[sp] >= h[sp] - h[0]  # (as the rule reads it)
        if ng.n > 4 * sp and len(h) == h.maxlen and steady:
            grow_x = max(grow_x, math.exp(h[-1] - h[0]))
        if ng.n > 3 * sp and len(h) > sp:
            shrink_x = min(shrink_x, math.exp(h[-1] - h[-1 - sp]))
        if ng.n > 2 * sp and len(h) > sp:
            rate = (h[-1] - h[-1 - sp]) / sp
            ratio = rate / max(ng.rmin, norm_growth.RATE_FLOOR)
            if rate >= norm_growth.RATE:
                accel_max = max(accel_max, ratio)
            ratios.append(ratio if rate >= norm_growth.RATE else 0.0)
            if len(ratios) == ratios.maxlen:  # (the ratio held over HOLD_LONG steps in a row)
                held_x = max(held_x, min(ratios))
        det = snap.evidence.get("detector")
        if det and snap.alert:
            alarms[det] = alarms.get(det, 0) + 1
    return {
        "s_max": s_max,
        "give_max": give[0],
        "give_half": give[1],
        "grow_x": grow_x,
        "shrink_x": shrink_x,
        "accel_max": accel_max,
        "held_x": held_x,
        "far_max": far_max,
        "rise_max": rise_max,
        "trend_max": trend_max,
        "back_max": back_max,
        "over_x": over_x,
        "jump_x": jump_x,
        "first_max": first_max,
        "blow_max": blow_max,
        "worse_max": worse_max,
        "alarms": alarms,
        "steps": len(rows),
    }


def _longest(res: List[Any], key: str, what: str, name: str, in_use: int) -> None:
    """Print the longest healthy streak of ``key`` (a LossRegression counter)."""
    top = sorted(res, key=lambda x: -x[1][key])[:3]
    print(f"LossRegression: longest healthy streak {what} = {top[0][1][key]}"
          f" steps ({name} in use: {in_use})")
    print("  longest:", ", ".join(f"{i} {r[key]}" for i, r in top))


def _largest(res: List[Any], key: str, title: str, k: int, fmt: str, in_use: str) -> None:
    """Print the largest healthy value of ``key`` and the ``k`` runs that reach the most."""
    top = sorted(res, key=lambda x: -x[1][key])[:k]
    print(f"{title} = {top[0][1][key]:{fmt}} ({in_use})")
    print("  largest:", ", ".join(f"{i} {r[key]:{fmt}}" for i, r in top))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("caches", nargs="+", help="benchmark cache folders (healthy runs are used)")
    a = ap.parse_args(argv)
    res = []
    for c in a.caches:
        for run in healthy_runs(c):
            res.append((run["id"], replay(run["rows"])))
    steps = sum(r["steps"] for _, r in res)
    s_max = max(r["s_max"] for _, r in res)
    top = sorted(res, key=lambda x: -x[1]["s_max"])[:5]
    print(f"healthy runs: {len(res)}, steps: {steps}")
    over = sum(r["s_max"] >= loss_cusum.H for _, r in res)
    print(f"LossCusum: largest healthy S = {s_max:.1f} (1.1 x that = {1.1 * s_max:.1f});"
          f" in use H = {loss_cusum.H}: {over} healthy run(s) reach it, "
          f"{50_000 * over / max(steps, 1):.2f} per 50,000 healthy steps (target <= 1)")
    print("  largest:", ", ".join(f"{i} {r['s_max']:.1f}" for i, r in top))
    _largest(res, "give_max", "LossCusum: largest healthy share of the progress given back"
             " while S >= H", 3, ".3f", f"in use GIVE_BACK = {loss_cusum.GIVE_BACK}")
    _largest(res, "give_half", "  ... while S >= H / 2", 3, ".3f", "a looser significance")
    _largest(res, "accel_max", "NormGrowth: largest healthy growth acceleration", 5, ".1f",
             f"in use: {norm_growth.ACCEL}")
    _largest(res, "held_x", "NormGrowth: largest healthy growth acceleration held for"
             f" {norm_growth.HOLD_LONG} steps in a row", 3, ".1f",
             f"in use: {norm_growth.ACCEL_LONG}")
    _largest(res, "grow_x", "NormGrowth: largest healthy growth of ||theta|| over 50 steps,"
             " not slowing down", 3, ".2f", f"in use: {math.exp(norm_growth.GROWTH):.1f}")
    top = sorted(res, key=lambda x: x[1]["shrink_x"])[:3]
    print(f"NormGrowth: smallest healthy ||theta|| / ||theta|| 25 steps before ="
          f" {top[0][1]['shrink_x']:.3f} (in use: {math.exp(norm_growth.SHRINK):.2f})")
    print("  smallest:", ", ".join(f"{i} {r['shrink_x']:.3f}" for i, r in top))
    over = sum(r["trend_max"] >= loss_trend.T for _, r in res)
    _largest(res, "trend_max", "LossTrend: largest healthy statistic", 3, ".2f",
             f"in use T = {loss_trend.T}: {over} healthy run(s) reach it")
    _longest(res, "far_max", "far above the best", "HOLD_LONG", loss_regression.HOLD_LONG)
    _longest(res, "rise_max", "far above the best, not falling", "HOLD_RISE",
             loss_regression.HOLD_RISE)
    _longest(res, "back_max", "back at the first loss", "HOLD", loss_regression.HOLD)
    _longest(res, "first_max", "10x the first loss", "FIRST_STEPS", loss_regression.FIRST_STEPS)
    _longest(res, "blow_max", "10x the best level", "BLOWUP_STEPS", loss_regression.BLOWUP_STEPS)
    _longest(
        res, "worse_max", "2x the first loss after learning", "WORSE_STEPS",
        loss_regression.WORSE_STEPS,
    )
    _largest(res, "over_x", "oversized_update: largest healthy update ratio of an update >="
             " max_rel_update x ||theta||", 3, ".1f",
             f"in use: {math.exp(_rules.OVERSIZED_X):.0f}")
    _largest(res, "jump_x", "scale_jump: largest healthy min(gradient, update ratio) / max(1,"
             " raw loss ratio) on a step", 3, ".1f", f"in use: {_rules.SCALE_JUMP_X}")
    names = sorted({k for _, r in res for k in r["alarms"]})
    for n in names:
        runs = [i for i, r in res if r["alarms"].get(n)]
        print(f"{n}: alarms on {len(runs)} healthy runs: {', '.join(runs[:8])}")
    if not names:
        print("no detector alarmed on a healthy run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
