"""Guard: actions really change training, tombstones record them, errors never stop a run."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_fixtures import batches, char_mlp  # noqa: E402

from anet_lite import Monitor, Policy, verify  # noqa: E402
from anet_lite.torch import Guard, GuardStop  # noqa: E402
from anet_lite.verdict import Snapshot  # noqa: E402

pytestmark = pytest.mark.torch


def train(opt_name="adamw", lr=3e-3, factor=1.0, onset=10**9, steps=300, guard=True, **kw):
    model = char_mlp()
    opt = (
        torch.optim.AdamW(model.parameters(), lr)
        if opt_name == "adamw"
        else torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor if s >= onset else 1.0)
    g = (
        Guard(model, opt, scheduler=sched, checkpoint_every=50, on_error="raise", **kw)
        if guard
        else None
    )
    losses = []
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if g is not None:
            g.observe(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, g


def tail(losses, k=20):
    return sum(losses[-k:]) / k


@pytest.mark.parametrize("opt_name, lr", [("adamw", 3e-3), ("sgd", 0.05)])
def test_lr_times_100_mid_run_is_survived(opt_name, lr):
    healthy, _ = train(opt_name, lr)
    broken, _ = train(opt_name, lr, factor=100.0, onset=200, guard=False)
    guarded, g = train(opt_name, lr, factor=100.0, onset=200)
    assert not math.isfinite(tail(broken)) or tail(broken) > 1.5 * tail(healthy)  # it diverges
    assert math.isfinite(tail(guarded)) and tail(guarded) < 1.05 * tail(healthy)
    first = g.actions[0]
    assert first.kind == "slow_down" and first.step == 201 and first.factor == pytest.approx(0.01)


def test_a_too_high_lr_from_step_0_is_slowed_down_by_the_size_of_the_update():
    # AdamW at 10x the healthy lr from the first step: the first update moves the weights
    # by ~70% of their norm. The Guard sees it at step 2 and cuts the lr enough to bring
    # that back under half the 10% limit.
    healthy, _ = train(lr=3e-2, steps=300)
    broken, _ = train(lr=0.3, steps=300, guard=False)
    guarded, g = train(lr=0.3, steps=300)
    first = g.actions[0]
    assert first.kind == "slow_down" and first.step == 2
    rel = first.evidence["rel_update"]
    assert rel > 0.5 and first.factor == pytest.approx(0.5 * 0.1 / rel)
    assert tail(broken) > 1.2 * tail(healthy)
    assert tail(guarded) < tail(broken) - 0.3


def test_rmsprop_inflated_first_updates_are_not_slowed_down():
    # RMSprop at its default lr (0.01): its first update moves the weights by ~30 % of
    # their norm (no bias correction of its second moment), then less at every step. The
    # Guard knows its optimizer: no action; AdamW's first updates that large are (above).
    model = char_mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    g = Guard(model, opt, on_error="raise")
    assert g.monitor.strict_start is False
    assert Guard(char_mlp(), torch.optim.AdamW(model.parameters())).monitor.strict_start
    rels = []
    for x, y in batches(150):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        g.observe(loss)
        rels.append(g.last.evidence.get("rel_update"))
        opt.step()
        opt.zero_grad()
    first = next(r for r in rels if r is not None)
    assert first > 0.2 and not g.actions


def _one_step(model, opt, guard, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    guard.observe(loss)
    opt.step()
    opt.zero_grad()


def _state(model, opt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {
            k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
            for k, s in opt.state_dict()["state"].items()
        },
    )


def _same(a, b):
    ma, oa = a
    mb, ob = b
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert oa.keys() == ob.keys()
    for k in oa:
        for n in oa[k]:
            assert torch.equal(torch.as_tensor(oa[k][n]), torch.as_tensor(ob[k][n])), (k, n)


class Scripted(Policy):
    """A policy that returns the actions a test asks for (to exercise the Guard's hands)."""

    def __init__(self, script):
        super().__init__()
        self.script = dict(script)
        self.n = 0

    def decide(self, snap):
        from anet_lite.monitor.policy import Action

        self.n += 1
        kind = self.script.get(self.n, "none")
        return Action(
            kind, 0.5 if kind == "slow_down" else 1.0, f"scripted {kind}", {}, "drift", snap.step
        )


@pytest.mark.parametrize("noise", ["sketch", "exact"])
def test_skip_leaves_parameters_and_optimizer_state_unchanged(noise):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(
        model,
        opt,
        monitor=Monitor(policy=Scripted({6: "skip_step"})),
        noise=noise,
        on_error="raise",
    )
    data = list(batches(8))
    for x, y in data[:5]:
        _one_step(model, opt, g, x, y)
    before = _state(model, opt)
    ema_before = g.tap.ema_state()
    held = ema_before["sketch" if noise == "sketch" else "m"]
    assert held and all(float(v.abs().max()) > 0 for v in held.values())
    _one_step(model, opt, g, *data[5])
    _same(before, _state(model, opt))
    ema_after = g.tap.ema_state()
    for part in ("m", "sketch"):  # the dropped gradient is taken back out of the noise EMA
        assert ema_after[part].keys() == ema_before[part].keys()
        for k, v in ema_after[part].items():
            torch.testing.assert_close(v, ema_before[part][k], rtol=1e-4, atol=1e-6)
    _one_step(model, opt, g, *data[6])
    with pytest.raises(AssertionError):
        _same(before, _state(model, opt))  # the next step trains again


def test_slow_down_scales_every_group_and_the_scheduler():
    model = char_mlp()
    groups = [
        {"params": list(model[:3].parameters()), "lr": 1e-3},
        {"params": list(model[3:].parameters()), "lr": 2e-3},
    ]
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    g = Guard(
        model,
        opt,
        scheduler=sched,
        monitor=Monitor(policy=Scripted({3: "slow_down"})),
        recover_steps=10**6,
        on_error="raise",
    )
    for x, y in batches(5):
        _one_step(model, opt, g, x, y)
        sched.step()
    assert [grp["lr"] for grp in opt.param_groups] == pytest.approx([5e-4, 1e-3])
    assert sched.base_lrs == pytest.approx([5e-4, 1e-3])  # the scheduler does not undo it


def test_rollback_restores_bit_identical_state(tmp_path):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    log = tmp_path / "tombstones.jsonl"
    g = Guard(
        model,
        opt,
        scheduler=sched,
        monitor=Monitor(policy=Scripted({13: "rollback"})),
        checkpoint_every=10,
        tombstones=log,
        on_error="raise",
    )
    data = list(batches(13))
    saved = None
    for i, (x, y) in enumerate(data):
        _one_step(model, opt, g, x, y)
        sched.step()
        if i == 9:
            saved = _state(model, opt)
    _same(saved, _state(model, opt))  # after the rollback at step 13 (and its skipped update)
    assert g.rolled_back == [(11, 13)]
    rec = json.loads(log.read_text().splitlines()[0])
    assert rec["event"] == "rollback" and rec["scope"]["rolled_back_steps"] == [11, 13]
    assert (
        rec["evidence"]["checkpoint"].startswith("sha256:")
        and rec["evidence"]["checkpoint_step"] == 10
    )
    assert verify(log).ok


def test_rollback_from_a_folder_uses_weights_only(tmp_path):
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    g = Guard(
        model,
        opt,
        monitor=Monitor(policy=Scripted({7: "rollback"})),
        checkpoint_every=5,
        checkpoint_dir=tmp_path / "ck",
        on_error="raise",
    )
    data = list(batches(7))
    saved = None
    for i, (x, y) in enumerate(data):
        _one_step(model, opt, g, x, y)
        if i == 4:
            saved = _state(model, opt)
    _same(saved, _state(model, opt))
    assert g.checkpoint is None and g.checkpoint_path.exists()


def test_stop_raises_out_of_step_and_is_tombstoned(tmp_path):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(
        model,
        opt,
        monitor=Monitor(policy=Scripted({4: "stop"})),
        tombstones=tmp_path / "t.jsonl",
        on_error="raise",
    )
    with pytest.raises(GuardStop, match="scripted stop"):
        for x, y in batches(10):
            _one_step(model, opt, g, x, y)
    assert json.loads((tmp_path / "t.jsonl").read_text())["event"] == "stop"


def test_nan_loss_is_skipped_and_training_goes_on():
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, on_error="raise")
    data = list(batches(30))
    for i, (x, y) in enumerate(data):
        loss = nn.functional.cross_entropy(model(x), y) * (float("nan") if i == 20 else 1.0)
        loss.backward()
        g.observe(loss)
        opt.step()
        opt.zero_grad()
    assert g.actions[0].kind == "skip_step" and g.actions[0].step == 21
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_internal_error_never_stops_training(monkeypatch):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt)

    def boom(*a, **k):
        raise RuntimeError("monitor bug")

    monkeypatch.setattr(g.monitor, "update", boom)
    with pytest.warns(RuntimeWarning, match="training continues"):
        for x, y in batches(3):
            _one_step(model, opt, g, x, y)


