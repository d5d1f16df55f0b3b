"""Hugging Face ``transformers.Trainer`` integration (``pip install 'anet-lite[hf]'``).

Two ways in, one callback::

    # 1. same-step protection: the Trainer hands each step's loss to a Guard
    trainer = AnetTrainer(model=model, args=args, train_dataset=ds)   # adds the callback
    trainer.train()
    print(trainer.anet.explain())

    # 2. callback only (any Trainer subclass): watch, alert, slow down, stop
    cb = AnetTrainerCallback()
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    cb.attach(trainer)              # optional: put it before the report_to callbacks
    trainer.train()

A ``TrainerCallback`` is not given the step's loss before ``optimizer.step()`` (the loss
reaches callbacks only in ``on_log``, after the update). Hence two modes:

* **guard** (``AnetTrainer`` / ``AnetTrainerMixin``): ``training_step`` passes the loss to
  the callback; in ``on_train_begin`` the callback attaches a ``Guard`` to the Trainer's
  (unwrapped) optimizer and scheduler. The Guard's optimizer pre-hook sees the loss, the
  gradients and the lr of the step about to be applied and acts before the update:
  slow_down (param groups and the scheduler's ``base_lrs``; HF's schedulers are
  ``LambdaLR``s, so this lasts), skip_step (gradients set to None), rollback (in-memory
  healthy checkpoint of model, optimizer, scheduler and RNG), stop (the step is skipped and
  ``TrainerControl.should_training_stop`` is set: ``train()`` returns normally).
* **log** (the callback alone): ``on_log`` feeds a ``Monitor`` with HF's logged ``loss``,
  ``grad_norm`` and ``learning_rate`` (every ``logging_steps``; use 1). The verdict comes
  one step late, after that update was applied: slow_down (applies from the next step) and
  stop work; skip_step and rollback cannot be done from a callback and are recorded as not
  carried out (``cb.not_taken``), with a one-time warning pointing at ``AnetTrainer``.
  With ``logging_steps > 1`` (or a logging strategy other than "steps") the Monitor sees
  one step in ``logging_steps`` and acts that many steps late: ``on_train_begin`` warns and
  points at ``AnetTrainer``.

What the user sees: each action is logged (logger ``anet_lite``, WARNING, with its
explanation), an alert without action at INFO (once per incident). In guard mode a step
that alerts or acts sets ``control.should_log``: the Trainer logs that very step (its
loss, the ``anet/*`` metrics and ``anet/action``: 1 slow_down, 2 skip_step, 3 rollback,
4 stop, 5 clip), whatever ``logging_steps``; the alert's text goes to the ``report_to``
TensorBoard writer as ``anet/alert_text`` (once the callback is attached). Tombstones
default to ``<args.output_dir>/anet_tombstones.jsonl``, created on the first record only.
The callback's state (Monitor, policy, Guard bookkeeping) is saved in the Trainer's
checkpoints (``ExportableState``) and restored in place by ``train(resume_from_checkpoint=
...)``.

Both modes add ``anet/*`` metrics (``snapshot_metrics``) to the ``logs`` dict in
``on_log``, so ``report_to`` (TensorBoard, W&B, MLflow...) records them, and to
``state.log_history``. Reporting callbacks run in list order, so the callback must come
before them: ``attach(trainer)`` (done by ``AnetTrainer``) moves it there.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from ..monitor import Monitor
from ..monitor.explain import explain_safe
from ..monitor.policy import ACTIONS, Action
from ..records.tombstone import LazyTombstoneLog, TombstoneLog
from ..torch.guard import Guard, GuardStop
from ..verdict import Snapshot
from .sinks import _alert_text, snapshot_metrics

__all__ = ["AnetTrainer", "AnetTrainerCallback", "AnetTrainerMixin"]

log = logging.getLogger("anet_lite")
_STATE_KEY = "anet_state"  # the attribute HF's ExportableState carries


def _unwrap_optimizer(opt: Any) -> Any:
    """accelerate's ``AcceleratedOptimizer`` -> the torch optimizer whose hooks fire."""
    while type(opt).__name__ == "AcceleratedOptimizer" and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def _unwrap_scheduler(sched: Any) -> Any:
    while type(sched).__name__ == "AcceleratedScheduler" and hasattr(sched, "scheduler"):
        sched = sched.scheduler
    return sched


