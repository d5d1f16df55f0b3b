"""Contract tests run over every default detector, and each detector's own property.

Synthetic streams here test the formulas only; whether detection works is measured on
real training runs (bench/detection, tests/monitor/test_monitor_on_recorded_runs.py).
"""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anet_lite import Monitor
from anet_lite.monitor.causes import CAUSES
from anet_lite.monitor.detectors import (
    DEFAULT,
    LossCusum,
    LossRegression,
    LossTrend,
    NormGrowth,
    SlowLossTrend,
    View,
    loss_cusum,
    loss_regression,
    loss_trend,
)

NAN = math.nan


def _view(t, loss, *, x0=None, param=NAN, restart=False, eps=0.5, steps=1):
    x = math.log(loss + eps) if math.isfinite(loss) else NAN
    return View(x, True, param, restart, False, steps)


def _noisy_decay(n, seed=0, start=2.3, end=0.3, jitter=0.05):
    rng = random.Random(seed)
    return [max(1e-3, end + (start - end) * math.exp(-t / 60) * (1 + jitter * rng.gauss(0, 1)))
            + jitter * abs(rng.gauss(0, 1)) for t in range(n)]


def _feed(det, losses, params=None, x0=None):
    found = []
    x0 = losses[0] if x0 is None else x0
    for t, loss in enumerate(losses, 1):
        p = math.log(params[t - 1]) if params is not None else NAN
        f = det.update(_view(t, loss, x0=x0, param=p))
        found.append(f)
    return found


@pytest.mark.parametrize("steps", [1, 10], ids=["every-step", "every-10th"])
@pytest.mark.parametrize("cls", DEFAULT, ids=lambda c: c.name)
def test_every_detector_names_a_registered_cause_and_round_trips_its_state(cls, steps):
    det = cls()
    rng = random.Random(1)
    losses = _noisy_decay(300) + [3.0 * (1.02 ** k) for k in range(80)]
    params = [10.0 * (1.01 ** max(0, t - 300)) + 0.01 * rng.random() for t in range(len(losses))]
    causes = set()
    for t, (loss, p) in enumerate(zip(losses, params), 1):
        f = det.update(_view(t, loss, x0=losses[0], param=math.log(p), steps=steps))
        if f is not None:
            assert f.cause in CAUSES and CAUSES[f.cause].variant_of is None
            assert f.status in ("precursor", "drifting")
            causes.add(f.cause)
        if t == 250:  # mid-stream: a strict-JSON round trip continues identically
            state = json.loads(json.dumps(det.state_dict(), allow_nan=False))
            twin = cls()
            twin.load_state_dict(state)
    assert twin.state_dict().keys() == det.state_dict().keys()
    det2 = cls()
    for t, (loss, p) in enumerate(zip(losses, params), 1):
        v = _view(t, loss, x0=losses[0], param=math.log(p), steps=steps)
        if t <= 250:
            det2.update(v)
        else:
            assert twin.update(v) == det2.update(v)


@pytest.mark.parametrize("cls", DEFAULT, ids=lambda c: c.name)
def test_every_detector_takes_garbage_without_raising_and_restart_resets(cls):
    det = cls()
    for t, x in enumerate([NAN, math.inf, -math.inf, 0.0, 1e308, -1e308, 5.0] * 20, 1):
        det.update(View(x, t % 2 == 0, x, False))
    det.update(View(1.0, True, 1.0, True))
    fresh = cls()
    fresh.update(View(1.0, True, 1.0, False))
    assert det.state_dict() == fresh.state_dict()


@pytest.mark.parametrize("cls", DEFAULT, ids=lambda c: c.name)
def test_no_detector_alarms_on_a_noisy_decaying_loss(cls):
    for seed in range(5):
        losses = _noisy_decay(600, seed=seed)
        params = [10.0 + math.log1p(t) for t in range(600)]  # healthy: growth slows down
        assert not any(_feed(cls(), losses, params))


def test_cusum_alarms_on_a_slow_creep_that_no_step_shows_and_not_on_a_spike():
    base = _noisy_decay(300, seed=3)
    creep = [base[-1] * math.exp(0.01 * k) + 0.02 * random.Random(k).random() for k in range(120)]
    found = _feed(LossCusum(), base + creep)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert 300 < first < 300 + 100  # the level rose ~x2.5 by then; no step rose > 4 %
    assert found[first].evidence["level_ratio"] >= 1.25
    assert found[first].cause == "slow_rise"
    spike = base + [base[-1] * 50] + base[-100:]
    assert not any(_feed(LossCusum(), spike))