def test_observe_is_needed_before_step():
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    Guard(model, opt)
    x, y = next(batches(1))
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.warns(RuntimeWarning, match="observe"):
        opt.step()


def test_clipping_inside_the_guard_records_the_norm_before_clipping():
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    g = Guard(model, opt, clip_grad_norm=1e-3, on_error="raise")
    x, y = next(batches(1))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    raw = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    g.observe(loss)
    opt.step()
    assert g.last.evidence["grad_norm"] == pytest.approx(raw, rel=1e-5)
    assert raw > 1e-2


def test_snapshot_evidence_from_the_tap():
    _, g = train(steps=60)
    snap = g.last
    assert isinstance(snap, Snapshot) and snap.step == 60
    for k in ("grad_norm", "step_norm", "param_norm", "step_processivity", "lr"):
        assert math.isfinite(snap.evidence[k]), k
    assert "max_abs_grad" not in snap.evidence  # the Guard's own tap skips that pass
    assert -1.0 <= snap.evidence["step_processivity"] <= 1.0


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_a_gradient_sign_bug_is_alerted_before_the_loss_blows_up(opt_name):
    # From step 150 every gradient is negated after backward (the optimizer climbs).
    torch.manual_seed(0)
    model = char_mlp()
    opt = (
        torch.optim.AdamW(model.parameters(), 3e-3)
        if opt_name == "adamw"
        else torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    )
    g = Guard(model, opt, on_error="raise", act=False)
    losses, alerts = [], []
    for i, (x, y) in enumerate(batches(200)):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if i >= 150:
            for p in model.parameters():
                p.grad.neg_()
        g.observe(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if g.last.alert:
            alerts.append((i, g.last.evidence["cause"]))
        if i == 149:  # the Guard feeds the Monitor its processivity
            assert "proc_lift" in g.last.evidence
    before = sum(losses[130:150]) / 20
    first = alerts[0][0]
    assert 150 <= first < 170, alerts[:3]
    assert losses[first] < 3 * before  # warned before the blow-up ...
    assert not math.isfinite(losses[-1]) or losses[-1] > 10 * before  # ... which comes
    assert any(c == "ascent" for _, c in alerts[:8]) or opt_name == "adamw"


def test_mark_declares_a_change_at_this_step():
    torch.manual_seed(0)
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = Guard(model, opt, on_error="raise")
    events = {}
    for i, (x, y) in enumerate(batches(40)):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        g.observe(loss)
        if i == 30:
            g.mark("curriculum_switch")
        opt.step()
        opt.zero_grad()
        events[i] = g.last.evidence.get("event")
    assert events[30] == "curriculum_switch"
    assert [e for i, e in events.items() if i != 30 and e == "curriculum_switch"] == []


def _digits_with_a_shard(
    declared: bool,
    onset: int = 350,
    k: int = 2,
    steps: int = 380,
    device: str = "cpu",
    **guard_kw,
):
    """An MLP on sklearn's digits (AdamW); labels permuted within the batch for ``k``
    steps from ``onset``. Returns the Guard and the weights at the start of every step
    from ``onset`` to ``onset + k + 1``."""
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    from anet_lite.torch.merge import digits_mlp  # the project's digits MLP (64-64-10)

    torch.manual_seed(0)
    model = digits_mlp().to(device)
    opt = torch.optim.AdamW(model.parameters(), 5e-3)
    g = Guard(model, opt, monitor=Monitor(declared=declared), on_error="raise", **guard_kw)
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for t in range(steps):
        if onset <= t <= onset + k + 1:
            weights[t] = [p.detach().cpu().clone() for p in model.parameters()]
        i = torch.randint(0, len(y), (64,), generator=gen)
        xb, yb = X[i], y[i]
        if onset <= t < onset + k:
            yb = yb[torch.randperm(64, generator=gen)]
        loss = nn.functional.cross_entropy(model(xb.to(device)), yb.to(device))
        loss.backward()
        if device != "cpu":
            torch.cuda.synchronize()  # the previous step's copy has landed: lag exactly 1
        g.observe(loss)
        opt.step()
        opt.zero_grad()
    return g, weights


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_declaring_loop_skips_every_batch_of_a_corrupted_shard():
    # The labels of two batches are shuffled: their loss is ~4.5x the untrained model's.
    # A loop that declares its data changes (Monitor(declared=True)) gets each skipped
    # as a bad batch and its weights come through the shard untouched; by default the
    # jump may be new data, so the Guard takes no action and the weights move.
    g, w = _digits_with_a_shard(declared=True)
    assert [(a.step, a.kind, a.evidence["cause"]) for a in g.actions] == [
        (351, "skip_step", "bad_batch"),
        (352, "skip_step", "bad_batch"),
    ]
    assert _same_weights(w[350], w[352])
    g, w = _digits_with_a_shard(declared=False)
    assert g.actions == []
    assert not _same_weights(w[350], w[352])


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ],
)
def test_without_the_gate_a_lagged_read_skips_a_shard_one_step_late(device):
    # On CUDA (and with lag=True on a CPU: the same code) the Guard reads each step's
    # numbers at the next step (no host sync). Without the same-step gate the first
    # shuffled batch's update goes through, and the skip for the second shard step's
    # numbers lands on the clean batch after it: the weights stop at the state after the
    # first shard batch, for two steps (tests/pytorch/test_guard_samestep.py: with the gate).
    g, w = _digits_with_a_shard(declared=True, device=device, lag=True, gate=False)
    assert [(a.step, a.kind, a.evidence["cause"]) for a in g.actions] == [
        (351, "skip_step", "bad_batch"),
        (352, "skip_step", "bad_batch"),
    ]
    assert not _same_weights(w[350], w[351])
    assert _same_weights(w[351], w[353])


