"""A failing run log or tombstone log never hides an alert or stops an action (a full disk)."""

from __future__ import annotations

import errno
import logging
import math

from anet_lite import Monitor, TombstoneLog


class FullDisk:
    """A run log whose every write fails as a full disk does."""

    def __init__(self) -> None:
        self.calls = 0

    def write(self, snap) -> None:
        self.calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_never_silences_an_alert(caplog):
    sink = FullDisk()
    m = Monitor(run_log=sink)
    for t in range(150):
        m.update(2.3 * math.exp(-t / 50) + 0.1, step=t)
    with caplog.at_level(logging.ERROR, logger="anet_lite"):
        snaps = [m.update(math.nan, step=150 + k) for k in range(34)]
    assert all(s.alert and s.status == "collapsed" for s in snaps)
    assert all(m.decide(s).kind != "none" for s in snaps[:1])
    assert sink.calls == 184
    errors = [r for r in caplog.records if "run log could not be written" in r.getMessage()]
    assert len(errors) == 1  # reported once, loudly


def test_a_non_finite_loss_alerts_even_when_the_monitor_itself_fails(monkeypatch):
    m = Monitor()
    m.update(1.0)

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(m, "_update", boom)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = m.update(math.inf)
    assert s.alert and s.evidence["cause"] == "non_finite"


def test_a_tombstone_that_cannot_be_written_is_kept_and_written_later(tmp_path, monkeypatch):
    log = TombstoneLog(tmp_path / "t.jsonl")
    m = Monitor(tombstones=log)
    for t in range(150):
        m.update(2.3 * math.exp(-t / 50) + 0.1, step=t)
    real_append = log.append
    full = {"on": True}

    def append(*a, **k):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(*a, **k)

    monkeypatch.setattr(log, "append", append)
    action = m.decide(m.update(math.nan, step=150))
    assert action.kind == "skip_step"  # the action is taken although nothing was written
    assert not (tmp_path / "t.jsonl").exists() or (tmp_path / "t.jsonl").read_text() == ""
    full["on"] = False
    m.decide(m.update(math.nan, step=151))
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"scope":{"step":150}' in lines[0]


def test_the_monitor_state_is_strict_json_and_still_round_trips():
    import json

    m = Monitor()
    for t in range(200):
        m.update(2.3 * math.exp(-t / 50) + 0.1, step=t, grad_norm=1.0, lr=1e-3)
    m.update(math.nan, step=200)
    text = json.dumps(m.state_dict(), allow_nan=False)  # raised on NaN / Infinity before
    twin = Monitor()
    twin.load_state_dict(json.loads(text))
    a = m.update(0.2, step=201, grad_norm=1.0, lr=1e-3)
    b = twin.update(0.2, step=201, grad_norm=1.0, lr=1e-3)
    assert a.to_dict() == b.to_dict() or json.dumps(a.to_dict(), default=str) == json.dumps(
        b.to_dict(), default=str
    )
