"""The policy skips through a run of bad batches instead of escalating (real digits MLP)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_guard import _digits_with_a_shard, _same_weights  # noqa: E402

pytestmark = pytest.mark.torch


def test_a_declaring_loop_skips_through_a_shard_of_seven_bad_batches():
    # Seven batches with shuffled labels in a row: each is a bad batch, each update is
    # skipped, and the run goes on with the weights it had before the shard: nothing to
    # roll back, no reason to stop (with two skips allowed it rolled back, then stopped).
    g, w = _digits_with_a_shard(declared=True, k=7, steps=360)
    kinds = [(a.step, a.kind) for a in g.actions]
    assert kinds == [(351 + i, "skip_step") for i in range(7)], kinds
    assert _same_weights(w[350], w[357])
    assert g.step == 360


def test_a_rollback_to_a_tampered_checkpoint_skips_the_step_and_says_why(tmp_path):
    from test_guard import Scripted, _one_step, _state, batches, char_mlp

    from anet_lite import Monitor, TombstoneLog
    from anet_lite.torch import Guard

    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    log = TombstoneLog(tmp_path / "t.jsonl")
    g = Guard(
        model,
        opt,
        monitor=Monitor(policy=Scripted({7: "rollback"}), tombstones=log),
        checkpoint_every=5,
        checkpoint_dir=tmp_path / "ck",
        tombstones=log,
        on_error="raise",
    )
    data = list(batches(7))
    for x, y in data[:6]:
        _one_step(model, opt, g, x, y)
    with open(g.checkpoint_path, "ab") as fh:  # the file on disk no longer matches its digest
        fh.write(b"tampered")
    before = _state(model, opt)
    _one_step(model, opt, g, *data[6])  # step 7: the scripted rollback
    after = _state(model, opt)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])  # skipped
    text = (tmp_path / "t.jsonl").read_text()
    assert '"event":"rollback"' in text and "checkpoint refused" in text, text[-500:]


def test_a_full_disk_under_the_run_log_never_lets_a_nan_into_the_weights():
    import errno
    import math

    from test_guard import batches, char_mlp

    from anet_lite import Monitor
    from anet_lite.torch import Guard

    class FullDisk:
        def write(self, snap):
            raise OSError(errno.ENOSPC, "No space left on device")

    torch.manual_seed(0)
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    g = Guard(model, opt, monitor=Monitor(run_log=FullDisk()), on_error="raise")
    for i, (x, y) in enumerate(batches(60)):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if 40 <= i < 45:
            loss = loss * math.nan  # five NaN losses (and NaN gradients), steps 41-45
        loss.backward()
        g.observe(loss)
        opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [a.kind for a in g.actions] == ["skip_step"] * 5


def test_the_guards_own_lr_changes_are_not_schedule_events():
    # An lr x100 bug for steps 200-209: the Guard slows down, the schedule comes back
    # (its own lr drop is a schedule event), then the Guard restores its lr step by step.
    # Those restorations are its own actions, not the schedule's: no lr_restart event
    # (which would re-reference the Monitor and open a grace each time).
    from test_guard import batches, char_mlp

    from anet_lite.torch import Guard

    torch.manual_seed(0)
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if 200 <= s < 210 else 1.0)
    g = Guard(model, opt, scheduler=sched, checkpoint_every=50, on_error="raise")
    events, scales = [], []
    for x, y in batches(420):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        g.observe(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        events.append(g.last.evidence.get("event"))
        scales.append(g.lr_scale)
    raised = sum(b > a for a, b in zip(scales, scales[1:]))
    assert g.actions and raised >= 2  # it slowed down, then raised its lr again, twice or more
    assert "lr_restart" not in events, [(i, e) for i, e in enumerate(events) if e]


def test_after_skipping_a_shard_the_monitor_says_recovering_then_healthy_never_warming_up():
    # The Guard's own actions do not re-reference the Monitor: once the shard is skipped
    # the status reads "recovering" while the loss window still holds the shard's losses,
    # then "healthy" -- with the healthy fingerprint reference it had before the shard.
    from anet_lite import Monitor

    seen = []
    update = Monitor.update

    def spy(self, *a, **k):
        snap = update(self, *a, **k)
        seen.append((snap.step, snap.status))
        return snap

    Monitor.update = spy
    try:
        g, _ = _digits_with_a_shard(declared=True, k=7, steps=400)
    finally:
        Monitor.update = update
    assert [a.kind for a in g.actions] == ["skip_step"] * 7
    after = [s for step, s in seen if step > 357]
    assert after[0] == "recovering" and "warming_up" not in after
    first_healthy = after.index("healthy")
    assert set(after[:first_healthy]) == {"recovering"}
    assert set(after[first_healthy:]) == {"healthy"}
    assert g.monitor.ref is not None


def _digits_loss_scaled(guarded: bool, mult: float, onset: int = 200, steps: int = 400, **kw):
    """The digits MLP under SGD + momentum; from ``onset`` the loss is multiplied by
    ``mult`` before backward (a loss-scale bug: the logged loss is the true one). Returns
    (the Guard or None, the final loss on a fixed batch of 512)."""
    datasets = pytest.importorskip("sklearn.datasets")
    from torch import nn

    from anet_lite import Monitor
    from anet_lite.torch import Guard
    from anet_lite.torch.merge import digits_mlp

    X, y = datasets.load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = digits_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    g = Guard(model, opt, monitor=Monitor(), on_error="raise", **kw) if guarded else None
    gen = torch.Generator().manual_seed(0)
    for t in range(steps):
        i = torch.randint(0, len(y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(X[i]), y[i])
        (loss * (mult if t >= onset else 1.0)).backward()
        if g is not None:
            g.observe(loss)
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        final = float(nn.functional.cross_entropy(model(X[:512]), y[:512]))
    return g, final


def test_a_persistent_loss_scale_bug_is_clipped_to_the_gradients_level_and_the_run_goes_on(
    tmp_path,
):
    # A loss multiplied by 1e4 from step 200: every gradient is 1e4x its level while the
    # loss does not move. Skipping (16 updates) leaves the weights as they were, so a
    # roll-back would restore the same model and the bug would come back: the Guard
    # clips the gradients to their level from then on, and the run ends as its twin.
    _, twin = _digits_loss_scaled(False, 1.0)
    _, unprotected = _digits_loss_scaled(False, 1e4)
    g, final = _digits_loss_scaled(True, 1e4, tombstones=tmp_path / "t.jsonl")
    kinds = [a.kind for a in g.actions]
    assert kinds == ["skip_step"] * 16 + ["clip"], kinds
    assert g.actions[-1].evidence["cause"] in ("grad_explosion", "scale_jump")
    assert unprotected > 1.0 > twin  # the bug alone ruins the run
    assert final <= twin + 0.05, (final, twin)
    level = g.clip_pin
    assert g.clip_grad_norm == level and 0.0 < level < 10.0
    text = (tmp_path / "t.jsonl").read_text()
    assert '"event":"clip"' in text and '"clip_to"' in text, text[-400:]
    # a resumed Guard keeps the clip
    g2, _ = _digits_loss_scaled(True, 1.0, steps=1)
    g2.load_state_dict(g.state_dict())
    assert g2.clip_pin == level and g2.clip_grad_norm == level


def test_read_one_step_late_the_clip_starts_a_step_later_and_the_run_goes_on():
    # The CUDA path on a CPU (lag=True): each step's verdict comes a step late and the
    # same-step gate scales every out-of-scale gradient down to 10x its level meanwhile.
    _, twin = _digits_loss_scaled(False, 1.0)
    g, final = _digits_loss_scaled(True, 1e4, lag=True)
    kinds = [a.kind for a in g.actions]
    assert kinds.count("clip") == 1 and not {"rollback", "stop"} & set(kinds), kinds
    assert final <= twin + 0.05, (final, twin)


def test_a_rollback_under_a_slow_down_is_not_an_lr_event():
    # The checkpoint was taken at the full lr; the Guard rolls back while its slow-down
    # holds (lr x0.5) and keeps that scale. The restored Monitor last saw the full lr:
    # the halved lr it sees next is the Guard's own doing, not a schedule's decay (which
    # would open a grace and let the levels re-learn whatever the bug does after it).
    from test_guard import Scripted, _one_step, batches, char_mlp

    from anet_lite import Monitor
    from anet_lite.torch import Guard

    torch.manual_seed(0)
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    script = Scripted({60: "slow_down", 70: "rollback"})
    g = Guard(model, opt, monitor=Monitor(policy=script), checkpoint_every=20, on_error="raise")
    after = []
    for i, (x, y) in enumerate(batches(100)):
        _one_step(model, opt, g, x, y)
        if i >= 70:
            ev = g.last.evidence
            after.append((g.step, ev.get("event"), ev.get("grace")))
    assert [a.kind for a in g.actions] == ["slow_down", "rollback"]
    assert g.rolled_back and g.lr_scale == 0.5
    assert all(e is None and not grace for _, e, grace in after), after[:5]