def test_a_saturating_shard_gets_its_zero_gradient_steps_skipped():
    # A breast-cancer MLP (SGD with momentum) meets five batches with inputs scaled 300x:
    # its outputs saturate, and in float32 most of those batches give a loss of exactly 0
    # and a gradient norm of 0 (or ~1e-30). The Guard flags each and skips its update.
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    g = Guard(model, opt, on_error="raise")
    gen = torch.Generator().manual_seed(0)
    zero, causes = [], {}
    for t in range(230):
        i = torch.randint(0, len(y), (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(X[i] * (300.0 if 200 <= t < 205 else 1.0)), y[i])
        loss.backward()
        norm = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()) ** 0.5
        if norm < 1e-20:  # (1e-30 and below: its float32 sum of squares is exactly 0)
            zero.append(g.step + 1)  # (the Guard's step number for this batch)
        g.observe(loss)
        opt.step()
        opt.zero_grad()
        if g.last.alert:
            causes[g.last.step] = g.last.evidence["cause"]
    assert len(zero) >= 2 and all(s > 200 for s in zero)
    assert min(causes) > 200  # nothing before the shard
    assert [s for s, c in causes.items() if c == "zero_gradient"] == zero
    assert [(a.step, a.kind) for a in g.actions][:2] == [
        (zero[0], "skip_step"),
        (zero[1], "skip_step"),
    ]