class _TrainerGuard(Guard):
    """A Guard whose "stop" skips the step and asks the Trainer to stop (no exception)."""

    stop_action: Optional[Action] = None

    def _carry_out(self, action: Action, snap: Snapshot) -> None:
        try:
            super()._carry_out(action, snap)
        except GuardStop as exc:
            self._skip()  # as with GuardStop, the step that triggered the stop is not applied
            self.stop_action = exc.action


class AnetTrainerCallback(TrainerCallback, ExportableState):
    """Watch a ``transformers.Trainer`` run; explain and act on failures (see module doc).

    monitor          a ``Monitor`` (default ``Monitor()``); its policy decides the actions
    act              False: watch, log and explain only
    tombstones       path or ``TombstoneLog`` for the actions taken (and, in log mode, not);
                     True (default): ``<args.output_dir>/anet_tombstones.jsonl``, created on
                     the first record only; None/False: none. Rank 0 only.
    prefix           metric prefix in ``logs`` (default ``"anet/"``)
    verbose          log each new alert without action at INFO (logger ``anet_lite``;
                     actions are always logged, at WARNING)
    **guard_kwargs   passed to ``Guard`` in guard mode (checkpoint_every, clip_grad_norm...)

    After training: ``last`` (latest Snapshot), ``alerts`` (alerting snapshots), ``actions``
    (carried out), ``not_taken`` (log mode: actions a callback cannot take), ``explain()``,
    ``mode`` ("guard" or "log"), ``guard`` (guard mode).
    """

    def __init__(
        self,
        monitor: Optional[Monitor] = None,
        *,
        act: bool = True,
        tombstones: Union[str, Path, TombstoneLog, bool, None] = True,
        prefix: str = "anet/",
        verbose: bool = True,
        **guard_kwargs: Any,
    ) -> None:
        self.monitor = monitor if monitor is not None else Monitor()
        self.act, self.prefix, self.verbose = bool(act), prefix, bool(verbose)
        self._tombstones_arg = tombstones
        self.tombstones: Optional[TombstoneLog] = None  # opened on rank 0 in on_train_begin
        self.guard_kwargs = guard_kwargs
        self.same_step = False  # set by AnetTrainerMixin: training_step calls observe()
        self.mode: Optional[str] = None
        self.guard: Optional[_TrainerGuard] = None
        self.last: Optional[Snapshot] = None
        self.alerts: List[Snapshot] = []
        self.actions: List[Action] = []
        self.not_taken: List[Action] = []
        self._loss: Any = None
        self._optimizer: Any = None
        self._scheduler: Any = None
        self._logged_step = -1
        self._seen_actions = 0
        self._closed = False
        self._warned = False
        self._handler: Any = None  # the Trainer's callback handler, once attached
        self._clip_args: Optional[tuple] = None  # (args, max_grad_norm) while the Guard clips
        self._pending_action = 0  # the largest action code since the last log
        self._texted: Optional[int] = None  # the last alert step put as text
        self.anet_state: Optional[Dict[str, Any]] = None  # set by HF's callback restore

    # ---- wiring ----------------------------------------------------------------------------

    def attach(self, trainer: Any) -> Any:
        """Add (or move) this callback right after ``DefaultFlowCallback``, before the
        ``report_to`` callbacks, so the ``anet/*`` metrics it adds in ``on_log`` reach them."""
        self._handler = trainer.callback_handler
        cbs = trainer.callback_handler.callbacks
        if self in cbs:
            cbs.remove(self)
        at = 0
        for i, cb in enumerate(cbs):
            if type(cb).__name__ == "DefaultFlowCallback":
                at = i + 1
        cbs.insert(at, self)
        return trainer

    def observe(self, loss: Any) -> None:
        """One micro-batch's loss as ``Trainer.training_step`` returns it (already divided by
        the accumulation steps, so the sum over a step is the step's loss)."""
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float().reshape(())
        self._loss = loss if self._loss is None else self._loss + loss
        if self.guard is not None and not self._closed:
            self.guard.observe(self._loss)  # the last call before optimizer.step() counts

    def explain(self, lang: str = "en") -> str:
        """The latest alert's explanation (or the latest snapshot's, if none alerted)."""
        snap = self.alerts[-1] if self.alerts else self.last
        if snap is None:
            return "anet_lite: no step observed yet"
        return f"step {snap.step}: {snap.status} — {snap.explain(lang)}"

    # ---- TrainerCallback hooks ---------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._optimizer = _unwrap_optimizer(kwargs.get("optimizer"))
        self._scheduler = _unwrap_scheduler(kwargs.get("lr_scheduler"))
        self.mode = "guard" if self.same_step and self._optimizer is not None else "log"
        tomb = self._tombstones_arg
        if tomb is True:
            tomb = Path(args.output_dir) / "anet_tombstones.jsonl"
        if self.tombstones is None and tomb not in (None, False) and _rank_zero():
            self.tombstones = LazyTombstoneLog(tomb) if isinstance(tomb, (str, Path)) else tomb
        if self.mode == "log":
            _warn_if_late(args)
        if self.mode == "guard" and (self.guard is None or self._closed):
            self._closed = False
            self._seen_actions = 0
            self.guard = _TrainerGuard(
                kwargs["model"],
                self._optimizer,
                monitor=self.monitor,
                scheduler=self._scheduler,
                tombstones=self.tombstones,
                act=self.act,
                **{**self._take_clip(args), **self.guard_kwargs},
            )
        self._resume(state)

    def _take_clip(self, args: Any) -> Dict[str, Any]:
        """Guard mode: the Trainer clips to ``max_grad_norm`` (default 1.0) BEFORE
        ``optimizer.step()``, so the Guard would only ever see clipped gradients (a gradient
        explosion invisible). The Guard clips instead, to the same norm, after measuring;
        ``args.max_grad_norm`` is 0 during ``train()`` and put back in ``on_train_end``."""
        clip = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
        if clip <= 0 or "clip_grad_norm" in self.guard_kwargs:
            return {}
        self._clip_args = (args, args.max_grad_norm)
        args.max_grad_norm = 0.0
        log.info("anet_lite: the Guard clips gradients to max_grad_norm=%g after measuring", clip)
        return {"clip_grad_norm": clip}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # after optimizer.step() (whose pre-hook ran the Guard), before on_log
        self._loss = None
        g = self.guard
        if g is None or self._closed:
            return None
        snap = g.last if g.seen else None
        if snap is not None and snap is not self.last:
            self._record(snap)
        new = g.actions[self._seen_actions :]
        self.actions.extend(new)
        self._seen_actions = len(g.actions)
        self._note_actions(new)
        if new or (snap is not None and snap.alert):
            control.should_log = True  # the Trainer logs this very step (on_log below)
        if g.stop_action is not None:
            control.should_training_stop = True
        return control

    def _note_actions(self, actions: List[Action]) -> None:
        for a in actions:
            self._pending_action = max(self._pending_action, ACTIONS.index(a.kind))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if not logs or "loss" not in logs:
            return None  # eval / summary logs
        step = int(state.global_step)
        if self.mode == "log" and step != self._logged_step:
            self._logged_step = step
            self._from_log(logs, step, control)
        snap = self.last
        if snap is not None:
            metrics = snapshot_metrics(snap, self.prefix)
            metrics[self.prefix + "action"] = float(self._pending_action)
            self._pending_action = 0
            if snap.alert and snap.step != self._texted:
                self._texted = snap.step
                self._tb_text(_alert_text(snap), step)
            logs.update(metrics)
            hist = state.log_history
            if hist and hist[-1].get("step") == step and "loss" in hist[-1]:
                hist[-1].update(metrics)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.guard is not None and not self._closed:
            self.guard.close()  # hooks removed; guard.rolled_back etc. stay readable
            self._closed = True
        if self._clip_args is not None:
            held, self._clip_args = self._clip_args, None
            held[0].max_grad_norm = held[1]

    # ---- internals -----------------------------------------------------------------------------

    def _tb_text(self, text: str, step: int) -> None:
        """The alert's words to the ``report_to`` TensorBoard writer, if there is one."""
        for cb in getattr(self._handler, "callbacks", None) or []:
            writer = getattr(cb, "tb_writer", None)
            if type(cb).__name__ == "TensorBoardCallback" and writer is not None:
                try:
                    writer.add_text("train/" + self.prefix + "alert_text", text, step)
                except Exception as exc:  # a sink's failure never touches training
                    log.warning("anet_lite: could not write the alert text: %r", exc)

    def _record(self, snap: Snapshot) -> None:
        self.last = snap
        if snap.alert:
            new = not self.alerts or self.alerts[-1].step != (snap.step or 0) - 1
            changed = bool(self.alerts) and self.alerts[-1].status != snap.status
            self.alerts.append(snap)
            # guard mode: the Guard logs its own alerts and actions
            if self.mode == "log" and self.verbose and (new or changed) and _rank_zero():
                log.info("anet_lite: step %s: %s — %s", snap.step, snap.status, explain_safe(snap))

    # ---- resume (HF's ExportableState) ---------------------------------------------------

    def state(self) -> Dict[str, Any]:
        """What the Trainer saves in ``trainer_state.json`` (``stateful_callbacks``): the
        Guard's state in guard mode, else the Monitor's (JSON)."""
        if self.guard is not None:
            st: Dict[str, Any] = {"guard": self.guard.state_dict()}
        else:
            st = {"monitor": self.monitor.state_dict()}
        return {
            "args": {"act": self.act, "prefix": self.prefix, "verbose": self.verbose},
            "attributes": {_STATE_KEY: st},
        }

    def _resume(self, state: Any) -> None:
        """On ``train(resume_from_checkpoint=...)``: go on from the saved state, in place
        (the Trainer's loaded state holds it; HF's own callback restore may have set it)."""
        st = self.anet_state
        if st is None:
            saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
            if isinstance(saved, list):
                saved = saved[0] if saved else None
            if isinstance(saved, dict):
                st = (saved.get("attributes") or {}).get(_STATE_KEY)
        self.anet_state = None
        if not isinstance(st, dict) or int(getattr(state, "global_step", 0) or 0) == 0:
            return
        if "guard" in st and self.guard is not None:
            self.guard.load_state_dict(st["guard"])
        elif "monitor" in st or "guard" in st:
            mon = st.get("monitor") or st["guard"]["monitor"]
            self.monitor.load_state_dict(mon)
        log.info("anet_lite: resumed the Monitor's state at step %s", state.global_step)

    def _from_log(self, logs: Dict[str, Any], step: int, control: Any) -> None:
        def num(key: str) -> Optional[float]:
            v = logs.get(key)
            return float(v) if isinstance(v, numbers.Real) else None

        snap = self.monitor.update(
            num("loss"), step=step, grad_norm=num("grad_norm"), lr=num("learning_rate")
        )
        self._record(snap)
        if not self.act:
            return
        action = self.monitor.decide(snap)
        if action.kind != "none":
            self._act_late(action, snap, step, control)

    def _act_late(self, action: Action, snap: Snapshot, step: int, control: Any) -> None:
        """Log mode: carry out what a callback can (slow_down, stop); record the rest."""
        done = action.kind == "stop" or (action.kind == "slow_down" and self._optimizer is not None)
        if action.kind == "slow_down" and done:
            for grp in self._optimizer.param_groups:
                grp["lr"] = grp["lr"] * action.factor
            sched = self._scheduler
            if sched is not None and hasattr(sched, "base_lrs"):
                sched.base_lrs = [b * action.factor for b in sched.base_lrs]
        elif action.kind == "stop":
            control.should_training_stop = True
        if done:
            self.actions.append(action)
            self._pending_action = max(self._pending_action, ACTIONS.index(action.kind))
            log.warning("anet_lite: %s (log mode) — %s", action.reason, explain_safe(snap))
        else:
            self.not_taken.append(action)
            msg = (
                f"anet_lite: {action.kind} cannot be done from a TrainerCallback (step "
                f"{step} was already applied); use AnetTrainer for same-step protection"
            )
            log.warning("%s — %s", msg, explain_safe(snap))
            if not self._warned:
                self._warned = True
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if self.tombstones is not None:
            self.tombstones.append(
                action.kind,
                policy=action.policy,
                scope={"step": step, "mode": "log"},
                evidence={
                    **{
                        k: v
                        for k, v in action.evidence.items()
                        if isinstance(v, (int, float, str, bool)) or v is None
                    },
                    "reason": action.reason,
                    "carried_out": done,
                },
            )


