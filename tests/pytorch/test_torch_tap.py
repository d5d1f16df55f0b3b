"""anet_lite.torch.GradNoiseTap: measurements against slow exact references."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import typing

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch_fixtures import cuda_steps_without_sync  # noqa: E402

from anet_lite.torch import (  # noqa: E402
    GRAD_DOT_AFTER,
    GRAD_DOT_BEFORE,
    GRAD_SQ,
    MAX_ABS_GRAD,
    N_SLOTS,
    RANKS,
    SAMPLE_GRAD_SQ,
    SKETCH_GRAD_SQ,
    UPDATE_DOT_SKETCH,
    UPDATE_SQ,
    GradNoiseTap,
    StepStats,
    combine_rank_stats,
    stats_from_values,
    update_sq,
)

pytestmark = pytest.mark.torch


def mlp(width: int = 64, depth: int = 1, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    layers: typing.List[nn.Module] = [nn.Linear(16, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).to(dtype)


class Data:
    """Random-feature regression: y = tanh(X w) + noise, minibatches from a fixed set."""

    def __init__(self, n: int = 512, seed: int = 1, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(n, 16, generator=g).to(dtype)
        w = torch.randn(16, 1, generator=g).to(dtype)
        self.y = torch.tanh(self.X @ w) + 0.1 * torch.randn(n, 1, generator=g).to(dtype)
        self.g = g

    def loss(self, model: nn.Module, batch: int = 32) -> torch.Tensor:
        idx = torch.randint(0, len(self.X), (batch,), generator=self.g)
        return nn.functional.mse_loss(model(self.X[idx]), self.y[idx])


def grads_of(model: nn.Module) -> typing.List[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def flat64(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in ts])


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------- import hygiene


def test_core_import_does_not_import_torch():
    code = "import anet_lite, sys; assert 'torch' not in sys.modules, 'core imported torch'"
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr


def test_missing_torch_gives_install_hint():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import anet_lite.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "anet_lite.torch needs PyTorch: pip install 'anet-lite[torch]'" in res.stdout
    assert "torch==2.13.0" in res.stdout


# ---------------------------------------------------------------- seed-compatible norm()


def test_norm_is_the_global_noise_norm_with_the_seed_ema():
    model, data = mlp(depth=2), Data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ema = 0.9
    tap = GradNoiseTap(model, ema=ema)
    m_ref = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for _ in range(8):
        opt.zero_grad()
        data.loss(model).backward()
        sq, seed_sum = 0.0, 0.0
        for n, p in model.named_parameters():
            g = p.grad.double()
            m_ref[n].mul_(ema).add_(g, alpha=1 - ema)
            d = float((g - m_ref[n]).norm())
            sq += d * d
            seed_sum += d
        got = tap.norm()
        assert isinstance(got, float)
        assert rel(got, math.sqrt(sq)) < 1e-5
        # The seed summed per-tensor norms: larger, and not a norm of the whole gradient.
        assert seed_sum > got * 1.05
        for n in m_ref:
            torch.testing.assert_close(tap.m[n].double(), m_ref[n], rtol=1e-5, atol=1e-7)
        opt.step()


def test_ema_buffers_can_be_replaced_by_assignment():
    model, data = mlp(), Data()
    tap = GradNoiseTap(model, ema=0.9)
    data.loss(model).backward()
    tap.norm()
    tap.norm()
    for n in list(tap.m):  # e.g. a checkpoint restore
        tap.m[n] = torch.zeros_like(tap.m[n])
    # From m = 0: m_new = 0.1 g, so ||g - m_new|| = 0.9 ||g||.
    g = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert rel(tap.norm(), 0.9 * g) < 1e-5
    tap.m.clear()
    assert rel(tap.norm(), 0.9 * g) < 1e-5


def test_norm_is_zero_without_grads_and_needs_the_ema():
    model = mlp()
    assert GradNoiseTap(model).norm() == 0.0
    with pytest.raises(RuntimeError, match="ema=None"):
        GradNoiseTap(model, ema=None).norm()


# ---------------------------------------------------------------- gradient statistics


def measured_step(model, data, tap, opt=None, clip=None):
    if opt is not None:
        opt.zero_grad()
    data.loss(model).backward()
    if clip is not None:
        clip()
    tap.measure_grads()
    if opt is not None:
        opt.step()
    tap.measure_update()
    return tap.stats(sync=True)


def test_grad_norm_and_max_match_torch():
    model, data = mlp(depth=3), Data()
    tap = GradNoiseTap(model)
    s = measured_step(model, data, tap)
    grads = grads_of(model)
    total = float(torch.nn.utils.get_total_norm(grads))
    assert rel(s.grad_norm, total) < 1e-6
    assert rel(s.grad_norm, float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))) < 1e-6
    assert s.max_abs_grad == max(float(g.abs().max()) for g in grads)
    assert s.finite and s.step == 1


@pytest.mark.parametrize("noise", ["exact", "sketch"])
def test_undo_ema_restores_the_ema_and_a_nonfinite_step_stays_out(noise):
    model, data = mlp(), Data()
    tap = GradNoiseTap(model, noise=noise)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        measured_step(model, data, tap, opt)
    state = tap.ema_state()
    opt.zero_grad()
    data.loss(model).backward()
    tap.measure_grads()
    tap.undo_ema()  # a dropped step: as if it never happened
    after = tap.ema_state()
    for part in ("m", "sketch"):
        for k, v in state[part].items():
            torch.testing.assert_close(after[part][k], v, rtol=1e-5, atol=1e-7)
    opt.zero_grad()
    data.loss(model).backward()
    model[0].weight.grad.fill_(math.nan)  # NaN in a whole tensor: every bucket it reaches
    tap.measure_grads()
    tap.undo_ema()
    after = tap.ema_state()
    for part in ("m", "sketch"):
        for k, v in state[part].items():
            assert torch.isfinite(after[part][k]).all()
            torch.testing.assert_close(after[part][k], v, rtol=1e-5, atol=1e-7)


def test_without_max_abs_the_other_stats_are_unchanged():
    torch.manual_seed(3)
    a, da, db = mlp(depth=3), Data(), Data()
    b = copy.deepcopy(a)
    ta, tb = GradNoiseTap(a, noise="sketch"), GradNoiseTap(b, noise="sketch", max_abs=False)
    oa, ob = torch.optim.AdamW(a.parameters(), 1e-2), torch.optim.AdamW(b.parameters(), 1e-2)
    for _ in range(3):
        sa, sb = measured_step(a, da, ta, oa), measured_step(b, db, tb, ob)
    assert sb.finite and math.isnan(sb.max_abs_grad) and math.isfinite(sa.max_abs_grad)
    for f in ("grad_norm", "noise_norm", "update_norm", "param_norm", "processivity"):
        assert getattr(sb, f) == getattr(sa, f), f


@pytest.mark.parametrize("max_abs", [True, False])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_grad_sets_the_flag_and_spares_the_ema(bad, max_abs):
    model, data = mlp(), Data()
    tap = GradNoiseTap(model, max_abs=max_abs)
    assert measured_step(model, data, tap).finite
    m_before = {n: t.clone() for n, t in tap.m.items()}
    model.zero_grad()
    data.loss(model).backward()
    model[0].weight.grad[3, 2] = bad
    tap.measure_grads()
    tap.measure_update()
    s = tap.stats()
    assert not s.finite
    assert math.isnan(s.processivity)
    if not max_abs or math.isnan(bad):
        assert math.isnan(s.max_abs_grad)
    else:
        assert s.max_abs_grad == math.inf
    assert not math.isfinite(float(tap.pending_tensor()[GRAD_SQ]))
    for n, t in tap.m.items():  # a non-finite step leaves the EMA as it was
        torch.testing.assert_close(t, m_before[n], rtol=1e-6, atol=1e-7)
    model.zero_grad()
    s = measured_step(model, data, tap)
    assert s.finite and math.isfinite(s.noise_norm)


# ---------------------------------------------------------------- update statistics


# A model in one chunk is measured exactly (theta_before kept flat in the scratch); this
# chunk size splits the ~75k-parameter MLP into 3 chunks, so the sketch is what measures.
SKETCHED = 2**15


def run_update_comparison(
    make_opt, steps=50, exact=False, width=256, depth=2, chunk_numel=SKETCHED
):
    """Train; per step compare the tap's update stats with exact ones from clones."""
    model, data = mlp(width=width, depth=depth), Data()
    opt = make_opt(model.parameters())
    tap = GradNoiseTap(model, exact_update=exact, chunk_numel=chunk_numel)
    rows = []
    for _ in range(steps):
        opt.zero_grad()
        data.loss(model).backward()
        before = [p.detach().clone() for p in model.parameters()]
        g = flat64(grads_of(model))
        tap.measure_grads()
        opt.step()
        tap.measure_update()
        s = tap.stats()
        d = flat64([p.detach() - b for p, b in zip(model.parameters(), before)])
        upd = float(d.norm())
        cos = float(-(g @ d) / (g.norm() * d.norm()))
        pnorm = float(flat64([p.detach() for p in model.parameters()]).norm())
        rows.append((s, upd, cos, pnorm, float(g.norm())))
    assert (len(tap._chunks) > 1) == (sum(p.numel() for p in model.parameters()) > chunk_numel)
    return rows


OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.9),
    "adamw_tiny_lr": lambda ps: torch.optim.AdamW(ps, lr=1e-6),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_one_chunk_is_measured_exactly(name):
    rows = run_update_comparison(OPTIMIZERS[name], steps=20, chunk_numel=2**24)
    for s, upd, cos, pnorm, gnorm in rows:
        assert rel(s.update_norm, upd) < 1e-4
        assert s.processivity == pytest.approx(cos, abs=1e-4)
        assert rel(s.param_norm, pnorm) < 1e-5 and rel(s.grad_norm, gnorm) < 1e-5


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sketched_update_norm_and_processivity_vs_exact(name):
    # ~75k parameters: thousands of elements per sketch bucket, so the sketch really works.
    rows = run_update_comparison(OPTIMIZERS[name])
    upd_err = sorted(rel(s.update_norm, upd) for s, upd, *_ in rows)
    proc_err = [abs(s.processivity - cos) for s, _, cos, *_ in rows]
    # Precise claim (default sketch_dim=1024 -> 1031 buckets, std ~2.2% per step):
    # median relative error of ||delta theta|| <= 5%, every step <= 15%;
    # processivity within 0.05 of the exact cosine at every step.
    assert upd_err[len(upd_err) // 2] <= 0.05, upd_err
    assert upd_err[-1] <= 0.15, upd_err
    assert max(proc_err) <= 0.05, proc_err
    for s, _, _, pnorm, gnorm in rows:
        assert rel(s.param_norm, pnorm) < 1e-5
        assert rel(s.grad_norm, gnorm) < 1e-5
        assert s.finite


@pytest.mark.parametrize("chunk_numel", [2**24, 4096])  # one chunk; sketched chunks
def test_plain_sgd_processivity_is_one(chunk_numel):
    lr = 0.05
    for exact in (False, True):
        rows = run_update_comparison(
            lambda ps: torch.optim.SGD(ps, lr=lr),
            steps=10,
            exact=exact,
            width=128,
            chunk_numel=chunk_numel,
        )
        for s, upd, cos, _, gnorm in rows:
            assert cos == pytest.approx(1.0, abs=1e-5)
            assert s.processivity == pytest.approx(1.0, abs=1e-4)
            assert rel(s.update_norm, upd) < 1e-3  # the control variate makes SGD exact
            assert rel(s.update_norm, lr * gnorm) < 1e-3


def test_exact_update_gives_exact_values():
    rows = run_update_comparison(OPTIMIZERS["adamw"], steps=15, exact=True)
    for s, upd, cos, pnorm, _ in rows:
        assert rel(s.update_norm, upd) < 1e-5
        assert abs(s.processivity - cos) < 1e-5
        assert rel(s.param_norm, pnorm) < 1e-5


def test_measure_grads_alone_fills_grad_slots_only():
    model, data = mlp(), Data()
    tap = GradNoiseTap(model)
    data.loss(model).backward()
    tap.measure_grads()
    t = tap.pending_tensor()
    assert t.shape == (N_SLOTS,) and float(t[GRAD_SQ]) > 0 and float(t[RANKS]) == 1.0
    tap.publish()
    s = tap.stats()
    assert s.update_norm == 0.0 and s.processivity == 0.0 and s.grad_norm > 0
    with pytest.raises(RuntimeError, match="measure_grads"):
        GradNoiseTap(model).measure_update()


# ---------------------------------------------------------------- dtypes and layouts


def test_bf16_parameters_accumulate_in_fp32():
    model, data = mlp(width=128, dtype=torch.bfloat16), Data(dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    taps = [GradNoiseTap(model), GradNoiseTap(model, exact_update=True)]
    for _ in range(5):
        opt.zero_grad()
        data.loss(model).backward()
        before = [p.detach().clone() for p in model.parameters()]
        g = flat64(grads_of(model))
        for tap in taps:
            tap.measure_grads()
        opt.step()
        for tap in taps:
            tap.measure_update()
        d = flat64([p.detach() - b for p, b in zip(model.parameters(), before)])
        sk, ex = (tap.stats() for tap in taps)
        for s in (sk, ex):
            assert s.finite and math.isfinite(s.noise_norm)
            # The bf16 values summed in (at least) fp32: agrees with a float64 reference
            # far better than bf16's 3 significant digits.
            assert rel(s.grad_norm, float(g.norm())) < 1e-5
        d_exact = float(
            flat64(
                [p.detach().double() - b.double() for p, b in zip(model.parameters(), before)]
            ).norm()
        )
        assert rel(ex.update_norm, d_exact) < 1e-5
        assert rel(sk.update_norm, float(d.norm())) < 0.15
    assert all(t.dtype == torch.float32 for t in taps[0].m.values())


def test_float64_parameters():
    rows = run_update_comparison(
        lambda ps: torch.optim.AdamW(ps, lr=1e-3), steps=5, exact=False, width=64, depth=1
    )
    assert all(s.finite for s, *_ in rows)
    model, data = mlp(dtype=torch.float64), Data(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tap = GradNoiseTap(model)
    s = measured_step(model, data, tap, opt)
    assert s.finite and s.processivity == pytest.approx(1.0, abs=1e-9)
    assert all(t.dtype == torch.float64 for t in tap.m.values())


def test_small_chunks_split_parameters_and_agree():
    big, small = mlp(depth=2), mlp(depth=2)
    data_a, data_b = Data(), Data()
    taps = [
        GradNoiseTap(big, exact_update=True),
        GradNoiseTap(small, exact_update=True, chunk_numel=1000),
    ]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (big, small)]
    for _ in range(4):
        s_big = measured_step(big, data_a, taps[0], opts[0])
        s_small = measured_step(small, data_b, taps[1], opts[1])
        for f in ("grad_norm", "noise_norm", "update_norm", "param_norm", "processivity"):
            assert rel(getattr(s_small, f), getattr(s_big, f)) < 1e-5, f
        assert s_small.max_abs_grad == s_big.max_abs_grad
    assert len(taps[1]._chunks) > 5  # really split (including inside parameters)


def test_frozen_layers_and_missing_grads():
    model, data = mlp(depth=2), Data()
    for p in model[0].parameters():
        p.requires_grad_(False)
    model[2].bias.grad = None
    tap = GradNoiseTap(model)
    model.zero_grad(set_to_none=True)
    data.loss(model).backward()
    model[2].bias.grad = None  # e.g. an unused branch this step
    tap.measure_grads()
    tap.measure_update()
    s = tap.stats()
    with_grad = [p.grad for p in model.parameters() if p.grad is not None]
    assert rel(s.grad_norm, float(torch.nn.utils.get_total_norm(with_grad))) < 1e-6
    assert set(tap.m) == {"2.weight", "4.weight", "4.bias"}
    assert tap.norm() > 0.0
    # The bias gets a grad the next step: it joins the layout.
    model.zero_grad(set_to_none=True)
    data.loss(model).backward()
    tap.measure_grads()
    tap.measure_update()
    assert "2.bias" in tap.m and tap.stats().finite


def test_no_grads_at_all():
    tap = GradNoiseTap(mlp())
    tap.measure_grads()
    tap.measure_update()
    s = tap.stats()
    assert s.grad_norm == 0.0 and s.update_norm == 0.0 and s.finite


def test_ema_none_is_sketch_only():
    model, data = mlp(), Data()
    tap = GradNoiseTap(model, ema=None)
    s = measured_step(model, data, tap, torch.optim.SGD(model.parameters(), lr=0.1))
    assert math.isnan(s.noise_norm) and s.finite and s.update_norm > 0
    assert tap.m == {}


def test_sketched_noise_tracks_the_exact_ema():
    # noise="sketch": the EMA of S g instead of g (O(sketch_dim) memory, no pass over m).
    model, data = mlp(width=256, depth=2), Data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    exact, sketch = GradNoiseTap(model), GradNoiseTap(model, noise="sketch")
    errs = []
    for _ in range(50):
        opt.zero_grad()
        data.loss(model).backward()
        for tap in (exact, sketch):
            tap.measure_grads()
        opt.step()
        for tap in (exact, sketch):
            tap.measure_update()
        a, b = sketch.stats(), exact.stats()
        errs.append(rel(a.noise_norm, b.noise_norm))
        assert a.finite and rel(a.grad_norm, b.grad_norm) < 1e-6
    errs.sort()
    # relative std ~ sqrt(1 / (2 p)) = 2.2% for p = 1031
    assert errs[len(errs) // 2] <= 0.05 and errs[-1] <= 0.15, errs
    assert errs[-1] > 0.0  # really a sketch, not the exact EMA under another name
    assert sketch.m == {}
    assert sum(t.numel() for t in sketch._sk_m.values()) == sketch.sketch_buckets


def exact_update_norm(model, step):
    before = [p.detach().clone() for p in model.parameters()]
    step()
    return float(flat64([p.detach() - b for p, b in zip(model.parameters(), before)]).norm())


@pytest.mark.parametrize("chunk_numel", [2**24, SKETCHED])  # theta kept flat; sketched
def test_theta_reuse_notices_parameter_changes(chunk_numel):
    # theta_before (flat, or its sketch) is the previous step's theta_after while nothing
    # touched the parameters; in-place changes (load_state_dict, copy_, mul_) bump version
    # counters and force a fresh read, changes through .data need params_changed().
    model, data = mlp(width=256, depth=2), Data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tap = GradNoiseTap(model, chunk_numel=chunk_numel)
    other = mlp(width=256, depth=2, seed=3).state_dict()

    def step():
        opt.zero_grad()
        data.loss(model).backward()
        tap.measure_grads()
        opt.step()
        tap.measure_update()

    def change(how):
        if how == "load_state_dict":
            model.load_state_dict(other)
        elif how == "no_grad mul_":
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9)
        elif how.startswith(".data"):
            for p in model.parameters():
                p.data.mul_(0.9)
            if how == ".data + params_changed":
                tap.params_changed()

    for how in ("none", "load_state_dict", "no_grad mul_", ".data + params_changed"):
        step()
        change(how)
        upd = exact_update_norm(model, step)
        assert rel(tap.stats().update_norm, upd) < 0.15, how
    step()
    change(".data")  # invisible to version counters: the jump counts as part of the step
    upd = exact_update_norm(model, step)
    assert tap.stats().update_norm > 2 * upd


@pytest.mark.parametrize("chunk_numel", [2**24, 1000])
@pytest.mark.parametrize("exact", [False, True])
def test_clipping_after_measure_grads_keeps_the_measured_gradient(chunk_numel, exact):
    # The gradient is scaled between measure_grads and measure_update (clipping inside a
    # Guard). One chunk: the measured gradient buffer is kept; several: it is re-read and
    # note_grad_scale undoes the factor. Either way <g, delta> is that of the measured g.
    model, data = mlp(width=128, depth=2), Data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tap = GradNoiseTap(model, exact_update=exact, chunk_numel=chunk_numel)
    for _ in range(8):
        opt.zero_grad()
        data.loss(model).backward()
        g = flat64(grads_of(model))
        before = [p.detach().clone() for p in model.parameters()]
        tap.measure_grads()
        scale = torch.tensor(0.25)
        for p in model.parameters():
            p.grad.mul_(scale)
        tap.note_grad_scale(scale)
        opt.step()
        tap.measure_update()
        s = tap.stats()
        d = flat64([p.detach() - b for p, b in zip(model.parameters(), before)])
        cos = float(-(g @ d) / (g.norm() * d.norm()))
        assert abs(s.processivity - cos) < (1e-5 if exact else 0.05)
        assert rel(s.update_norm, float(d.norm())) < (1e-5 if exact else 0.15)
        assert rel(s.grad_norm, float(g.norm())) < 1e-6  # before the scaling
    assert (len(tap._chunks) > 1) == (chunk_numel == 1000)


def test_small_chunks_sketch_agrees_with_exact():
    rows_big = run_update_comparison(OPTIMIZERS["adamw"], steps=20)
    model, data = mlp(width=256, depth=2), Data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tap = GradNoiseTap(model, chunk_numel=5000)  # 15 chunks, each sketched on its own
    errs = []
    for _ in range(20):
        opt.zero_grad()
        data.loss(model).backward()
        tap.measure_grads()
        upd = exact_update_norm(model, opt.step)
        tap.measure_update()
        errs.append(rel(tap.stats().update_norm, upd))
    assert len(tap._chunks) > 10
    assert sorted(errs)[len(errs) // 2] <= 0.05 and max(errs) <= 0.15, errs
    assert all(s.finite for s, *_ in rows_big)


# ---------------------------------------------------------------- syncs and transfers

HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def test_exactly_one_device_to_host_transfer_per_step(monkeypatch):
    model, data = mlp(depth=2), Data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tap = GradNoiseTap(model)
    reads = []
    for name in HOST_READS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            reads.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    steps = 6
    for i in range(steps):
        opt.zero_grad()
        data.loss(model).backward()
        reads.clear()
        tap.measure_grads()
        assert reads == [], reads  # the measuring itself reads nothing back to the host
        opt.step()  # (CPU AdamW itself calls .item() on its step counter)
        reads.clear()
        tap.measure_update(publish=False)
        assert reads == [], reads
        tap.publish()
        assert tap.transfers == i + 1
    monkeypatch.undo()
    assert tap.stats().step == steps


def test_attach_registers_step_hooks():
    model, data = mlp(), Data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tap = GradNoiseTap(model)
    handles = tap.attach(opt)
    for _ in range(3):
        opt.zero_grad()
        data.loss(model).backward()
        opt.step()
    s = tap.stats()
    assert s.step == 3 and tap.transfers == 3 and s.processivity == pytest.approx(1.0, abs=1e-4)
    for h in handles:
        h.remove()
    opt.step()
    assert tap.transfers == 3


# ---------------------------------------------------------------- multi-rank layout


def test_combine_rank_stats_sums_and_maxes():
    model, data = mlp(), Data()
    tap = GradNoiseTap(model)
    measured_step(model, data, tap, torch.optim.AdamW(model.parameters(), lr=1e-3))
    t = tap.pending_tensor()
    other = t.clone()
    other[MAX_ABS_GRAD] = t[MAX_ABS_GRAD] * 3
    gathered = torch.stack([t, other])
    sharded = combine_rank_stats(gathered)
    assert float(sharded[RANKS]) == 2.0
    assert float(sharded[GRAD_SQ]) == pytest.approx(2 * float(t[GRAD_SQ]))
    assert float(sharded[MAX_ABS_GRAD]) == pytest.approx(3 * float(t[MAX_ABS_GRAD]))
    replicated = combine_rank_stats(torch.stack([t, t]), replicated=True)
    a, b = stats_from_values(replicated, 1, ema=0.9), stats_from_values(t, 1, ema=0.9)
    assert a == b
    # Processivity is a ratio: unchanged by summing identical ranks without dividing.
    summed = combine_rank_stats(torch.stack([t, t]))
    assert stats_from_values(summed, 1, ema=0.9).processivity == pytest.approx(b.processivity)
    tap.publish(replicated)
    assert tap.transfers == 2


def test_update_sq_is_the_control_variate_estimate():
    # delta = a g + r: the host formula on the raw sums equals a <g, delta> + ||S r||^2
    # computed directly, and is exact when the sketch slots are 0 (exact_update).
    gen = torch.Generator().manual_seed(0)
    g, r = (
        torch.randn(50, generator=gen, dtype=torch.float64),
        torch.randn(50, generator=gen, dtype=torch.float64),
    )
    r -= (r @ g) / (g @ g) * g  # orthogonal to g
    delta, before = -0.3 * g + r, torch.randn(50, generator=gen, dtype=torch.float64)
    S = torch.randn(7, 50, generator=gen, dtype=torch.float64)  # any linear sketch
    v = [0.0] * N_SLOTS
    sd, sg = S @ delta, S @ g
    v[SAMPLE_GRAD_SQ], v[UPDATE_SQ] = float(g @ g), float(sd @ sd)
    v[SKETCH_GRAD_SQ] = float(sg @ sg)
    v[GRAD_SQ] = 2.0 * v[SAMPLE_GRAD_SQ]  # the estimate reads the measured elements' own sum
    v[UPDATE_DOT_SKETCH] = float(sd @ sg)
    v[GRAD_DOT_BEFORE], v[GRAD_DOT_AFTER] = float(g @ before), float(g @ (before + delta))
    want = 0.3**2 * float(g @ g) + float((S @ r).square().sum())
    assert update_sq(v) == pytest.approx(want, rel=1e-9)
    v[SKETCH_GRAD_SQ] = 0.0  # exact_update: UPDATE_SQ is ||delta||^2 itself
    assert update_sq(v) == v[UPDATE_SQ]
    shifted = [1.0, 2.0] + v  # read at an offset (the Guard's pack)
    assert update_sq(shifted, 2) == v[UPDATE_SQ]


def test_stepstats_is_frozen_and_validation():
    s = StepStats(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, True, 1)
    with pytest.raises(AttributeError):
        s.grad_norm = 2.0  # type: ignore[misc]
    model = mlp()
    with pytest.raises(ValueError, match="ema"):
        GradNoiseTap(model, ema=1.0)
    with pytest.raises(TypeError, match="sketch_dim"):
        GradNoiseTap(model, sketch_dim=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sketch_dim"):
        GradNoiseTap(model, sketch_dim=0)
    with pytest.raises(TypeError, match="Module"):
        GradNoiseTap([1, 2])  # type: ignore[arg-type]
    assert GradNoiseTap(model, sketch_dim=256).sketch_buckets == 257
    assert GradNoiseTap(model).sketch_buckets == 1031


# ---------------------------------------------------------------- CUDA only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("noise", ["exact", "sketch"])
@pytest.mark.parametrize("chunk_numel", [2**24, 1000])  # one chunk; several
def test_cuda_no_sync_and_one_step_lag(chunk_numel, noise):
    model, data = mlp(depth=2).cuda(), Data()
    data.X, data.y = data.X.cuda(), data.y.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tap = GradNoiseTap(model, noise=noise, chunk_numel=chunk_numel)

    def lag_at_most_one_step():
        s = tap.stats()
        assert s is None or s.step <= tap.step

    cuda_steps_without_sync(tap, opt, lambda: data.loss(model).backward(), 3, lag_at_most_one_step)
    assert tap.stats(sync=True).step == tap.step == 3
    assert tap.transfers == 3
    cpu_model = mlp(depth=2)
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    assert tap.stats().param_norm == pytest.approx(
        float(flat64([p.detach() for p in cpu_model.parameters()]).norm()), rel=1e-5
    )


def test_extra_memory_bytes_counts_what_the_tap_holds():
    def extra(**kw):
        model, data = mlp(width=512, depth=4), Data()  # ~800k parameters
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        tap = GradNoiseTap(model, **kw)
        for _ in range(2):
            data.loss(model).backward()
            tap.measure_grads()
            opt.step()
            tap.measure_update()
            opt.zero_grad()
        return tap.extra_memory_bytes(), sum(p.numel() * 4 for p in model.parameters())

    ema, n_bytes = extra()  # the EMA (1x) plus one-chunk scratch buffers
    # 3 chunk-sized buffers (padded to whole sketch folds) + 2 sketches per chunk
    lean, _ = extra(noise="sketch", chunk_numel=2**15)
    copy_before, _ = extra(noise="sketch", chunk_numel=2**15, exact_update=True)
    assert ema >= 2 * n_bytes
    assert lean < 0.4 * n_bytes
    assert copy_before - lean >= 0.9 * n_bytes  # + theta_before (and no theta sketches)
