"""The HF integration as a user sees it: actions logged, alerts reaching TensorBoard at their
own step with ``logging_steps=10``, a late callback warned about, tombstones under
``args.output_dir`` only when something happened, and a save-and-resume."""

from __future__ import annotations

import json
import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_hf import FAULT, one_thread, setup  # noqa: F401 - one_thread: an autouse fixture

from anet_lite import verify
from anet_lite.integrations.hf import AnetTrainer, AnetTrainerCallback

pytestmark = pytest.mark.torch


def _events(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {d for d, _, files in os.walk(root) if any("tfevents" in f for f in files)}
    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_anet_trainer_logs_the_action_step_to_tensorboard_with_logging_steps_10(tmp_path, caplog):
    pytest.importorskip("tensorboard")
    targs = {"logging_steps": 10, "report_to": ["tensorboard"]}
    trainer = setup(tmp_path, steps=FAULT + 10, trainer_cls=AnetTrainer, targs=targs)
    with caplog.at_level(logging.WARNING, logger="anet_lite"):
        trainer.train()
    cb = trainer.anet
    assert cb.actions[0].kind == "slow_down" and cb.actions[0].step == FAULT + 1
    warned = [r.getMessage() for r in caplog.records if r.name == "anet_lite"]
    assert any(f"at step {FAULT + 1}: slow down" in m and "learning rate" in m for m in warned)
    logged = {h["step"]: h for h in trainer.state.log_history if "anet/alert" in h}
    assert logged[FAULT + 1]["anet/alert"] == 1.0 and logged[FAULT + 1]["anet/action"] == 1.0
    assert (FAULT + 1) % 10  # not a step the Trainer would have logged by itself
    acc = _events(tmp_path / "out")
    alert = {e.step: e.value for e in acc.Scalars("train/anet/alert")}
    assert alert[FAULT + 1] == 1.0
    texts = acc.Tensors("train/anet/alert_text/text_summary")
    assert texts[0].step == FAULT + 1
    assert "lr_jump" in texts[0].tensor_proto.string_val[0].decode()
    # tombstones by default under args.output_dir
    tomb = tmp_path / "out" / "anet_tombstones.jsonl"
    assert verify(tomb).records == len(cb.actions)


def test_a_healthy_run_writes_no_tombstone_file(tmp_path):
    trainer = setup(tmp_path, fault=10**9, steps=10, trainer_cls=AnetTrainer)
    trainer.train()
    assert trainer.anet.actions == [] and trainer.anet.guard.seen == 10
    assert not list(tmp_path.rglob("*.jsonl"))


def test_the_callback_alone_with_logging_steps_10_warns_and_points_to_anet_trainer(
    tmp_path, caplog
):
    cb = AnetTrainerCallback()
    trainer = setup(tmp_path, steps=2, callbacks=[cb], targs={"logging_steps": 10})
    with (
        caplog.at_level(logging.WARNING, logger="anet_lite"),
        pytest.warns(RuntimeWarning, match="act 10 steps late.*AnetTrainer"),
    ):
        trainer.train()
    assert any("AnetTrainer" in r.getMessage() for r in caplog.records if r.name == "anet_lite")


def test_the_callback_alone_with_logging_steps_1_does_not_warn(tmp_path, recwarn):
    trainer = setup(tmp_path, steps=2, callbacks=[AnetTrainerCallback()])
    trainer.train()
    assert not [w for w in recwarn if "steps late" in str(w.message)]


def test_save_and_resume_through_a_trainer_checkpoint(tmp_path):
    targs = {"save_strategy": "steps", "save_steps": 110}
    first = setup(tmp_path, fault=10**9, steps=110, trainer_cls=AnetTrainer, targs=dict(targs))
    first.train()
    ckpt = tmp_path / "out" / "checkpoint-110"
    saved = json.loads((ckpt / "trainer_state.json").read_text())["stateful_callbacks"]
    st = saved["AnetTrainerCallback"]["attributes"]["anet_state"]["guard"]
    assert st["step"] == 110 and st["seen"] == 110

    again = setup(tmp_path, fault=10**9, steps=150, trainer_cls=AnetTrainer, targs=dict(targs))
    anet = again.anet
    again.train(resume_from_checkpoint=str(ckpt))
    assert again.anet is anet and anet.guard.step == 150 and anet.guard.seen == 150
    # the Monitor's 100-step warm-up was done before the save: a fresh one would still be
    # warming up 40 steps after the restart
    assert anet.last.status == "healthy"