def _warn_if_late(args: Any) -> None:
    """Log mode sees the loss only when the Trainer logs it: every ``logging_steps``."""
    strategy = str(getattr(args.logging_strategy, "value", args.logging_strategy))
    every = int(getattr(args, "logging_steps", 1) or 1)
    if strategy == "steps" and every <= 1:
        return
    msg = (
        f"anet_lite: AnetTrainerCallback alone sees the loss only when the Trainer logs it "
        f"(logging_strategy={strategy!r}, logging_steps={every}): it would act "
        f"{every if strategy == 'steps' else 'many'} steps late. Use AnetTrainer (or "
        "AnetTrainerMixin) for same-step protection, or logging_steps=1."
    )
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


class AnetTrainerMixin:
    """Mix into a ``Trainer`` subclass for same-step protection (guard mode).

    ``anet=`` takes a configured ``AnetTrainerCallback``; otherwise one in ``callbacks=``
    is used, or a default one is created. ``training_step`` hands each micro-batch's loss
    to it; the callback is placed before the ``report_to`` callbacks.
    """

    anet: AnetTrainerCallback

    def __init__(self, *args: Any, anet: Optional[AnetTrainerCallback] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        handler = self.callback_handler  # type: ignore[attr-defined]
        if anet is None:
            anet = (
                next((c for c in handler.callbacks if isinstance(c, AnetTrainerCallback)), None)
                or AnetTrainerCallback()
            )
        anet.same_step = True
        anet.attach(self)
        self.anet = anet

    def _load_callback_state(self) -> None:
        """With ``restore_callback_states_from_checkpoint``, HF would replace ``self.anet`` by
        a fresh instance; the configured one restores itself in ``on_train_begin`` instead."""
        saved = self.state.stateful_callbacks  # type: ignore[attr-defined]
        name = type(self.anet).__name__
        held = saved.pop(name, None)
        try:
            super()._load_callback_state()  # type: ignore[misc]
        finally:
            if held is not None:
                saved[name] = held

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(*args, **kwargs)  # type: ignore[misc]
        self.anet.observe(loss)
        return loss


class AnetTrainer(AnetTrainerMixin, Trainer):
    """``transformers.Trainer`` with an ``AnetTrainerCallback`` in guard mode (``.anet``)."""


def _rank_zero() -> bool:
    try:
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    except Exception:
        return True
