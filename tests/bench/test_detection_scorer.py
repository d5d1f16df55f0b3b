"""Unit tests for the detection benchmark's scorer, collapse rule and baselines.

Hand-made runs only: no torch, no cached data needed.
"""

from __future__ import annotations

import math

# (bench/detection is on sys.path: tests/conftest.py)
import baselines
import collapse
import matched
import pytest
import score
import separability

NAN = float("nan")


def fault_meta(onset=100, collapse_step=150, n=200, label="collapsed"):
    return {
        "run_id": "r",
        "kind": "lr_jump",
        "label": label,
        "onset": onset,
        "collapse_step": collapse_step if label == "collapsed" else None,
        "n_steps": n,
        "benign_event_steps": [],
    }


def healthy_meta(events=(200,), n=400):
    return {
        "run_id": "h",
        "kind": "healthy",
        "label": "healthy",
        "onset": None,
        "collapse_step": None,
        "n_steps": n,
        "benign_event_steps": list(events),
    }


# ----------------------------------------------------------------------------- score_run
def test_caught_run_gives_lead_in_steps_and_seconds():
    times = [0.01 * i for i in range(200)]
    s = score.score_run([120, 130, 160], fault_meta(), times)
    assert s["outcome"] == "caught"
    assert s["first_alarm"] == 120
    assert s["lead"] == 30
    assert s["lead_s"] == pytest.approx(0.30)
    assert s["possible_lead"] == 50
    assert not s["false_alarm_pre_onset"]


def test_late_and_missed():
    assert score.score_run([150, 170], fault_meta())["outcome"] == "late"
    assert score.score_run([150], fault_meta())["delay"] == 0
    assert score.score_run([], fault_meta())["outcome"] == "missed"


def test_alarm_before_onset_is_false_alarm_and_not_a_catch():
    s = score.score_run([50], fault_meta())
    assert s["false_alarm_pre_onset"] and s["pre_onset_alarms"] == 1
    assert s["outcome"] == "missed"
    s = score.score_run([50, 99, 140], fault_meta())
    assert s["pre_onset_alarms"] == 2 and s["outcome"] == "caught" and s["lead"] == 10


def test_onset_unknown_uses_zero():
    s = score.score_run([0, 5], fault_meta(onset=None, collapse_step=40))
    assert s["outcome"] == "caught" and s["lead"] == 40 and s["pre_onset_alarms"] == 0


def test_healthy_alarm_near_benign_event():
    s = score.score_run([10, 205, 250, 251], healthy_meta(events=(200,)))
    assert s["any_alarm"] and s["n_alarms"] == 4
    assert s["alarms_near_event"] == 2  # 205 and 250 are in [200, 250]; 251 is not
    assert s["run_alarm_near_event"]
    quiet = score.score_run([], healthy_meta())
    assert not quiet["any_alarm"] and quiet["alarms_near_event"] == 0


def test_step0_events_do_not_open_a_window():
    s = score.score_run([3], healthy_meta(events=(0,)))
    assert s["alarms_near_event"] == 0 and not s["has_event"]


def test_aggregate_counts():
    runs = [
        score.score_run([120], fault_meta()),  # caught, lead 30 of 50
        score.score_run([160], fault_meta()),  # late
        score.score_run([], fault_meta()),  # missed
        score.score_run([10], fault_meta(label="survived")),  # pre-onset FA
        score.score_run([210], healthy_meta(events=(200,), n=500)),
        score.score_run([], healthy_meta(events=(200,), n=500)),
    ]
    row = score.aggregate(runs)
    assert row["n_collapsed"] == 3
    assert (row["caught"], row["late"], row["missed"]) == (1, 1, 1)
    assert row["recall"] == pytest.approx(1 / 3)
    assert row["lead_med"] == 30
    assert row["n_slow"] == 3 and row["slow_lead_frac_med"] == 0.0  # misses count 0
    assert row["pre_onset_fa_runs"] == 1 and row["n_fault_onset_gt0"] == 4
    assert row["healthy_alarm_share"] == 0.5
    assert row["healthy_alarms_per_1k"] == pytest.approx(1.0)
    assert row["alarms_near_event"] == 1 and row["runs_alarm_near_event"] == 1
    assert row["survived_alarm_share"] == 0.0


def test_replay_and_event_blanking():
    seen = []

    class Spy:
        name = "spy"

        def update(self, rec):
            seen.append(rec["event"])
            return rec["step"] == 2

    rows = [
        {"step": i, "loss": 1.0, "event": ev}
        for i, ev in enumerate(["", "lr_jump", "reshuffle", "outlier_batch"])
    ]
    alarms, secs = score.replay(Spy, score.detector_view(rows))
    assert alarms == [2] and secs >= 0
    assert seen == ["", "", "", ""]
    seen.clear()
    score.replay(Spy, score.detector_view(rows, pass_benign=True))
    assert seen == ["", "", "reshuffle", ""]


