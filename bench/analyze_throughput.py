"""Throughput of ``anet-lite analyze`` on a long CSV (a speed benchmark, not a detection test).

    python bench/analyze_throughput.py [--steps 1000000] [--batch-steps 5000] [--profile]

Writes a CSV (step, loss, grad_norm) from a realistic synthetic curve (power-law decay with
multiplicative noise, a cosine lr schedule's effect is not simulated), times the whole
``main(["analyze", csv, "--out", tmp, "--quiet"])`` in this process (reading, Monitor,
metrics.csv + metrics.jsonl, report.html), and compares with the seed's way: the batch
``anet_lite.snapshot()`` over the last 64 values at every step, timed on --batch-steps steps
and extrapolated (said so in the output). Goal: 1,000,000 steps in under 20 s.
``--profile`` also times the stages separately (reading only; reading + Monitor; + RunLog).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from anet_lite import Monitor, snapshot
from anet_lite.cli import main as cli_main

WINDOW = 64


def write_csv(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    chunk = 200_000
    with open(path, "w", encoding="utf-8") as f:
        f.write("step,loss,grad_norm\n")
        for lo in range(0, n, chunk):
            t = np.arange(lo, min(n, lo + chunk), dtype=float)
            loss = (2.0 + 8.0 * (1.0 + t / 300.0) ** -0.6) * np.exp(
                0.04 * rng.standard_normal(len(t))
            )
            g = (0.5 + 3.0 * (1.0 + t / 500.0) ** -0.5) * np.exp(0.25 * rng.standard_normal(len(t)))
            f.writelines(f"{int(s)},{a:.5f},{b:.5f}\n" for s, a, b in zip(t, loss, g))


def time_batch(path: Path, steps: int) -> float:
    """Seconds per step of the batch snapshot() over the last WINDOW values (measured)."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, max_rows=steps + WINDOW)
    loss, g = data[:, 1].tolist(), data[:, 2].tolist()
    ref = g[:WINDOW]
    t0 = time.perf_counter()
    for i in range(WINDOW, WINDOW + steps):
        lo = i - WINDOW
        snapshot(loss[lo:i], g[lo:i], [], g[lo:i], ref)
    return (time.perf_counter() - t0) / steps


def profile(path: Path, out: Path) -> None:
    from anet_lite.cli import _FastRunLog
    from anet_lite.outputs import RunLog
    from anet_lite.readers import open_log
    from anet_lite.report.html import RunData, write_report

    def run(stage: str) -> float:
        t0 = time.process_time()  # CPU time: less sensitive to other load on the machine
        m = Monitor()
        data = RunData()
        if stage in ("runlog_buffered", "all"):
            rl = _FastRunLog(out / "p.csv", out / "p.jsonl")
        elif stage == "runlog_flush":
            rl = RunLog(out / "p.csv", out / "p.jsonl")
        else:
            rl = None
        for rec in open_log(path):
            if stage == "read":
                continue
            snap = m.update(rec.loss, step=rec.step, grad_norm=rec.grad_norm, time=rec.time)
            if rl is not None:
                rl.write(snap)
            if stage == "all":
                data.add(snap)
        if rl is not None:
            rl.close()
        if stage == "all":
            write_report(out, out / "p.html", data=data)
        for p in ("p.csv", "p.jsonl"):
            if (out / p).exists():
                (out / p).unlink()
        return time.process_time() - t0

    stages = ["read", "monitor", "runlog_buffered", "runlog_flush", "all"]
    prev = 0.0
    print("\n| stage (cumulative) | CPU seconds | added |")
    print("| --- | ---: | ---: |")
    for st in stages:
        s = run(st)
        added = s - prev
        print(f"| {st} | {s:.2f} | {added:+.2f} |")
        if st != "runlog_flush":
            prev = s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--batch-steps", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--goal-s", type=float, default=20.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        csv_path = d / "long.csv"
        t0 = time.perf_counter()
        write_csv(csv_path, args.steps)
        size = os.path.getsize(csv_path)
        print(
            f"wrote {args.steps:,} steps ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        out = d / "long.anet"
        t0 = time.perf_counter()
        rc = cli_main(["analyze", str(csv_path), "--out", str(out), "--quiet"])
        el = time.perf_counter() - t0
        rate = args.steps / el
        print(f"anet-lite analyze (in-process main([...]), --quiet): exit {rc}")
        print(f"  {el:.2f} s for {args.steps:,} steps = {rate:,.0f} steps/s")
        per_batch = time_batch(csv_path, args.batch_steps)
        est = per_batch * args.steps
        print(
            f"batch snapshot() over the last {WINDOW} values per step: "
            f"{1.0 / per_batch:,.0f} steps/s, measured on {args.batch_steps:,} steps; "
            f"extrapolated to {args.steps:,} steps: {est:.0f} s (Monitor only, no files)"
        )
        print(f"ratio analyze / batch: {rate * per_batch:.1f}x faster")
        ok = el < args.goal_s * args.steps / 1_000_000
        print(
            f"goal (1M steps < {args.goal_s:.0f} s, scaled): {'met' if ok else 'MISSED'}",
            file=sys.stdout,
        )
        if args.profile:
            profile(csv_path, d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