def test_cusum_alarms_on_a_rise_that_gives_back_a_fifth_of_the_progress():
    # An LM-like run: 5.0 -> ~2.3, then back up to 2.9 for good: the level gave back
    # ~22 % of what the run learned. In the floored scale (eps 0.5) that is a 21 % rise,
    # short of MIN_RISE's 25 %: the first gate never opens. A drift of 1 % of the progress does not
    # alarm, however significant.
    base = _noisy_decay(400, seed=4, start=5.0, end=2.3, jitter=0.02)
    rng = random.Random(9)
    up = [2.3 + 0.6 * min(1.0, k / 60) + 0.04 * rng.gauss(0, 1) for k in range(200)]
    found = _feed(LossCusum(), base + up)
    first = next(i for i, f in enumerate(found) if f is not None)
    ev = found[first].evidence
    assert found[first].cause == "slow_rise"
    assert 400 < first < 400 + 150
    ratio = (2.9 + 0.5) / (2.3 + 0.5)  # the floored level's rise: short of MIN_RISE
    assert math.log(ratio) < loss_cusum.MIN_RISE
    assert 0.2 <= ev["given_back"] < 0.3
    drift = [2.3 + 0.03 * min(1.0, k / 60) + 0.002 * rng.gauss(0, 1) for k in range(300)]
    calm = _noisy_decay(400, seed=4, start=5.0, end=2.3, jitter=0.002)
    det = LossCusum()
    assert not any(_feed(det, calm + drift))
    assert det.s >= loss_cusum.H  # significant (S past its threshold), and harmless


def test_cusum_keeps_its_reference_when_an_episode_ends_on_a_dip():
    # A small rise opens an episode (S > 0, the reference frozen); one low batch then
    # ends it. A dip below the reference is no new level: the reference stays where it
    # was (a reference taken at the dip made every ordinary step after it a rise: a real
    # 20,000-step LM log, resumed part-way, alarmed on its usual spikes;
    # bench/detection/real_log_stress.py).
    rng = random.Random(5)
    flat = [2.0 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(200)]
    det = LossCusum()
    _feed(det, flat)
    mu0, sigma = det.mu, det.jitter.scale
    assert not any(_feed(det, [2.05] * 60))  # +2 %: S grows, far below a 25 % rise
    assert det.s > 31  # an open episode that one step 30 sigmas low does not close
    dip = math.exp(mu0 - 30 * sigma) - 0.5  # one batch 30 sigmas low: S stays > 0, the
    _feed(det, [dip])  # smoothed level drops > 2 sigmas below its peak: the episode ends
    assert det.s == 0.0
    assert det.mu > mu0 - 2 * sigma  # (a reference taken at the dip: mu0 - 4 sigmas)


def test_trend_alarms_on_a_steady_noisy_rise_and_not_on_a_step_up_that_is_learned():
    base = _noisy_decay(300, seed=5, end=0.1)
    rng = random.Random(7)
    # the loss doubles over 100 steps with 20 % jitter per step: no step stands out
    ramp = [base[-1] * math.exp(k / 140) * (1 + 0.2 * rng.gauss(0, 1) ** 2) for k in range(100)]
    found = _feed(LossTrend(), base + ramp)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert 300 + loss_trend.HALF <= first < 300 + 100
    ev = found[first].evidence
    assert found[first].cause == "rising_trend" and ev["trend_t"] >= loss_trend.T
    assert ev["trend_ratio"] >= 1.05 and ev["trend_steps"] == 2 * loss_trend.HALF
    # new data: the level steps up x3 once, then is learned again
    learned = [base[-1] * (1 + 2 * math.exp(-k / 25)) * (1 + 0.2 * rng.random())
               for k in range(150)]
    assert not any(_feed(LossTrend(), base + learned))
    # a rise that never reaches 5 % between windows is not reported, however sure it is
    creep = [base[-1] * (1 + 0.0005 * k) for k in range(150)]
    assert not any(_feed(LossTrend(), base + creep))


