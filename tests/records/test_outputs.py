"""RunLog: stable columns, one flushed line per step, every complete line parses after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from anet_lite import Monitor, RunLog
from anet_lite.records.outputs import COLUMNS


def test_csv_and_jsonl_lines(tmp_path):
    log = RunLog(tmp_path / "m.csv", tmp_path / "m.jsonl")
    m = Monitor(run_log=log)
    for i in range(100):
        m.update(1.0 + 0.01 * (i % 3), grad_norm=1.0, lr=1e-3)
    m.update(float("nan"))
    log.close()
    rows = list(csv.DictReader((tmp_path / "m.csv").read_text().splitlines()))
    assert tuple(rows[0].keys()) == COLUMNS and len(rows) == 101
    assert rows[-1]["status"] == "collapsed" and rows[-1]["loss"] == "nan"
    recs = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(recs) == 101 and recs[-1]["evidence"]["loss"] == "nan"  # strict JSON


def test_reopening_appends_without_a_second_header(tmp_path):
    for _ in range(2):
        with RunLog(tmp_path / "m.csv") as log:
            Monitor(run_log=log).update(1.0)
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and len(lines) == 3


def test_needs_a_path():
    with pytest.raises(ValueError, match="csv"):
        RunLog()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_every_complete_line_parses_after_kill_9(tmp_path):
    code = f"""
import itertools, math
from anet_lite import Monitor, RunLog
m = Monitor(run_log=RunLog({str(tmp_path / "m.csv")!r}, {str(tmp_path / "m.jsonl")!r}))
for i in itertools.count():
    m.update(1.0 + math.sin(i) * 0.01, grad_norm=1.0, lr=1e-3, step=i)
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while time.time() < deadline:
        p = tmp_path / "m.jsonl"
        if p.exists() and p.stat().st_size > 200_000:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for name in ("m.csv", "m.jsonl"):
        text = (tmp_path / name).read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the last piece may be torn; everything before it is whole
        assert len(complete) > 100
        if name == "m.jsonl":
            steps = [json.loads(line)["step"] for line in complete]
        else:
            rows = list(csv.reader(complete))
            assert all(len(r) == len(COLUMNS) for r in rows)
            steps = [int(r[0]) for r in rows[1:]]
        assert steps == list(range(len(steps)))


# ---- csv_chunk: the chunked formatter of `anet-lite analyze` ---------------------------


def _reference_row(snap) -> str:
    """RunLog's cells, with the DERIVED columns as %.6g (the documented difference)."""
    from anet_lite.records.outputs import _FROM_SNAP, DERIVED, _cell, _cell6

    ev = snap.evidence
    cells = []
    for c in COLUMNS:
        v = getattr(snap, c) if c in _FROM_SNAP else ev.get(c)
        cells.append((_cell6 if c in DERIVED else _cell)(v))
    return ",".join(cells) + "\n"


def _odd_snapshots(rng):
    """Snapshots with every kind of cell: gaps, nan/inf/-0.0, bools, ints, numpy floats,
    strings that need quoting, constant and varying columns."""
    import numpy as np

    from anet_lite.verdict import Snapshot

    odd = [None, 0.0, -0.0, 1.0, float("nan"), float("inf"), -float("inf"), 1e300, 5e-324]
    out = []
    for i in range(600):
        ev = {"loss": float(rng.choice([1.5, 2.25, 1 / 3, -0.0])), "precursor_z": 0.0}
        if i % 3:
            ev["grad_norm"] = odd[i % len(odd)] if i % 7 == 0 else 0.1 * i
        if i % 50 == 0:
            ev["cause"] = ["non_finite", 'say "hi", then\nleave', "x,y"][i % 3]
        if i % 40 == 0:
            ev["event"] = "lr_decay"
        if i % 90 == 0:
            ev["spike"] = True
        if i % 11 == 0:
            ev["loss_dev"] = np.float64(rng.gauss(0.0, 1.0))
        if i % 13 == 0:
            ev["grad_ratio"] = 7  # an int
        if i % 17 == 0:
            ev["update_ratio"] = odd[i % len(odd)]
        out.append(
            Snapshot(
                theta=1.0 if i < 300 else ("odd" if i == 450 else odd[i % len(odd)] or 0.5),
                sdot=rng.gauss(0.0, 1.0),
                proc=0.0,
                f_total=-0.0 if i % 2 else 0.0,
                precursor=bool(i % 97 == 0),
                zscore=float(i),
                step=i if i % 101 else None,
                status=["healthy", "warming_up", "drifting", "collapsed"][i % 4 if i > 200 else 0],
                alert=bool(i % 61 == 0),
                evidence=ev,
            )
        )
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 600])
def test_csv_chunk_matches_cell_by_cell(size):
    import random

    from anet_lite.records.outputs import csv_chunk, snapshot_columns

    snaps = _odd_snapshots(random.Random(size))
    for lo in range(0, len(snaps), size):
        part = snaps[lo : lo + size]
        got = csv_chunk(snapshot_columns(part), len(part))
        assert got == "".join(_reference_row(s) for s in part), lo
        rows = list(csv.reader(got.splitlines(keepends=True)))
        assert all(len(r) == len(COLUMNS) for r in rows)


def test_csv_chunk_equals_runlog_outside_derived_columns(tmp_path):
    """Everything but the DERIVED statistics is exactly RunLog's cell (inputs: full repr)."""
    import random

    from anet_lite.records.outputs import DERIVED, csv_chunk, snapshot_columns

    snaps = _odd_snapshots(random.Random(1))
    with RunLog(tmp_path / "m.csv") as rl:
        for s in snaps:
            rl.write(s)
    want = list(csv.reader((tmp_path / "m.csv").read_text().splitlines(True)))[1:]
    got = list(csv.reader(csv_chunk(snapshot_columns(snaps), len(snaps)).splitlines(True)))
    keep = [i for i, c in enumerate(COLUMNS) if c not in DERIVED]
    assert [[r[i] for i in keep] for r in got] == [[r[i] for i in keep] for r in want]
