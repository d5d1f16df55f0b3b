"""Same-step protection without a host sync: the Guard's device gate and host lr gate.

On CUDA the Guard reads each step's numbers one step late (no sync). ``lag=True`` runs
that same code on a CPU (the pack is kept instead of copied), so these tests show the
GPU path acting on a bad batch and an lr x100 at the faulty step itself, while the
Monitor judges that step one step later and escalates. Real model and data: an MLP on
sklearn's digits, AdamW."""

from __future__ import annotations

import math
from typing import Optional

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

from torch import nn  # noqa: E402

from anet_lite.torch import Guard  # noqa: E402

pytestmark = pytest.mark.torch

X, Y = datasets.load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
Y = torch.tensor(Y)


def mlp(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)


def run(
    steps: int = 80,
    bad: int = -1,
    spoil: str = "",
    lr_bug_from: int = 10**9,
    fused: bool = False,
    guard_kw: Optional[dict] = None,
    device: str = "cpu",
    sync_check: bool = False,
):
    """Train; batch ``bad`` (0-based) is spoiled (``"x1e3"``: inputs x1000, ``"nan"``:
    a NaN input); from step ``lr_bug_from`` the lr is x100 (a schedule bug). Returns
    (guard, weights at the start of each step, losses); ``run.opt``: the optimizer."""
    model = mlp(device)
    opt = torch.optim.AdamW(model.parameters(), 3e-3, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if s >= lr_bug_from else 1.0)
    g = None
    if guard_kw is not None:
        g = Guard(model, opt, scheduler=sched, checkpoint_every=20, on_error="raise", **guard_kw)
    gen = torch.Generator().manual_seed(0)
    weights, losses = [], []
    for t in range(steps):
        weights.append([p.detach().cpu().clone() for p in model.parameters()])
        i = torch.randint(0, len(Y), (64,), generator=gen)
        xb = X[i].clone()
        if t == bad:
            if spoil == "nan":
                xb[0, 0] = math.nan
            else:
                xb *= 1e3
        loss = nn.functional.cross_entropy(model(xb.to(device)), Y[i].to(device))
        loss.backward()
        if sync_check:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            if g is not None:
                g.observe(loss)
            opt.step()
        finally:
            if sync_check:
                torch.cuda.set_sync_debug_mode("default")
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    run.opt = opt
    weights.append([p.detach().cpu().clone() for p in model.parameters()])
    return g, weights, losses


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def moved(a, b) -> float:
    """||b - a|| over all parameters."""
    return math.sqrt(sum(float(((y - x) ** 2).sum()) for x, y in zip(a, b)))


def kinds(g):
    return [(a.step, a.kind, a.policy, a.evidence.get("cause")) for a in g.actions]


@pytest.mark.parametrize("spoil", ["x1e3", "nan"])
def test_a_bad_batch_is_skipped_on_the_device_at_its_own_step(spoil):
    # Batch 40 (Guard step 41) is corrupted. A fused AdamW skips it in its kernel through
    # the gate's found_inf: the weights after step 41 are the weights before it, bit for
    # bit; the host learns it one step later and does not drop the clean step 42.
    g, w, _ = run(bad=40, spoil=spoil, fused=True, guard_kw={"lag": True})
    assert g.gate is None and g.lag is True  # the default: gate where the read is lagged
    assert kinds(g)[0] == (41, "skip_step", "gate", "grad_spike")
    assert same(w[40], w[41])  # the bad update never happened
    assert not same(w[41], w[42])  # the next (clean) step trained
    assert all(torch.isfinite(p).all() for p in w[-1])
    assert not any(a.kind == "rollback" for a in g.actions)
    # without the Guard the same batch moves (or poisons) the weights
    _, w0, _ = run(bad=40, spoil=spoil, fused=True)
    assert not same(w0[40], w0[41])
    assert spoil == "x1e3" or not all(torch.isfinite(p).all() for p in w0[-1])


def test_a_spike_is_scaled_down_at_its_own_step_by_a_plain_optimizer():
    # A for-loop AdamW takes no found_inf: the gate scales the spiked gradient (x1000
    # inputs: ~700x its level) down to 10x its running level on the device. Adam's second
    # moment, which the spike would inflate for the next ~1,000 steps (stalling training),
    # takes 10x, not 700x.
    g, _, _ = run(bad=40, steps=41, guard_kw={"lag": True})
    v = max(float(s["exp_avg_sq"].max()) for s in run.opt.state.values())
    run(bad=40, steps=41)
    v0 = max(float(s["exp_avg_sq"].max()) for s in run.opt.state.values())
    assert kinds(g) == [] and g.grad_gate.gated.item() == 1.0  # (learned at step 42)
    assert v < v0 / 100
    g, _, _ = run(bad=40, steps=42, guard_kw={"lag": True})
    assert kinds(g) == [(41, "scale_step", "gate", "grad_spike")]