# ----------------------------------------------------------------------------- collapse
def test_collapse_nan():
    loss = [2.0] * 30 + [0.5] * 30 + [NAN, NAN]
    assert collapse.collapse_step(loss, onset=40) == 60


def test_collapse_sustained_rise():
    loss = [2.3] * 5 + [0.5] * 50 + [5.0] * 30
    # the rolling median lags ~2 steps; the raw excursion's start is returned
    assert collapse.collapse_step(loss, onset=30) == 55


def test_transient_spike_recovers_is_not_collapse():
    loss = [2.3] * 5 + [0.5] * 50 + [50.0] * 3 + [0.5] * 60
    assert collapse.collapse_step(loss, onset=30) is None
    assert collapse.collapse_step(loss, onset=0) is None


def test_short_rise_below_k_steps_is_not_collapse():
    k = collapse.K
    loss = [2.3] * 5 + [0.5] * 50 + [5.0] * (k - 3) + [0.5] * 40
    assert collapse.collapse_step(loss, onset=30) is None


def test_return_to_chance_is_collapse_without_nan():
    chance = math.log(10)
    loss = [2.3] * 5 + [0.3] * 50 + [2.29] * 40
    assert collapse.collapse_step(loss, onset=50, chance_loss=chance) == 55


def test_a_collapse_that_never_recovers_stays_collapsed_a_learned_jump_does_not():
    # a healthy setting's run that diverges back to chance for good is a collapse; a
    # curriculum's new data lifts the loss as much, and is then learned
    chance = math.log(10)
    learn = [2.3 * math.exp(-t / 20) + 0.1 for t in range(100)]
    gone = learn + [2.3] * 100
    c = collapse.collapse_step(gone, onset=0, chance_loss=chance)
    assert c is not None and collapse.stays_collapsed(gone, c)
    back = learn + [2.0 * math.exp(-t / 40) + 0.1 for t in range(100)]
    c = collapse.collapse_step(back, onset=0, chance_loss=chance)
    assert c is not None and not collapse.stays_collapsed(back, c)
    assert collapse.stays_collapsed(learn + [float("nan")], 100)


def test_never_learned_is_not_collapse():
    assert collapse.collapse_step([2.3] * 100, onset=0, chance_loss=math.log(10)) is None


def test_onset_zero_uses_best_so_far():
    # learns from 4.8 to 1.5, then falls back to 4.0 for good: collapse (onset unknown)
    loss = [4.8] * 5 + [1.5] * 60 + [4.0] * 40
    assert collapse.collapse_step(loss, onset=0) == 65


def test_collapse_not_before_onset():
    loss = [2.3] * 5 + [0.5] * 50 + [5.0] * 30
    assert collapse.collapse_step(loss, onset=60) == 61


def test_collapse_is_after_the_onset_step():
    # a corrupted batch makes the onset step's own loss jump; the weights that produced
    # that loss were not touched by the fault yet, so the earliest collapse is onset + 1
    loss = [2.3] * 5 + [0.5] * 50 + [5.0] * 30
    assert collapse.collapse_step(loss, onset=55) == 56
    assert collapse.collapse_step(loss, onset=54) == 55  # raw excursion starts after onset
    nan_at_onset = [2.0] * 30 + [0.5] * 30 + [NAN, NAN, NAN]
    assert collapse.collapse_step(nan_at_onset, onset=60) == 61


def test_tail_rule_needs_min_tail():
    loss = [2.3] * 5 + [0.5] * 50 + [5.0] * 3
    assert collapse.collapse_step(loss, onset=30) is None
    loss = [2.3] * 5 + [0.5] * 50 + [5.0] * 8
    assert collapse.collapse_step(loss, onset=30) is not None


# ----------------------------------------------------------------------------- baselines
def _feed(det, losses, grad=None):
    out = []
    for i, x in enumerate(losses):
        rec = {
            "step": i,
            "loss": x,
            "grad_norm": 1.0 if grad is None else grad[i],
            "noise": 1.0,
            "event": "",
        }
        if det.update(rec):
            out.append(i)
    return out


def test_baselines_registry_fresh_instances():
    pytest.importorskip("river")  # the river baselines build their detector at once
    for name, fac in baselines.BASELINES.items():
        a, b = fac(), fac()
        assert a is not b and a.name == name


def test_megatron_and_lightning_alarm_on_nan_seed_loop_does_not():
    losses = [1.0] * 120 + [NAN]
    assert _feed(baselines.Megatron10x(), losses) == [120]
    assert _feed(baselines.LightningSpike(), losses) == [120]
    assert _feed(baselines.LossThreshold(), losses) == [120]
    assert 120 not in _feed(baselines.SeedLoop(), losses)


def test_megatron_10x_rule():
    losses = [2.0] * 100 + [19.0, 20.0]
    assert _feed(baselines.Megatron10x(), losses) == [101]


def test_lightning_rule():
    losses = [1.0] * 20 + [2.5]
    assert _feed(baselines.LightningSpike(), losses) == [20]


