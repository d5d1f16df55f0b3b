"""AnetCallback: a real ``Trainer.fit`` with an lr bug mid-run; actions through Lightning."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
import repo_paths  # noqa: E402
from torch import nn  # noqa: E402
from torch_fixtures import batches, char_mlp  # noqa: E402

from anet_lite import Monitor, Policy, verify  # noqa: E402
from anet_lite.integrations.lightning import AnetCallback  # noqa: E402
from anet_lite.records.tombstone import read  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    # Lightning 2.6 + torch 2.13: FutureWarning (LeafSpec); and "few dataloader workers" hints
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*is a multiple of the batch size:UserWarning"),
]

ROOT = str(repo_paths.ROOT)
STEPS, ONSET = 300, 200


class CharModule(pl.LightningModule):
    """The char MLP of test_guard.py; LambdaLR multiplies the lr by ``factor`` from ONSET on."""

    def __init__(self, factor: float = 1.0, onset: int = ONSET) -> None:
        super().__init__()
        self.net = char_mlp()
        self.factor, self.onset = factor, onset
        self.losses: list = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), 3e-3)
        factor, onset = self.factor, self.onset
        # built in each process (a lambda does not pickle; DDP spawn pickles the module)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor if s >= onset else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer(root, callbacks=(), steps=STEPS, **kw):
    return pl.Trainer(
        max_steps=steps,
        max_epochs=1,
        accelerator="cpu",
        devices=kw.pop("devices", 1),
        callbacks=list(callbacks),
        logger=pl.loggers.CSVLogger(str(root), name="csv"),
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
        **kw,
    )


def loader(n=STEPS):
    return torch.utils.data.DataLoader(list(batches(n)), batch_size=None)


def fit(root, callback=None, factor=100.0):
    model = CharModule(factor)
    tr = trainer(root, [callback] if callback is not None else [])
    tr.fit(model, loader())
    return model, tr


def tail(losses, k=20):
    return sum(losses[-k:]) / k


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The same run with the lr bug and no callback: it diverges."""
    model, _ = fit(tmp_path_factory.mktemp("broken"))
    return model.losses


def test_lr_bug_slowed_down_at_the_fault_step(tmp_path, broken):
    path = tmp_path / "tombstones.jsonl"
    cb = AnetCallback(tombstones=path, checkpoint_every=50, on_error="raise")
    model, tr = fit(tmp_path, cb)
    g = cb.guard
    assert tr.global_step == STEPS and g.step == STEPS and cb.stopped is None
    # acted on the very step whose lr is 100x, before that update was applied
    first = g.actions[0]
    assert first.kind == "slow_down" and first.step == ONSET + 1
    assert first.factor == pytest.approx(0.01)
    assert all(math.isfinite(v) for v in model.losses)
    assert math.isfinite(tail(model.losses))
    assert not math.isfinite(tail(broken)) or tail(broken) > 1.3 * tail(model.losses)
    # tombstones: one record per action, chain intact
    recs = read(path)
    assert [r["event"] for r in recs] == [a.kind for a in g.actions]
    assert recs[0]["scope"]["step"] == ONSET + 1
    assert verify(path)
    # the scheduler's base_lrs were scaled too: the lr stayed down after LambdaLR's steps
    opt = tr.optimizers[0]
    assert opt.param_groups[0]["lr"] <= 3e-3 * 100 * 0.011
    # the snapshot reached Lightning's logger, namespaced anet/...
    for key in ("anet/theta", "anet/f_total", "anet/zscore", "anet/status_code", "anet/alert"):
        assert key in tr.callback_metrics
    csv = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert {"anet/theta", "anet/grad_norm", "anet/lr", "anet/status_code"} <= set(header)
    # logged on Lightning's schedule, and at once at each step that alerted or acted
    steps = [int(row.split(",")[header.index("step")]) for row in csv[1:]]
    alert_col = header.index("anet/alert")
    off_schedule = [st for st in steps if (st + 1) % 10]
    # (Lightning's x axis: the step count before this batch's update, so step 201 -> 200)
    assert ONSET in steps and set(range(9, STEPS, 10)) <= set(steps)
    for row in csv[1:]:
        cells = row.split(",")
        if (int(cells[header.index("step")]) + 1) % 10:
            assert float(cells[alert_col]) == 1.0  # only alerting steps come off schedule
    assert off_schedule and len(off_schedule) < STEPS // 10