def test_the_unpacked_cpu_read_gives_the_packed_numbers():
    # On CPU in one process the Guard reads the stats without packing them; a clip that
    # never bites takes the packed path. The Monitor must see the same numbers, bit for bit.
    seen = []
    for clip in (None, 1e9):
        torch.manual_seed(0)
        model = char_mlp()
        opt = torch.optim.AdamW(model.parameters(), 3e-3)
        g = Guard(model, opt, clip_grad_norm=clip, on_error="raise")
        evidence = []
        for i, (x, y) in enumerate(batches(40)):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            g.observe(loss if i % 3 else loss.item())  # a tensor or a float
            opt.step()
            opt.zero_grad()
            evidence.append(dict(g.last.evidence))
        seen.append(evidence)
    assert seen[0] == seen[1]
    assert seen[0][-1]["step_processivity"] == seen[0][-1]["step_processivity"]  # not NaN


def test_amp_grad_scaler_overflow_is_a_skipped_step_not_a_collapse():
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    g = Guard(model, opt, on_error="raise")
    for i, (x, y) in enumerate(batches(40)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        if i == 30:
            loss = loss * 1e35  # the scaled loss overflows: the scaler must skip this step
        scaler.scale(loss).backward()
        g.observe(loss)
        scaler.step(opt)  # unscales first: the Guard's pre-hook sees unscaled gradients
        scaler.update()
        opt.zero_grad()
    assert g.step == 39  # the overflow step never reached optimizer.step()
    assert g.actions == [] and g.last.status != "collapsed"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert scaler.get_scale() >= 2.0**14  # so a scaled gradient would read >= 1e4 ...
    assert g.last.evidence["grad_norm"] < 100.0  # ... but the Guard read the unscaled one


def test_amp_grad_scaler_with_a_fused_optimizer_is_unscaled_once_and_overflow_skipped():
    """A GradScaler lets a fused optimizer unscale inside its kernel (and skip an overflow
    step there): the Guard unscales in place before measuring, clears the optimizer's
    grad_scale so the kernel does not divide twice, and reads found_inf as a skipped step.
    Training is bit-identical to the same loop without the Guard."""

    def run(guarded):
        model = char_mlp()
        opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        g = Guard(model, opt, on_error="raise") if guarded else None
        before_overflow = None
        for i, (x, y) in enumerate(batches(40)):
            loss = nn.functional.cross_entropy(model(x), y)
            if i == 30:
                loss = loss * 1e35  # the scaled loss overflows
                before_overflow = [p.detach().clone() for p in model.parameters()]
            scaler.scale(loss).backward()
            if g is not None:
                g.observe(loss)
            scaler.step(opt)
            scaler.update()
            if i == 30:  # the fused kernel skipped the update
                assert all(torch.equal(a, b) for a, b in zip(before_overflow, model.parameters()))
            opt.zero_grad()
        return model, g, scaler

    plain, _, _ = run(False)
    model, g, scaler = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))
    assert g.actions == [] and g.last.status != "collapsed"
    assert scaler.get_scale() >= 2.0**14  # a scaled gradient would read >= 1e4 ...
    assert g.last.evidence["grad_norm"] < 100.0  # ... the Guard read the unscaled one
    assert not hasattr(g.optimizer, "grad_scale")  # the scaler's attributes are gone