def test_slow_trend_sees_a_rise_over_hundreds_of_steps_that_thirty_steps_hide():
    # a char LM at a too-high lr gives its progress back: +0.5 nats over 400 steps, the
    # batch loss's sd 0.13 nats (bench/lr_sweep.py, d = 128 at lr 0.05): no 30-step window
    # is sure of it, the 300-step windows of 10-step means are
    rng = random.Random(11)
    flat = [2.3 + 0.13 * rng.gauss(0, 1) for _ in range(500)]
    rise = [2.3 + 0.5 * k / 400 + 0.13 * rng.gauss(0, 1) for k in range(400)]
    top = [2.8 + 0.13 * rng.gauss(0, 1) for _ in range(200)]
    losses = flat + rise + top
    assert not any(_feed(LossTrend(), losses))
    found = _feed(SlowLossTrend(), losses)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert 500 + 2 * loss_trend.HALF <= first < 500 + 400 + 200
    assert found[first].cause == "rising_trend"
    assert found[first].evidence["trend_steps"] == 2 * loss_trend.HALF * loss_trend.BLOCK_SLOW
    # the same flat stretch, and a decaying loss, never: the test is the fast one's
    assert not any(_feed(SlowLossTrend(), flat * 3))
    # a log of every 10th step: each line is a block, the slow test is the fast one
    det_fast, det_slow = LossTrend(), SlowLossTrend()
    for y in losses[::10]:
        v = View(math.log(y + 0.5), True, NAN, False, False, 10)
        fast, slow = det_fast.update(v), det_slow.update(v)
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert fast.evidence["trend_t"] == slow.evidence["trend_t"]
            assert slow.evidence["trend_steps"] == 10 * 2 * loss_trend.HALF  # steps, not lines
            assert fast.evidence["trend_steps"] == slow.evidence["trend_steps"]


def test_trend_sums_stay_exact_over_a_long_run():
    det = LossTrend()
    rng = random.Random(3)
    for t in range(1, 20001):
        det.update(View(math.log(0.5 + 0.1 * rng.random()) + 1e3 * (t % 7 == 0), True, NAN, False))
    ys = list(det.ys)
    assert det.s == pytest.approx(math.fsum(ys), abs=1e-9)
    assert det.a == pytest.approx(math.fsum(k * y for k, y in enumerate(ys)), abs=1e-7)


def test_a_loss_ten_times_its_best_for_ten_steps_is_never_a_spike():
    # learned from ~5 to ~0.05: 8.0 is 15x the best level (floored scale), 1.5x the first
    base = _noisy_decay(200, seed=4, start=5.0, end=0.05)
    high = [8.0] * 12 + [base[-1]] * 20  # then back: still reported
    found = _feed(LossRegression(), base + high)
    assert [f.cause for f in found if f is not None][:1] == ["loss_blowup"]
    assert found[200 + 8] is None and found[200 + 9] is not None  # the 10th step


def test_a_loss_twice_the_untrained_loss_for_six_steps_after_learning_is_reported():
    # learned from ~2.3 to ~0.3; then 6.0: 2.3x the first loss, 7.6x the best (floored
    # scale, below the blow-up's 10x). Five steps (a curriculum's new classes) are not.
    base = _noisy_decay(200, seed=7)
    for k, alarm in ((5, False), (6, True), (12, True)):
        found = _feed(LossRegression(), base + [6.0] * k + base[-30:])
        hits = [(i, f) for i, f in enumerate(found) if f is not None]
        assert bool(hits) is alarm, k
        if alarm:
            assert hits[0][0] == 200 + 5 and hits[0][1].cause == "worse_than_untrained"
            assert hits[0][1].evidence["worse_steps"] == 6
            assert 2.0 <= hits[0][1].evidence["first_ratio"] < 10.0
    # a run that never learned (still at its first loss) has no "worse than untrained"
    flat = [2.3 + 0.05 * math.sin(t) for t in range(200)]
    assert not any(f and f.cause == "worse_than_untrained" for f in
                   _feed(LossRegression(), flat + [6.0] * 12))
    # a log of every 10th step: three rows (a 1-row blip is one batch's loss)
    det = LossRegression()
    rows = [_view(0, y, steps=10 if t else 1) for t, y in enumerate(base[::10] + [6.0] * 3)]
    found = [det.update(v) for v in rows]
    assert found[-2] is None and found[-1].cause == "worse_than_untrained"


