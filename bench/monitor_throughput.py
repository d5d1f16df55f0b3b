"""Monitor updates per second vs. the seed's way (batch ``snapshot()`` over the window, per step).

    python bench/monitor_throughput.py [--steps 20000] [--windows 64,1024]

Both run in this process on the same stream with all signals (loss, grad_norm, step_norm,
noise, lr); the ratio is streaming / batch. Goal: >= 50,000 updates/s and >= 30x.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from anet_lite import Monitor, snapshot

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import naive_seed


def naive_snapshot(loss, g, s, noise, ref):
    """The seed README's loop body with the seed's naive formulas (for the seed-way ratio)."""
    theta = naive_seed.theta_consistency(noise, ref)
    sdot = naive_seed.entropy_rate(loss)
    proc = naive_seed.processivity(g, s)
    pre = naive_seed.two_second_precursor(loss, rate_hz=5)
    return theta, 0.7 * sdot + 0.3 * proc, pre


def stream(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = ((1.0 + 3.0 * np.exp(-t / 500.0)) * np.exp(0.05 * rng.standard_normal(n))).tolist()
    g = np.exp(0.3 * rng.standard_normal(n)).tolist()
    s = (1e-3 * np.exp(0.1 * rng.standard_normal(n))).tolist()
    noise = np.abs(rng.standard_normal(n)).tolist()
    return loss, g, s, noise


def run_monitor(window: int, data, reps: int = 3) -> float:
    loss, g, s, noise = data
    best = float("inf")
    for _ in range(reps):
        m = Monitor(window=window)
        upd = m.update
        t0 = time.perf_counter()
        for i in range(len(loss)):
            upd(loss[i], grad_norm=g[i], step_norm=s[i], noise=noise[i], lr=1e-3)
        best = min(best, time.perf_counter() - t0)
    return len(loss) / best


def run_batch(window: int, data, steps: int, fn=snapshot) -> float:
    loss, g, s, noise = data
    ref = noise[:window]
    t0 = time.perf_counter()
    for i in range(window, window + steps):
        lo = i - window
        fn(loss[lo:i], g[lo:i], s[lo:i], noise[lo:i], ref)
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch-steps", type=int, default=2000)
    ap.add_argument("--windows", default="64,1024")
    args = ap.parse_args(argv)
    print(
        "| window | Monitor updates/s | batch snapshot()/s | ratio | seed's naive loop/s | ratio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in (int(x) for x in args.windows.split(",")):
        data = stream(max(args.steps, w + args.batch_steps))
        mon = run_monitor(w, data)
        bat = run_batch(w, data, args.batch_steps)
        naive = run_batch(w, data, args.batch_steps, naive_snapshot)
        cells = [f"{mon:,.0f}", f"{bat:,.0f}", f"{mon / bat:.0f}x", f"{naive:,.0f}"]
        print(f"| {w} | " + " | ".join(cells) + f" | {mon / naive:.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
