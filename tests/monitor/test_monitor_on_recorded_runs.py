"""The default Monitor on the detection benchmark's recorded training runs (train split).

These are real CPU training runs recorded by bench/detection/generate.py (cached in
bench/detection/cache). The Monitor's defaults were chosen on this split, so this is a
regression guard for the defaults, not evidence of generalisation: the held-out test
split is reported in docs/benchmarks.md and is not asserted on here.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "detection")
sys.path.insert(0, os.path.abspath(BENCH))

import anet_detector  # noqa: E402
import score  # noqa: E402

from anet_lite import Monitor  # noqa: E402
from anet_lite.monitor import _coherence as _coherence  # noqa: E402
from anet_lite.monitor import _rules as _rules  # noqa: E402


def _runs(split="train"):
    man = score.load_manifest()
    return {m["run_id"]: m for m in man["runs"] if m["split"] == split}


def _replay(meta, processivity=True, declared=False):
    rows = score.load_run(os.path.join(score.CACHE, meta["file"]))
    m = Monitor(on_error="raise", declared=declared)
    snaps = []
    # a declaring loop marks the changes it made itself (the faults are not among them)
    for r in score.detector_view(rows, pass_benign=declared):
        if r["event"]:
            m.mark(r["event"])
        snaps.append(
            m.update(
                r["loss"],
                step=r["step"],
                grad_norm=r["grad_norm"],
                step_norm=r["update_norm"],
                noise=r["noise"],
                lr=r["lr"],
                param_norm=r["param_norm"],
                processivity=r["processivity"] if processivity else None,
            )
        )
    return snaps


def _replay_loss_only(meta):
    rows = score.load_run(os.path.join(score.CACHE, meta["file"]))
    m = Monitor(on_error="raise")
    return [m.update(r["loss"], step=r["step"]) for r in rows]


def test_train_split_scores_do_not_regress():
    res = score.evaluate(
        {"anet": anet_detector.AnetMonitor}, split="train", real_logs=None, pass_benign=False
    )
    row = res["rows"][0]
    # Measured when the defaults were frozen: 28 of 31 caught (3 collapse at their onset
    # step), 3 of 72 healthy runs alarmed, no alarm before any fault's onset.
    assert row["caught"] >= 28
    assert row["healthy_alarm_share"] <= 3 / 72 + 1e-9
    assert row["pre_onset_fa_runs"] == 0
    assert row["slow_lead_frac_med"] >= 0.5


@pytest.mark.parametrize(
    "logged, missed, healthy", [("every:10", 5, 0), ("mean:10", 3, 2)], ids=["every10", "mean10"]
)
def test_a_log_of_every_tenth_step_still_flags_the_collapses(logged, missed, healthy):
    # The loss alone, as a log written every 10th step or as 10-step means: durations are
    # counted in steps (a line stands for the steps since the one before), so a run back
    # at chance for its last 50-100 steps is flagged. Measured when the rule was made
    # step-aware: never flagged 12 -> 5 and 12 -> 3 of 31; healthy runs alarmed 0 -> 0 and
    # 0 -> 2 of 72 (undeclared curricula, whose 10-step means stay at chance for 20-30 steps).
    res = score.evaluate(
        {"anet": anet_detector.AnetMonitor},
        split="train",
        real_logs=None,
        loss_only=True,
        logged=logged,
    )
    row = res["rows"][0]
    assert row["missed"] <= missed
    assert round(row["healthy_alarm_share"] * row["n_healthy"]) <= healthy


def test_train_split_scores_with_declared_changes_do_not_regress():
    res = score.evaluate(
        {"anet": anet_detector.AnetMonitorDeclared},
        split="train",
        real_logs=None,
        pass_benign=True,
    )
    row = res["rows"][0]
    # Measured when the rule was added: 31 of 31 caught, 1 of 72 healthy runs alarmed (not a
    # bad_batch; 2 before the fingerprint's stall margin became a window mean's noise),
    # no alarm before any fault's onset.
    assert row["caught"] == 31
    assert row["healthy_alarm_share"] <= 1 / 72 + 1e-9
    assert row["pre_onset_fa_runs"] == 0


def test_a_corrupted_shard_is_a_bad_batch_at_its_first_step_only_for_a_declaring_loop():
    # Labels permuted from step 120 (Adam): the loss jumps to ~9x the first loss and the
    # run is collapsed from step 121. The default Monitor watches it as a level shift
    # (it may be new data) until the loss has stood >= 2x the untrained model's loss for
    # 6 steps, which no healthy run does; from its loss alone too.
    meta = _runs()["mlp_bcancer-corrupt_shard-s2902"]
    onset = meta["onset"]
    assert meta["collapse_step"] == onset + 1 and meta["magnitude"]["mode"] == "permute"
    for snaps in (_replay(meta), _replay_loss_only(meta)):
        first = next(s for s in snaps if s.alert)
        assert first.step == onset + 5 and first.evidence["cause"] == "worse_than_untrained"
        assert "untrained" in first.explain() and "学習前" in first.explain("ja")
    snaps = _replay(meta, declared=True)
    assert not any(s.alert for s in snaps[:onset])
    assert snaps[onset].alert and snaps[onset].evidence["cause"] == "bad_batch"


def test_a_declared_curriculum_switch_is_not_a_bad_batch():
    # the same run as below, whose switch lifts the loss to ~3x its first value; the
    # declaring loop marks it (bench/detection: KNOWN_TO_LOOP) and stays quiet
    meta = _runs()["mlp_digits-healthy-curriculum-s700"]
    assert not any(s.alert for s in _replay(meta, declared=True))


def test_a_curriculum_switch_is_a_level_shift_not_an_alert():
    meta = _runs()["mlp_digits-healthy-curriculum-s700"]
    snaps = _replay(meta)
    switch = meta["benign_event_steps"][0]
    assert not any(s.alert for s in snaps)
    assert snaps[switch].evidence.get("level_shift")
    assert snaps[switch].evidence["loss_ratio"] > 8


def test_a_gradient_sign_bug_is_an_ascent_before_it_collapses():
    # Without processivity this run is alerted only at its collapse step (grad_growth).
    meta = _runs()["cnn_digits-grad_sign-s4800"]
    onset, collapse = meta["onset"], meta["collapse_step"]
    first = next(s for s in _replay(meta) if s.alert)
    assert onset <= first.step < collapse and first.evidence["cause"] == "ascent"
    late = next(s for s in _replay(meta, processivity=False) if s.alert)
    assert late.step >= collapse


@pytest.mark.parametrize(
    "run",
    ["tfm_stdlib-grad_sign-s6501", "mlp_digits-grad_sign-s1401", "gru_stdlib-grad_sign-s8201"],
)
def test_a_sign_bug_that_compounds_fast_is_caught_by_the_two_step_surge(run, monkeypatch):
    # Test-split runs (the surge's thresholds were chosen on other seeds): each collapses
    # 4-5 steps after its onset, the 3-step ascent streak completes only at the collapse.
    meta = _runs("test")[run]
    onset, collapse = meta["onset"], meta["collapse_step"]
    first = next(s for s in _replay(meta) if s.alert)
    assert onset <= first.step < collapse and first.evidence["cause"] == "ascent"
    monkeypatch.setattr(_coherence, "SURGE_LIFT", math.inf)
    monkeypatch.setattr(_coherence, "SURGE_GRAD", math.inf)
    monkeypatch.setattr(_rules, "GROW_STEPS", math.inf)  # (also catches s6501 one step late)
    assert next(s for s in _replay(meta) if s.alert).step >= collapse


@pytest.mark.parametrize("run, without_processivity", [("s4000", False), ("s4002", True)])
def test_noisier_gradients_after_a_smaller_batch_size_are_not_a_precursor(
    run, without_processivity
):
    # The gradient and the update grow 2-5x after the batch shrinks, the updates as
    # incoherent as before: with processivity the Monitor stays quiet. Without it, a
    # co-rise the loss window matched (raw: s4000's rose 1.7-2.7x) is not the optimizer
    # leading the loss either; s4002's loss rose less, and only processivity tells.
    meta = _runs()[f"cnn_digits-healthy-batch_size_change-{run}"]
    assert not any(s.alert for s in _replay(meta))
    assert any(s.alert for s in _replay(meta, processivity=False)) is without_processivity


def test_a_loss_scale_bug_alerts_at_its_step_although_adam_survives_it():
    meta = _runs()["cnn_digits-loss_scale-s4700"]
    snaps = _replay(meta)
    onset = meta["onset"]
    assert not any(s.alert for s in snaps[:onset])
    assert snaps[onset].alert and snaps[onset].evidence["cause"] == "grad_explosion"
    assert snaps[onset].evidence["grad_ratio"] > 1e3


def _replay_from(cache, meta):
    rows = score.load_run(os.path.join(cache, meta["file"]))
    m = Monitor(on_error="raise")
    return [
        m.update(r["loss"], step=r["step"], grad_norm=r["grad_norm"], step_norm=r["update_norm"],
                 noise=r["noise"], lr=r["lr"], param_norm=r["param_norm"],
                 processivity=r["processivity"])
        for r in score.detector_view(rows, pass_benign=False)
    ]


MECH = os.path.join(os.path.abspath(BENCH), "cache_mech")


def test_an_update_past_a_tenth_of_the_weights_alarms_when_it_grows_not_when_it_shrinks():
    # A too-high lr from step 0 whose updates grow past 0.1 of the weights' norm collapses
    # (3 runs of every split): flagged as an oversized update before the collapse. Healthy
    # RMSprop runs move the weights by 0.13 to 0.31 in their first step (no bias correction
    # of the second moment), then less each step: no alarm at all.
    hot = [m for m in score.load_manifest()["runs"] if m["kind"] == "high_lr_no_warmup"]
    collapsed = [m for m in hot if m["collapse_step"] is not None]
    assert len(collapsed) >= 3
    for meta in collapsed:
        first = next(s for s in _replay_from(score.CACHE, meta) if s.alert)
        assert first.step < meta["collapse_step"], meta["run_id"]
        assert first.evidence["cause"] == "oversized_update", meta["run_id"]
    rms = [m for m in score.load_manifest(MECH)["runs"]
           if m["label"] == "healthy" and m["optimizer"] == "rmsprop"]
    assert len(rms) >= 3
    for meta in rms:
        snaps = _replay_from(MECH, meta)
        assert snaps[0].evidence["rel_update"] > 0.1, meta["run_id"]
        assert not any(s.alert for s in snaps), meta["run_id"]


@pytest.mark.skipif(not os.path.isdir(score.REAL_LOGS), reason="../shared/data/real-logs absent")
@pytest.mark.parametrize("declared", [False, True])
def test_no_alarm_on_the_real_public_healthy_logs(declared):
    for fn in sorted(os.listdir(score.REAL_LOGS)):
        if not fn.endswith(".csv"):
            continue
        m = Monitor(on_error="raise", declared=declared)
        for r in score.load_real_log(os.path.join(score.REAL_LOGS, fn)):
            snap = m.update(r["loss"], step=r["step"])
            assert not snap.alert, (fn, r["step"], snap.evidence)
            assert math.isfinite(snap.zscore)


@pytest.mark.skipif(not os.path.isdir(score.REAL_LOGS), reason="../shared/data/real-logs absent")
@pytest.mark.parametrize("skip, stride", [(50, 1), (0, 2), (40, 2), (20, 3)])
def test_no_alarm_on_the_real_logs_read_from_a_later_step_or_every_kth_step(skip, stride):
    # The same logs as a logger that starts late or logs every k-th step would write them:
    # the three-high-batches rule must not depend on where its levels were refreshed.
    for fn in sorted(os.listdir(score.REAL_LOGS)):
        if not fn.endswith(".csv"):
            continue
        m = Monitor(on_error="raise")
        rows = [
            r for r in score.load_real_log(os.path.join(score.REAL_LOGS, fn)) if r["step"] >= skip
        ]
        for r in rows[::stride]:
            snap = m.update(r["loss"], step=r["step"])
            assert not snap.alert, (fn, r["step"], snap.evidence)


def test_a_sign_bug_whose_loss_wobbles_is_an_ascent_from_its_gradient_and_update(monkeypatch):
    # Train-split run (in the pool the rule was chosen on; a regression guard): under
    # AdamW the gradient and the update grow together while the batch loss still dips
    # (step 234); the co-rise with coherent updates alerts one step before the surge.
    meta = _runs()["tfm_stdlib-grad_sign-s6500"]
    onset, collapse = meta["onset"], meta["collapse_step"]
    first = next(s for s in _replay(meta) if s.alert)
    assert onset <= first.step < collapse - 1 and first.evidence["cause"] == "ascent"
    monkeypatch.setattr(_coherence, "CO_ASCENT", math.inf)
    assert next(s for s in _replay(meta) if s.alert).step == first.step + 1


def test_a_sign_bug_under_adam_is_a_divergence_once_gradient_and_update_grow_4_steps(
    monkeypatch,
):
    # Train-split run (in the pool; the rule was checked on fresh seeds, CHANGELOG.md 0.1.0):
    # Adam's normalised update grows slowly and its cos barely lifts (no ascent, and
    # grad_growth stays gated on coherence) while gradient and update each grow step
    # after step from the onset; at the 5th such step the gradient is 8x its level.
    meta = _runs()["tfm_stdlib-grad_sign-s6502"]
    onset, collapse = meta["onset"], meta["collapse_step"]
    first = next(s for s in _replay(meta) if s.alert)
    assert onset <= first.step < collapse - 1 and first.evidence["cause"] == "divergence"
    assert first.evidence["compounding"] and first.evidence["grad_ratio"] >= 5.0
    monkeypatch.setattr(_rules, "GROW_STEPS", math.inf)
    assert next(s for s in _replay(meta) if s.alert).step > first.step


REAL_LOGS_2 = os.path.join(os.path.dirname(score.REAL_LOGS), "real-logs-2")


@pytest.mark.skipif(not os.path.isdir(REAL_LOGS_2), reason="../shared/data/real-logs-2 absent")
@pytest.mark.parametrize("declared", [False, True])
def test_no_alarm_on_real_healthy_runs_that_jump_early_and_recover(declared):
    # Muon runs whose loss jumps 6.9 -> 15-24 at step 2 and comes back (real-logs-2)
    import csv

    n = 0
    for fn in sorted(os.listdir(REAL_LOGS_2)):
        if not fn.endswith(".csv"):
            continue
        m = Monitor(on_error="raise", declared=declared)
        with open(os.path.join(REAL_LOGS_2, fn), newline="") as fh:
            for r in csv.DictReader(fh):
                snap = m.update(float(r["loss"]), step=int(r["step"]))
                assert not snap.alert, (fn, r["step"], snap.evidence)
        n += 1
    assert n >= 6


@pytest.mark.skipif(not os.path.isdir(score.REAL_LOGS), reason="../shared/data/real-logs absent")
def test_the_precursor_is_computed_on_a_real_log_with_slow_steps_and_stays_quiet():
    # ~0.1-1.7 s per step with a time column: the 2-second window keeps its floor of
    # n steps, so z is computed on (almost) every step; no alarm on the healthy run
    name = "mng_2024-11-19_FlexAttention_8384493d.csv"
    rows = score.load_real_log(os.path.join(score.REAL_LOGS, name))
    m = Monitor(on_error="raise")
    snaps = [m.update(r["loss"], step=r["step"], time=r["time"]) for r in rows]
    assert not any(s.alert for s in snaps)
    assert sum(s.zscore != 0.0 for s in snaps) > 0.8 * len(snaps)


def test_a_network_that_died_back_to_chance_is_flagged_from_its_loss_alone():
    # Loss only (what `anet-lite analyze` reads from most logs): the loss jumps 2e6x,
    # falls back to chance (ln 10) and stays. The jump is a blow-up (>= 100x the first
    # loss) on its own step; every bit of progress lost is reported within HOLD (20)
    # steps of the loss settling at its first value.
    meta = score.load_manifest()["runs"]
    meta = next(m for m in meta if m["run_id"] == "cnn_digits-dead_relu-s5001")
    rows = score.load_run(os.path.join(score.CACHE, meta["file"]))
    m = Monitor(on_error="raise")
    alarms = []
    for r in rows:
        snap = m.update(r["loss"], step=r["step"])
        if snap.alert:
            alarms.append((r["step"], snap.evidence["cause"]))
    assert alarms, "never flagged"
    assert alarms[0] == (meta["collapse_step"], "loss_blowup")
    step = next(s for s, cause in alarms if cause == "regression")
    assert meta["collapse_step"] <= step <= meta["collapse_step"] + 40


@pytest.mark.parametrize(
    "run_id", ["cnn_digits-output_logit_divergence-rmsprop-s21202",
               "mlp_digits-unfreeze_high_lr-adamw-s21000"])
def test_a_loss_ten_times_the_untrained_loss_is_flagged_from_the_loss_alone(run_id):
    # Loss only: the loss jumps 20-60x above the untrained model's loss for a few steps,
    # then falls back to 2-5x its best, as a curriculum's new data does (never 10x the
    # first loss for more than 1 step in a healthy run). Flagged at its third step there.
    meta = next(m for m in score.load_manifest(MECH)["runs"] if m["run_id"] == run_id)
    rows = score.load_run(os.path.join(MECH, meta["file"]))
    m = Monitor(on_error="raise")
    first = next(s for s in (m.update(r["loss"], step=r["step"]) for r in rows) if s.alert)
    assert first.evidence["cause"] == "loss_blowup"
    assert first.step == meta["collapse_step"] + 2
    assert first.evidence["first_ratio"] >= 10.0
    assert "its first loss" in first.explain()


def test_a_loss_that_keeps_rising_is_flagged_from_the_loss_alone_before_it_collapses():
    # Loss only: SGD's momentum changed mid-run (onset 233); the loss climbs from ~0.1 to
    # ~1 over 240 steps, noisily, no step standing out, until it collapses (step 476).
    # The trend test flags the steady rise ~50 steps before.
    run_id = "mlp_digits-beta_change-sgd-s20400"
    meta = next(m for m in score.load_manifest(MECH)["runs"] if m["run_id"] == run_id)
    rows = score.load_run(os.path.join(MECH, meta["file"]))
    m = Monitor(on_error="raise")
    first = next(s for s in (m.update(r["loss"], step=r["step"]) for r in rows) if s.alert)
    assert first.evidence["cause"] == "rising_trend"
    assert meta["onset"] < first.step <= meta["collapse_step"] - 20
    assert "kept rising" in first.explain()


@pytest.mark.parametrize(
    "run_id", ["cnn_digits-grad_accum_sum-sgd_plain-s20501",
               "mlp_digits-unfreeze_high_lr-adamw-s21000"])
def test_a_gradient_and_update_jump_the_loss_does_not_show_is_caught_at_its_step(run_id):
    # gradients summed over accumulation steps / layers unfrozen at a high lr: at the
    # fault's first step the gradient and the update jump 17-37x while that step's loss
    # (computed before the update) is unmoved. The model collapses at the next step.
    meta = next(m for m in score.load_manifest(MECH)["runs"] if m["run_id"] == run_id)
    snaps = _replay_from(MECH, meta)
    onset = meta["onset"]
    assert not any(s.alert for s in snaps[:onset])
    assert snaps[onset].alert and snaps[onset].evidence["cause"] == "scale_jump"
    assert meta["collapse_step"] == onset + 1


def test_after_an_action_the_status_reads_recovering_until_the_loss_is_back():
    # A real shard of bad batches (train split). A loop that acts on the first alert
    # (Monitor.decide) is told "recovering" -- not "healthy" -- while the loss is still
    # above its level before the incident, then "healthy" once it is back.
    meta = _runs()["mlp_bcancer-corrupt_shard-s2903"]
    rows = score.load_run(os.path.join(score.CACHE, meta["file"]))
    m = Monitor(on_error="raise")
    acted, seen = None, []
    for r in score.detector_view(rows):
        snap = m.update(r["loss"], step=r["step"], grad_norm=r["grad_norm"],
                        step_norm=r["update_norm"], lr=r["lr"], param_norm=r["param_norm"])
        if snap.alert and acted is None:
            acted = (r["step"], m.decide(snap).kind)
        elif acted is not None:
            seen.append(snap)
    assert acted[1] == "slow_down" and acted[0] >= meta["onset"]
    statuses = [s.status for s in seen]
    first_healthy = statuses.index("healthy")
    assert first_healthy > 10 and set(statuses[:first_healthy]) == {"recovering"}
    rec = seen[0]
    assert not rec.alert and rec.evidence["loss_vs_before"] > 1.5
    assert rec.explain().startswith("Recovering") and rec.explain("ja").startswith("回復中")
    assert "recovering" not in statuses[first_healthy:]


def test_new_data_near_zero_loss_is_a_gradient_regime_not_an_explosion():
    # Breast-cancer MLP (Adam) near zero loss; new classes of data from step 203 (not
    # declared). The gradient stands 60-530x its slow level for tens of steps; at step
    # 219 it is 320x with the loss up a little less. Within 70-530x on the steps just
    # before, that is the new data's regime, not a one-step explosion.
    meta = _runs()["mlp_bcancer-healthy-curriculum-s2402"]
    snaps = _replay(meta)
    assert snaps[219].evidence["grad_ratio"] > 200 and snaps[219].evidence["loss_dev"] > 100
    assert not any(s.alert for s in snaps)
    # the same gradient out of a calm regime is an explosion at once
    rows = score.load_run(os.path.join(score.CACHE, meta["file"]))
    m = Monitor(on_error="raise")
    for r in rows[:150]:
        m.update(r["loss"], step=r["step"], grad_norm=r["grad_norm"], step_norm=r["update_norm"])
    g = math.exp(m.grad_base.center) * 320.0  # 320x its level, as at step 219
    snap = m.update(rows[149]["loss"], step=150, grad_norm=g, step_norm=rows[149]["update_norm"])
    assert snap.alert and snap.evidence["cause"] == "grad_explosion"