def test_a_loss_ten_times_its_first_for_three_steps_is_a_blowup_two_steps_are_not():
    base = _noisy_decay(100, seed=5)
    x0 = base[0] + 0.5  # (the _view floor)
    for k, alarm in ((2, False), (3, True)):
        jump = [12.0 * x0] * k + base[-20:]
        found = _feed(LossRegression(), base + jump)
        hits = [(i, f) for i, f in enumerate(found) if f is not None]
        assert bool(hits) is alarm
        if alarm:
            assert hits[0][0] == 100 + 2 and hits[0][1].cause == "loss_blowup"
            assert hits[0][1].evidence["first_ratio"] >= 10.0


def test_one_step_a_hundred_times_the_first_loss_is_a_blowup_fifty_times_is_not():
    # ReLUs killed by one bad step: the loss jumps 290x and falls back to chance at once
    base = _noisy_decay(150, seed=6)
    x0 = base[0] + 0.5  # (the _view floor, as in the Monitor's scale)
    for k, alarm in ((50.0, False), (130.0, True)):
        jump = [k * x0 - 0.5] + [base[0]] * 5 + base[-30:]
        found = _feed(LossRegression(), base + jump)
        hits = [(i, f) for i, f in enumerate(found) if f is not None]
        assert bool(hits) is alarm
        if alarm:
            assert hits[0][0] == 150 and hits[0][1].cause == "loss_blowup"
            assert hits[0][1].evidence["first_ratio"] >= 100.0


def test_a_run_that_learned_and_climbs_back_is_reported_within_bounded_steps():
    down = [2.3 * math.exp(-t / 30) + 0.3 for t in range(200)]  # learns to ~0.3
    back = [0.3 + 2.0 * (1 - math.exp(-k / 40)) for k in range(200)]  # drifts back to ~2.3
    found = _feed(LossRegression(), down + back)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert found[first].cause == "regression" and first < 200 + 120


def test_a_level_far_above_the_best_that_does_not_fall_is_reported_after_hold_rise_steps():
    # learned to ~0.3; then a flat level well below the first loss, 3x the best in the
    # floored scale (a curriculum's new data sits near there 20-40 steps before it is
    # learned): reported once it has held HOLD_RISE steps, not before
    down = [2.3 * math.exp(-t / 30) + 0.3 for t in range(200)]
    for flat, alarm in ((30, False), (45, True)):
        found = _feed(LossRegression(), down + [1.9] * flat + [0.35] * 30)
        hits = [i for i, f in enumerate(found) if f is not None]
        assert bool(hits) is alarm
        if alarm:
            first = hits[0] - 200
            assert found[hits[0]].cause == "regression"
            assert loss_regression.HOLD_RISE <= first < loss_regression.HOLD_RISE + 6


def test_a_run_back_where_it_started_is_reported_even_while_its_loss_falls():
    # learned to ~0.1, then a blow-up that falls back slowly to the first loss (a dead
    # network at chance): never 'rising', never 10x for 10 steps, still every bit of
    # progress lost -- reported after HOLD steps at the first loss
    down = [2.3 * math.exp(-t / 20) + 0.05 for t in range(150)]
    blow = [30.0, 12.0, 6.0] + [2.9 - 0.004 * k for k in range(60)]
    found = _feed(LossRegression(), down + blow)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert found[first].cause == "regression" and 150 + 19 <= first < 150 + 40
    # a loss that comes back to within 25 % of its first value and then learns again
    # (new data) is not "back where it started" for long enough
    again = [1.8 * math.exp(-k / 4) + 0.1 for k in range(80)]
    assert not any(_feed(LossRegression(), down + again))


def _feed_every(det, losses, k, eps=0.5):
    """Every ``k``-th loss as the rows of a sparse log (each row stands for ``k`` steps);
    returns {step: finding} of the rows that alarmed."""
    out = {}
    for t in range(0, len(losses), k):
        f = det.update(View(math.log(losses[t] + eps), True, NAN, False, False, k if t else 1))
        if f is not None:
            out[t] = f
    return out


def test_a_sparse_log_is_judged_over_the_same_steps_as_a_log_of_every_step():
    # the run of the test above, logged every 5th / 10th step: "back at the first loss for
    # HOLD steps" counts steps, not log lines, so it fires near the same step (it waited
    # HOLD rows, i.e. 100-200 steps, before View.steps)
    down = [2.3 * math.exp(-t / 20) + 0.05 for t in range(150)]
    blow = [30.0, 12.0, 6.0] + [2.9 - 0.004 * k for k in range(60)]
    losses = down + blow
    dense = next(i for i, f in enumerate(_feed(LossRegression(), losses)) if f is not None)
    for k in (5, 10):
        hits = _feed_every(LossRegression(), losses, k)
        first = min(hits)
        assert hits[first].cause == "regression"
        assert dense - k <= first <= dense + 2 * k, (k, dense, first)


