"""Policy ladder: causes enter at the right rung, caps and cool-downs bound one incident."""

from __future__ import annotations

import pytest

from anet_lite import Monitor, Policy, TombstoneLog, verify
from anet_lite.verdict import Snapshot


def snap(status="precursor", cause="divergence", step=0, **ev):
    alert = status in ("precursor", "collapsed", "drifting")
    return Snapshot(
        0.9,
        0.0,
        0.0,
        0.0,
        status == "precursor",
        3.0,
        step=step,
        status=status,
        alert=alert,
        evidence={"cause": cause, **ev},
    )


def kinds(policy, snaps):
    return [policy.decide(s).kind for s in snaps]


def test_precursor_ladder_with_cooldown_and_caps():
    # a slow-down and a roll-back are given `cooldown` steps to show; a skip is not (its
    # effect is immediate: the next alert step is acted on at once)
    p = Policy(cooldown=2, max_slowdowns=1, max_skips=1, max_rollbacks=1)
    got = kinds(p, [snap(step=i) for i in range(12)])
    assert got == [
        "slow_down",
        "none",
        "none",
        "skip_step",
        "rollback",
        "none",
        "none",
        "stop",
        "none",
        "none",
        "none",
        "none",
    ]


def test_a_persistent_precursor_is_skipped_at_every_alert_step_once_slowing_did_not_help():
    p = Policy()  # cooldown 10, 2 slow-downs, 16 skips, 2 roll-backs
    got = kinds(p, [snap(cause="ascent", step=i) for i in range(80)])
    first_skip = got.index("skip_step")
    assert got[:first_skip].count("slow_down") == 2
    assert got[first_skip : first_skip + 16] == ["skip_step"] * 16  # not one in eleven
    assert got[first_skip + 16] == "rollback"
    assert got.count("stop") == 1


def test_non_finite_starts_by_skipping_and_ignores_cooldown():
    p = Policy(max_skips=2, max_rollbacks=1)
    got = kinds(p, [snap("collapsed", "non_finite", i) for i in range(5)])
    assert got == ["skip_step", "skip_step", "rollback", "stop", "none"]
    a = Policy().decide(snap("collapsed", "non_finite"))
    assert a.policy == "nonfinite" and "skip" in a.reason


def test_lr_jump_slows_down_by_the_jump():
    a = Policy().decide(snap(cause="lr_jump", lr_jump=100.0))
    assert a.kind == "slow_down" and a.factor == pytest.approx(0.01)


def test_drift_only_slows_down_gently():
    p = Policy(cooldown=0, max_slowdowns=2)
    acts = [p.decide(snap("drifting", "fingerprint_shift", i)) for i in range(4)]
    assert [a.kind for a in acts] == ["slow_down", "slow_down", "none", "none"]
    assert acts[0].factor == 0.8


def test_healthy_steps_close_the_incident():
    p = Policy(cooldown=0, max_slowdowns=1, recover_after=5)
    assert p.decide(snap()).kind == "slow_down"
    for i in range(5):
        assert p.decide(snap("healthy", "", i)).kind == "none"
    assert p.decide(snap()).kind == "slow_down"


def test_state_dict_round_trip():
    p = Policy(cooldown=3)
    p.decide(snap())
    q = Policy(cooldown=3)
    q.load_state_dict(p.state_dict())
    assert kinds(p, [snap()] * 6) == kinds(q, [snap()] * 6)


def test_bad_factor():
    with pytest.raises(ValueError, match="slow_factor"):
        Policy(slow_factor=1.5)


def test_monitor_decide_writes_tombstones(tmp_path):
    log = TombstoneLog(tmp_path / "tombstones.jsonl")
    m = Monitor(tombstones=log)
    for _ in range(60):
        m.update(1.0, lr=1e-3)
    s = m.update(1.0, lr=1.0)
    a = m.decide(s, scope={"param_groups": [0]})
    assert a.kind == "slow_down"
    assert m.decide(m.update(1.0, lr=1e-3)).kind == "none"
    res = verify(log.path)
    assert res.ok and res.records == 1
    import json

    rec = json.loads(log.path.read_text().splitlines()[0])
    assert rec["event"] == "slow_down" and rec["scope"] == {"param_groups": [0]}
    assert rec["evidence"]["cause"] == "lr_jump" and "reason" in rec["evidence"]


def test_a_gradient_out_of_scale_that_skips_did_not_end_is_clipped_once_not_rolled_back():
    p = Policy(clip=True, max_skips=3)
    got = kinds(p, [snap(cause="grad_explosion", step=i, grad_ratio=900.0) for i in range(8)])
    assert got == ["skip_step"] * 3 + ["clip"] + ["none"] * 4  # the clip answers the rest
    clip = p.decide(snap(cause="scale_jump", step=9))
    assert clip.kind == "none" and "clipped" in clip.reason
    # another cause of the same incident is acted on as before (a loss that climbs)
    assert p.decide(snap(cause="divergence", step=10)).kind == "slow_down"


def test_the_clip_is_the_multiple_of_the_level_and_survives_a_state_round_trip():
    p = Policy(clip=True, max_skips=1, clip_level_x=1.5)
    assert kinds(p, [snap(cause="scale_jump", step=i) for i in range(2)]) == ["skip_step", "clip"]
    act = Policy(clip=True, max_skips=0).decide(snap(cause="grad_explosion"))
    assert (act.kind, act.factor) == ("clip", 1.0)
    q = Policy(clip=True, max_skips=1)
    q.load_state_dict(p.state_dict())
    assert q.decide(snap(cause="grad_explosion", step=3)).kind == "none"


@pytest.mark.parametrize("clip", [None, False])
def test_without_a_caller_that_clips_the_ladder_rolls_back(clip):
    p = Policy(clip=clip, max_skips=2)
    got = kinds(p, [snap(cause="grad_explosion", step=i) for i in range(3)])
    assert got == ["skip_step", "skip_step", "rollback"]


def test_causes_that_a_clip_does_not_answer_never_get_one():
    p = Policy(clip=True, max_skips=1, cooldown=0)
    got = kinds(p, [snap(cause="ascent", step=i) for i in range(6)])
    assert "clip" not in got and "rollback" in got


def test_bad_clip_level():
    with pytest.raises(ValueError, match="clip_level_x"):
        Policy(clip_level_x=0.0)


@pytest.mark.parametrize(
    "cause", ["slow_rise", "rising_trend", "regression", "runaway_weights", "shrinking_weights"]
)
def test_a_slow_cause_skips_no_update_it_slows_down_then_rolls_back(cause):
    # a trend over many steps: no single update caused it, so none is dropped
    p = Policy(cooldown=0)
    got = kinds(p, [snap(cause=cause, step=i) for i in range(6)])
    assert got[:5] == ["slow_down", "slow_down", "rollback", "rollback", "stop"], got