def test_memory_low_keeps_the_guards_tap_small():
    def run(**kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2048, 2048), nn.Tanh(), nn.Linear(2048, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        guard = Guard(model, opt, checkpoint_every=0, on_error="raise", **kw)
        x, y = torch.randn(8, 2048), torch.randn(8, 1)
        for _ in range(2):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            guard.observe(loss)
            opt.step()
            opt.zero_grad()
        return guard, sum(p.numel() * p.element_size() for p in model.parameters())

    default, nbytes = run(sample=1)  # (sample="auto" samples the update on a CPU here)
    low, _ = run(memory="low")
    # 4.2M parameters fit one default chunk: measured whole, its scratch is ~4x the model;
    # "low" works in chunks of 2**20 elements
    assert default.tap.extra_memory_bytes() > 3 * nbytes
    assert low.tap.chunk_numel == 2**20
    assert low.tap.extra_memory_bytes() < nbytes
    # same run, same numbers: the update measured exactly (default) and sketched (low)
    exact, sketched = default.last.evidence["step_norm"], low.last.evidence["step_norm"]
    assert abs(sketched - exact) <= 0.1 * exact
    with pytest.raises(ValueError, match="memory"):
        Guard(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), 0.1), memory="tiny")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sample", [1, 4])
def test_cuda_guard_steps_and_checkpoints_do_not_sync(sample):
    """Whole Guard steps (observe + the hooks of a fused AdamW step, healthy checkpoints
    copied to pinned memory) under ``set_sync_debug_mode("error")``; a rollback then waits
    for the copies and restores the checkpointed state bit for bit."""
    model = char_mlp().cuda()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    g = Guard(model, opt, checkpoint_every=4, sample=sample, on_error="raise")
    saved = None
    for i, (x, y) in enumerate(batches(10)):
        loss = nn.functional.cross_entropy(model(x.cuda()), y.cuda())
        loss.backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            g.observe(loss)
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.zero_grad()
        if i == 7:
            saved = _state(model, opt)  # the Guard's checkpoint after step 8
    assert g.checkpoint is not None and g.checkpoint.step == 8
    g._rollback()
    _same(saved, _state(model, opt))