def test_one_line_of_a_sparse_log_is_one_batch_however_many_steps_it_stands_for():
    # 40x the best level on one or two lines of a log written every 10th step (20 steps)
    # is not ten steps of it: a streak needs MIN_ROWS lines; on three lines it is
    base = _noisy_decay(300, seed=4)
    for lines, alarm in ((2, False), (3, True)):
        losses = base + [base[-1] * 40] * (10 * lines) + base[-100:]
        hits = _feed_every(LossRegression(), losses, 10)
        assert bool(hits) is alarm
        if alarm:
            assert hits[min(hits)].cause == "loss_blowup" and min(hits) == 300 + 20


def test_a_regression_state_saved_before_rows_were_counted_loads_and_continues():
    losses = _noisy_decay(200, seed=2) + [3.0] * 30
    det = LossRegression()
    for t in range(205):
        det.update(_view(t, losses[t]))
    st_ = json.loads(json.dumps(det.state_dict()))
    del st_["rows"], st_["ages"]  # (an older state: one row per step)
    twin = LossRegression()
    twin.load_state_dict(st_)
    for t in range(205, len(losses)):
        assert twin.update(_view(t, losses[t])) == det.update(_view(t, losses[t]))


def test_a_regression_state_saved_before_the_worse_streak_existed_loads_and_continues():
    losses = _noisy_decay(200, seed=2) + [7.0] * 10  # then 2.5x the first loss
    det = LossRegression()
    for t in range(195):
        det.update(_view(t, losses[t]))
    st_ = json.loads(json.dumps(det.state_dict()))
    del st_["worse"]
    st_["rows"] = st_["rows"][:4]  # (an older state: four streaks)
    twin = LossRegression()
    twin.load_state_dict(st_)
    found = [(twin.update(_view(t, y)), det.update(_view(t, y))) for t, y in enumerate(losses)
             if t >= 195]
    assert all(a == b for a, b in found)
    assert [a.cause for a, _ in found if a is not None][:1] == ["worse_than_untrained"]


def test_an_early_jump_that_recovers_before_the_run_learned_is_not_a_regression():
    # the Muon runs of shared/data/real-logs-2: 6.9 -> 17 at step 2, back within ~20
    losses = [6.9, 17.0, 21.0, 15.0, 11.0, 9.0, 8.0, 7.2] + _noisy_decay(300, start=6.9, end=3.0)
    assert not any(_feed(LossRegression(), losses))


def test_geometric_weight_growth_alarms_and_decelerating_growth_does_not():
    losses = [0.5] * 400
    slowing = [10.0 * math.sqrt(1 + t / 5) for t in range(400)]
    assert not any(_feed(NormGrowth(), losses, slowing))
    runaway = [10.0 + 0.001 * t for t in range(200)] + [10.2 * 1.025 ** k for k in range(200)]
    found = _feed(NormGrowth(), losses, runaway)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert found[first].cause == "runaway_weights" and 200 < first < 200 + 40


def test_geometric_growth_that_does_not_stop_alarms_however_slow_its_start():
    # ||θ|| flat (Adam with weight decay at equilibrium), then 1.15 % per step for good (a
    # weight decay with the wrong sign): 23x the floored slowest rate, under ACCEL (42),
    # and 1.77x over 50 steps, under 2.2x. Held for 50 steps at >= 4x, it alarms.
    losses = [0.5] * 420
    runaway = [100.0] * 200 + [100.0 * 1.0115**k for k in range(1, 221)]
    found = _feed(NormGrowth(), losses, runaway)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert found[first].cause == "runaway_weights" and 200 + 50 < first <= 200 + 80
    # a burst as fast for 40 steps that stops (new data being learned) does not
    burst = [100.0] * 200 + [100.0 * 1.0115 ** min(k, 40) for k in range(1, 221)]
    assert not any(_feed(NormGrowth(), losses, burst))


