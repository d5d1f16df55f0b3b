"""``AnetCallback``: the ``Guard`` as a Lightning callback (extra ``[lightning]``).

    from anet_lite.integrations.lightning import AnetCallback
    trainer = Trainer(callbacks=[AnetCallback(tombstones="run/tombstones.jsonl")])

Importing this module imports Lightning (``lightning.pytorch``, else ``pytorch_lightning``);
``anet_lite`` and ``anet_lite.integrations`` never import it.

How Lightning's hooks are used (one optimizer, automatic or manual optimization):

* ``on_fit_start``: build a ``Guard`` on ``trainer.strategy.model`` (the DDP-wrapped module
  under DDP, so the gradient noise scale is measured too), the trainer's first (torch)
  optimizer and its lr scheduler. The Guard's own optimizer *pre*-hook is removed: Lightning
  calls ``optimizer.step(closure)`` and the closure runs ``training_step`` and ``backward``
  inside ``step()``, after any pre-hook, so a pre-hook would see no gradients.
* ``on_before_backward``: add up this step's (detached) loss; with gradient accumulation
  Lightning already divides each micro-batch loss by ``accumulate_grad_batches``, so the sum
  is the mean loss of the step.
* ``on_before_optimizer_step``: after backward (and after AMP unscaling), before gradient
  clipping and before the update: ``guard.observe(loss)``, then the Guard measures the
  gradients, feeds the Monitor and carries out the policy's action on this very step. The
  Guard's post-hook (still registered) records the update statistics.
* ``on_train_batch_end``: ``pl_module.log_dict`` of θ, F_Total, Ṡ, processivity, z,
  status code, alert, precursor and every numeric evidence entry (loss, grad_norm, noise,
  gns, lr, lr_scale, ...), named ``anet/...``, ``on_step=True``: they reach the logger.
  Only on the steps where Lightning writes to its loggers (``log_every_n_steps``, and the
  step at which the run stops): logging costs ~15 ms a step on CPU otherwise. Every
  action is in the tombstones whatever the logging schedule.
* ``on_fit_end`` / ``on_exception``: remove the Guard's hooks (``callback.guard`` stays for
  inspection: ``.last``, ``.actions``, ``.rolled_back``).

Actions:

* ``slow_down``: the Guard scales every param group's lr AND the scheduler's ``base_lrs``
  (a ``LambdaLR`` would undo a write to ``param_groups`` alone).
* ``skip_step``: every gradient is set to None before the update (and before Lightning's
  gradient clipping), so ``optimizer.step`` leaves parameters and optimizer state alone.
* ``rollback``: the Guard's last healthy in-memory state (model, optimizer, scheduler, RNG;
  every ``checkpoint_every`` steps; ``checkpoint_dir`` keeps it in a folder instead).
  Rolling back to a Lightning ``ModelCheckpoint`` file is not supported (Lightning cannot
  reload its loop state in the middle of ``fit``); Lightning's loop counters
  (``global_step``, epoch) keep counting.
* ``stop``: the Guard raises ``GuardStop`` from inside this callback's hook; the callback
  catches it, drops this step's update (gradients to None) and sets
  ``trainer.should_stop = True``: Lightning ends ``fit`` normally (checkpoints, loggers
  and ``on_fit_end`` run) and no exception escapes. ``callback.stopped`` holds the action.

Under DDP every rank reduces the same numbers in one collective and so takes the same
decision at the same step (including ``should_stop``); only rank 0 writes tombstones.
With a ``GradScaler`` (``precision="16-mixed"``) the loss is unscaled before the Guard sees
it, and a step whose scaled gradients overflowed is not shown to the Guard: the scaler skips
it (a skipped step, not a collapse). The Guard's step numbers are Lightning's: the step
being taken is ``trainer.global_step + 1`` (tombstones, actions, snapshots).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(
            "anet_lite.integrations.lightning needs Lightning: pip install 'anet-lite[lightning]'"
        ) from exc

from ..monitor import Monitor
from ..tombstone import TombstoneLog
from ..torch.guard import Guard, GuardStop
from .sinks import snapshot_metrics

__all__ = ["AnetCallback"]

TombstoneArg = Union[str, Path, TombstoneLog, bool, None]


class AnetCallback(pl.Callback):
    """Watch and protect ``Trainer.fit`` with anet-lite's ``Guard``.

    monitor          a ``Monitor`` (default ``Monitor()``); its policy decides the actions.
                     A fresh copy of its state is NOT made: one callback, one ``fit``.
    tombstones       a path or ``TombstoneLog``; True (default): ``<default_root_dir>/
                     anet_tombstones.jsonl``; None/False: no tombstones. Rank 0 only.
    act              False: watch, explain and log only
    log_metrics      log the snapshot through ``pl_module.log_dict`` (``prefix`` + name)
    prog_bar         also show θ and the status code in the progress bar
    optimizer_index  which of the trainer's optimizers to guard (one only)
    batch_size       per-rank batch size, for the gradient noise scale under DDP
    **guard_kwargs   passed to ``Guard`` (checkpoint_every, checkpoint_dir, clip_grad_norm,
                     recover_steps, use_time, on_error, ...)
    """

    def __init__(
        self,
        *,
        monitor: Optional[Monitor] = None,
        tombstones: TombstoneArg = True,
        act: bool = True,
        log_metrics: bool = True,
        prog_bar: bool = False,
        prefix: str = "anet/",
        optimizer_index: int = 0,
        batch_size: Optional[int] = None,
        **guard_kwargs: Any,
    ) -> None:
        super().__init__()
        for bad in ("model", "optimizer", "scheduler", "tombstones", "act", "monitor"):
            if bad in guard_kwargs:
                raise TypeError(f"AnetCallback: {bad!r} is not a Guard keyword here")
        self.monitor = monitor
        self.tombstones = tombstones
        # not ``self.log``: Lightning sets ``callback.log = pl_module.log`` on every callback
        self.act, self.log_metrics = bool(act), bool(log_metrics)
        self.prog_bar, self.prefix = bool(prog_bar), prefix
        self.optimizer_index, self.batch_size = int(optimizer_index), batch_size
        self.guard_kwargs: Dict[str, Any] = dict(guard_kwargs)
        self.guard: Optional[Guard] = None
        self.stopped: Any = None  # the stop Action, once the Guard has stopped the run
        self._loss: Any = None
        self._logged: Optional[int] = None

    # ---- set-up ------------------------------------------------------------------------

    def _tombstone_target(self, trainer: Any) -> Union[str, Path, TombstoneLog, None]:
        t = self.tombstones
        if t is True:
            return os.path.join(trainer.default_root_dir, "anet_tombstones.jsonl")
        if t is False or t is None:
            return None
        return t

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._close()
        opts = trainer.optimizers
        if not opts:
            raise RuntimeError("AnetCallback: the trainer has no optimizer to guard")
        opt = opts[self.optimizer_index]
        opt = getattr(opt, "_optimizer", opt)  # a LightningOptimizer -> the torch optimizer
        sched = None
        for cfg in getattr(trainer, "lr_scheduler_configs", None) or []:
            if getattr(cfg, "opt_idx", None) in (None, self.optimizer_index):
                cand = cfg.scheduler
                if getattr(cand, "optimizer", opt) is opt:
                    sched = cand
                    break
        model = getattr(trainer.strategy, "model", None)
        if model is None:
            model = pl_module
        self.guard = Guard(
            model,
            opt,
            monitor=self.monitor,
            scheduler=sched,
            tombstones=self._tombstone_target(trainer),
            act=self.act,
            batch_size=self.batch_size,
            **self.guard_kwargs,
        )
        # Lightning runs the closure (forward + backward) INSIDE optimizer.step(), after
        # the step pre-hooks: the Guard's pre-hook would see no gradients. It is run from
        # on_before_optimizer_step instead; the post-hook stays.
        self.guard.detach_pre_hook()
        self.monitor = self.guard.monitor
        self.stopped = None
        self._loss = None
        self._logged = None

    # ---- per step ----------------------------------------------------------------------

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.guard is None or not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        scaler = _scaler(trainer)
        if scaler is not None:  # AMP hands this hook the SCALED loss
            scale = getattr(scaler, "_scale", None)  # a tensor: dividing by it does not sync
            loss = loss.float() / (scale if isinstance(scale, torch.Tensor) else scaler.get_scale())
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        guard = self.guard
        if guard is None or getattr(optimizer, "_optimizer", optimizer) is not guard.optimizer:
            return
        loss, self._loss = self._loss, None
        if loss is None or self._overflowed(trainer, guard.optimizer):
            return  # no backward ran (training_step returned None) / the scaler skips it
        guard.observe(loss)
        # number the Guard's steps as Lightning does (steps the scaler skipped, a resumed
        # run): this step is global_step + 1, in the Monitor, the actions and the tombstones
        guard.step = int(trainer.global_step)
        try:
            guard.before_step()
        except GuardStop as stop:
            # the tombstone is written; drop this update and let Lightning end fit cleanly
            guard.skip_step()
            self.stopped = stop.action
            trainer.should_stop = True

    @staticmethod
    def _overflowed(trainer: Any, optimizer: Any) -> bool:
        """True when a GradScaler found inf/NaN in this step's gradients (it skips the step)."""
        scaler = _scaler(trainer)
        if scaler is None:
            return False
        try:
            found = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
            return bool(sum(v.item() for v in found.values()))
        except Exception:
            return False

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        guard = self.guard
        if guard is None or not self.log_metrics or guard.last is None:
            return
        snap = guard.last
        if snap.step == self._logged or not _flushes(trainer):
            return  # no new snapshot, or the logger would not be written at this step
        self._logged = snap.step
        metrics = snapshot_metrics(snap, self.prefix)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=True, batch_size=1)
        if self.prog_bar:
            bar = {
                k: metrics[k]
                for k in (self.prefix + "theta", self.prefix + "status_code")
                if k in metrics
            }
            pl_module.log_dict(bar, on_step=True, on_epoch=False, prog_bar=True, logger=False)

    # ---- tear-down ---------------------------------------------------------------------

    def _close(self) -> None:
        if self.guard is not None:
            self.guard.close()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()


def _flushes(trainer: Any) -> bool:
    """Whether Lightning writes step metrics to its loggers at this step.

    ``self.log`` costs ~0.7 ms per metric on CPU (~15 ms for a full snapshot), and Lightning
    only hands step metrics to the loggers every ``log_every_n_steps``; logging in between
    would cost time for nothing.
    """
    try:
        return bool(trainer._logger_connector.should_update_logs)
    except Exception:
        return True


def _scaler(trainer: Any) -> Any:
    """The precision plugin's enabled ``GradScaler`` (``precision="16-mixed"``), else None."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    try:
        return scaler if scaler is not None and scaler.is_enabled() else None
    except Exception:
        return None
