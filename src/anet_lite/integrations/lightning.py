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
  On the steps where Lightning writes to its loggers (``log_every_n_steps``, and the
  step at which the run stops): logging costs ~15 ms a step on CPU otherwise. A step that
  alerts or acts is written at once, whatever ``log_every_n_steps``: the same metrics plus
  ``anet/action`` (1 slow_down, 2 skip_step, 3 rollback, 4 stop, 5 clip) go straight to every
  logger (``logger.log_metrics(..., step)``), and to a TensorBoard logger the alert's text
  too (``anet/alert_text``, one entry per new incident or action). Every action is in the
  tombstones whatever the logging schedule, and logged (logger ``anet_lite``, WARNING).
* ``state_dict`` / ``load_state_dict``: Lightning's callback state in its checkpoints: the
  Guard's (Monitor, policy, lr bookkeeping); ``fit(ckpt_path=...)`` goes on with it.
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
* ``stop``: the Guard restores its last healthy checkpoint, then raises ``GuardStop``
  from inside this callback's hook; the callback catches it, drops this step's update
  (gradients to None) and sets ``trainer.should_stop = True``: Lightning ends ``fit``
  normally (checkpoints, loggers and ``on_fit_end`` run) and no exception escapes.
  ``callback.stopped`` holds the action.

Under DDP every rank reduces the same numbers in one collective and so takes the same
decision at the same step (including ``should_stop``); only rank 0 writes tombstones.
With a ``GradScaler`` (``precision="16-mixed"``) the loss is unscaled before the Guard sees
it, and a step whose scaled gradients overflowed is not shown to the Guard: the scaler skips
it (a skipped step, not a collapse). The Guard's step numbers are Lightning's: the step
being taken is ``trainer.global_step + 1`` (tombstones, actions, snapshots).
"""

from __future__ import annotations

import logging
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
from ..monitor.policy import ACTIONS
from ..records.tombstone import TombstoneLog
from ..torch.guard import Guard, GuardStop
from .sinks import _alert_text, snapshot_metrics

__all__ = ["AnetCallback"]

log = logging.getLogger("anet_lite")

TombstoneArg = Union[str, Path, TombstoneLog, bool, None]


class AnetCallback(pl.Callback):
    """Watch and protect ``Trainer.fit`` with anet-lite's ``Guard``.

    monitor          a ``Monitor`` (default ``Monitor()``); its policy decides the actions.
                     A fresh copy of its state is NOT made: one callback, one ``fit``.
    tombstones       a path or ``TombstoneLog``; True (default): ``<trainer.log_dir>/
                     anet_tombstones.jsonl`` (the logger's version folder), created on the
                     first record only; None/False: no tombstones. Rank 0 only.
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
        self._pushed: Optional[int] = None  # the last step written straight to the loggers
        self._texted: Optional[tuple] = None  # (step, status, cause, actions) last put as text
        self._seen_actions = 0
        self._resume: Optional[Dict[str, Any]] = None  # a checkpoint's state, until fit starts
        self._fitting = False

    # ---- set-up ------------------------------------------------------------------------

    def _tombstone_target(self, trainer: Any) -> Union[str, Path, TombstoneLog, None]:
        t = self.tombstones
        if t is True:
            folder = getattr(trainer, "log_dir", None) or trainer.default_root_dir
            return Path(folder) / "anet_tombstones.jsonl"  # opened on the first record
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
        self._logged = self._pushed = self._texted = None
        self._seen_actions = 0
        if self._resume is not None:
            self.guard.load_state_dict(self._resume)
            self._resume = None
        self._fitting = True

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
            log.warning("anet_lite: ending fit at step %s (GuardStop)", guard.step)

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
        if guard is None or not self.log_metrics or guard.seen == 0:
            return
        snap = guard.last
        acted = guard.actions[self._seen_actions :]
        self._seen_actions = len(guard.actions)
        if snap.step != self._pushed and (snap.alert or acted):
            self._push(trainer, snap, acted)  # at its own step, whatever log_every_n_steps
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

    def _push(self, trainer: Any, snap: Any, acted: list) -> None:
        """Write an alerting / acting step's metrics straight to every logger, at its step
        (and its text to a TensorBoard logger, once per new incident or action)."""
        self._pushed = snap.step
        metrics = snapshot_metrics(snap, self.prefix)
        kinds = [a.kind for a in acted]
        metrics[self.prefix + "action"] = float(max((ACTIONS.index(k) for k in kinds), default=0))
        step = _log_step(trainer)
        key = (snap.status, snap.evidence.get("cause"))
        prev = self._texted
        new = bool(kinds) or prev is None or prev[1:] != key or prev[0] != snap.step - 1
        self._texted = (snap.step, *key)
        text = _alert_text(snap) + (f" [actions: {', '.join(kinds)}]" if kinds else "")
        for lg in getattr(trainer, "loggers", None) or []:
            try:
                lg.log_metrics(metrics, step=step)
                add_text = getattr(getattr(lg, "experiment", None), "add_text", None)
                if new and callable(add_text) and type(lg).__name__ == "TensorBoardLogger":
                    add_text(self.prefix + "alert_text", text, step)
            except Exception as exc:  # a logger's failure never touches training
                log.warning("anet_lite: could not write to %s: %r", type(lg).__name__, exc)

    # ---- resume ------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Lightning saves this in its checkpoints: the Guard's state (``Guard.state_dict``)."""
        if self.guard is not None:
            return {"guard": self.guard.state_dict()}
        return {"guard": self._resume} if self._resume is not None else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Lightning hands back ``state_dict()`` on ``fit(ckpt_path=...)``; the Guard built in
        ``on_fit_start`` goes on from it (or the current one, if fit has started)."""
        st = state_dict.get("guard") if isinstance(state_dict, dict) else None
        if st is None:
            return
        if self.guard is not None and self._fitting:  # restored after on_fit_start
            self.guard.load_state_dict(st)
        else:
            self._resume = st

    # ---- tear-down ---------------------------------------------------------------------

    def _close(self) -> None:
        self._fitting = False
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


def _log_step(trainer: Any) -> int:
    """The step Lightning's own logging would give this batch's metrics (its x axis)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except Exception:
        return max(int(trainer.global_step) - 1, 0)


def _scaler(trainer: Any) -> Any:
    """The precision plugin's enabled ``GradScaler`` (``precision="16-mixed"``), else None."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    try:
        return scaler if scaler is not None and scaler.is_enabled() else None
    except Exception:
        return None
