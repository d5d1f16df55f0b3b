"""``Guard``: the seed's "two hooks" — watch every optimizer step and act on the verdict.

    guard = Guard(model, optimizer, scheduler=sched, tombstones="run/tombstones.jsonl")
    for batch in loader:
        loss = model(batch); loss.backward()
        guard.observe(loss)          # before optimizer.step(): the faulty step itself is protected
        optimizer.step(); sched.step(); optimizer.zero_grad()

Per step, in the optimizer's step pre-hook: the tap measures the gradients on the device
(``GradNoiseTap.measure_grads``), the loss and the gradient statistics (and the previous
step's update statistics) are packed into ONE small tensor, summed across ranks in ONE
collective when torch.distributed is initialised, read once, and fed to the Monitor (on
CPU in one process, without clipping, the same numbers are read without packing them);
the Monitor's decision is carried out before the update is applied:

* ``slow_down(f)``: every param group's lr and the scheduler's ``base_lrs`` x f; once
  healthy for ``recover_steps`` the lr doubles back, never above 0.75x the lr at which
  trouble began nor above the largest lr seen healthy. After ``CAP_LIFT`` (1) x
  ``recover_steps`` steps with the status "healthy" at that cap, the cap is lifted once (a
  slow-down after a bad shard was a precaution, not proof that the lr was wrong); a cap
  set by a later slow-down stays.
* ``skip_step``: every gradient is set to None, so the optimizer leaves parameters AND
  state untouched (zeroed gradients would still move Adam through its momentum).
* ``rollback``: model, optimizer, scheduler and RNG states are restored bit-for-bit from
  the last healthy checkpoint (CPU memory, or ``checkpoint_dir`` with ``torch.save`` /
  ``torch.load(weights_only=True)``), the Monitor's statistics too; this step is skipped;
  the rolled-back step range is recorded (``guard.rolled_back``) so batches can be skipped.
* ``stop``: the last healthy checkpoint (model, optimizer, scheduler) is restored, so the
  model left behind is the last healthy one, then ``GuardStop`` is raised out of
  ``optimizer.step()`` (its message: what was done and why). The tombstone says whether a
  checkpoint was restored, and which.

Every action is logged (logger ``anet_lite``) at WARNING with its explanation; an alert the
policy takes no action on is logged at INFO (once per incident or change of cause). A step
taken without ``guard.observe(loss)`` is warned about once, with the fix; ``guard.last`` is
then a "no step observed yet" snapshot, never None. When the measured gradient norm sits
at one value step after step, the gradients were clipped before the Guard saw them: that
is warned about once (pass ``clip_grad_norm`` to the Guard instead).

Tombstones: none unless ``tombstones=`` is given (a plain loop has no output folder of its
own to put them in); a path is created on the first record, never before. The Lightning and
HF callbacks default to their framework's output folder (see ``docs/integrations.md``).
``state_dict`` / ``load_state_dict`` carry the Monitor (and policy) state and the lr
bookkeeping across a restart.

The update statistics (‖Δθ‖, cos(−g, Δθ)) of a step are known only after it, so they
reach the Monitor with the next step's pack (one step late; the lr, loss and gradients are
on time). On GPU the whole pack is read one step late (no sync): decisions then act on
the following step. Every action goes to the tombstone log (rank 0 only) with evidence
and scope. Every rank sees the same reduced numbers and so takes the same decision at the
same step. An internal error never stops training (``on_error="warn"``), and a
``GradScaler`` overflow is a skipped step, not a collapse: the scaler skips
``optimizer.step()``, or, for a fused optimizer, runs it with ``found_inf`` set, which the
Guard reads as a skipped step (it also unscales such an optimizer's gradients itself
before measuring them). Pass ``clip_grad_norm`` to clip inside the Guard: the norm is
recorded BEFORE clipping (clipping yourself before ``step()`` records the clipped norm).

Same step (``gate``; on by default where the pack is read one step late, i.e. CUDA or
``lag=True``): before the update, on the device and with no sync, a ``GradGate`` flags a
gradient that is not finite or above 10x its running level; a fused optimizer then skips
the step in its kernel (``found_inf``), another has its gradients scaled down to that
level. The host checks the lr (a host number): above the Monitor's ``lr_jump`` x the
largest earlier lr, at a value the Monitor has not judged yet, the update is dropped.
The flag rides in the pack; when the host reads it the action is recorded (policy
"gate") and the Monitor's verdict on that step escalates as usual, without dropping the
next (clean) step again. docs/guard.md says what this costs.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, List, Optional, Union

import torch

from ..monitor import Monitor
from ..monitor.explain import explain_safe
from ..monitor.policy import Action
from ..records.tombstone import LazyTombstoneLog, TombstoneLog
from ..verdict import Snapshot
from . import checkpoint as ckpt_mod
from .dist import LocalGradNorm, NoiseScale, all_reduce_sum, is_sharded, world
from .measure import Row, as_row, row_device, row_scales, row_values, scale_vector
from .stepstats import (
    GRAD_DOT_AFTER,
    GRAD_DOT_BEFORE,
    GRAD_SQ,
    MAX_ABS_GRAD,
    N_GRAD_SLOTS,
    N_SLOTS,
    NOISE_SQ,
    PARAM_SQ,
    RANKS,
    SAMPLE_GRAD_SQ,
    cos_neg_grad_update,
    update_sq,
)
from .tap import GradGate, GradNoiseTap

__all__ = [
    "Guard",
    "GuardStop",
]


# pack layout (``stepstats`` slots): this step's gradient slots | the previous step's
# full stats row | loss sum, number of ranks that observed a loss, local (pre-all-reduce)
# grad sq, a GradScaler's found_inf for a fused optimizer, the same-step gate's flag. The
# update of step t is measured after its decision, so it rides along with step t + 1's
# collective.
_PREV = N_GRAD_SLOTS
_LOSS = N_GRAD_SLOTS + N_SLOTS
_FOUND_INF = _LOSS + 3
_GATED = _LOSS + 4  # 1.0: the same-step gate acted on this step on the device
_PACK = _LOSS + 5
_NOTHING = (0.0,) * N_SLOTS  # the previous step's row when nothing was measured
CAP_LIFT = 1  # x recover_steps healthy at the capped lr before the cap is lifted (once)
_CLIP_STEPS = 20  # steps at one gradient norm (to 1e-4 relative) that say "clipped before"
_REMEASURE_EVERY = 100  # steps: at most one re-learning of the norms' levels per this many
_STATE_VERSION = 1
log = logging.getLogger("anet_lite")

_NOT_YET = Snapshot(
    theta=1.0,
    sdot=0.0,
    proc=0.0,
    f_total=0.0,
    precursor=False,
    zscore=0.0,
    step=None,
    status="warming_up",
    alert=False,
    evidence={"note": "no step observed yet: call guard.observe(loss) before optimizer.step()"},
)


class GuardStop(RuntimeError):
    """Raised out of ``optimizer.step()`` when the policy decides to stop the run.

    ``action``: the policy's stop ``Action``; ``explanation``: why (the snapshot's words and
    what was restored). ``str(exc)`` carries both. Pickles (a stop raised in a worker
    process reaches its parent intact)."""

    def __init__(self, action: Action, explanation: str = "") -> None:
        text = action.reason + (f" — {explanation}" if explanation else "")
        super().__init__(text)
        self.action, self.explanation = action, explanation

    def __reduce__(self) -> Any:
        return (type(self), (self.action, self.explanation))


class Guard:
    """Watch and protect a PyTorch training loop (see the module docstring).

    model, optimizer       the ones being trained (DDP/FSDP-wrapped models are fine)
    monitor                a ``Monitor`` (default ``Monitor()``); its policy decides
    scheduler              an lr scheduler, kept consistent with slow-downs and rollbacks
    tombstones, run_log    a path or ``TombstoneLog`` / ``RunLog``; written on rank 0 only.
                           Default: no tombstones (a path is created on its first record)
    checkpoint_every       steps between healthy checkpoints (0: never; rollback unavailable)
    checkpoint_dir         keep checkpoints in a folder instead of CPU memory
    clip_grad_norm         clip to this total norm after measuring (None: no clipping)
    act                    False: watch and explain only
    ema, noise             the tap's gradient EMA; default ``noise="sketch"``: the EMA of the
                           gradient's sketch (O(sketch) memory, ~2% error on the noise
                           norm, no extra pass over the gradient); ``"exact"``: the
                           per-parameter EMA (``tap.m``, 1x the parameters, ~4 more passes)
    exact_update           measure the update from a copy of theta_before (+1x memory)
    memory                 ``"low"``: the tap works in chunks of 2**20 elements (and keeps an
                           exact EMA in int8): a fixed ~13-16 MiB beyond the model instead
                           of up to 4 x 64 MiB, for more ops per step (``GradNoiseTap``)
    sample                 measure the noise and the update on one element in ``sample``
                           (blocks, ``GradNoiseTap(sample=...)``); the gradient norm stays
                           exact. Default ``"auto"``: every element up to 2**24 (16.7M)
                           parameters, else a sample of at most 2**23 (16 at 100M: +0.9 ms
                           per step on an H100 instead of +5.6 ms; docs/benchmarks.md); on a
                           CPU from 2**21 (2.1M) the update on 1 in 16, the noise on every
                           element (docs/guard.md)
    tap                    a ``GradNoiseTap`` of your own (the Guard's is built with
                           ``max_abs=False``: no max |g| in the evidence, one pass less)
    batch_size             per-rank batch size, for the gradient noise scale under DDP
    use_time               True: the precursor's "two seconds" are wall-clock seconds;
                           default False: rate_hz x window_sec steps (deterministic runs)
    lag                    True: the host reads each step's numbers at the next step, with no
                           sync (the CUDA path, also on a CPU); default None: on CUDA only
    gate                   same-step protection on the device (``GradGate``; see "Same step"
                           in the module docstring). Default None: on where the host reads one
                           step late (CUDA); True / False: always / never (needs ``act``)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        monitor: Optional[Monitor] = None,
        scheduler: Any = None,
        tap: Optional[GradNoiseTap] = None,
        ema: Optional[float] = 0.9,
        noise: str = "sketch",
        exact_update: bool = False,
        memory: str = "default",
        sample: Union[int, str] = "auto",
        tombstones: Union[str, Path, TombstoneLog, None] = None,
        run_log: Any = None,
        checkpoint_every: int = 100,
        checkpoint_dir: Union[str, Path, None] = None,
        clip_grad_norm: Optional[float] = None,
        act: bool = True,
        recover_steps: int = 50,
        batch_size: Optional[int] = None,
        use_time: bool = False,
        process_group: Any = None,
        on_error: str = "warn",
        lag: Optional[bool] = None,
        gate: Optional[bool] = None,
    ) -> None:
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.monitor = monitor if monitor is not None else Monitor()
        if getattr(self.monitor, "strict_start", False) is None:
            self.monitor.strict_start = _uninflated_start(optimizer)
        policy = getattr(self.monitor, "policy", None)
        if getattr(policy, "clip", False) is None:
            policy.clip = True  # the Guard can carry out a "clip" (see Policy)
        self.tap = (
            tap
            if tap is not None
            else GradNoiseTap(
                model,
                ema,
                noise=noise,
                exact_update=exact_update,
                max_abs=False,
                memory=memory,
                sample=sample,
            )
        )
        self.group = process_group
        self.rank, self.world_size = world(process_group)
        self.sharded = is_sharded(model)
        lead = self.rank == 0
        if isinstance(tombstones, (str, Path)):
            tombstones = LazyTombstoneLog(tombstones) if lead else None
        self.tombstones = tombstones if lead else None
        if run_log is not None and lead:
            self.monitor.run_log = run_log
        self.checkpoint_every, self.checkpoint_dir = int(checkpoint_every), checkpoint_dir
        self.clip_grad_norm, self.act = clip_grad_norm, bool(act)
        self.recover_steps, self.use_time, self.on_error = int(recover_steps), use_time, on_error
        self.gns = self.noise_scale = None
        if self.world_size > 1 and type(model).__name__ == "DistributedDataParallel":
            try:
                self.gns = LocalGradNorm(model, process_group)
                self.noise_scale = NoiseScale(batch_size or 1, self.world_size)
            except Exception as exc:  # e.g. the user registered their own comm hook
                warnings.warn(f"anet_lite.Guard: gradient noise scale off ({exc})", stacklevel=2)
        self.step = 0
        self.seen = 0  # steps fed to the Monitor (0: ``last`` is the "not yet" snapshot)
        self._last: Optional[Snapshot] = None
        self.actions: List[Action] = []
        self.rolled_back: List[tuple] = []
        self.checkpoint: Optional[ckpt_mod.Checkpoint] = None
        self.checkpoint_path: Optional[Path] = None
        self.lr_scale, self._healthy = 1.0, 0
        self._scale_seen = 1.0  # the lr_scale the Monitor last saw
        self.lr_healthy_max = 0.0  # largest lr seen healthy at full scale
        self._group_lr_top: List[float] = []  # the same, per param group
        self.group_lr_scale: List[float] = []  # per group: an lr_jump in that group undone
        self.lr_cap = math.inf  # 0.75x the lr at which the last incident began
        self._settled = 0  # steps in a row with the Monitor's status "healthy"
        self._cap_lifts = 0  # the cap is lifted once; a cap set after that stays
        self._loss: Any = None
        self._prev: Optional[tuple] = None  # the tap's rows of the previous step
        self._skipped = False
        self._warned = False
        self._warned_observe = False
        self._logged_alert: Optional[tuple] = None  # (step, status, cause) last logged at INFO
        self._clip_run: List[float] = []  # the last gradient norms while they stay equal
        self.clipped_at: Optional[float] = None  # the norm the user's clip pinned, once seen
        self.clip_pin: Optional[float] = None  # the clip a "clip" action set (total norm)
        self._host: Optional[torch.Tensor] = None
        self._held: Optional[tuple] = None  # lag on a CPU: (the last pack, its step, lrs)
        self._lr_applied: Optional[float] = None  # the lr of the last update (a float)
        self._group_sizes: List[int] = []  # weights per param group (for _lr_now)
        self._measured_numel = 0  # elements with a gradient at the last step
        self._remeasured = -_REMEASURE_EVERY  # the step of the last measure_changed
        self._remeasure_at: Optional[int] = None  # lagged: the step measured anew
        self.lag, self.gate = lag, gate
        self.grad_gate: Optional[GradGate] = None  # made on the first gated step
        self._flag: Optional[torch.Tensor] = None  # this step's gate flag (0-d, device)
        self._undone = 0
        # (device, dtype, zeros(N_SLOTS), zeros(1), ones(1), 0-d zero, 0-d one)
        self._consts: Optional[tuple] = None
        self._hooks = (
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        )

    @property
    def last(self) -> Snapshot:
        """The latest snapshot; before any step was observed, a "warming_up" snapshot whose
        evidence ``note`` says so (never None)."""
        return self._last if self._last is not None else _NOT_YET

    @last.setter
    def last(self, snap: Optional[Snapshot]) -> None:
        self._last = snap

    # ---- the user's line -----------------------------------------------------------------

    def observe(self, loss: Any) -> None:
        """Give the Guard this step's loss (a tensor is fine: nothing syncs here)."""
        self._loss = loss.detach() if isinstance(loss, torch.Tensor) else loss

    def mark(self, event: str) -> None:
        """Declare an intended change that takes effect at this step (new data, a curriculum
        switch, a batch-size change): the Monitor learns the new levels instead of alarming
        on the old ones (``Monitor.mark``). Call it before this step's ``optimizer.step()``,
        on every rank."""
        self.monitor.mark(event)

    def detach_pre_hook(self) -> None:
        """For loops that run backward INSIDE ``optimizer.step()`` (Lightning's closure):
        the pre-hook would see no gradients; call ``before_step()`` yourself after backward."""
        self._hooks[0].remove()

    def before_step(self) -> None:
        """Run the pre-step work by hand (measure, decide, act); see ``detach_pre_hook``."""
        self._pre_hook(self.optimizer, (), {})

    def skip_step(self) -> None:
        """Drop this step's update: gradients set to None (and taken out of the noise EMA)."""
        self._skip()

    def close(self) -> None:
        """Remove the hooks (the Guard stops watching)."""
        for h in self._hooks:
            h.remove()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- hooks -----------------------------------------------------------------------------

    def _pre_hook(self, opt: Any, args: Any, kwargs: Any) -> None:
        try:
            self._before_step()
        except GuardStop:
            raise
        except Exception as exc:
            self._fail(exc)

    def _post_hook(self, opt: Any, args: Any, kwargs: Any) -> None:
        try:
            self._after_step()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.on_error == "raise":
            raise exc
        if not self._warned:
            warnings.warn(
                f"anet_lite.Guard internal error (training continues): {exc!r}",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True

    def _lr_now(self) -> Any:
        """The optimizer's lr as one number: a single group's lr; over several groups the
        RMS of their lrs weighted by their number of weights (the lr an average weight
        steps with: an Adam-like update's norm is that lr x sqrt(number of weights)). A
        group frozen at lr 0, or on its own schedule, moves it by its share of the
        weights, where the first group's lr alone would jump from 0. A tensor lr
        (capturable optimizers) is returned as it is: reading it would sync."""
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            return groups[0]["lr"]
        sizes = self._group_sizes
        if len(sizes) != len(groups):
            sizes = self._group_sizes = [sum(p.numel() for p in g["params"]) for g in groups]
        acc = total = 0.0
        for n, g in zip(sizes, groups):
            lr = g["lr"]
            if isinstance(lr, torch.Tensor):
                return groups[0]["lr"]
            acc += n * lr * lr
            total += n
        return math.sqrt(acc / total) if total > 0 else groups[0]["lr"]

    def _before_step(self) -> None:
        self._measure_and_act()
        # the lr this step's update is made with, after any action: it is measured (as
        # step_norm) at the next step, when a schedule may have moved the lr on
        lr = self._lr_now()
        self._lr_applied = None if isinstance(lr, torch.Tensor) else float(lr)

    def _measure_and_act(self) -> None:
        self.step += 1
        self._skipped = False
        self._flag = None
        found_inf = self._unscale_for_fused()
        tap = self.tap
        tap.measure_grads()
        g = tap.pending_parts()[0]
        dev = row_device(g)
        loss = self._loss
        self._loss = None
        lagged = self.lag if self.lag is not None else dev.type == "cuda"
        self._note_measured_set(tap.measured_numel, lagged)
        gating = self.act and (self.gate if self.gate is not None else lagged)
        if (
            dev.type == "cpu"
            and not (lagged or gating)
            and self.world_size == 1
            and self.clip_grad_norm is None
            and (not isinstance(loss, torch.Tensor) or loss.device.type == "cpu")
        ):
            vals = self._host_values(g, loss)
            vals += (0.0 if found_inf is None else float(found_inf), 0.0)
            if vals[_FOUND_INF]:
                self._undo_ema()  # the optimizer drops this step (the scaler's overflow)
            self._feed_and_act(vals, self.step)
            return
        # one process, no clip: the gate reads this step's own sum (no reduction to wait
        # for) and its flag goes into the pack's one stack
        early = gating and self.world_size == 1 and self.clip_grad_norm is None
        if early:
            self._flag = self._gate_step(g[GRAD_SQ], None)
        pack = self._pack(g, dev, loss, found_inf)
        clipped = self._clip(pack) if self.clip_grad_norm is not None else None
        if gating and not early:
            self._flag = self._gate_step(self._grad_sq(pack), clipped)
            pack.select(0, _GATED).copy_(self._flag)
        if lagged:
            got = self._lagged(pack)  # the previous step's numbers: no sync on this one
            if got is not None:
                if self._remeasure_at is not None and got[1] >= self._remeasure_at:
                    self._remeasure_at = None
                    self.monitor.measure_changed()
                self._feed_and_act(*got)
        else:
            self._feed_and_act(pack.tolist(), self.step)  # CPU: reading is free
        if gating and not self._skipped:
            self._gate_lr()

    def _pack(self, g: Row, dev: torch.device, loss: Any, found_inf: Any) -> torch.Tensor:
        """This step's gradient slots, the previous step's row and the tail (``_LOSS``
        on) in ONE tensor, summed across ranks in one collective. No sync. Rows of 0-d
        parts (one chunk) and a 0-d tail are stacked in ONE op; else one cat."""
        prev = self._prev
        rows = (g, *prev) if prev is not None else (g,)
        flag = self._flag
        if (
            self.world_size == 1
            and all(isinstance(r, tuple) for r in rows)
            and (not isinstance(loss, torch.Tensor) or (loss.dim() == 0 and loss.device == dev))
            and found_inf is None
        ):
            zero, one = self._constants(dev, g[0].dtype)[3:]
            if isinstance(loss, torch.Tensor):
                tail = (loss, one, zero, zero)
            else:
                seen = one if loss is not None else zero
                tail = (zero if loss is None else zero + float(loss), seen, zero, zero)
            head = [x for r in rows for x in r]
            if prev is None:
                head += [zero] * N_SLOTS
            pack = torch.stack((*head, *tail, zero if flag is None else flag))
            if any(getattr(r, "scales", ()) for r in rows):  # a sample's x R: ONE op
                sc = tuple(f for r in rows for f in row_scales(r))
                sc += (1.0,) * (pack.numel() - len(sc))
                pack = pack * scale_vector(sc, dev, pack.dtype)
            return pack
        return self._pack_cat(tuple(as_row(r) for r in rows), dev, loss, found_inf, flag)

    def _pack_cat(
        self, rows: tuple, dev: torch.device, loss: Any, found_inf: Any, flag: Any
    ) -> torch.Tensor:
        """``_pack`` from 1-d rows: one cat (it promotes dtypes), then the collective."""
        g = rows[0]
        zeros, zero, one = self._constants(dev, g.dtype)[:3]
        gns = self.gns.take(dev).reshape(1) if self.gns is not None else zero
        inf = zero if found_inf is None else found_inf.reshape(1).to(dev, non_blocking=True)
        gated = zero if flag is None else flag.reshape(1)
        if isinstance(loss, torch.Tensor):
            loss_t = loss.reshape(1) if loss.device == dev else loss.reshape(1).to(dev)
            tail = (loss_t, one, gns, inf, gated)
        else:
            seen = one if loss is not None else zero
            tail = (zero if loss is None else zero + float(loss), seen, gns, inf, gated)
        prev = rows[1:] if len(rows) > 1 else (zeros,)
        pack = torch.cat((g, *prev, *tail))
        if self.world_size > 1:
            all_reduce_sum(pack, self.group)
        return pack

    def _grad_sq(self, pack: torch.Tensor) -> torch.Tensor:
        """The global sum of g**2 (0-d, on the device) from the reduced pack."""
        return pack[GRAD_SQ] if self.sharded else pack[GRAD_SQ] / pack[RANKS]

    def _clip(self, pack: torch.Tensor) -> torch.Tensor:
        """Clip to ``clip_grad_norm`` with the measured norm; returns the factor applied
        (0-d), which the tap's update stats are corrected for. No sync."""
        return self._clip_with_norm(self.clip_grad_norm, self._grad_sq(pack).sqrt().float())

    def _clip_with_norm(self, max_norm: float, total: torch.Tensor) -> torch.Tensor:
        """Clip the gradients, whose total norm is ``total`` (0-d), to ``max_norm``; the
        tap's stats stay those of the measured gradient. Returns the factor (0-d)."""
        params = [p for grp in self.optimizer.param_groups for p in grp["params"]]
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
        self.tap.note_grad_scale(factor)
        return factor

    def _host_values(self, g: Row, loss: Any) -> List[float]:
        """The pack's numbers without building it (CPU, one process, no clipping: nothing
        to reduce, and reading is free). The same floats: the pack's cat only promotes."""
        vals = row_values(g)
        if self._prev is None:
            vals += _NOTHING
        else:
            for row in self._prev:
                vals += row_values(row)
        if isinstance(loss, torch.Tensor):
            vals += (loss.item(), 1.0, 0.0)
        elif loss is None:
            vals += (0.0, 0.0, 0.0)
        else:
            vals += (0.0 + float(loss), 1.0, 0.0)  # (0.0 + : as the pack's zero + loss)
        return vals

    def _unscale_for_fused(self) -> Optional[torch.Tensor]:
        """A ``GradScaler`` hands a fused optimizer (``_step_supports_amp_scaling``) its
        scale and found_inf as attributes and lets the kernel unscale: the gradients seen
        here are still scaled. Unscale them in place (what ``scaler.unscale_`` does for
        other optimizers) and clear the attribute so the kernel does not divide again.
        Returns found_inf (the kernel then skips the step), or None. No sync."""
        opt = self.optimizer
        scale = getattr(opt, "grad_scale", None)
        if isinstance(scale, torch.Tensor):
            by_dev: dict = {}
            for grp in opt.param_groups:
                for p in grp["params"]:
                    if p.grad is not None:
                        by_dev.setdefault(p.grad.device, []).append(p.grad)
            for dev, grads in by_dev.items():
                torch._foreach_div_(grads, scale.to(dev, non_blocking=True))
            opt.grad_scale = None
        found = getattr(opt, "found_inf", None)
        return found if isinstance(found, torch.Tensor) else None

    def _feed_and_act(self, vals: List[float], step: int, lrs: Optional[tuple] = None) -> None:
        if vals[_FOUND_INF] > 0:  # the scaler's overflow: a skipped step, not a collapse
            return
        if vals[_LOSS + 1] == 0:
            self._warn_no_observe(step)
            return
        snap = self._feed(vals, step, lrs)
        self.seen += 1
        self._check_clipped(snap)
        gated = vals[_GATED] > 0
        if gated:
            self._record_gate(snap, step)
        if self.act:
            action = self.monitor.decide(snap)
            if gated and action.kind == "skip_step" and step != self.step:
                pass  # done on the device at its own step: this (later) step is not dropped
            elif action.kind == "none":
                self._log_alert(snap, action)
            else:
                self._carry_out(action, snap)
        else:
            self._log_alert(snap, None)

    # ---- same step (no host sync) ----------------------------------------------------------

    def _gate_step(self, grad_sq: torch.Tensor, clipped: Optional[torch.Tensor]) -> torch.Tensor:
        """The device verdict on this step's gradient (``GradGate``): a non-finite gradient
        or one above its factor x its running level is skipped in a fused optimizer's
        kernel (``found_inf``), else scaled to that level; the sketched noise EMA forgets
        it. Returns the 0-d flag, which rides in the pack. No sync."""
        if self.grad_gate is None:
            self.grad_gate = GradGate()
        flag = self.grad_gate(self.optimizer, grad_sq, clipped)
        self.tap.undo_ema(where=flag)
        return flag

    def _gate_lr(self) -> None:
        """The lr is a host number: an lr above the Monitor's ``lr_jump`` x the largest
        earlier lr, at a value the Monitor has not judged yet (its verdict is a step
        behind), drops this update at once. Once judged, the Monitor's policy decides."""
        mon = self.monitor
        lr = self._lr_now()
        top = getattr(mon, "lr_max", 0.0)
        if isinstance(lr, torch.Tensor) or not top > 0.0:
            return  # (a tensor lr would be read with a sync)
        if lr <= mon.lr_jump * top or lr == getattr(mon, "lr_prev", None):
            return
        first_rise = getattr(mon, "lr_first_rise", None)
        if first_rise is not None and first_rise():
            return  # a warm-up's first rise off its first lr (the Monitor's own rule)
        self._skip()
        ratio = lr / top
        reason = (
            f"same-step gate: lr {lr:.3g} is {ratio:.3g}x the largest earlier lr; this "
            "update was dropped before it was applied"
        )
        ev = {"cause": "lr_jump", "lr": lr, "lr_jump": ratio}
        self._record("skip_step", reason, ev, self.step)

    def _record_gate(self, snap: Snapshot, step: int) -> None:
        """The host learns (one step late on CUDA) that the device gate acted on ``step``."""
        gate = self.grad_gate
        factor = gate.factor if gate is not None else float("nan")
        fused = bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
        g = snap.evidence.get("grad_norm")
        what = (
            "the update was skipped in the optimizer's kernel"
            if fused
            else f"the gradients were scaled down to {factor:g}x that level"
        )
        reason = (
            f"same-step gate: gradient norm {g:.3g} not finite or above {factor:g}x its "
            f"running level; {what}, on the device, at its own step"
        )
        kind = "skip_step" if fused else "scale_step"
        self._record(kind, reason, {"cause": "grad_spike", "grad_norm": g}, step)

    def _record(self, kind: str, reason: str, evidence: dict, step: int) -> None:
        """An action of the same-step gate: ``actions``, a WARNING, a tombstone."""
        action = Action(kind, 1.0, reason, evidence, "gate", step)
        self.actions.append(action)
        log.warning("anet_lite: step %s: %s", step, reason)
        if self.tombstones is not None:
            scope = {"step": step, "param_groups": list(range(len(self.optimizer.param_groups)))}
            self.tombstones.append(
                kind, policy="gate", scope=scope, evidence={**_plain(evidence), "reason": reason}
            )

    def _warn_no_observe(self, step: int) -> None:
        """Once per Guard: a step ran and no loss was given (the Guard watches nothing)."""
        if self._warned_observe:
            return
        self._warned_observe = True
        msg = (
            f"anet_lite.Guard: optimizer step {step} ran without guard.observe(loss): the Guard "
            "saw no loss and watches nothing. Fix: call guard.observe(loss) after "
            "loss.backward() and before optimizer.step(), every step."
        )
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=6)

    def _log_alert(self, snap: Snapshot, action: Optional[Action]) -> None:
        """INFO for an alert no action was taken on: once per incident or change of cause."""
        if not snap.alert or not log.isEnabledFor(logging.INFO):
            return
        cause = snap.evidence.get("cause")
        prev = self._logged_alert
        self._logged_alert = (snap.step, snap.status, cause)
        same = prev is not None and prev[1:] == (snap.status, cause)
        if same and prev[0] == (snap.step or 0) - 1:
            return  # the same incident, still going on
        why = f" (no action: {action.reason})" if action is not None else " (watch only)"
        log.info("anet_lite: step %s: %s%s — %s", snap.step, snap.status, why, explain_safe(snap))

    def _check_clipped(self, snap: Snapshot) -> None:
        """Warn once when the gradient norm sits at one value: clipped before the Guard."""
        if self.clipped_at is not None or self.clip_grad_norm is not None:
            return
        g = snap.evidence.get("grad_norm")
        run = self._clip_run
        if not isinstance(g, float) or not math.isfinite(g) or g <= 0:
            run.clear()
            return
        if run and abs(g - run[0]) > 1e-4 * run[0]:
            run.clear()
        run.append(g)
        if len(run) < _CLIP_STEPS:
            return
        self.clipped_at = run[0]
        msg = (
            f"anet_lite.Guard: the gradient norm has been {run[0]:.6g} for {_CLIP_STEPS} steps "
            "in a row: the gradients look clipped before the Guard saw them (clip_grad_norm_ "
            "before optimizer.step()), so a gradient explosion is invisible to it. Pass the "
            f"clip to the Guard instead: Guard(..., clip_grad_norm={run[0]:.3g}) and remove "
            "your own clip_grad_norm_ call (the Guard measures, then clips)."
        )
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=6)

    def _constants(self, dev: torch.device, dt: torch.dtype) -> tuple:
        """(zeros(N_SLOTS): a previous step with nothing measured, zeros(1), ones(1), and
        0-d zero and one)"""
        c = self._consts
        if c is None or c[0] != dev or c[1] != dt:
            zeros = torch.zeros(N_SLOTS, dtype=dt, device=dev)
            one = torch.ones(1, dtype=dt, device=dev)
            c = self._consts = (dev, dt, zeros, zeros[:1], one, zeros[0], one[0])
        return c[2:]

    def _lagged(self, pack: torch.Tensor) -> Optional[tuple]:
        """GPU: start this step's one non-blocking copy; return the last landed one's values.

        Decisions therefore act one step late on GPU (the same-step gate acts on the step
        itself); the copy of the previous step has normally landed long before, and
        ``Event.query`` never blocks. Off CUDA (``lag=True``) the pack itself is kept.
        """
        lr = self._lr_now()  # the lr this step's update uses
        if isinstance(lr, torch.Tensor):
            lr = None  # (read at feed time: reading a device tensor now would sync)
        lrs = (lr, self._lr_applied)  # (and the lr of the update this pack measures)
        if pack.device.type != "cuda":
            held, self._held = self._held, (pack, self.step, lrs)
            return None if held is None else (held[0].tolist(), held[1], held[2])
        if self._host is None:
            self._host = torch.empty((2, _PACK), dtype=pack.dtype, pin_memory=True)
            self._events: List[Any] = [None, None]
        slot = self.step % 2
        prev = 1 - slot
        out = None
        if self._events[prev] is not None and self._events[prev][0].query():
            out = (self._host[prev].tolist(), self._events[prev][1], self._events[prev][2])
            self._events[prev] = None
        self._host[slot].copy_(pack, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._events[slot] = (ev, self.step, lrs)
        return out

    def _feed(self, v: List[float], step: int, lrs: Optional[tuple] = None) -> Snapshot:
        """Step ``step``'s numbers to the Monitor. ``lrs``: (the step's lr, the lr of the
        update it measures), kept when the numbers are read a step late (the optimizer's lr
        is then the next step's); None: read now."""
        ranks = max(v[RANKS], 1.0)
        div = 1.0 if self.sharded else ranks
        grad_sq, upd_sq = v[GRAD_SQ] / div, update_sq(v, _PREV) / div
        prev_g = v[_PREV + SAMPLE_GRAD_SQ] / div  # the cosine's own elements (see ``sample``)
        finite = math.isfinite(grad_sq)
        grad_norm = math.sqrt(grad_sq) if finite and grad_sq >= 0 else math.nan
        step_norm = math.sqrt(upd_sq) if upd_sq > 0 else None
        ema = self.tap.ema
        noise = (
            ema * math.sqrt(v[NOISE_SQ] / div)
            if ema is not None and v[NOISE_SQ] >= 0 and finite
            else None
        )
        lr, upd_lr = (None, self._lr_applied) if lrs is None else lrs
        lr = float(self._lr_now() if lr is None else lr)
        t = None
        if self.use_time:
            import time

            t = time.monotonic()
        param_norm = math.sqrt(max(v[_PREV + PARAM_SQ] / div, 0.0))
        proc = None
        if step_norm and prev_g > 0:
            proc = cos_neg_grad_update(
                (v[_PREV + GRAD_DOT_AFTER] - v[_PREV + GRAD_DOT_BEFORE]) / div,
                math.sqrt(prev_g),
                step_norm,
            )
        if self.lr_scale != self._scale_seen:
            # the Guard's own slow-down or recovery: not a schedule event (it would
            # re-reference the Monitor and open a grace in the middle of an incident)
            self.monitor.own_lr_change()
            self._scale_seen = self.lr_scale
        snap = self.monitor.update(
            v[_LOSS] / v[_LOSS + 1],
            step=step,
            grad_norm=grad_norm,
            step_norm=step_norm,
            param_norm=param_norm if step_norm else None,
            processivity=proc,
            noise=noise,
            lr=lr,
            time=t,
            update_lr=upd_lr if step_norm else None,
        )
        ev = snap.evidence
        ev["param_norm"] = param_norm
        if self.tap.max_abs:  # off in the Guard's own tap: one pass over g less
            ev["max_abs_grad"] = v[MAX_ABS_GRAD] / div  # FSDP: mean of the shards' maxima
        if proc is not None:
            ev["step_processivity"] = proc
        if self.noise_scale is not None:
            ev["gns"] = self.noise_scale.update(v[_LOSS + 2] / ranks, grad_sq)
        if self.lr_scale != 1.0:
            ev["lr_scale"] = self.lr_scale
        self.last = snap
        return snap

    def _after_step(self) -> None:
        if self.grad_gate is not None:
            self.grad_gate.release()  # the optimizer's own found_inf, as it was
        if self._skipped:
            self._prev = None
        else:
            self.tap.measure_update(publish=False)
            self._prev = self.tap.pending_parts()  # goes with the next step's pack
        snap = self._last
        if not self.act or snap is None:
            return
        if not snap.alert:  # healthy, or warming up with nothing wrong seen
            self._healthy += 1
            self._settled = self._settled + 1 if snap.status == "healthy" else 0
            if self.lr_scale == 1.0:
                lr = self._lr_applied  # (this step's, set by the pre-hook)
                lr = float(self._lr_now()) if lr is None else lr
                self.lr_healthy_max = max(self.lr_healthy_max, lr)
                self._note_group_lrs()
            self._maybe_recover()
            if (
                self.checkpoint_every
                and self.step % self.checkpoint_every == 0
                and self._incident_closed(snap)
            ):
                self._save_checkpoint()
        else:
            self._healthy = self._settled = 0

    # ---- actions ---------------------------------------------------------------------------

    def _carry_out(self, action: Action, snap: Snapshot) -> None:
        if action.kind == "none":
            return
        self._healthy = self._settled = 0  # recovery counts from the last action
        extra = {}
        scope = {
            "step": self.step,
            "param_groups": list(range(len(self.optimizer.param_groups))),
            "layers": "all",
        }
        if action.kind == "slow_down":
            # an lr jump in some groups only: those groups back to their healthy lr
            if not (snap.evidence.get("cause") == "lr_jump" and self._undo_group_jump(extra)):
                lr_now = float(self._lr_now())
                self.lr_cap = min(self.lr_cap, 0.75 * lr_now)
                self._scale_lr(action.factor)
                self.lr_scale *= action.factor
                extra["lr_scale"] = self.lr_scale
        elif action.kind == "skip_step":
            self._skip()
        elif action.kind == "clip":
            extra.update(self._pin_clip(action.factor, snap))
        elif action.kind == "rollback":
            extra.update(self._rollback())
            scope["rolled_back_steps"] = (
                list(self.rolled_back[-1]) if extra.get("checkpoint") else []
            )
        elif action.kind == "stop":
            extra.update(self._restore_for_stop())
        self.actions.append(action)
        words = explain_safe(snap)
        done = f" ({extra['note']})" if extra.get("note") else ""
        log.warning("anet_lite: %s%s — %s", action.reason, done, words)
        if self.tombstones is not None:
            self.tombstones.append(
                action.kind,
                policy=action.policy,
                scope=scope,
                evidence={**_plain(action.evidence), "reason": action.reason, **extra},
            )
        if action.kind == "stop":
            raise GuardStop(action, words + done)

    def _pin_clip(self, times: float, snap: Snapshot) -> dict:
        """A "clip" action: from now on clip the gradients' total norm to ``times`` x
        their level before the incident (this step's norm / its ratio to the level), this
        step's gradients included (read one step late on CUDA, the verdict's step is
        past: the clip starts with the next step, this one is left to the same-step gate).
        Without a known level the update is skipped instead."""
        g, ratio = snap.evidence.get("grad_norm"), snap.evidence.get("grad_ratio")
        if not (_positive(g) and _positive(ratio)):
            self._skip()
            return {"note": "no gradient level known: step skipped instead"}
        level = float(g) / float(ratio)
        pin = times * level if self.clip_pin is None else min(self.clip_pin, times * level)
        self._set_pin(pin)
        if snap.step == self.step:  # (read one step late, this step's norm is not g)
            self._clip_with_norm(pin, torch.tensor(float(g)))
        return {"clip_to": pin, "grad_level": level}

    def _set_pin(self, pin: float) -> None:
        """The Guard clips to ``pin`` from now on (or to the user's clip, if lower)."""
        self.clip_pin = pin
        user = self.clip_grad_norm
        self.clip_grad_norm = pin if user is None else min(user, pin)

    def _restore_for_stop(self) -> dict:
        """Before a stop: put back the last healthy checkpoint, so the run ends on a healthy
        model (model, optimizer, scheduler, RNG); this step's update is dropped."""
        self._skip()
        if self.grad_gate is not None:
            self.grad_gate.release()  # no step follows: put the optimizer back now
        ck = self._healthy_checkpoint()
        if ck is None:
            return {
                "restored": False,
                "note": "no healthy checkpoint to restore: the model is left as it is",
            }
        ckpt_mod.restore(ck, self.model, self.optimizer, self.scheduler)
        old_scale = float(ck.extra.get("lr_scale", 1.0))
        if old_scale != self.lr_scale:
            self.lr_scale = old_scale  # the restored param groups carry that scale's lr
        return {
            "restored": True,
            "checkpoint": ckpt_mod.digest(ck),
            "checkpoint_step": ck.step,
            "note": f"restored the last healthy checkpoint, step {ck.step}, before stopping",
        }

    def _healthy_checkpoint(self) -> Optional[ckpt_mod.Checkpoint]:
        ck = self.checkpoint
        if ck is None and self.checkpoint_path is not None:
            ck = ckpt_mod.load(self.checkpoint_path)
        return ck

    def _skip(self) -> None:
        self._undo_ema()
        for grp in self.optimizer.param_groups:
            for p in grp["params"]:
                p.grad = None
        self._skipped = True

    def _undo_ema(self) -> None:
        """Take this step's gradient back out of the tap's noise EMA (the step is dropped),
        so a 1e4x gradient is not remembered for the next ~60 steps as if it had been
        trained on (``GradNoiseTap.undo_ema``: exact or sketched EMA, no sync)."""
        if self._undone == self.step:
            return
        self._undone = self.step
        flag = self._flag  # what the device gate already took out, if anything
        sketched = flag is not None and self.tap.noise == "sketch"
        self.tap.undo_ema(where=1.0 - flag if sketched else None)

    def _note_measured_set(self, numel: int, lagged: bool) -> None:
        """Layers unfrozen or frozen: the elements with a gradient doubled or halved, so
        every norm the Monitor reads is over another set from this step on (unfreezing a
        body multiplied ||θ||, the gradient and the update: undeclared, that read as
        ``runaway_weights``). The Monitor re-learns those levels, not the loss's. A set
        that changes by less (an expert that got no tokens this step) is left alone."""
        seen = self._measured_numel
        self._measured_numel = numel
        if not seen or not numel or (numel < 2 * seen and 2 * numel > seen):
            return
        if self.step - self._remeasured < _REMEASURE_EVERY:
            # a set that keeps changing (experts that get no tokens on some steps, layers
            # used every other step): its levels are learned across the changes instead
            return
        self._remeasured = self.step
        if lagged:
            self._remeasure_at = self.step  # (fed a step late: with this step's numbers)
        else:
            self.monitor.measure_changed()
        log.info(
            "anet_lite: step %s: the parameters with a gradient went from %d to %d elements "
            "(layers unfrozen or frozen): the gradient, update and weight norms are learned "
            "again from this step",
            self.step, seen, numel,
        )

    def _note_group_lrs(self) -> None:
        """Each param group's largest lr on healthy steps at full scale (float lrs); only
        where there are several groups (``_undo_group_jump``)."""
        groups = self.optimizer.param_groups
        if len(groups) < 2:
            return
        top = self._group_lr_top
        if len(top) != len(groups):
            top[:] = [0.0] * len(groups)
            self.group_lr_scale[:] = [1.0] * len(groups)
        for i, g in enumerate(groups):
            lr = g["lr"]
            if not isinstance(lr, torch.Tensor) and lr > top[i]:
                top[i] = float(lr)

    def _undo_group_jump(self, extra: dict) -> bool:
        """An lr jump in some param groups but not all (an output layer's or attention's own
        lr x100): scale those groups back to their healthy lr, the others untouched, where a
        slow-down of every group by the jump of their weighted mean would leave the jumped
        groups as far above the rest as before. False (nothing done): one group, no healthy
        lr known for a group, or every group jumped (a slow-down of all is then right)."""
        groups, top = self.optimizer.param_groups, self._group_lr_top
        if len(groups) < 2 or len(top) != len(groups) or not all(t > 0.0 for t in top):
            return False
        if any(isinstance(g["lr"], torch.Tensor) for g in groups):
            return False
        limit = getattr(self.monitor, "lr_jump", 3.0)
        jumped = {i: top[i] / g["lr"] for i, g in enumerate(groups) if g["lr"] > limit * top[i]}
        if not jumped or len(jumped) == len(groups):
            return False
        sched = self.scheduler
        base = getattr(sched, "base_lrs", None) if sched is not None else None
        for i, f in jumped.items():
            groups[i]["lr"] = groups[i]["lr"] * f
            self.group_lr_scale[i] *= f
            if base is not None and i < len(base):
                base[i] = base[i] * f
        self.monitor.own_lr_change()  # (the Guard's change: not a schedule event)
        extra["group_lr_scale"] = {i: self.group_lr_scale[i] for i in jumped}
        which = ", ".join(f"{i} x{f:.3g}" for i, f in jumped.items())
        extra["note"] = f"only the param groups whose lr jumped, back to their healthy lr: {which}"
        return True

    def _scale_lr(self, factor: float) -> None:
        for grp in self.optimizer.param_groups:
            grp["lr"] = grp["lr"] * factor
        sched = self.scheduler
        if sched is not None and hasattr(sched, "base_lrs"):
            sched.base_lrs = [b * factor for b in sched.base_lrs]

    def _maybe_recover(self) -> None:
        if self.lr_scale >= 1.0 or self._healthy < self.recover_steps:
            return
        self._healthy = 0
        lr = float(self._lr_now())
        if not self.lr_healthy_max:
            return  # no lr is known to have been healthy: do not guess upwards
        self._maybe_lift_cap(lr)
        ceiling = min(self.lr_cap, self.lr_healthy_max)
        factor = min(2.0, 1.0 / self.lr_scale, ceiling / lr if lr > 0 else 1.0)
        if factor > 1.0 + 1e-9:
            self._scale_lr(factor)
            self.lr_scale *= factor

    def _incident_closed(self, snap: Snapshot) -> bool:
        """A healthy checkpoint is taken only with no incident open: the status "healthy"
        (not recovering, drifting or warming up after a change) and no action in the last
        ``recover_after`` steps (the policy's ladder reset). A step between two alerts of a
        persistent bug is not a healthy state to come back to."""
        if snap.status not in ("healthy", "warming_up"):
            return False
        used = getattr(self.monitor.policy, "used", None)
        return not (isinstance(used, dict) and any(used.values()))

    def _maybe_lift_cap(self, lr: float) -> None:
        """Lift the lr cap once the run has been healthy at it for CAP_LIFT x
        ``recover_steps`` steps: a slow-down after a bad shard or a dead-unit incident was a
        precaution, and the lr that was running then was not shown to be the cause. Lifted
        once per run: a cap set by a later slow-down stays."""
        if (
            math.isinf(self.lr_cap)
            or self._cap_lifts
            or lr < 0.99 * self.lr_cap
            or self._settled < CAP_LIFT * self.recover_steps
        ):
            return
        log.info(
            "anet_lite: step %s: healthy for %d steps at the capped lr %.3g: the cap is lifted "
            "(the lr may double back to the schedule's; a cap set by a later slow-down stays)",
            self.step,
            self._settled,
            lr,
        )
        self.lr_cap, self._cap_lifts = math.inf, 1

    def _save_checkpoint(self) -> None:
        extra = {
            "monitor": self.monitor.state_dict(),
            "lr_scale": self.lr_scale,
            "tap_ema": self.tap.ema_state(host=False),
        }
        if self.checkpoint_dir is None:
            self.checkpoint = None  # its pinned memory goes to the new one (if capture fails,
            # a rollback skips the step instead, as before the first checkpoint)
        ck = ckpt_mod.capture(
            self.model,
            self.optimizer,
            self.scheduler,
            self.step,
            extra,
            non_blocking=self.checkpoint_dir is None,
        )
        if self.checkpoint_dir is not None:
            self.checkpoint_path = ckpt_mod.save(ck, Path(self.checkpoint_dir))
            self.checkpoint = None
        else:
            self.checkpoint = ck

    def _rollback(self) -> dict:
        try:
            ck = self._healthy_checkpoint()
        except ValueError as exc:  # a swapped or damaged checkpoint file (digest mismatch)
            self._skip()
            return {"checkpoint": None, "note": f"checkpoint refused: {exc}; step skipped"}
        self._skip()
        if ck is None:
            return {"checkpoint": None, "note": "no healthy checkpoint yet: step skipped instead"}
        ckpt_mod.restore(ck, self.model, self.optimizer, self.scheduler)
        policy_state = self.monitor.policy.state_dict()
        self.monitor.load_state_dict(ck.extra["monitor"])
        self.monitor.policy.load_state_dict(policy_state)
        self.monitor.start_recovery()  # (the restored state predates the incident)
        # the restored Monitor last saw the lr before this Guard's later slow-downs: the lr
        # it sees next differs by this Guard's doing (the scheduler was restored too), not
        # a schedule event (whose grace would let the levels re-learn a bug that goes on)
        self.monitor.own_lr_change()
        old_scale = float(ck.extra.get("lr_scale", 1.0))
        if old_scale != self.lr_scale:
            self._scale_lr(self.lr_scale / old_scale)
        self.tap.load_ema_state(ck.extra.get("tap_ema", {}))
        self._prev = None
        self.rolled_back.append((ck.step + 1, self.step))
        return {"checkpoint": ckpt_mod.digest(ck), "checkpoint_step": ck.step}


    # ---- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What a resumed run needs to go on where this one is: the Monitor's state (its
        policy's included, JSON-serialisable), the step and the lr bookkeeping (plain numbers).
        Checkpoints and the tap's EMA are not included (rebuilt within a few steps)."""
        return {
            "version": _STATE_VERSION,
            "step": self.step,
            "seen": self.seen,
            "monitor": self.monitor.state_dict(),
            "lr_scale": self.lr_scale,
            "lr_healthy_max": self.lr_healthy_max,
            "lr_cap": None if math.isinf(self.lr_cap) else self.lr_cap,
            "healthy": self._healthy,
            "settled": self._settled,
            "cap_lifts": self._cap_lifts,
            "clipped_at": self.clipped_at,
            "clip_pin": self.clip_pin,
            "group_lr_top": list(self._group_lr_top),
            "group_lr_scale": list(self.group_lr_scale),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` (the optimizer's lr is the resumed optimizer's)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"state must be a Guard.state_dict() of version {_STATE_VERSION}")
        self.monitor.load_state_dict(state["monitor"])
        self.step, self.seen = int(state["step"]), int(state.get("seen", 0))
        self.lr_scale = float(state["lr_scale"])
        self.lr_healthy_max = float(state["lr_healthy_max"])
        cap = state.get("lr_cap")
        self.lr_cap = math.inf if cap is None else float(cap)
        self._healthy = int(state.get("healthy", 0))
        self._settled = int(state.get("settled", 0))
        self._cap_lifts = int(state.get("cap_lifts", 0))
        clipped = state.get("clipped_at")
        self.clipped_at = None if clipped is None else float(clipped)
        pin = state.get("clip_pin")
        if pin is not None:
            self._set_pin(float(pin))
        self._group_lr_top = [float(x) for x in state.get("group_lr_top", [])]
        self.group_lr_scale = [float(x) for x in state.get("group_lr_scale", [])]


# Optimizers whose first updates are no larger than later ones at the same lr: SGD, and
# the Adam family (bias-corrected moments). RMSprop, Adagrad and Adadelta start from a
# zero second moment without correction (RMSprop's first step is 1 / sqrt(1 - alpha) = 10x
# its later size), and an unknown optimizer may too.
_UNINFLATED = ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax")


def _uninflated_start(optimizer: Any) -> bool:
    """True when ``optimizer`` is one whose first updates are not inflated (Monitor
    ``strict_start``): an update >= 10 % of the weights' norm then alarms from step 1."""
    return any(
        getattr(torch.optim, name, None) is not None
        and isinstance(optimizer, getattr(torch.optim, name))
        for name in _UNINFLATED
    )


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0.0


def _plain(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if isinstance(v, (int, float, str, bool)) or v is None}
