"""``anet-lite watch``: follow a log that another process is writing, alert as it happens.

The writer processes train a real model (softmax regression on scikit-learn's digits, in
NumPy) and append one row per step, flushed; the faults are the project's usual ones (an
lr x100 schedule bug, then a non-finite loss)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from repo_paths import SRC

from anet_lite.cli import main
from anet_lite.cli.watch import _Follower
from anet_lite.readers import LogFormatError

pytest.importorskip("sklearn")

_TRAIN = textwrap.dedent(
    """
    import math, sys, time
    import numpy as np
    from sklearn.datasets import load_digits

    def steps(n, lr_bug_at=None, nan_at=None, seed=0):
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        rng = np.random.default_rng(seed)
        W = np.zeros((64, 10))
        for step in range(1, n + 1):
            i = rng.integers(0, len(X), 32)
            z = X[i] @ W
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            loss = float(-np.log(p[np.arange(32), y[i]] + 1e-12).mean())
            p[np.arange(32), y[i]] -= 1
            g = X[i].T @ p / 32
            lr = 0.5 * (100.0 if lr_bug_at and step >= lr_bug_at else 1.0)
            if nan_at and step >= nan_at:
                loss = float("nan")
            yield step, loss, float(np.linalg.norm(g)), lr
            W -= lr * g
    """
)

_CSV_WRITER = _TRAIN + textwrap.dedent(
    """
    with open(sys.argv[1], "w", buffering=1) as f:
        f.write("step,loss,grad_norm,lr\\n")
        time.sleep(0.5)  # the watch starts on a file with a header only
        for step, loss, g, lr in steps(260, lr_bug_at=150, nan_at=200):
            f.write(f"{step},{loss},{g},{lr}\\n")
            time.sleep(0.01)
    """
)

_TB_WRITER = _TRAIN + textwrap.dedent(
    """
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(sys.argv[1])
    for step, loss, g, lr in steps(200):
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/grad_norm", g, step)
        w.add_scalar("train/lr", lr, step)
        w.flush()
        time.sleep(0.01)
    w.close()
    """
)

_EXEC = textwrap.dedent(
    """
    import json, os, sys
    keys = ("ANET_RUN", "ANET_STEP", "ANET_CAUSE", "ANET_STATUS", "ANET_EXPLANATION")
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({k: os.environ[k] for k in keys}) + "\\n")
    """
)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(SRC)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _watch(args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "anet_lite", "watch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _start_writer(tmp_path, code, target):
    script = tmp_path / "writer.py"
    script.write_text(code)
    return subprocess.Popen([sys.executable, str(script), str(target)], env=_env())


def _wait_for(cond, seconds=60.0):
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "the writer did not start"
        time.sleep(0.05)


def test_watch_follows_a_csv_another_process_appends_to(tmp_path):
    log = tmp_path / "train.csv"
    writer = _start_writer(tmp_path, _CSV_WRITER, log)
    try:
        _wait_for(lambda: log.exists() and log.stat().st_size > 0)
        rows_at_start = log.read_text().count("\n")
        hook = tmp_path / "hook.py"
        hook.write_text(_EXEC)
        fired = tmp_path / "fired.jsonl"
        cmd = f"{sys.executable} {hook} '{fired}'"
        proc = _watch([str(log), "--interval", "0.1", "--idle-timeout", "60", "--exec", cmd])
    finally:
        writer.wait(timeout=120)
    assert rows_at_start < 50  # the file grew while it was watched
    assert proc.returncode == 1, proc.stderr
    alerts = [ln for ln in proc.stdout.splitlines() if ln.startswith("ALERT step ")]
    first = int(alerts[0].split()[2].rstrip(":"))
    assert 150 <= first <= 152 and "learning rate" in alerts[0]  # the lr bug, as it happened
    assert "COLLAPSED at step 200" in proc.stdout  # it stopped at the NaN, not at the end
    calls = [json.loads(ln) for ln in fired.read_text().splitlines()]
    assert len(calls) == len(alerts) >= 2
    assert calls[0]["ANET_RUN"] == "train" and calls[0]["ANET_STEP"] == str(first)
    assert calls[-1] == {
        "ANET_RUN": "train",
        "ANET_STEP": "200",
        "ANET_CAUSE": "non_finite",
        "ANET_STATUS": "collapsed",
        "ANET_EXPLANATION": calls[-1]["ANET_EXPLANATION"],
    }
    out = tmp_path / "train.anet"
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 201))  # every step once, in order, up to the collapse
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stopped_at_collapse"] is True and meta["last_step"] == 200
    assert (out / "report.html").stat().st_size > 0


def test_watch_follows_a_tensorboard_folder_being_written(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs"
    writer = _start_writer(tmp_path, _TB_WRITER, runs)
    try:
        _wait_for(lambda: runs.exists() and any(runs.iterdir()))
        _wait_for(lambda: sum(f.stat().st_size for f in runs.iterdir()) > 200)
        writing = writer.poll() is None
        proc = _watch(
            [str(runs), "--format", "tensorboard", "--interval", "0.2", "--idle-timeout", "5"]
        )
    finally:
        writer.wait(timeout=120)
    assert writing  # the writer was still at work when the watch started
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a healthy run: no alert
    assert "watched 200 steps (tensorboard)" in proc.stdout
    meta = json.loads((tmp_path / "runs.anet" / "meta.json").read_text())
    assert meta["steps"] == 200 and meta["last_step"] == 200 and meta["alerts"] == 0


def test_a_bad_line_appended_later_is_named_by_its_line_in_the_file(tmp_path):
    log = tmp_path / "m.csv"
    log.write_text("step,loss\n1,1.0\n2,0.9\n3,0.8\n4,0.7")  # line 5 still being written
    f = _Follower(log, "auto", {})
    try:
        assert [r.step for r in f.poll()] == [1, 2, 3]
        with open(log, "a") as fh:
            fh.write("\n5,0.6\n6,abc\n")
        with pytest.raises(LogFormatError) as err:
            list(f.poll())
    finally:
        f.close()
    assert err.value.line == 7 and err.value.file == str(log)


def test_watch_usage_errors_exit_2(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    log = tmp_path / "m.csv"
    log.write_text("step,loss\n1,1.0\n")
    assert main(["watch", str(log), "--exec", "  "]) == 2
    assert "--exec: empty command" in capsys.readouterr().err
    assert main(["watch", str(log), "--interval", "0"]) == 2


def test_jsonl_lines_are_read_once_each_and_only_when_complete(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    f = _Follower(log, "auto", {})
    try:
        assert f.format == "jsonl"
        assert [(r.step, r.loss) for r in f.poll()] == [(1, 1.0), (2, 0.9)]
        assert list(f.poll()) == []  # nothing new and complete
        with open(log, "a") as fh:
            fh.write('ss": 0.8}\n{"step": 4, "loss": 0.7}\n')
        assert [(r.step, r.loss) for r in f.poll()] == [(3, 0.8), (4, 0.7)]
        log.write_text('{"step": 1, "loss": 2.0}\n')  # rewritten: read from its start again
        assert [(r.step, r.loss) for r in f.poll()] == [(1, 2.0)]
    finally:
        f.close()
