"""AnetCallback as a user sees it: actions logged, alerts in TensorBoard at their own step
with ``log_every_n_steps=10``, tombstones under ``trainer.log_dir`` only when something
happened, and a save-and-resume through Lightning's checkpoint."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from test_lightning import CharModule, loader  # noqa: E402

from anet_lite import verify  # noqa: E402
from anet_lite.integrations.lightning import AnetCallback  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*is a multiple of the batch size:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*ModelCheckpoint.*:UserWarning"),
]

ONSET, STEPS = 120, 140  # after the Monitor's 100-step warm-up


def _trainer(root, cb, steps, **kw):
    return pl.Trainer(
        max_steps=steps,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        callbacks=[cb, *kw.pop("more", [])],
        logger=pl.loggers.TensorBoardLogger(str(root), name="tb"),
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        default_root_dir=str(root),
        **kw,
    )


def _events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_an_lr_bug_reaches_tensorboard_at_its_step_and_is_logged(tmp_path, caplog):
    cb = AnetCallback(checkpoint_every=50, on_error="raise")  # default tombstones
    tr = _trainer(tmp_path, cb, STEPS)
    with caplog.at_level(logging.WARNING, logger="anet_lite"):
        tr.fit(CharModule(100.0, ONSET), loader(STEPS))
    first = cb.guard.actions[0]
    assert first.kind == "slow_down" and first.step == ONSET + 1
    warned = [r.getMessage() for r in caplog.records if r.name == "anet_lite"]
    assert any(f"at step {ONSET + 1}: slow down" in m and "learning rate" in m for m in warned)
    # tombstones: under the logger's version folder (trainer.log_dir), chain intact
    tomb = tmp_path / "tb" / "version_0" / "anet_tombstones.jsonl"
    assert tr.log_dir == str(tomb.parent) and verify(tomb).records == len(cb.guard.actions)
    acc = _events(tomb.parent)
    alert = {e.step: e.value for e in acc.Scalars("anet/alert")}
    action = {e.step: e.value for e in acc.Scalars("anet/action")}
    # Lightning's x axis: the count before this batch's update (step 121 is written at 120)
    assert alert[ONSET] == 1.0 and action[ONSET] == 1.0  # slow_down, at its own step
    assert ONSET % 10 != 9 and all(s % 10 == 9 or alert[s] == 1.0 for s in alert)
    texts = [e for e in acc.Tensors("anet/alert_text/text_summary")]
    assert texts and texts[0].step == ONSET
    words = texts[0].tensor_proto.string_val[0].decode()
    assert f"step {ONSET + 1}: precursor" in words and "slow_down" in words


def test_a_healthy_run_leaves_no_tombstone_file(tmp_path):
    cb = AnetCallback(on_error="raise")
    tr = _trainer(tmp_path, cb, 30)
    tr.fit(CharModule(1.0), loader(30))
    assert cb.guard.actions == [] and cb.guard.seen == 30
    assert not list(tmp_path.rglob("*.jsonl"))


def test_save_and_resume_through_a_lightning_checkpoint(tmp_path):
    ck = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=110)
    cb = AnetCallback(tombstones=None, on_error="raise")
    _trainer(tmp_path, cb, 110, more=[ck], enable_checkpointing=True).fit(
        CharModule(1.0), loader(150)
    )
    path = next((tmp_path / "ck").glob("*.ckpt"))
    saved = torch.load(path, weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("AnetCallback")]
    assert state["guard"]["step"] == 110
    assert state["guard"]["monitor"] == cb.guard.monitor.state_dict()

    resumed = AnetCallback(tombstones=None, on_error="raise")
    tr = _trainer(tmp_path / "r", resumed, 150)
    tr.fit(CharModule(1.0), loader(150), ckpt_path=str(path))
    assert tr.global_step == 150 and resumed.guard.step == 150
    # the Monitor's 100-step warm-up was done before the save: a fresh one would still be
    # warming up 40 steps after the restart
    assert resumed.guard.last.status == "healthy"
    assert resumed.guard.seen == 110 + 40  # the restored count goes on
