"""How often θ falls below the seed's 0.6 line: same process vs. different process.

    python bench/theta_calibration.py [--pairs 2000] [--length 64]

Prints, for anet_lite's θ and the seed's naive periodogram θ (tests/naive_seed.py), the
share of pairs of independent draws below 0.6: same process (false alarms) and white
noise vs. AR(1) (detections).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import naive_seed

from anet_lite import theta_consistency


def ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.standard_normal(n + 200)
    x = np.zeros_like(e)
    for i in range(1, len(e)):
        x[i] = phi * x[i - 1] + e[i]
    return x[200:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = args.length
    cases = {
        "same: white vs white": (lambda r: r.standard_normal(n), lambda r: r.standard_normal(n)),
        "same: AR(0.9) vs AR(0.9)": (lambda r: ar1(n, 0.9, r), lambda r: ar1(n, 0.9, r)),
        "same: random walk vs random walk": (
            lambda r: np.cumsum(r.standard_normal(n)),
            lambda r: np.cumsum(r.standard_normal(n)),
        ),
        "diff: white vs AR(0.9)": (lambda r: r.standard_normal(n), lambda r: ar1(n, 0.9, r)),
        "diff: white vs AR(0.5)": (lambda r: r.standard_normal(n), lambda r: ar1(n, 0.5, r)),
    }
    print(f"share of {args.pairs} pairs of {n}-sample draws with θ < 0.6 (beta = 3)\n")
    print("| pair | anet_lite θ | seed's naive θ |")
    print("| --- | ---: | ---: |")
    for label, (fa, fb) in cases.items():
        rng = np.random.default_rng(args.seed)
        pairs = [(fa(rng), fb(rng)) for _ in range(args.pairs)]
        ours = np.mean([theta_consistency(a, b) < 0.6 for a, b in pairs])
        naive = np.mean([naive_seed.theta_consistency(a, b) < 0.6 for a, b in pairs])
        print(f"| {label} | {ours:.1%} | {naive:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
