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