def test_an_lr_times_100_is_dropped_at_its_own_step_then_slowed_down():
    # The schedule multiplies the lr by 100 from step 41. The lagged host reads step 40's
    # numbers at step 41, with step 40's own lr: nothing wrong there. Its lr gate drops
    # the x100 update at step 41 itself; the Monitor's verdict on step 41 (read at step
    # 42) slows the lr down before step 42's update.
    g, w, losses = run(lr_bug_from=40, guard_kw={"lag": True})
    _, w0, losses0 = run(lr_bug_from=40)
    assert kinds(g)[:2] == [
        (41, "skip_step", "gate", "lr_jump"),
        (41, "slow_down", "drift", "lr_jump"),
    ]
    assert g.actions[1].factor == pytest.approx(0.01)
    assert same(w[40], w[41])
    assert moved(w[41], w[42]) < 3 * moved(w[39], w[40])
    assert moved(w0[40], w0[41]) > 20 * moved(w0[39], w0[40])
    assert sum(losses[-10:]) < sum(losses0[-10:])


def test_an_lr_jump_the_monitor_has_not_judged_yet_drops_the_update(monkeypatch):
    # On a GPU the previous step's copy may not have landed yet: then no verdict comes
    # in at step 41 and the host's lr gate drops that update by itself. The Monitor
    # judges the jump at step 42 and slows down; step 42 trains at the slowed lr.
    def lagged(self, pack, _orig=Guard._lagged):
        got = _orig(self, pack)
        return None if self.step == 41 else got  # step 40's copy "has not landed"

    monkeypatch.setattr(Guard, "_lagged", lagged)
    g, w, _ = run(lr_bug_from=40, guard_kw={"lag": True})
    assert kinds(g)[:2] == [
        (41, "skip_step", "gate", "lr_jump"),  # the host's lr gate, at step 41
        (41, "slow_down", "drift", "lr_jump"),  # the Monitor's verdict on it, at step 42
    ]
    assert same(w[40], w[41])
    assert moved(w[41], w[42]) < 3 * moved(w[39], w[40])


def test_healthy_gated_training_is_bit_identical_to_unguarded_training():
    # A gate that never fires multiplies nothing and sets found_inf to 0: the same run.
    g, w, _ = run(steps=60, fused=True, guard_kw={"lag": True})
    _, w0, _ = run(steps=60, fused=True)
    assert g.actions == [] and float(g.grad_gate.accepted) == 60.0
    assert same(w[-1], w0[-1])
    g, w, _ = run(steps=60, guard_kw={"gate": True})  # the gate on the synchronous path
    _, w0, _ = run(steps=60)
    assert g.actions == [] and same(w[-1], w0[-1])


def test_the_gate_is_off_by_default_on_cpu_and_with_act_false():
    g, _, _ = run(steps=12, bad=8, fused=True, guard_kw={})
    assert g.grad_gate is None  # CPU: the synchronous host verdict acts at the step
    g, w, _ = run(steps=12, bad=8, fused=True, guard_kw={"lag": True, "act": False})
    assert g.grad_gate is None and g.actions == [] and not same(w[8], w[9])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fused", [True, False])
def test_cuda_whole_gated_steps_do_not_sync_and_act_at_the_faulty_step(fused):
    g, w, _ = run(steps=30, bad=20, fused=fused, guard_kw={}, device="cuda", sync_check=True)
    assert g.grad_gate is not None  # on by default on CUDA
    assert kinds(g)[0] == (21, "skip_step" if fused else "scale_step", "gate", "grad_spike")
    if fused:
        assert same(w[20], w[21])


@pytest.mark.parametrize("lag", [False, True])
def test_each_step_is_judged_with_its_own_lr_and_its_updates_lr(lag):
    # Step k's numbers (label k: the Guard counts from 1) are read after the scheduler
    # moved the lr on when the read is lagged, and its update is measured one step later
    # on both paths: the step keeps its own lr, its update the lr it was made with
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 + 0.01 * s)
    g = Guard(model, opt, scheduler=sched, on_error="raise", lag=lag)
    gen = torch.Generator().manual_seed(0)
    used, seen = [], {}
    for _ in range(30):
        i = torch.randint(0, len(Y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(X[i]), Y[i])
        loss.backward()
        g.observe(loss)
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        if g.seen:
            seen[g.last.step] = g.last.evidence["lr"]
    assert len(seen) >= 28
    assert all(seen[k] == pytest.approx(used[k - 1], rel=1e-12) for k in seen)


@pytest.mark.parametrize("lag", [False, True])
def test_a_100x_step_decay_is_no_update_blow_up(lag):
    # MultiStepLR(gamma=0.01): the update measured at the decay step was made with the
    # old lr. Read against the new lr it was a 100x "blow-up" (and a skipped update).
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [60, 100], gamma=0.01)
    g = Guard(model, opt, scheduler=sched, on_error="raise", lag=lag)
    gen = torch.Generator().manual_seed(0)
    alerts = []
    for _ in range(130):
        i = torch.randint(0, len(Y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(X[i]), Y[i])
        loss.backward()
        g.observe(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        if g.seen and g.last.alert:
            alerts.append((g.last.step, g.last.evidence.get("cause")))
    assert alerts == [] and g.actions == []
