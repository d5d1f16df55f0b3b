"""transformers.Trainer integration: a tiny GPT-2 on CPU, an lr bug mid-run, alerts and actions."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before transformers is imported: no hub
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import torch
from repo_paths import ROOT
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from anet_lite import Monitor, Policy
from anet_lite.integrations.hf import AnetTrainer, AnetTrainerCallback

pytestmark = pytest.mark.torch

SEQ, FAULT, STEPS = 32, 60, 200


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model gains nothing from threads; on shared cores they only spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def byte_dataset(n=256):
    """Byte-level tokens of the standard library's own source (no tokenizer, no download)."""
    import inspect

    text = (inspect.getsource(json.decoder) + inspect.getsource(json.encoder)).encode()
    ids = torch.tensor(list(text), dtype=torch.long)
    out = []
    for i in range(n):
        start = (i * 97) % (len(ids) - SEQ - 1)
        x = ids[start : start + SEQ]
        out.append({"input_ids": x, "labels": x.clone()})
    return out


def setup(tmp_path, *, fault=FAULT, steps=STEPS, trainer_cls=Trainer, targs=None, **kw):
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=256,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # the fault: a schedule bug multiplies the lr by 100 from step `fault` on
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if s >= fault else 1.0)
    base = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    args = TrainingArguments(**{**base, **(targs or {})})
    return trainer_cls(
        model=model, args=args, train_dataset=byte_dataset(), optimizers=(opt, sched), **kw
    )


def train_logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h and "anet/status_code" in h]


def test_callback_alone_alerts_one_step_late_and_slows_down(tmp_path):
    cb = AnetTrainerCallback(tombstones=tmp_path / "t.jsonl", verbose=False)
    trainer = setup(tmp_path, callbacks=[cb])
    cb.attach(trainer)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("AnetTrainerCallback") == names.index("DefaultFlowCallback") + 1
    trainer.train()
    assert cb.mode == "log" and cb.guard is None
    assert trainer.state.global_step == STEPS  # training ended normally
    first = cb.alerts[0]
    assert first.step == FAULT + 1  # HF's global_step is 1-based: the faulty update itself
    assert first.evidence["cause"] == "lr_jump"
    assert cb.actions[0].kind == "slow_down"
    # the slow-down reached the LambdaLR: later steps run at ~the intended lr again
    logs = train_logs(trainer)
    by_step = {h["step"]: h for h in logs}
    # one step late: the 100x update was applied before the callback heard of it
    assert by_step[FAULT + 2]["loss"] > 1.3 * by_step[FAULT]["loss"]
    assert logs[-1]["learning_rate"] < 2e-3
    assert any(h["anet/alert"] == 1.0 for h in logs)
    assert "learning rate" in first.explain().lower()
    assert cb.explain().startswith("step ")
    rows = [json.loads(ln) for ln in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert any("slow_down" in json.dumps(r) for r in rows)


def test_anet_trainer_acts_before_the_faulty_update(tmp_path):
    trainer = setup(tmp_path, trainer_cls=AnetTrainer)
    cb = trainer.anet
    trainer.train()
    assert cb.mode == "guard"
    assert trainer.state.global_step == STEPS
    first = cb.alerts[0]
    assert first.evidence["cause"] == "lr_jump"
    assert cb.actions[0].kind == "slow_down"
    logs = train_logs(trainer)
    by_step = {h["step"]: h for h in logs}
    # the Guard scaled the lr back inside optimizer.step(), before the update: no update ran
    # at 100x (HF logs the scheduler's get_last_lr(), computed before the Guard acted, so
    # the alert step itself still shows 0.1 in `learning_rate` and `anet/lr`)
    assert by_step[FAULT + 1]["anet/lr"] == pytest.approx(0.1)
    assert all(h["learning_rate"] < 2e-3 for h in logs if h["step"] > FAULT + 1)
    assert trainer.optimizer.param_groups[0]["lr"] < 2e-3
    before = by_step[FAULT]["loss"]
    assert all(math.isfinite(h["loss"]) and h["loss"] < 1.5 * before for h in logs[FAULT:])
    assert by_step[FAULT + 1]["anet/alert"] == 1.0
    assert "anet/theta" in by_step[STEPS]
    assert cb.explain().startswith(f"step {first.step}")


def test_stop_goes_through_trainer_control(tmp_path):
    policy = Policy(max_slowdowns=0, max_skips=0, max_rollbacks=0)
    cb = AnetTrainerCallback(Monitor(policy=policy), verbose=False)
    trainer = setup(tmp_path, fault=FAULT, steps=STEPS, trainer_cls=AnetTrainer, anet=cb)
    trainer.train()  # returns normally: no GuardStop escapes
    assert cb.actions[-1].kind == "stop"
    assert trainer.state.global_step == FAULT + 1  # stopped at the faulty step, update not applied


def test_skip_and_rollback_inside_the_trainer(tmp_path):
    policy = Policy(max_slowdowns=0, max_skips=1, max_rollbacks=1, cooldown=2)
    cb = AnetTrainerCallback(Monitor(policy=policy), verbose=False, checkpoint_every=50)
    trainer = setup(tmp_path, trainer_cls=AnetTrainer, anet=cb)
    trainer.train()
    skip, rollback, stop = cb.actions
    assert (skip.kind, skip.step) == ("skip_step", FAULT + 1)  # the 100x update never ran
    ck = (FAULT // 50) * 50  # the last healthy checkpoint before the fault
    assert rollback.kind == "rollback" and cb.guard.rolled_back == [(ck + 1, rollback.step)]
    # model, optimizer AND the LambdaLR went back to step ck: the bug returns FAULT-ck+1 later
    assert stop.kind == "stop" and stop.step == rollback.step + FAULT - ck + 1
    assert trainer.state.global_step == stop.step  # train() returned normally


def test_example_runs():
    import subprocess

    root = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", os.path.join(root, "examples", "hf_callback.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lr_jump" in proc.stdout or "lr" in proc.stdout


def test_accumulated_loss_and_report_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    targs = {"gradient_accumulation_steps": 2, "report_to": ["tensorboard"]}
    trainer = setup(tmp_path, fault=10**9, steps=20, trainer_cls=AnetTrainer, targs=targs)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("AnetTrainerCallback") < names.index("TensorBoardCallback")
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 20
    for h in logs:  # the Guard saw the same loss HF logs: the sum over the micro-batches
        # (transformers 4.x rounds the logged loss to 4 decimals; 5.x does not)
        assert h["anet/loss"] == pytest.approx(h["loss"], abs=1e-4)
    assert trainer.anet.alerts == []
    runs = [d for d, _, files in os.walk(tmp_path / "out") if any("tfevents" in f for f in files)]
    acc = EventAccumulator(runs[0])
    acc.Reload()
    assert "train/anet/status_code" in acc.Tags()["scalars"]
