"""The rescue benchmark (bench/detection/rescue.py): its arms rerun the benchmark's own runs
(the hooks leave them bit-for-bit as cached), keep their books straight, and judge the
final models against the healthy twin.

One short real fault run (an MLP on digits, a sign bug from step 100 of 160) goes through
every arm; ZClip's formula and the judging rule are checked on numbers worked by hand.
"""

from __future__ import annotations

import copy
import csv
import gzip
import math
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "detection")
sys.path.insert(0, os.path.abspath(BENCH))

import generate  # noqa: E402
import rescue  # noqa: E402

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

CACHED = "mlp_digits-corrupt_shard-s1200"


def _spec(run_id):
    return copy.deepcopy(next(s for s in generate.plan() if s["run_id"] == run_id))


def _rows(folder, run_id):
    with gzip.open(os.path.join(folder, run_id + ".csv.gz"), "rt") as fh:
        return list(csv.DictReader(fh))


def _short_sign_bug():
    """A real grad_sign run cut to 160 steps with its onset at step 100."""
    spec = _spec("mlp_digits-grad_sign-s1400")
    spec.update(n_steps=160, onset=100, events={"grad_sign": [100]})
    return spec


def test_the_hooks_reproduce_a_cached_run():
    got = rescue.check_reproduces(CACHED)
    assert got["cached_rows"] == 500 and got["arm_rows"] >= 500
    assert got["arm_prefix_identical"]  # bit for bit on the machine that runs both
    # the cache was written on another CPU: float rounding moves a few last digits
    assert got["cache_max_rel_diff"] <= 1e-2


def test_trace_differences_are_measured_cell_by_cell():
    a = [["1", "0.5", ""], ["2", "0.25", "x"]]
    assert rescue._max_rel_diff(a, a) == 0.0
    assert rescue._max_rel_diff(a, [["1", "0.5", ""], ["2", "0.2501", "x"]]) == pytest.approx(
        0.0001 / 0.2501
    )
    assert rescue._max_rel_diff(a, a[:1]) == math.inf
    assert rescue._max_rel_diff(a, [["1", "0.5", ""], ["2", "0.25", "y"]]) == math.inf


def test_the_twin_trains_exactly_like_the_fault_run_until_the_onset(tmp_path):
    spec = _spec(CACHED)
    twin = rescue.twin_spec(spec)
    assert (twin["kind"], twin["onset"], twin["magnitude"]) == ("healthy", None, {})
    assert twin["seed"] == spec["seed"] and twin["n_steps"] == spec["n_steps"]
    arm = rescue.Arm(rescue.eval_batch(spec), eval_at=spec["onset"])
    rescue.run_arm(twin, arm, str(tmp_path))
    got = _rows(str(tmp_path), twin["run_id"])
    generate.run_one(copy.deepcopy(spec), str(tmp_path))  # the fault run, on this CPU
    cached = _rows(str(tmp_path), CACHED)
    cols = [c for c in generate.COLUMNS if c not in ("time", "event")]
    onset = spec["onset"]
    assert [[r[c] for c in cols] for r in got[:onset]] == [
        [r[c] for c in cols] for r in cached[:onset]
    ]
    assert got[onset]["loss"] != cached[onset]["loss"]  # the shard's first batch differs
    assert len(arm.grad_norms) == spec["n_steps"] and arm.loss_at is not None


def test_twins_keep_a_faults_intended_lr():
    reset = next(s for s in generate.plan_mech() if s["kind"] == "opt_state_reset")
    tw = rescue.twin_spec(reset)
    assert tw["benign"] == "high_stable_lr"
    assert tw["magnitude"]["lr_mult"] == reset["magnitude"]["lr_mult"]
    wu = next(s for s in generate.plan_mech() if s["kind"] == "warmup_units")
    tw = rescue.twin_spec(wu)
    assert tw["benign"] == "warmup_cosine" and tw["magnitude"]["warmup"] == int(0.3 * wu["n_steps"])
    assert tw["magnitude"]["peak_mult"] == wu["magnitude"]["peak_mult"]


def test_every_arm_on_a_short_real_fault_run(tmp_path):
    spec = _short_sign_bug()
    res = rescue.rescue_one(spec, scratch=str(tmp_path))
    assert set(res["arms"]) == set(rescue.ARMS)
    tw, pre = res["twin_final"], res["twin_pre_onset"]
    assert math.isfinite(tw) and pre > tw  # the twin kept learning after the onset step
    # the clip is the p90 of the twin's gradient norms: some healthy steps exceed it
    twin_norms = [float(r["grad_norm"]) for r in _rows(str(tmp_path), spec["run_id"] + "-twin")]
    assert res["clip_norm"] == pytest.approx(np.percentile(twin_norms, 90), rel=1e-5)
    none = res["arms"]["none"]
    assert none["steps"] == 160 and none["stopped_at"] is None
    assert not none["rescued"] and none["final"] > tw  # 60 steps of gradient ascent hurt
    for name, out in res["arms"].items():
        assert out["rescued"] == rescue.within(out["final"], tw), name
        if out["stopped_at"] is None:
            assert out["steps"] == 160, name
        else:
            assert out["steps"] == out["stopped_at"], name
            assert out["kept_healthy"] == rescue.within(out["final"], pre)
    assert 0 < res["arms"]["clip"]["clipped_steps"] <= 160
    g = res["arms"]["guard"]
    kinds = [a["kind"] for a in g["actions"]]
    assert all(0 <= a["t"] < 160 for a in g["actions"])
    assert (g["stopped_at"] is not None) == ("stop" in kinds)
    v = res["guard_verdict"]
    assert v["outcome"] in ("rescued", "stop_kept_healthy", "stop_not_healthy", "lost")
    assert (v["outcome"] == "rescued") == g["rescued"]


