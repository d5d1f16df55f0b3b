"""Microseconds per ``Monitor.update`` with every signal, on recorded training runs.

    python bench/monitor_update_cost.py [--runs 40] [--rounds 3] [--clock wall|cpu] [--signals S]

Replays the first ``--runs`` runs of the detection benchmark's cache (real CPU training
runs: loss, grad_norm, update_norm, param_norm, processivity, noise, lr, time) through a
fresh Monitor each, ``--rounds`` times, and prints the median wall time per update (and the
fastest round: on a shared machine the least disturbed). ``--clock cpu`` times this
thread's CPU time instead of the wall clock (less moved by other jobs on a shared
machine). ``--signals loss_grad`` feeds only loss, step and grad_norm (what most logs give
``anet-lite analyze``), ``--signals loss`` only loss and step. Goal (every signal): at most
15 us. To compare two versions of the code, run it with each on PYTHONPATH in turns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "detection"))

import score  # noqa: E402

from anet_lite import Monitor  # noqa: E402


def _rows(n_runs: int):
    man = score.load_manifest(score.CACHE)
    runs = man.get("runs", man)
    runs = list(runs.values()) if isinstance(runs, dict) else runs
    out = []
    for meta in sorted(runs, key=lambda m: m["run_id"])[:n_runs]:
        out.append(score.load_run(os.path.join(score.CACHE, meta["file"])))
    return out


_FIELDS = ("grad_norm", "update_norm", "noise", "lr", "time", "param_norm", "processivity")
_SIGNALS = {"all": _FIELDS, "loss_grad": ("grad_norm",), "loss": ()}  # fed besides loss, step


def _feed_rows(all_rows, signals: str):
    """Each run's rows as (loss, step, *_FIELDS) tuples, None where a signal is not fed
    (as ``anet-lite analyze`` passes an absent column), built before any timing."""
    keep = _SIGNALS[signals]
    return [
        [(r["loss"], r["step"], *(r[k] if k in keep else None for k in _FIELDS)) for r in rows]
        for rows in all_rows
    ]


def _one_round(all_feeds, clock=time.perf_counter) -> float:
    n, spent = 0, 0.0
    for feed in all_feeds:
        m = Monitor()
        upd = m.update
        t0 = clock()
        for loss, step, g, u, noise, lr, t, p, c in feed:
            upd(
                loss,
                step=step,
                grad_norm=g,
                step_norm=u,
                noise=noise,
                lr=lr,
                time=t,
                param_norm=p,
                processivity=c,
            )
        spent += clock() - t0
        n += len(feed)
    return 1e6 * spent / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--signals", choices=tuple(_SIGNALS), default="all")
    a = ap.parse_args()
    rows = _rows(a.runs)
    feeds = _feed_rows(rows, a.signals)
    clock = time.perf_counter if a.clock == "wall" else time.thread_time
    us = [_one_round(feeds, clock) for _ in range(a.rounds)]
    print(
        f"{statistics.median(us):.1f} us ({a.clock}) per update ({a.signals} signals), median "
        f"(fastest "
        f"{min(us):.1f}; rounds: {', '.join(f'{u:.1f}' for u in us)}; "
        f"{sum(len(r) for r in rows)} updates per round)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
