"""What a user of the Guard sees: logged actions, a forgotten observe(), a stop that leaves
the last healthy model, a clip done before the Guard, resume, pickling of exceptions."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import pickle
import pkgutil

import pytest

torch = pytest.importorskip("torch")
from test_guard import Scripted  # noqa: E402  (one scripted policy for the Guard tests)
from torch import nn  # noqa: E402
from torch_fixtures import batches, char_mlp  # noqa: E402

import anet_lite  # noqa: E402
from anet_lite import Monitor, verify  # noqa: E402
from anet_lite.monitor.policy import Action  # noqa: E402
from anet_lite.torch import Guard, GuardStop  # noqa: E402

pytestmark = pytest.mark.torch


def _step(model, opt, guard, x, y, scale=1.0, observe=True):
    loss = nn.functional.cross_entropy(model(x), y) * scale
    loss.backward()
    if observe:
        guard.observe(loss)
    opt.step()
    opt.zero_grad()
    return float(loss.detach())


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _anet_records(caplog, level):
    return [r for r in caplog.records if r.name == "anet_lite" and r.levelno == level]


# ---- 1. actions are logged with their explanation; alerts without action at INFO ----------


def test_each_action_is_logged_at_warning_with_its_explanation(caplog):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, monitor=Monitor(policy=Scripted({3: "slow_down"})), on_error="raise")
    with caplog.at_level(logging.INFO, logger="anet_lite"):
        for x, y in batches(5):
            _step(model, opt, g, x, y)
    warn = _anet_records(caplog, logging.WARNING)
    assert len(warn) == 1
    text = warn[0].getMessage()
    # the action's reason and the snapshot's words (a warming-up snapshot here)
    assert "scripted slow_down" in text and g.last.explain() in text


def test_an_alert_without_action_is_logged_once_at_info(caplog):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, act=False, on_error="raise")
    with caplog.at_level(logging.INFO, logger="anet_lite"):
        for i, (x, y) in enumerate(batches(30)):
            _step(model, opt, g, x, y, scale=math.nan if i in (20, 21) else 1.0)
    info = _anet_records(caplog, logging.INFO)
    assert len(info) == 1  # two NaN steps in a row: one incident, one line
    assert "step 21: collapsed" in info[0].getMessage()
    assert "finite" in info[0].getMessage()  # the explanation's words
    assert _anet_records(caplog, logging.WARNING) == []
    assert g.actions == []


def test_guard_stop_message_carries_the_explanation_and_pickles():
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, monitor=Monitor(policy=Scripted({4: "stop"})), on_error="raise")
    with pytest.raises(GuardStop) as info:
        for x, y in batches(10):
            _step(model, opt, g, x, y)
    stop = info.value
    assert str(stop).startswith("scripted stop — ")
    assert g.last.explain() in str(stop)
    assert "no healthy checkpoint to restore" in str(stop)
    back = pickle.loads(pickle.dumps(stop))
    assert type(back) is GuardStop and str(back) == str(stop)
    assert back.action == stop.action and back.explanation == stop.explanation


# ---- #22.12: every public exception round-trips through pickle -----------------------------

_EXAMPLES = {
    "GuardStop": lambda cls: cls(Action("stop", reason="r", evidence={"loss": 1.0}), "why"),
    "LogFormatError": lambda cls: cls("bad cell", file="m.csv", line=3, column=2, column_name="x"),
    "MissingDependencyError": lambda cls: cls("pip install 'anet-lite[report]'"),
}


def _public_exceptions():
    """Every exception class defined in anet_lite whose module and name are public."""
    found = {}
    for info in pkgutil.walk_packages(anet_lite.__path__, "anet_lite."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:  # an optional framework that is not installed
            continue
        for name, obj in vars(mod).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("anet_lite")
                and not name.startswith("_")
            ):
                found[name] = obj
    return found


def test_every_public_exception_round_trips_through_pickle():
    found = _public_exceptions()
    assert set(found) == set(_EXAMPLES), "a new public exception needs an example here"
    for name, cls in found.items():
        exc = _EXAMPLES[name](cls)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and str(back) == str(exc) and back.args == exc.args, name
        assert vars(back).keys() == vars(exc).keys(), name


# ---- 2. a forgotten observe() -----------------------------------------------------------------


def test_steps_without_observe_warn_once_with_the_fix_and_last_is_never_none(caplog):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, on_error="raise")
    assert g.last.status == "warming_up" and "observe" in g.last.evidence["note"]
    with (
        caplog.at_level(logging.WARNING, logger="anet_lite"),
        pytest.warns(RuntimeWarning, match=r"observe\(loss\)") as caught,
    ):
        for x, y in batches(6):
            _step(model, opt, g, x, y, observe=False)
    assert len([w for w in caught if "observe" in str(w.message)]) == 1
    logged = _anet_records(caplog, logging.WARNING)
    assert len(logged) == 1 and "before optimizer.step()" in logged[0].getMessage()
    assert g.seen == 0 and g.last.step is None and g.last.explain().startswith("Warming up")


# ---- #22.13: a stop restores the last healthy checkpoint ---------------------------------------


def test_a_stop_restores_the_last_healthy_model_optimizer_and_scheduler(tmp_path):
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    log = tmp_path / "t.jsonl"
    script = {9: "stop"}  # steps 6-8 are bad updates the scripted policy lets through
    g = Guard(
        model,
        opt,
        scheduler=sched,
        monitor=Monitor(policy=Scripted(script)),
        checkpoint_every=5,
        tombstones=log,
        on_error="raise",
    )
    data = list(batches(10))
    x_eval, y_eval = data[-1]
    healthy = None
    with pytest.raises(GuardStop, match="restored the last healthy checkpoint, step 5"):
        for i, (x, y) in enumerate(data[:9]):
            if i == 5:
                with torch.no_grad():
                    before = float(nn.functional.cross_entropy(model(x_eval), y_eval))
                healthy = (_weights(model), before)
                for grp in opt.param_groups:
                    grp["lr"] = 30.0  # the bug: three huge updates break the model
            _step(model, opt, g, x, y)
            sched.step()
    weights, healthy_loss = healthy
    with torch.no_grad():
        loss_now = float(nn.functional.cross_entropy(model(x_eval), y_eval))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert loss_now == healthy_loss
    assert [grp["lr"] for grp in opt.param_groups] == [3e-3]  # the optimizer's too
    assert sched.last_epoch == 4  # as at step 5's checkpoint (before that loop's sched.step)
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["event"] == "stop" and rec["evidence"]["restored"] is True
    assert rec["evidence"]["checkpoint_step"] == 5
    assert rec["evidence"]["checkpoint"].startswith("sha256:")
    assert verify(log).ok


def test_a_broken_run_left_unrestored_is_worse_than_the_restored_one():
    """The same bad updates without a Guard leave a far worse model (the test can fail)."""
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    data = list(batches(10))
    x_eval, y_eval = data[-1]
    for i, (x, y) in enumerate(data[:9]):
        if i == 5:
            with torch.no_grad():
                healthy = float(nn.functional.cross_entropy(model(x_eval), y_eval))
            for grp in opt.param_groups:
                grp["lr"] = 30.0
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        broken = float(nn.functional.cross_entropy(model(x_eval), y_eval))
    assert not math.isfinite(broken) or broken > 3 * healthy


# ---- 5. tombstones are created on the first record only ---------------------------------------


def test_a_tombstone_path_is_created_on_the_first_record_only(tmp_path):
    path = tmp_path / "sub" / "t.jsonl"
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, monitor=Monitor(policy=Scripted({8: "skip_step"})), tombstones=path)
    data = list(batches(8))
    for x, y in data[:7]:
        _step(model, opt, g, x, y)
    assert not path.exists() and not path.parent.exists()  # a healthy run leaves nothing
    _step(model, opt, g, *data[7])
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["skip_step"]


# ---- 11. a clip done before the Guard ---------------------------------------------------------


def _clipped_run(clip, steps=40):
    model = char_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.05)
    g = Guard(model, opt, on_error="raise")
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        g.observe(loss)
        opt.step()
        opt.zero_grad()
    return g


def test_gradients_clipped_before_the_guard_are_named_with_the_fix(caplog):
    with (
        caplog.at_level(logging.WARNING, logger="anet_lite"),
        pytest.warns(RuntimeWarning, match=r"clip_grad_norm=0\.1\b"),
    ):
        g = _clipped_run(0.1)
    assert g.clipped_at == pytest.approx(0.1, rel=1e-4)
    assert len([r for r in _anet_records(caplog, logging.WARNING) if "clipped" in r.message]) == 1


def test_an_unclipped_run_is_not_called_clipped():
    g = _clipped_run(None)
    assert g.clipped_at is None and g.seen == 40


# ---- 10. resume ---------------------------------------------------------------------------------


def test_guard_state_round_trips_through_json_and_continues_the_monitor():
    model = char_mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = Guard(model, opt, on_error="raise")
    data = list(batches(140))
    for x, y in data[:90]:  # most of the Monitor's 100-step warm-up
        _step(model, opt, g, x, y)
    state = json.loads(json.dumps(g.state_dict()))
    assert state["monitor"]["policy"] is not None
    # a "restarted process": a fresh model and optimizer loaded from their own state
    model2 = char_mlp(seed=1)
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(model2.parameters(), 1e-3)
    opt2.load_state_dict(opt.state_dict())
    g2 = Guard(model2, opt2, on_error="raise")
    g2.load_state_dict(state)
    assert g2.step == 90 and g2.monitor.state_dict() == g.monitor.state_dict()
    model3 = char_mlp(seed=1)  # the same restart without the Guard's state
    model3.load_state_dict(model.state_dict())
    opt3 = torch.optim.AdamW(model3.parameters(), 1e-3)
    opt3.load_state_dict(opt.state_dict())
    g3 = Guard(model3, opt3, on_error="raise")
    for x, y in data[90:]:
        _step(model, opt, g, x, y)
        _step(model2, opt2, g2, x, y)
        _step(model3, opt3, g3, x, y)
        assert (g2.last.step, g2.last.status) == (g.last.step, g.last.status)
    assert g2.last.status == "healthy" and g2.last.step == 140
    assert g3.last.status == "warming_up" and g3.last.step == 50  # a fresh Monitor starts over
    with pytest.raises(ValueError, match=r"Guard\.state_dict"):
        g2.load_state_dict({"version": 99})


@pytest.mark.parametrize("start_factor", [1e-3, 0.01])
@pytest.mark.parametrize("lag", [False, True])
def test_a_warm_up_from_a_tiny_start_factor_is_no_alert(start_factor, lag):
    # torch's LinearLR warm-up as torchvision's and timm's recipes set it: the lr rises
    # 100x-1000x between the first two steps. That first rise is the schedule's, for the
    # Monitor and for the same-step lr gate of the lagged (CUDA) path.
    model = char_mlp(seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start_factor, total_iters=20)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=280)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[20])
    guard = Guard(model, opt, scheduler=sched, on_error="raise", lag=lag)
    losses, alerts = [], []
    for x, y in batches(300, seed=3):
        losses.append(_step(model, opt, guard, x, y))
        sched.step()
        if guard.last.alert:
            alerts.append((guard.last.step, guard.last.evidence.get("cause")))
    assert losses[-1] < 0.8 * losses[0]  # it trained
    assert alerts == [] and guard.actions == []


def _two_groups(body_lr, head_lr, steps, at, new_body_lr):
    model = char_mlp(seed=4)
    opt = torch.optim.AdamW(
        [
            {"params": model[:3].parameters(), "lr": body_lr},
            {"params": model[3:].parameters(), "lr": head_lr},
        ]
    )
    guard = Guard(model, opt, on_error="raise")
    alerts = []
    for t, (x, y) in enumerate(batches(steps, seed=4)):
        if t == at:
            opt.param_groups[0]["lr"] = new_body_lr
        _step(model, opt, guard, x, y)
        if guard.last.alert:
            alerts.append((guard.last.step, guard.last.evidence.get("cause")))
    return guard, alerts


def test_the_guards_lr_is_every_groups_not_the_first_ones():
    # A body held at lr 0 in the first param group while the head trains, then given a
    # small lr (discriminative fine-tuning): the first group's lr alone went 0 -> 3e-4,
    # and the update read against it was a 1000x blow-up. Weighted by the groups' sizes,
    # the lr barely moved, as the update did.
    guard, alerts = _two_groups(0.0, 3e-3, 260, 150, 3e-4)
    assert alerts == [] and guard.actions == []
    # the body's lr x100 (most of the weights) is still an lr jump at its own step
    guard, alerts = _two_groups(3e-4, 3e-3, 200, 150, 3e-2)
    assert alerts[0] == (151, "lr_jump")


def test_an_lr_jump_in_one_group_is_undone_in_that_group():
    # The head's own lr x100 from step 150 (a per-group scheduler lambda: a bug in one
    # group). The Guard scales that group back to its healthy lr and leaves the body's
    # alone, where slowing every group by the jump of their mean would leave the head
    # 100x the body's lr still, and the body slowed down for nothing.
    def run(guarded, bug=100.0):
        model = char_mlp(seed=5)
        opt = torch.optim.AdamW(
            [
                {"params": model[:3].parameters(), "lr": 3e-3},
                {"params": model[3:].parameters(), "lr": 3e-3},
            ]
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [lambda s: 1.0, lambda s: bug if s >= 150 else 1.0]
        )
        guard = Guard(model, opt, scheduler=sched, on_error="raise", act=guarded)
        losses = []
        for x, y in batches(260, seed=5):
            losses.append(_step(model, opt, guard, x, y))
            sched.step()
        return guard, opt, losses

    guard, opt, losses = run(True)
    first = guard.actions[0]
    assert (first.step, first.kind, first.evidence["cause"]) == (151, "slow_down", "lr_jump")
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-3, 3e-3])
    assert guard.lr_scale == 1.0 and guard.group_lr_scale == pytest.approx([1.0, 0.01])
    assert guard.load_state_dict(guard.state_dict()) is None
    _, _, unguarded = run(False)
    _, _, clean = run(False, bug=1.0)
    end = [sum(v[-20:]) / 20 for v in (losses, unguarded, clean)]
    assert end[0] < 1.05 * end[2] < end[1]  # as the clean run, where the bug's is worse


@pytest.mark.parametrize("lag", [False, True])
def test_layers_unfrozen_mid_run_are_measured_anew_not_alarmed(lag, caplog):
    # A head trained alone for 150 steps, then the body unfrozen (requires_grad), SGD with
    # momentum at one lr throughout. The Guard measures over the parameters that have
    # gradients: ||θ|| went 10 -> 72 in one step and the gradient 4x, which read as
    # runaway weights and gradient growth. Now those levels are learned again.
    model = char_mlp(seed=0)
    body = list(model[:3].parameters())
    for p in body:
        p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    guard = Guard(model, opt, on_error="raise", lag=lag)
    alerts, losses = [], []
    with caplog.at_level(logging.INFO, logger="anet_lite"):
        for t, (x, y) in enumerate(batches(260, seed=0)):
            if t == 150:
                for p in body:
                    p.requires_grad_(True)
            losses.append(_step(model, opt, guard, x, y))
            if guard.seen and guard.last.alert:
                alerts.append((guard.last.step, guard.last.evidence.get("cause")))
    assert alerts == [] and guard.actions == []
    assert sum(losses[-20:]) < sum(losses[130:150])  # the unfrozen body trained on
    assert any("learned again from this step" in r.getMessage() for r in caplog.records)



def test_a_linear_probe_gets_no_runaway_from_the_guards_own_return_to_its_lr():
    # Body frozen, a zero-initialised head trained alone (AdamW 1e-3). The Guard slows down
    # at step 2 (an update large against weights still near 0), then raises the lr back
    # towards the schedule; the head's norm then grows faster, by the Guard's own doing.
    # That is not a runaway (it drew a runaway_weights slow-down at step 117).
    torch.manual_seed(0)
    model = char_mlp()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
        nn.init.zeros_(p)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    guard = Guard(model, opt)
    lowest = 1.0
    for x, y in batches(160, bs=64):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        guard.observe(loss)
        opt.step()
        lowest = min(lowest, guard.lr_scale)
    assert guard.actions and guard.actions[0].kind == "slow_down"
    assert guard.lr_scale > lowest  # the Guard did raise the lr back
    causes = [a.evidence.get("cause") for a in guard.actions]
    assert "runaway_weights" not in causes, causes