def _short_loss_scale_bug():
    """A real loss_scale run (plain SGD x 1e6: the gradients explode) cut to 160 steps."""
    spec = _spec("mlp_digits-loss_scale-s1301")
    spec.update(n_steps=160, onset=100, events={"loss_scale": [100]})
    spec["magnitude"]["loss_mult"] = 1e6
    return spec


@pytest.mark.parametrize("make", [_short_sign_bug, _short_loss_scale_bug])
def test_the_guard_arm_scales_the_hand_set_lr_and_a_stop_leaves_the_checkpoint(make, tmp_path):
    spec = make()
    arm = rescue.GuardArm(rescue.eval_batch(spec))
    out = rescue.run_arm(spec, arm, str(tmp_path))
    rows = _rows(str(tmp_path), spec["run_id"])
    last = float(rows[-1]["lr"])
    kinds = [a["kind"] for a in out["actions"]]
    assert out["counts"] == {k: kinds.count(k) for k in out["counts"]}
    assert len(out["rolled_back"]) <= out["counts"]["rollback"]
    for a, b in out["rolled_back"]:  # (first step undone, the step it was decided at)
        assert 0 <= a <= b < spec["n_steps"]
    if out["stopped_at"] is None:
        # the lr written for the last step: the schedule's (constant) x the Guard's scale
        assert last == pytest.approx(spec["base_lr"] * out["lr_scale_end"], rel=1e-5)
        assert len(rows) == spec["n_steps"]
        return
    assert kinds[-1] == "stop" and out["actions"][-1]["t"] == out["stopped_at"]
    assert len(rows) == out["stopped_at"]  # the stopped step is not recorded
    ck = arm.guard.checkpoint  # the model left behind is the last healthy checkpoint
    assert ck is not None and ck.step <= spec["onset"]
    for name, p in arm.model.state_dict().items():
        assert torch.equal(p, ck.model[name].to(p.device)), name
    assert out["final"] == pytest.approx(rescue.eval_loss(arm.model, arm.batch))


def test_within_is_relative_above_one_nat_and_absolute_below():
    assert rescue.within(2.09, 2.0) and not rescue.within(2.11, 2.0)  # 5 % of 2.0 = 0.1
    assert rescue.within(0.06, 0.02) and not rescue.within(0.08, 0.02)  # 0.05 nats
    assert rescue.within(0.5, 1.0) and not rescue.within(math.nan, 1.0)
    assert not rescue.within(1.0, math.nan)


def test_zclip_clips_a_spike_to_its_reciprocal_threshold_and_learns_the_clipped_norm():
    z = rescue.ZClip(alpha=0.9, z_thresh=2.0, warmup=4)
    for g in (1.0, 3.0, 1.0, 3.0):
        assert z.threshold(g) is None  # warm-up: no clipping
    assert (z.mu, z.var) == (2.0, 1.0)  # mean and variance of the buffer
    assert z.threshold(2.5) is None  # z = 0.5: kept, and learned as it is
    mu = 0.9 * 2.0 + 0.1 * 2.5
    var = 0.9 * 1.0 + 0.1 * (2.5 - mu) ** 2
    assert (z.mu, z.var) == pytest.approx((mu, var))
    sigma = math.sqrt(var)
    g = mu + 8.0 * sigma  # z = 8 (to eps)
    thr = z.threshold(g)
    zt = (g - mu) / (sigma + 1e-6)
    assert thr == pytest.approx(mu + 2.0 * sigma * (2.0 / zt))
    assert z.mu == pytest.approx(0.9 * mu + 0.1 * thr)  # the clipped norm, not the spike
    assert z.n_clipped == 1
    assert z.threshold(math.inf) is None and z.n_clipped == 1
    plain = rescue.ZClip(alpha=0.9, z_thresh=2.0, warmup=4, mode="zscore")
    for g in (1.0, 3.0, 1.0, 3.0):
        plain.threshold(g)
    assert plain.threshold(20.0) == pytest.approx(2.0 + 2.0 * 1.0)
    with pytest.raises(ValueError, match="mode"):
        rescue.ZClip(mode="other")


def test_the_command_line_reports_bad_input_and_writes_the_table(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        rescue.main(["--only", "no_such_fault", "--jsonl", str(tmp_path / "r.jsonl")])
    assert e.value.code == 2 and "no_such_fault" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rescue.main(["--check", "no-such-run"])
    assert e.value.code == 2
    res = rescue.rescue_one(_short_sign_bug(), arms=("none", "clip"))
    md = rescue.table([res])
    assert "| grad_sign | persistent | 1 |" in md and "| 0/1 |" in md
    res["command"] = "made here"
    out = tmp_path / "r.md"
    rescue.write_markdown([res], str(out), "report")
    text = out.read_text()
    assert "`made here`" in text and "## What the Guard did wrong" in text
    assert "persistent: none 0/1, guard 0/0, clip 0/1" in text  # the strict line