def test_the_lr_cap_is_lifted_once_after_a_healthy_stretch_and_a_later_cap_stays():
    # A slow-down caps the lr at 0.75x where trouble began. Healthy for recover_steps at
    # the cap, the Guard lifts it once (the slow-down was a precaution: a bad shard is not
    # the lr's fault) and the lr doubles back to the schedule's. A second slow-down's cap
    # stays for the rest of the run.
    import anet_lite.torch.guard as guard_mod

    seen = []
    after = guard_mod.Guard._after_step

    def spy(self):
        after(self)
        seen.append((self.step, self.lr_scale))

    guard_mod.Guard._after_step = spy
    try:
        _, g = train(
            steps=420,
            monitor=Monitor(policy=Scripted({150: "slow_down", 300: "slow_down"})),
            recover_steps=20,
        )
    finally:
        guard_mod.Guard._after_step = after
    scale = dict(seen)
    assert [(a.step, a.kind) for a in g.actions] == [(150, "slow_down"), (300, "slow_down")]
    assert scale[150] == pytest.approx(0.5) and scale[175] == pytest.approx(0.75)
    assert scale[299] == pytest.approx(1.0)  # the first cap was lifted
    assert scale[300] == pytest.approx(0.5) and scale[419] == pytest.approx(0.75)  # kept
    assert g._cap_lifts == 1 and g.state_dict()["cap_lifts"] == 1


def test_no_healthy_checkpoint_is_taken_while_an_incident_is_open():
    # A skip at step 120 opens an incident; it closes after recover_after (50) healthy
    # steps. The checkpoint due at step 150 falls inside it and is not taken (a step
    # between two alerts of a persistent bug is no state to come back to); the one at
    # step 200 is.
    class SkipOnce(Policy):
        def decide(self, snap):
            action = super().decide(snap)
            if snap.step == 120:  # as on an alert: the healthy streak starts over
                self.healthy_run = 0
                return self._take("skip_step", 1.0, "scripted", {}, snap, "drift")
            return action

    saved = []
    _, g = train(steps=151, monitor=Monitor(policy=SkipOnce()))
    saved.append(g.checkpoint.step)
    _, g = train(steps=201, monitor=Monitor(policy=SkipOnce()))
    saved.append(g.checkpoint.step)
    assert [(a.kind, a.step) for a in g.actions] == [("skip_step", 120)]
    assert saved == [100, 200]
