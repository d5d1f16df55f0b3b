"""Every baseline at anet-lite's own healthy-alarm rate: its best recall when it may alarm
on no more healthy runs than the Monitor does.

    python bench/detection/matched.py --tune CACHE[:SPLIT] ... --test CACHE ...

The issue's goal is "strictly better than every baseline on recall at an equal or lower
healthy-alarm rate". At their published defaults most baselines alarm on most healthy
runs, so comparing recall there says little. This script gives each baseline the same
chance the Monitor had: its sensitivity knob is swept over a grid on the ``--tune``
caches (the Monitor's tuning pool), and the setting with the highest recall whose share
of healthy runs alarmed is at most the Monitor's own share on those caches is kept. That
setting is then scored once on the ``--test`` caches, next to the Monitor.

A second table does the same for ``Monitor(declared=True)`` with the loop's declarations
passed (the baselines cannot use them; they see the same columns). Each table also gives,
for each baseline, the setting picked on the test caches themselves (an oracle in the
baselines' favour) at the Monitor's healthy-alarm share there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from typing import Any, Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import anet_detector
import baselines as B  # noqa: N812
import score

# Each baseline's sensitivity knob, starting at its published default.
GRIDS: Dict[str, List[Tuple[str, Callable[[], Any]]]] = {
    "seed_loop": [
        (f"z={z}, theta={th}", partial(B.SeedLoop, z=z, theta=th))
        for z in (2.5, 4.0, 6.0, 10.0, 20.0, 40.0)
        for th in (0.6, 0.3, 0.1, 0.0)
    ],
    "loss_threshold": [
        (f"factor={f}", partial(B.LossThreshold, factor=f)) for f in (2, 3, 5, 10, 30, 100)
    ],
    "zclip": [
        (f"z_thresh={z}", partial(B.ZClip, z_thresh=z)) for z in (2.5, 4, 6, 10, 20, 50, 100)
    ],
    "page_hinkley_loss": [
        (f"threshold={t}", partial(B._page_hinkley, threshold=t))
        for t in (50, 100, 300, 1000, 3000)
    ],
    "page_hinkley_up": [
        (f"threshold={t}", partial(B._page_hinkley, "page_hinkley_up", mode="up", threshold=t))
        for t in (50, 20, 10, 100, 300)
    ],
    "adwin_log_gradnorm": [
        (f"delta={d}", partial(B._adwin, delta=d)) for d in (0.002, 1e-4, 1e-6, 1e-8, 1e-12)
    ],
    "olmo_spike_loss": [
        (f"k={k}", partial(B.OlmoSpike, "loss", k=k)) for k in (7, 10, 15, 25, 50, 100)
    ],
    "olmo_spike_gradnorm": [
        (f"k={k}", partial(B.OlmoSpike, "grad_norm", k=k)) for k in (7, 10, 15, 25, 50, 100)
    ],
    "megatron_10x": [
        (f"factor={f}", partial(B.Megatron10x, factor=f)) for f in (10, 5, 3, 2, 1.5, 1.2)
    ],
    "lightning_spike": [
        (f"rtol={r}", partial(B.LightningSpike, rtol=r)) for r in (2, 3, 5, 10, 30, 100)
    ],
}


def _totals(dets: Dict[str, Callable[[], Any]], spec: str, declared: bool) -> Dict:
    """Per detector: [caught, collapsed, healthy runs alarmed, healthy runs] on one cache."""
    cache, split = score.cache_spec(spec)
    res = score.evaluate(dets, split, cache, None, declared)
    return {
        r["detector"]: [
            r["caught"],
            r["n_collapsed"],
            round(r["healthy_alarm_share"] * r["n_healthy"]),
            r["n_healthy"],
        ]
        for r in res["rows"]
    }


def _sum(parts: Sequence[Dict[str, List[int]]]) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = [a + b for a, b in zip(out.get(k, [0, 0, 0, 0]), v)]
    return out


def _best(totals: Dict[str, List[int]], base: str, limit: float) -> Any:
    """The grid key of ``base`` with the most catches among those alarming on at most
    ``limit`` of the healthy runs (ties: fewer healthy runs alarmed), or None."""
    ok = [(k, t) for k, t in totals.items() if k.startswith(base + "|") and t[2] / t[3] <= limit]
    return max(ok, key=lambda kt: (kt[1][0], -kt[1][2]))[0] if ok else None


def _fmt(t: Any) -> str:
    return f"{t[0] / t[1]:.2f} ({t[0]}/{t[1]}) | {t[2] / t[3]:.3f} ({t[2]}/{t[3]})" if t else "| "


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", nargs="+", required=True, help="CACHE[:SPLIT] to pick settings on")
    ap.add_argument("--test", nargs="+", required=True, help="CACHE[:SPLIT] to report on")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    grid = {f"{b}|{label}": fac for b, opts in GRIDS.items() for label, fac in opts}
    mons = {"anet": anet_detector.AnetMonitor, "anet_declared": anet_detector.AnetMonitorDeclared}

    def run(specs: Sequence[str]) -> Dict[str, List[int]]:
        # the baselines never read events: score them once; the declared Monitor with them
        parts = [_totals({"anet": mons["anet"], **grid}, s, False) for s in specs]
        parts += [_totals({"anet_declared": mons["anet_declared"]}, s, True) for s in specs]
        return _sum(parts)

    tune, test = run(a.tune), run(a.test)
    out: Dict[str, Any] = {}
    for mode in mons:
        m, mt = tune[mode], test[mode]
        rows = [{"detector": "anet-lite", "setting": mode, "tune": m, "test": mt}]
        for b in GRIDS:
            k = _best(tune, b, m[2] / m[3])  # picked on the tuning caches
            o = _best(test, b, mt[2] / mt[3])  # picked on the test caches themselves
            rows.append(
                {
                    "detector": b,
                    "setting": k and k.split("|", 1)[1],
                    "tune": tune.get(k),
                    "test": test.get(k),
                    "oracle_setting": o and o.split("|", 1)[1],
                    "oracle_test": test.get(o),
                }
            )
        out[mode] = rows
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    for mode, rows in out.items():
        m = rows[0]["tune"]
        print(
            f"\n{mode}: on the tuning caches {m[0]}/{m[1]} caught, {m[2]}/{m[3]} healthy runs "
            f"alarmed ({m[2] / m[3]:.1%}), the most a baseline setting may alarm on.\n"
        )
        print(
            "| detector | setting (tuning caches) | test: recall | test: healthy alarmed "
            "| setting picked on test | its recall | its healthy alarmed |"
        )
        print("|---|---|---:|---:|---|---:|---:|")
        for r in rows:
            print(
                f"| {r['detector']} | {r['setting'] or 'none quiet enough'} | {_fmt(r['test'])} "
                f"| {r.get('oracle_setting') or '-'} | {_fmt(r.get('oracle_test'))} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