def test_zclip_flags_grad_spike():
    g = [1.0 + 0.01 * (i % 3) for i in range(60)] + [10.0]
    assert _feed(baselines.ZClip(), [1.0] * 61, grad=g) == [60]


def test_naive_theta_identical_series_is_one():
    x = [math.sin(i) + 0.1 * (i % 5) for i in range(64)]
    assert baselines.naive_theta(x, x) == pytest.approx(1.0)


def test_page_hinkley_up_ignores_a_falling_loss_the_default_flags():
    pytest.importorskip("river")
    falling = [4.0 * math.exp(-i / 100.0) + 1.0 for i in range(600)]
    assert _feed(baselines.BASELINES["page_hinkley_loss"](), falling)  # mode="both"
    assert _feed(baselines.BASELINES["page_hinkley_up"](), falling) == []
    rising = [1.0] * 200 + [1.0 + 0.5 * i for i in range(1, 200)]
    assert _feed(baselines.BASELINES["page_hinkley_up"](), rising)[0] >= 200


def test_separability_features_are_logs_of_ratios_to_the_runs_last_20_steps():
    row = dict(loss=1.0, grad_norm=2.0, update_norm=0.1, param_norm=10.0, processivity=0.2)
    row.update(noise=1.0, max_abs_grad=0.5, lr=0.01)
    rows = [dict(row) for _ in range(30)]
    rows[0]["loss"] = 2.0  # the first loss
    rows[25] = dict(row, loss=4.0, grad_norm=20.0, update_norm=0.0, processivity=0.7, lr=0.03)
    f = dict(zip(separability.FEATURES, separability.features(rows, 25)))
    assert f["loss / 20-step median"] == pytest.approx(math.log(4.0))
    assert f["loss / first loss"] == pytest.approx(math.log(2.0))
    assert f["grad_norm / median"] == pytest.approx(math.log(10.0))
    assert f["update_norm / median"] == -30.0  # an exact zero (a saturated batch)
    assert f["processivity - median"] == pytest.approx(0.5)
    assert f["(noise / grad_norm) / median"] == pytest.approx(math.log(0.1))
    assert f["lr / previous lr"] == pytest.approx(math.log(3.0))
    assert f["previous loss / median"] == pytest.approx(0.0)


def test_matched_keeps_the_most_sensitive_setting_within_the_healthy_alarm_budget():
    # [caught, collapsed, healthy runs alarmed, healthy runs] per grid key
    totals = matched._sum(
        [
            {"zclip|z=2.5": [9, 10, 90, 100], "zclip|z=10": [3, 10, 4, 100]},
            {"zclip|z=2.5": [1, 10, 10, 100], "zclip|z=10": [1, 10, 1, 100]},
            {"zclip|z=50": [2, 20, 0, 200], "olmo|k=7": [20, 20, 0, 200]},
        ]
    )
    assert totals["zclip|z=10"] == [4, 20, 5, 200]
    assert matched._best(totals, "zclip", 0.05) == "zclip|z=10"  # 2.5 % alarmed, 4 caught
    assert matched._best(totals, "zclip", 0.01) == "zclip|z=50"  # the only one that quiet
    assert matched._best(totals, "zclip", 0.0) == "zclip|z=50"
    assert matched._best(totals, "megatron", 1.0) is None
    assert set(matched.GRIDS) == set(baselines.BASELINES)  # every baseline has a knob


# ----------------------------------------------------------------------------- logged_as
def _rows(n):
    cols = {c: None for c in score.NUM_COLUMNS}
    return [
        {**cols, "step": t, "loss": float(t), "grad_norm": 2.0 * t, "event": "e" if t == 3 else ""}
        for t in range(n)
    ]


def test_a_sparser_log_keeps_every_kth_step_or_writes_k_step_means():
    rows = _rows(25)
    assert score.logged_as(rows) == rows
    every = score.logged_as(rows, "every:10")
    assert [r["step"] for r in every] == [0, 10, 20]
    mean = score.logged_as(rows, "mean:10")
    assert [r["step"] for r in mean] == [9, 19]  # the last, unfinished interval is not written
    assert mean[0]["loss"] == pytest.approx(4.5) and mean[0]["grad_norm"] == pytest.approx(9.0)
    assert mean[0]["lr"] is None  # a column the rows lack stays missing
    assert [r["event"] for r in mean] == ["e", ""]
    rows[12]["loss"] = NAN
    assert math.isnan(score.logged_as(rows, "mean:10")[1]["loss"])


@pytest.mark.parametrize("spec", ["every", "every:0", "mean:x", "first:5"])
def test_a_bad_log_spacing_is_named_and_exits_2(spec, capsys):
    with pytest.raises(ValueError, match="every:K or mean:K"):
        score.parse_logged(spec)
    with pytest.raises(SystemExit) as e:
        score.main(["--logged", spec])
    assert e.value.code == 2
    assert "--logged" in capsys.readouterr().err
