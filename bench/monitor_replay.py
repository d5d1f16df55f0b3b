"""Replay recorded runs through ``Monitor.update`` and dump every Snapshot (a regression check).

    python bench/monitor_replay.py --out /tmp/replay.jsonl.gz     # prints one digest per mode

Feeds the runs of the detection benchmark's caches (``bench/detection/cache`` and
``cache_mech``: real CPU training runs) and the public real logs (``../shared/data``) through
fresh Monitors in several modes, and writes every snapshot (step, status, alert, the seed's
numbers, evidence in its order, and the words of ``explain`` for alerts), each action of
``decide``, and each run's final ``state_dict()`` as one JSON line. Floats are written
with ``repr``: two dumps are equal only if every number is bit-identical. Modes:

* ``all``: every signal and ``time``, the run's events declared with ``mark``, ``decide``
  on every step, and the state saved and loaded into a fresh Monitor at mid-run;
* ``notime``: every signal, no time, no marks (as ``bench/detection/score.py`` feeds it);
* ``loss``: loss, step and time only (what ``anet-lite analyze`` gets from most logs);
* ``declared``: every signal, ``Monitor(declared=True)``, events marked;
* ``real``: the real logs, loss and time.

To check that a change keeps behaviour, dump before and after and compare the files (or
the printed digests).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from typing import Any, Dict, Iterator, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "detection"))

import score  # noqa: E402

from anet_lite import Monitor  # noqa: E402

SIGNALS = ("grad_norm", "update_norm", "noise", "lr", "param_norm", "processivity")


def _feed(m: Monitor, r: Dict[str, Any], mode: str) -> Any:
    if mode in ("all", "declared") and r.get("event"):
        m.mark(r["event"])
    kw: Dict[str, Any] = {"step": r["step"]}
    if mode in ("all", "notime", "declared"):
        kw.update(
            grad_norm=r["grad_norm"],
            step_norm=r["update_norm"],
            noise=r["noise"],
            lr=r["lr"],
            param_norm=r["param_norm"],
            processivity=r["processivity"],
        )
    if mode in ("all", "loss", "real", "declared"):
        kw["time"] = r["time"]
    return m.update(r["loss"], **kw)


def _record(snap: Any, action: Any) -> Dict[str, Any]:
    d = snap.to_dict()
    if snap.alert:
        d["words"] = [snap.explain("en"), snap.explain("ja")]
    if action is not None:
        d["action"] = [action.kind, action.factor, action.reason, action.policy]
    return d


def replay_run(rows: List[Dict[str, Any]], mode: str) -> Iterator[Dict[str, Any]]:
    """Yield one record per step, then the final state."""
    m = Monitor(declared=(mode == "declared"))
    half = len(rows) // 2
    for i, r in enumerate(rows):
        if mode == "all" and i == half:  # continue from a saved state
            st = json.loads(json.dumps(m.state_dict(), allow_nan=False))
            m2 = Monitor()
            m2.load_state_dict(st)
            m = m2
        snap = _feed(m, r, mode)
        action = m.decide(snap) if mode == "all" else None
        yield _record(snap, action)
    yield {"state": m.state_dict()}


def _runs() -> Iterator[Any]:
    for cache in (score.CACHE, score.CACHE_MECH):
        for meta in score.load_manifest(cache)["runs"]:
            yield meta["run_id"], score.load_run(os.path.join(cache, meta["file"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="gzipped JSON lines to write")
    ap.add_argument("--every", type=int, default=3, help="notime/declared: every k-th run")
    a = ap.parse_args()
    digests = {k: hashlib.sha256() for k in ("all", "notime", "loss", "declared", "real")}
    n = 0
    with gzip.open(a.out, "wt") as fh:
        jobs: List[Any] = []
        for i, (rid, rows) in enumerate(_runs()):
            modes = ["all", "loss"] + (["notime", "declared"] if i % a.every == 0 else [])
            jobs += [(rid, rows, mode) for mode in modes]
        logs = score.load_real_logs(score.DEFAULT_REAL_LOGS)
        jobs += [(name, rows, "real") for name, rows in logs.items()]
        for rid, rows, mode in jobs:
            for rec in replay_run(rows, mode):
                line = json.dumps([rid, mode, rec]) + "\n"  # (key order kept: evidence order too)
                fh.write(line)
                digests[mode].update(line.encode())
                n += 1
    for k, h in digests.items():
        print(f"{k:9s} {h.hexdigest()}")
    print(f"{n} records in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
