"""The real healthy logs under benign changes of how they were logged.

    python bench/detection/real_log_stress.py [--real-logs DIR ...] [--only NAME ...]

Each public healthy log (``../shared/data/real-logs``, ``real-logs-2``: step, loss and,
where present, time) is replayed through a default ``Monitor`` (loss only, as
``anet-lite analyze`` reads such a log) after a transformation a different logger or a
resumed run would apply: every k-th step only, the mean over non-overlapping intervals
(what the HF Trainer logs with ``logging_steps``), the run resumed part-way (the first
loss is then a trained model's), no time column, a loss smoothed before it was
written (an EMA, fastai's ``smooth_loss``; a trailing running mean, a progress bar's),
and a bump of +10 or +20 % that recovers within 50 rows (a hard stretch of data).
Every log is healthy: any alarm is a false one. Prints one row per transformation.

The Monitor's noise estimates assume per-step (or per-interval) values: a smoothed loss
has correlated steps, so a one-batch bump becomes a rise that lasts the smoothing span,
many sigmas up. What keeps those quiet is not a setting here: the loss-window rules need
the window 25 % above the loss's level, however many sigmas a smaller rise is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from anet_lite import Monitor

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import score  # noqa: E402  (bench/detection)

SHARED = os.path.join(HERE, "..", "..", "..", "shared", "data")
DEFAULT_LOGS = [os.path.join(SHARED, "real-logs"), os.path.join(SHARED, "real-logs-2")]

Row = Tuple[int, float, Optional[float]]  # step, loss, time (s) or None


def load(path: str) -> List[Row]:
    """(step, loss, time) of every row of a real log that has a loss (score.py's reader)."""
    return [(r["step"], r["loss"], r["time"]) for r in score.load_real_log(path)]


def every(k: int) -> Callable[[List[Row]], List[Row]]:
    return lambda rows: rows[::k]


def interval_mean(k: int) -> Callable[[List[Row]], List[Row]]:
    def f(rows: List[Row]) -> List[Row]:
        out = []
        for i in range(0, len(rows) - k + 1, k):
            seg = rows[i : i + k]
            out.append((seg[-1][0], sum(r[1] for r in seg) / k, seg[-1][2]))
        return out

    return f


def resumed(frac: float) -> Callable[[List[Row]], List[Row]]:
    return lambda rows: rows[int(len(rows) * frac) :]


def ema(alpha: float) -> Callable[[List[Row]], List[Row]]:
    def f(rows: List[Row]) -> List[Row]:
        out, m = [], None
        for s, v, t in rows:
            m = v if m is None else m + alpha * (v - m)
            out.append((s, m, t))
        return out

    return f


def running_mean(w: int) -> Callable[[List[Row]], List[Row]]:
    def f(rows: List[Row]) -> List[Row]:
        out, acc = [], 0.0
        for i, (s, v, t) in enumerate(rows):
            acc += v - (rows[i - w][1] if i >= w else 0.0)
            out.append((s, acc / min(i + 1, w), t))
        return out

    return f


def bump(height: float, frac: float) -> Callable[[List[Row]], List[Row]]:
    """The loss x (1 + ``height``) for a while from ``frac`` of the log: up over 10 rows,
    held 20, back over 20 (what a healthy run does after a hard stretch of data: real runs
    recover from +20 % bumps within ~50 steps)."""

    def f(rows: List[Row]) -> List[Row]:
        at, out = int(len(rows) * frac), []
        for i, (s, v, t) in enumerate(rows):
            k = i - at
            w = 0.0 if k < 0 else min(k / 10, 1.0, max(0.0, 1.0 - (k - 30) / 20))
            out.append((s, v * (1.0 + height * w), t))
        return out

    return f


TRANSFORMS: Dict[str, Callable[[List[Row]], List[Row]]] = {
    "as logged": lambda rows: rows,
    "no time column": lambda rows: [(s, v, None) for s, v, _ in rows],
    "every 5th step": every(5),
    "every 20th step": every(20),
    "every 100th step": every(100),
    "mean of 10 steps": interval_mean(10),
    "mean of 50 steps": interval_mean(50),
    "resumed at 30 %": resumed(0.3),
    "resumed at 60 %": resumed(0.6),
    "resumed at 30 %, mean of 10": lambda rows: interval_mean(10)(resumed(0.3)(rows)),
    "EMA 0.1 (smoothed)": ema(0.1),
    "EMA 0.02 (smoothed)": ema(0.02),
    "running mean of 20 (smoothed)": running_mean(20),
    "a +10 % bump at 40 % (50 rows)": bump(0.1, 0.4),
    "a +20 % bump at 40 % (50 rows)": bump(0.2, 0.4),
    "a +20 % bump at 80 % (50 rows)": bump(0.2, 0.8),
}


def first_alarm(rows: Sequence[Row]) -> Optional[Tuple[int, str]]:
    m = Monitor()
    for s, v, t in rows:
        snap = m.update(v, step=s, time=t)
        if snap.alert:
            return s, str(snap.evidence.get("cause", snap.status))
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--real-logs", action="append", help="folder of real logs (repeatable)")
    ap.add_argument("--only", action="append", choices=list(TRANSFORMS), help="a transformation")
    a = ap.parse_args(argv)
    folders = a.real_logs or DEFAULT_LOGS
    paths = sorted(
        os.path.join(d, f) for d in folders if os.path.isdir(d) for f in os.listdir(d)
        if f.endswith(".csv")
    )
    if not paths:
        print(f"no real logs found in {folders}", file=sys.stderr)
        return 2
    logs = {os.path.basename(p)[:-4]: load(p) for p in paths}
    print("| logged as | logs alarmed | causes | first alarms (log, step) |")
    print("|---|---:|---|---|")
    for name in a.only or list(TRANSFORMS):
        found = {k: first_alarm(TRANSFORMS[name](rows)) for k, rows in logs.items()}
        hits = {k: v for k, v in found.items() if v is not None}
        causes = Counter(c for _, c in hits.values())
        where = ", ".join(f"{k[:24]} {s}" for k, (s, _) in list(hits.items())[:3])
        print(f"| {name} | {len(hits)} / {len(logs)} | {dict(causes) or ''} | {where} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
