"""bench/detection/lr_grid.py: peak-lr grids, their labels and their score."""

from __future__ import annotations

import math

import collapse
import lr_grid
import pytest

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


def test_the_schedule_warms_up_then_decays_to_a_tenth():
    peak = 0.5
    assert lr_grid.lr_at(0, peak) == pytest.approx(peak / lr_grid.WARMUP)
    assert lr_grid.lr_at(lr_grid.WARMUP - 1, peak) == pytest.approx(peak)
    assert lr_grid.lr_at(lr_grid.WARMUP, peak) == pytest.approx(peak)
    assert lr_grid.lr_at(lr_grid.STEPS, peak) == pytest.approx(0.1 * peak)
    lrs = [lr_grid.lr_at(t, peak) for t in range(lr_grid.WARMUP, lr_grid.STEPS)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_a_good_lr_learns_quietly_and_a_far_too_high_one_collapses_and_alarms():
    good = lr_grid.train("mlp", "adamw", 10, 0)
    loss = [r["loss"] for r in good["rows"]]
    assert len(loss) == lr_grid.STEPS and loss[-1] < 0.1 * loss[0]
    assert collapse.collapse_step(loss, 0, chance_loss=good["chance"]) is None
    assert lr_grid.alarms(good["rows"], "all") == []
    assert lr_grid.alarms(good["rows"], "loss") == []
    bad = lr_grid.train("mlp", "sgd", 100, 1)
    loss = [r["loss"] for r in bad["rows"]]
    assert bad["chance"] == pytest.approx(math.log(10))
    c = collapse.collapse_step(loss, 0, chance_loss=bad["chance"])
    assert c is not None and c < lr_grid.WARMUP
    assert lr_grid.alarms(bad["rows"], "all")  # flagged (its first alarm: near c)


def test_score_counts_collapses_by_the_benchmarks_rule_and_splits_the_others():
    def run(collapse_step, first, well=False):
        al = [] if first is None else [first, first + 1]
        return {
            "collapse": collapse_step,
            "well": well,
            "alarms": {"all": al, "loss": [], "sparse": al},
        }

    runs = [
        run(40, 10),  # caught, slow (collapse >= 20 steps in)
        run(8, 8),  # late: an alarm at the collapse step is not before it
        run(30, None),  # never
        run(None, None, well=True),
        run(None, 5, well=True),  # a false alarm
        run(None, 50),  # trained poorly, alarmed
    ]
    s = lr_grid.score(runs, "all")
    assert (s["caught"], s["late"], s["never"], s["collapsed"]) == (1, 1, 1, 3)
    assert (s["slow_caught"], s["slow"]) == (1, 2)
    assert (s["well_alarm"], s["well"], s["poor_alarm"], s["poor"]) == (1, 2, 1, 1)
    s = lr_grid.score(runs, "loss")
    assert (s["caught"], s["never"], s["well_alarm"]) == (0, 3, 0)
    text = lr_grid.report(
        [dict(r, model="mlp", opt="sgd", mult=1, seed=0, final=0.1) for r in runs]
    )
    assert "| every signal | 1 / 1 / 1 of 3 | 1 / 2 | 1 / 2 | 1 / 1 |" in text
