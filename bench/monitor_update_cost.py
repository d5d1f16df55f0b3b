"""Microseconds per ``Monitor.update`` with every signal, on recorded training runs.

    python bench/monitor_update_cost.py [--runs 40] [--rounds 3] [--clock wall|cpu]

Replays the first ``--runs`` runs of the detection benchmark's cache (real CPU training
runs: loss, grad_norm, update_norm, param_norm, processivity, noise, lr, time) through a
fresh Monitor each, ``--rounds`` times, and prints the median wall time per update (and the
fastest round: on a shared machine the least disturbed). ``--clock cpu`` times this
thread's CPU time instead of the wall clock (less moved by other jobs on a shared
machine). Goal: at most 15 us. To compare two versions of the code, run it with each on
PYTHONPATH in turns.
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


def _one_round(all_rows, clock=time.perf_counter) -> float:
    n, spent = 0, 0.0
    for rows in all_rows:
        m = Monitor()
        upd = m.update
        t0 = clock()
        for r in rows:
            upd(
                r["loss"],
                step=r["step"],
                grad_norm=r["grad_norm"],
                step_norm=r["update_norm"],
                noise=r["noise"],
                lr=r["lr"],
                time=r["time"],
                param_norm=r["param_norm"],
                processivity=r["processivity"],
            )
        spent += clock() - t0
        n += len(rows)
    return 1e6 * spent / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    a = ap.parse_args()
    rows = _rows(a.runs)
    clock = time.perf_counter if a.clock == "wall" else time.thread_time
    us = [_one_round(rows, clock) for _ in range(a.rounds)]
    print(
        f"{statistics.median(us):.1f} us ({a.clock}) per update, median (fastest "
        f"{min(us):.1f}; rounds: {', '.join(f'{u:.1f}' for u in us)}; "
        f"{sum(len(r) for r in rows)} updates per round)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
