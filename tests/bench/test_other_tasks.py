"""bench/detection/other_tasks.py: runs of tasks the benchmark does not have, and their score."""

from __future__ import annotations

import math

import collapse
import other_tasks
import pytest

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


def test_a_corrupted_regression_shard_is_a_collapse_the_monitor_flags_at_once():
    rows = other_tasks.train("diabetes", "sgd", 0, "shard")
    loss = [r["loss"] for r in rows]
    assert len(rows) == other_tasks.STEPS and all(math.isfinite(x) for x in loss)
    onset = other_tasks.ONSET
    assert loss[onset] > 10 * max(loss[onset - 20 : onset])  # targets x 8 + 3
    assert collapse.collapse_step(loss, onset) == onset + 1
    alarms = other_tasks.alarms(rows, loss_only=True)
    assert alarms and onset <= alarms[0] <= onset + 2


def test_healthy_runs_learn_and_the_faults_do_what_they_say():
    healthy = other_tasks.train("wine", "adam", 1, "none")
    assert healthy[-1]["loss"] < 0.1 * healthy[0]["loss"]
    jump = other_tasks.train("wine", "adam", 1, "lr_jump")
    assert jump[other_tasks.ONSET]["lr"] == pytest.approx(30 * jump[0]["lr"])
    wd = other_tasks.train("wine", "adam", 1, "wd_sign")
    assert wd[-1]["param_norm"] > 2 * healthy[-1]["param_norm"]  # weights pushed outwards


def test_score_counts_first_alarms_at_or_after_the_onset():
    on = other_tasks.ONSET
    runs = [
        {"variant": "none", "collapse": None, "alarms": [], "alarms_lo": [5]},
        {"variant": "batch_cut", "collapse": None, "alarms": [260], "alarms_lo": []},
        {"variant": "shard", "collapse": on + 1, "alarms": [on], "alarms_lo": [on + 2]},
        {"variant": "lr_jump", "collapse": on + 9, "alarms": [3, on + 9], "alarms_lo": []},
        {"variant": "wd_sign", "collapse": None, "alarms": [on], "alarms_lo": []},
    ]
    s = other_tasks.score(runs, loss_only=False)
    assert (s["caught"], s["late"], s["never"], s["collapsed"]) == (1, 1, 0, 2)
    assert (s["pre"], s["h_alarm"], s["healthy"]) == (1, 1, 2)
    s = other_tasks.score(runs, loss_only=True)
    assert (s["caught"], s["late"], s["never"], s["h_alarm"]) == (0, 1, 1, 1)