def test_rollback_then_stop_end_fit_cleanly(tmp_path):
    """No slow-down or skip rungs: roll back to step 200, then stop via trainer.should_stop."""
    path = tmp_path / "t.jsonl"
    policy = Policy(max_slowdowns=0, max_skips=0, max_rollbacks=1)
    cb = AnetCallback(
        monitor=Monitor(policy=policy), tombstones=path, checkpoint_every=50, on_error="raise"
    )
    model, tr = fit(tmp_path, cb)  # returns: no GuardStop escapes Lightning
    g = cb.guard
    kinds = [a.kind for a in g.actions]
    assert kinds[0] == "rollback" and g.actions[0].step == ONSET + 1
    assert g.rolled_back[0] == (ONSET + 1, ONSET + 1)  # restored the step-200 checkpoint
    assert kinds[-1] == "stop" and cb.stopped is g.actions[-1]
    assert tr.should_stop and tr.global_step == cb.stopped.step < STEPS
    recs = read(path)
    assert [r["event"] for r in recs] == kinds
    assert recs[0]["evidence"]["checkpoint_step"] == ONSET
    assert verify(path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step:UserWarning")
def test_amp_grad_scaler_unscaled_loss_overflow_steps_not_seen(tmp_path):
    """16-mixed with a GradScaler (on CPU): the Guard sees the unscaled loss; the first
    steps overflow (init_scale 2**30) and the scaler skips them: not a collapse."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)
    cb = AnetCallback(tombstones=None, on_error="raise")
    model = CharModule(100.0)
    tr = trainer(tmp_path, [cb], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    tr.fit(model, loader())
    g = cb.guard
    assert scaler.get_scale() < 2.0**20  # there were overflows
    assert g.last.evidence["loss"] == pytest.approx(model.losses[-1], rel=1e-4)
    assert [(a.kind, a.step) for a in g.actions] == [("slow_down", ONSET + 1)]
    assert g.step == tr.global_step == STEPS
    assert math.isfinite(tail(model.losses))


def test_watch_only_and_no_tombstones(tmp_path):
    cb = AnetCallback(act=False, tombstones=None, log_metrics=False)
    _, tr = fit(tmp_path, cb, factor=1.0)
    assert cb.guard.actions == [] and cb.guard.last is not None
    assert cb.guard.last.step == STEPS
    assert "anet/theta" not in tr.callback_metrics
    assert not list(tmp_path.glob("*.jsonl"))


def test_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", os.path.join(ROOT, "examples", "lightning_callback.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "slow_down" in proc.stdout
    path = next(tmp_path.rglob("anet_tombstones.jsonl"))
    assert verify(path)


def test_missing_lightning_names_the_extra(monkeypatch):
    import importlib

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # import of these now fails
    monkeypatch.delitem(sys.modules, "anet_lite.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'anet-lite\[lightning\]'"):
        importlib.import_module("anet_lite.integrations.lightning")


def test_anet_lite_does_not_import_lightning():
    code = (
        "import sys, anet_lite, anet_lite.integrations, anet_lite.torch; "
        "assert not {'lightning', 'pytorch_lightning'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class Dump(pl.Callback):
    """Each DDP rank writes what its Guard decided (ddp_spawn returns only rank 0's state)."""

    def __init__(self, anet: AnetCallback, out: str) -> None:
        self.anet, self.out = anet, out

    def on_fit_end(self, trainer, pl_module):
        g = self.anet.guard
        res = {
            "actions": [[a.step, a.kind] for a in g.actions],
            "finite": all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()),
            "gns": "gns" in (g.last.evidence if g.last else {}),
            "world": g.world_size,
        }
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(res, f)


@pytest.mark.slow
def test_ddp_two_cpu_processes_same_decision_rank0_writes(tmp_path):
    path = tmp_path / "t.jsonl"
    cb = AnetCallback(tombstones=path, checkpoint_every=50, batch_size=64, on_error="raise")
    tr = trainer(
        tmp_path,
        [cb, Dump(cb, str(tmp_path))],
        devices=2,
        strategy="ddp_spawn",
    )
    # 2 x STEPS batches: the distributed sampler gives each rank its own STEPS batches
    tr.fit(CharModule(100.0), loader(2 * STEPS))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["actions"] == r1["actions"]  # same decision, same step, on every rank
    assert r0["actions"][0] == [ONSET + 1, "slow_down"]
    assert r0["finite"] and r1["finite"] and r0["gns"]
    recs = read(path)  # rank 0 only: one record per action, not two
    assert [[r["scope"]["step"], r["event"]] for r in recs] == r0["actions"]
    assert verify(path)