def test_a_runaway_on_a_brisk_norm_alarms_by_its_growth_over_fifty_steps():
    # ||θ|| already growing 1 % per step (plain SGD at a high lr: the slowest rate is
    # brisk, so 42x it is out of reach); then 2.5 % per step. The 50-step growth
    # (1.64x before, never enough) passes 2.2x and is not slowing down.
    losses = [0.5] * 400
    brisk = [10.0 * 1.01**t for t in range(400)]
    assert not any(_feed(NormGrowth(), losses, brisk))
    runaway = brisk[:200] + [brisk[199] * 1.025**k for k in range(1, 201)]
    found = _feed(NormGrowth(), losses, runaway)
    first = next(i for i, f in enumerate(found) if f is not None)
    ev = found[first].evidence
    assert found[first].cause == "runaway_weights" and 200 < first < 200 + 45
    assert ev["growth_accel"] < 42 <= ev["param_growth"] * 20  # the 50-step rule, not ACCEL
    assert ev["param_growth"] >= 2.2
    # the same acceleration with the lr rising at its start: the lr's for 50 steps; a growth
    # that stays geometric after them is flagged
    det = NormGrowth()
    found = [det.update(View(0.0, True, math.log(p), False, t == 200)) for t, p in
             enumerate(runaway)]
    assert 250 < next(t for t, f in enumerate(found) if f is not None) <= 255
    # growth that keeps slowing down (early training, steeply): 3.4x over steps 50-100
    steep = [10.0 * (1 + t / 10) ** 2 for t in range(400)]
    assert steep[100] / steep[50] > 3.3
    assert not any(_feed(NormGrowth(), losses, steep))


def test_weights_pulled_to_zero_alarm_and_a_weight_decays_slow_pull_does_not():
    losses = [0.5] * 400
    decaying = [10.0 * 0.998**t for t in range(400)]  # 5 % per 25 steps: healthy's most
    assert not any(_feed(NormGrowth(), losses, decaying))
    pulled = [10.0] * 200 + [10.0 * 0.97**k for k in range(1, 201)]
    found = _feed(NormGrowth(), losses, pulled)
    first = next(i for i, f in enumerate(found) if f is not None)
    assert found[first].cause == "shrinking_weights" and 200 < first < 200 + 10
    assert found[first].evidence["param_shrink"] <= 0.8


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=320, max_size=400))
def test_warm_up_ends_within_a_bounded_number_of_steps_whatever_the_stream(losses):
    m = Monitor()
    statuses = [m.update(v).status for v in losses]
    assert "warming_up" not in statuses[m.warmup_bound:]


def test_warm_up_of_a_sparse_log_ends_within_the_same_number_of_steps():
    # a log written every 10th step: 300 steps are 30 lines, not 300
    m = Monitor()
    losses = [2.3 * (1.0 + 0.5 * math.sin(t)) for t in range(60)]  # never settles
    statuses = [m.update(v, step=10 * t).status for t, v in enumerate(losses)]
    assert "warming_up" not in statuses[m.warmup_bound // 10 + 1 :]


def test_a_monitor_state_without_detectors_still_loads():
    m = Monitor()
    for v in _noisy_decay(150):
        m.update(v)
    st_ = m.state_dict()
    del st_["detectors"]
    m2 = Monitor()
    m2.load_state_dict(st_)
    assert m2.update(0.4).status in ("healthy", "warming_up", "drifting")


def test_a_state_saved_before_a_detector_existed_loads_and_starts_it_fresh():
    m = Monitor()
    for v in _noisy_decay(150):
        m.update(v)
    st_ = json.loads(json.dumps(m.state_dict()))
    del st_["detectors"]["loss_trend"]  # (a state from before LossTrend)
    m2 = Monitor()
    m2.load_state_dict(st_)
    trend = next(d for d in m2.detectors if d.name == "loss_trend")
    assert trend.state_dict() == LossTrend().state_dict()
    assert m2.update(0.4).status in ("healthy", "warming_up", "drifting")


def test_the_calibration_holds_on_the_committed_healthy_runs(capsys):
    # bench/calibrate_detectors.py on the committed cache's 117 healthy runs: the
    # thresholds in use keep every detector under one alarming run per 50,000 steps
    import os
    import sys

    bench = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
    sys.path.insert(0, os.path.abspath(bench))
    import calibrate_detectors

    assert calibrate_detectors.main([os.path.join(bench, "detection", "cache")]) == 0
    out = capsys.readouterr().out
    assert "healthy runs: 117, steps: 49500" in out
    assert "in use H = 42.0: 0 healthy run(s) reach it" in out
    assert "in use T = 2.6: 0 healthy run(s) reach it" in out
