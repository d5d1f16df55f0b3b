"""Microseconds per ``Monitor.update`` with every signal, on recorded training runs.

    python bench/monitor_update_cost.py [--runs 40] [--rounds 3]

Replays the first ``--runs`` runs of the detection benchmark's cache (real CPU training
runs: loss, grad_norm, update_norm, param_norm, processivity, noise, lr, time) through a
fresh Monitor each, ``--rounds`` times, and prints the median wall time per update (and the
fastest round: on a shared machine the least disturbed). Goal: at most 15 us. To compare
two versions of the code, run it with each on PYTHONPATH in turns.
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


def _one_round(all_rows) -> float:
    n, spent = 0, 0.0
    for rows in all_rows:
        m = Monitor()
        upd = m.update
        t0 = time.perf_counter()
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
        spent += time.perf_counter() - t0
        n += len(rows)
    return 1e6 * spent / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rows = _rows(a.runs)
    us = [_one_round(rows) for _ in range(a.rounds)]
    print(
        f"{statistics.median(us):.1f} us per update, median (fastest {min(us):.1f}; rounds: "
        f"{', '.join(f'{u:.1f}' for u in us)}; {sum(len(r) for r in rows)} updates per round)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
