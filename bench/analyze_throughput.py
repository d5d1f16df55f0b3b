"""Throughput of ``anet-lite analyze`` on a long CSV (a speed benchmark, not a detection test).

    python bench/analyze_throughput.py [--steps 1000000] [--batch-steps 5000] [--profile]
        [--clock wall|cpu]

Writes a CSV (step, loss, grad_norm) from a realistic synthetic curve (power-law decay with
multiplicative noise, a cosine lr schedule's effect is not simulated), times the whole
``main(["analyze", csv, "--out", tmp, "--quiet"])`` in this process (reading, Monitor,
metrics.csv + events.jsonl, report.html), and compares with the seed's way: the batch
``anet_lite.snapshot()`` over the last 64 values at every step, timed on --batch-steps steps
and extrapolated (said so in the output). Goal: 1,000,000 steps in at most 10 s.
``--profile`` also times the stages in one more pass that does what analyze does, with timers
(reading, Monitor.update, columns, CSV formatting, writing, report data, report.html; and
what --jsonl would add); ``--clock cpu`` times them in this thread's CPU time (steadier on a
shared machine).
"""

from __future__ import annotations

import argparse
import json
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


def profile(path: Path, out: Path, clock: str = "wall") -> None:
    """Where analyze's time goes, in one pass that does what analyze does, with timers.

    Reading and Monitor.update are timed per step (three clock calls per step, their
    own cost is shown); the chunk stages per chunk of CHUNK steps. --jsonl's extra cost is
    measured in the same pass (encoded, not counted in the analyze total).
    """
    import gc

    from anet_lite.readers import open_log
    from anet_lite.records import outputs
    from anet_lite.report.html import RunData, write_report
    from anet_lite.report.runfolder import CHUNK

    pc = time.perf_counter if clock == "wall" else time.thread_time  # (cpu: this thread's)
    tm: dict = dict.fromkeys(
        ("read", "monitor", "columns", "csv", "write", "report_data", "report", "jsonl"), 0.0
    )
    d = out / "profile"
    d.mkdir(exist_ok=True)
    m = Monitor()
    up = m.update
    data = RunData()
    enc = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    n = 0
    buf: list = []

    def chunk() -> None:
        t0 = pc()
        cols = outputs.snapshot_columns(buf)
        t1 = pc()
        text = outputs.csv_chunk(cols, len(buf))
        t2 = pc()
        f_csv.write(text)
        f_csv.flush()
        st, al, ev, sp = cols["status"], cols["alert"], cols["event"], cols["spike"]
        lines = [
            outputs.json_line(buf[i])
            for i in range(len(buf))
            if outputs.is_notable(st[i], al[i], ev[i], sp[i])
        ]
        if lines:
            f_ev.write("".join(lines))
            f_ev.flush()
        t3 = pc()
        data.add_many(buf, cols)
        t4 = pc()
        js = []
        for snap in buf:
            dd = snap.to_dict()
            try:
                js.append(enc(dd) + "\n")
            except ValueError:
                js.append(enc(outputs.json_safe(dd)) + "\n")
        f_js.write("".join(js))
        t5 = pc()
        tm["columns"] += t1 - t0
        tm["csv"] += t2 - t1
        tm["write"] += t3 - t2
        tm["report_data"] += t4 - t3
        tm["jsonl"] += t5 - t4

    gc.collect()
    gc.disable()  # as analyze's loop does (see anet_lite.cli.analyze._GC_SLACK)
    with (
        open(d / "metrics.csv", "w", encoding="utf-8", newline="") as f_csv,
        open(d / "events.jsonl", "w", encoding="utf-8", newline="") as f_ev,
        open(d / "metrics.jsonl", "w", encoding="utf-8", newline="") as f_js,
    ):
        t_all = pc()
        it = iter(open_log(path))
        while True:
            a = pc()
            try:
                step, loss, g, sn, noise, lr, t, w, proc = next(it)
            except StopIteration:
                break
            b = pc()
            buf.append(
                up(
                    loss,
                    step=step,
                    grad_norm=g,
                    step_norm=sn,
                    noise=noise,
                    lr=lr,
                    time=t,
                    param_norm=w,
                    processivity=proc,
                )
            )
            c = pc()
            tm["read"] += b - a
            tm["monitor"] += c - b
            n += 1
            if len(buf) >= CHUNK:
                chunk()
                buf = []
        if buf:
            chunk()
        t_loop = pc() - t_all
    gc.enable()
    t0 = pc()
    write_report(d, d / "report.html", data=data)
    tm["report"] = pc() - t0
    t0 = pc()
    for _ in range(100_000):
        pc()
    timer = (pc() - t0) / 100_000 * 3 * n  # three clock calls per step
    rows = [
        ("reading the CSV (readers.open_log)", tm["read"]),
        ("Monitor.update", tm["monitor"]),
        ("snapshots to columns (outputs.snapshot_columns)", tm["columns"]),
        ("formatting metrics.csv (outputs.csv_chunk)", tm["csv"]),
        ("writing metrics.csv + events.jsonl (flushed per chunk)", tm["write"]),
        ("report series / incidents (RunData.add_many)", tm["report_data"]),
        ("report.html (matplotlib SVG; once)", tm["report"]),
        ("profiling timers (3 clock calls per step)", timer),
    ]
    total = sum(v for _, v in rows)
    what = "wall-clock" if clock == "wall" else "CPU"
    print(f"\nprofile: one pass over {n:,} steps, {what} seconds (loop {t_loop:.2f} s)")
    print("| stage | seconds | µs / step |")
    print("| --- | ---: | ---: |")
    for label, v in rows:
        print(f"| {label} | {v:.2f} | {v / n * 1e6:.2f} |")
    print(f"| **sum (analyze)** | **{total:.2f}** | **{total / n * 1e6:.2f}** |")
    js = tm["jsonl"]
    print(f"| (--jsonl only: metrics.jsonl encoding) | {js:.2f} | {js / n * 1e6:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--batch-steps", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="--profile's clock")
    ap.add_argument("--goal-s", type=float, default=10.0)
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
        t0, c0 = time.perf_counter(), time.process_time()
        rc = cli_main(["analyze", str(csv_path), "--out", str(out), "--quiet"])
        el, cpu = time.perf_counter() - t0, time.process_time() - c0
        rate = args.steps / el
        print(f"anet-lite analyze (in-process main([...]), --quiet): exit {rc}")
        print(f"  {el:.2f} s for {args.steps:,} steps = {rate:,.0f} steps/s ({cpu:.2f} s of CPU)")
        per_batch = time_batch(csv_path, args.batch_steps)
        est = per_batch * args.steps
        print(
            f"batch snapshot() over the last {WINDOW} values per step: "
            f"{1.0 / per_batch:,.0f} steps/s, measured on {args.batch_steps:,} steps; "
            f"extrapolated to {args.steps:,} steps: {est:.0f} s (Monitor only, no files)"
        )
        print(f"ratio analyze / batch: {rate * per_batch:.1f}x faster")
        ok = el <= args.goal_s * args.steps / 1_000_000
        print(
            f"goal (1M steps <= {args.goal_s:.0f} s, scaled): {'met' if ok else 'MISSED'}",
            file=sys.stdout,
        )
        if args.profile:
            profile(csv_path, d, args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
