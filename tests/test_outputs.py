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
from anet_lite.outputs import COLUMNS


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
