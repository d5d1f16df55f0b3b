"""GradNoiseTap.gate / GradGate: a bad gradient acted on at its own step, on the device.

Fused optimizers (CPU has them too: the same code path as CUDA) skip the step through
``found_inf``; others have a spike clipped to ``factor`` x its running level. Real model
and data (a character MLP on stdlib text)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch_fixtures import batches, char_mlp  # noqa: E402

from anet_lite.torch import GradNoiseTap  # noqa: E402
from anet_lite.torch.tap import GradGate  # noqa: E402

pytestmark = pytest.mark.torch


def state(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    st = [
        {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else {}
        for p in model.parameters()
    ]
    return params, st


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and all(
        set(s) == set(t) and all(torch.equal(s[k], t[k]) for k in s) for s, t in zip(a[1], b[1])
    )


def train(opt_kw, bad_at, spoil, steps=12):
    """Gated steps; at step ``bad_at`` the gradient is spoiled by ``spoil`` after
    backward. Returns (flags, states before/after the bad step, model, opt, tap)."""
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, **opt_kw)
    tap = GradNoiseTap(model, 0.9, noise="sketch")
    flags, around = [], None
    for i, (x, y) in enumerate(batches(steps)):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if i == bad_at:
            with torch.no_grad():
                for p in model.parameters():
                    spoil(p.grad)
        tap.measure_grads()
        flags.append(tap.gate(opt))
        before = state(model, opt)
        opt.step()
        tap.measure_update()
        if i == bad_at:
            around = (before, state(model, opt))
    return [float(f) for f in flags], around, model, opt, tap


@pytest.mark.parametrize(
    "spoil", [lambda g: g.mul_(1e4), lambda g: g.view(-1)[0].fill_(math.nan)], ids=["x1e4", "nan"]
)
def test_a_fused_optimizer_skips_the_bad_step_itself(spoil):
    flags, (before, after), model, opt, tap = train({"fused": True}, 8, spoil)
    assert flags == [0.0] * 8 + [1.0] + [0.0] * 3
    assert same(before, after)  # parameters and Adam's state untouched, bit for bit
    assert not hasattr(opt, "found_inf")  # put back after the step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(tap.grad_gate.accepted) == 11.0  # the bad step did not move the level


def test_healthy_steps_are_not_gated_and_train_as_without_the_gate():
    flags, _, model, _, _ = train({"fused": True}, -1, None, steps=12)
    assert flags == [0.0] * 12
    ref = char_mlp()
    opt = torch.optim.AdamW(ref.parameters(), 1e-3, fused=True)
    for x, y in batches(12):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))


def test_other_optimizers_have_the_spike_clipped_to_its_level():
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.05)
    tap = GradNoiseTap(model, 0.9, noise="sketch")
    gate = tap.grad_gate = GradGate(factor=10.0)
    norms = []
    for i, (x, y) in enumerate(batches(10)):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if i == 8:
            with torch.no_grad():
                for p in model.parameters():
                    p.grad.mul_(1e4)
        tap.measure_grads()
        level = float(gate.level) if gate.level is not None else 0.0
        flag = float(tap.gate(opt))
        g = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
        norms.append((flag, g, level))
        opt.step()
        tap.measure_update()
    flag, g, level = norms[8]
    assert flag == 1.0 and g == pytest.approx(10.0 * level, rel=1e-4)
    assert all(f == 0.0 for f, _, _ in norms[:8] + norms[9:])
    assert tap.stats().finite


def test_the_gate_keeps_a_scalers_own_flag():
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    tap = GradNoiseTap(model, 0.9, noise="sketch")
    x, y = next(iter(batches(1)))
    nn.functional.cross_entropy(model(x), y).backward()
    scaler_flag = torch.ones(())
    opt.found_inf = scaler_flag
    tap.measure_grads()
    assert float(tap.gate(opt)) == 0.0  # healthy for the gate ...
    assert float(opt.found_inf) == 1.0  # ... the scaler's overflow still skips the step
    opt.step()
    tap.measure_update()
    assert opt.found_inf is scaler_flag


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [True, False])
def test_the_gate_is_a_few_ops_whatever_the_number_of_tensors(fused):
    counts = []
    for depth in (1, 60):
        torch.manual_seed(0)
        layers = [nn.Linear(16, 16) for _ in range(depth)]
        model = nn.Sequential(*layers)
        opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=fused)
        tap = GradNoiseTap(model, 0.9, noise="sketch")
        for _ in range(2):  # (the first call also makes the gate's state)
            opt.zero_grad()
            model(torch.randn(4, 16)).square().mean().backward()
            tap.measure_grads()
            with Count() as c:
                tap.gate(opt)
            opt.step()
            tap.measure_update()
        counts.append(c.n)
    assert counts[0] == counts[1] <= 30  # measured: 20 fused, 25 other


def test_gate_arguments_and_order():
    with pytest.raises(ValueError, match="factor"):
        GradGate(factor=1.0)
    with pytest.raises(ValueError, match="decay"):
        GradGate(decay=1.0)
    with pytest.raises(ValueError, match="warmup"):
        GradGate(warmup=0)
    model = char_mlp()
    tap = GradNoiseTap(model)
    with pytest.raises(RuntimeError, match="measure_grads"):
        tap.gate(torch.optim.SGD(model.parameters(), 0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gate_skips_without_a_sync():
    model = char_mlp().cuda()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    tap = GradNoiseTap(model, 0.9, noise="sketch")
    for i, (x, y) in enumerate(batches(10)):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.cuda()), y.cuda()).backward()
        if i == 8:
            for p in model.parameters():
                p.grad.mul_(1e4)
        torch.cuda.synchronize()
        before = state(model, opt)
        torch.cuda.set_sync_debug_mode("error")
        try:
            tap.measure_grads()
            tap.gate(opt)
            opt.step()
            tap.measure_update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if i == 8:
            assert same(before, state(model, opt))


def test_a_spike_already_clipped_is_scaled_to_the_level_not_below():
    # The Guard clips inside (clip_grad_norm) before its gate: the gate is told the factor
    # the clip applied, so a spike ends at factor x level, not at clip x that.
    w = nn.Parameter(torch.zeros(100))
    opt = torch.optim.SGD([w], 0.1)
    gate = GradGate(factor=10.0, warmup=1)
    for _ in range(3):  # healthy steps: level 1.0
        w.grad = torch.full((100,), 0.1)
        assert float(gate(opt, (w.grad.double() ** 2).sum())) == 0.0
    w.grad = torch.full((100,), 100.0)  # norm 1,000
    measured = (w.grad.double() ** 2).sum()
    applied = torch.tensor(0.05)  # a clip to 50 happened after the measurement
    w.grad.mul_(applied)
    assert float(gate(opt, measured, applied)) == 1.0
    assert float(w.grad.norm()) == pytest.approx(10.0, rel=1e-5)  # 10 x the level of 1.0
    w.grad = torch.full((100,), math.nan)  # non-finite: flagged, even in warm-up
    assert float(GradGate(warmup=5)(opt, (w.grad.double() ** 2).sum())) == 1.0
