"""``Monitor``: one object, fed once per step, that says what is happening and why.

Streaming versions of the seed's metrics (O(1) amortised per update), plus the parts a
user would otherwise hand-roll: a healthy reference taken after warm-up and refreshed
only while healthy, schedule awareness (a change made on purpose is not a failure), and
spike-vs-precursor separation (severity and persistence decide). See docs/monitor.md.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from functools import partial
from typing import Any, Deque, Dict, List, Optional

import numpy as np

from .. import fingerprint as _fp
from .._validate import positive
from ..metrics import Z_CAP
from ..verdict import Snapshot, make_snapshot
from ._coherence import CLIMB_STEPS, COS_RECENT
from ._rules import RISE_PZ, MonitorRules
from ._signals import Signals, read_inputs, read_lenient
from ._stream import EWCorrelation, RecentWindow, RobustLevel
from .detectors import DEFAULT as _DEFAULT_DETECTORS
from .detectors import View

RECOVER_SIGMAS = 2.0  # back within this many jitters of the pre-incident loss level
RECOVER_MAX = 200  # steps after an action: then the verdict is the detectors' alone


_INF, _NAN = math.inf, math.nan
_mlog = math.log
_isfinite = math.isfinite
# View(*fields) without the named tuple's Python-level __new__ (made once per step)
_new_view = partial(tuple.__new__, View)
_NORM_DETECTORS = ("norm_growth",)  # detectors that read the weights' or gradients' norms
# A row of a sparse log stands for at most this many steps in the detectors' durations
MAX_GAP = 1000
WINDOW_RISE = 1.25  # the loss-window rules' rise that matters (x the loss's level, raw)
_log = logging.getLogger("anet_lite")


class Monitor(MonitorRules):
    """Streaming failure monitor. ``snap = m.update(loss, grad_norm=..., lr=...)`` per step.

    Parameters (defaults need no per-run tuning; units in brackets):
      rate_hz, window_sec  the precursor window: rate_hz * window_sec samples (n), or the
                           last window_sec seconds when ``time`` is passed [Hz, s]
      z, persist           precursor: robust z of the window above z for persist steps
      window               samples in the noise fingerprint (and the Ṡ windows: 2 x window/2)
      beta, theta_alert    θ sensitivity and the θ below which the fingerprint has shifted
      warmup               steps before the healthy reference may be taken
      w_s, w_p             F_Total weights
      loss_floor           the loss is read as log(loss + loss_floor * first loss), so a loss
                           near 0 does not make harmless wiggles look like 10x jumps
      spike_z              one-step loss deviation (robust z) reported as a ``spike``
      severe_loss          one-step loss jump (vs. baseline) that starts a level shift:
                           drifting, an alert only if it keeps climbing [x]
      severe_grad, severe_update
                           one-step ratios to the baseline that alarm at once, if also
                           4 robust sigmas above the run's own jitter [x]
      max_rel_update       one update larger than this fraction of the parameters' norm
                           (step_norm / param_norm) alarms at once when it is also out of
                           character: >= 20x the run's update level, or (before that level
                           exists, from the second update) not smaller than the update
                           before it [fraction of ||θ||]
      strict_start         True: the optimizer's first updates are not inflated (Adam and
                           its kin correct their moments' bias; SGD): an update >=
                           max_rel_update alarms from the first update until the run has
                           made one below it. None/False (default, the optimizer unknown):
                           there it alarms only if it does not shrink, as RMSprop's and
                           Adagrad's inflated first updates do. The Guard sets it from its
                           optimizer when left None
      grad_growth          gradient level (window vs. baseline) that is a precursor [x]
      lr_jump              lr above this multiple of the largest earlier lr: a bug [x]
      lr_ramp              lr above this multiple of the schedule's peak after warm-up [x]
      grace                steps after a schedule change during which slow signals are muted
      declared             True: the loop declares every intended change of its data
                           (curriculum switch, new dataset, batch size) with ``mark``. A
                           severe one-step loss jump is then never new data: if it also
                           reaches ``bad_batch_loss`` x the first loss it is a bad batch
                           (alarm at once, and on every step of the shift that stays up).
                           False (default): such a jump may be new data, it is watched
                           as a level shift and alarms only if it keeps climbing
      bad_batch_loss       with ``declared``: the loss that makes a level shift a bad
                           batch, as a multiple of the first loss (an untrained
                           classifier's first loss is about chance: the batch is then
                           confidently wrong, e.g. labels that contradict the model) [x]
      policy, run_log, tombstones   see ``decide`` and ``outputs.RunLog``
      on_error             "warn" (an internal error never reaches the training loop) or "raise"
    """

    # Every attribute a slot: a step reads and writes dozens of the ~100, and a slot is
    # reached faster than a key of an instance dict this large (CPython shares dict keys
    # only up to 30). Instances keep a __dict__ (the mixins declare no slots), so an
    # attribute not listed here still works.
    __slots__ = (
        "_base_len", "_n3", "_sdot_every", "_sink_failed", "_unwritten", "_warned",
        "bad_batch_loss", "beta", "checked", "climb", "climb_devs", "climb_ur",
        "co_hot", "co_rise_x", "coherent", "cos_base", "cos_recent", "dead", "declared",
        "detectors", "drift_loss0", "drift_persist", "drift_stalled", "early_big",
        "early_ref", "fp", "gap", "gr_prev", "grace", "grace_until",
        "grad_base", "grad_growth", "grad_hot", "grad_recent", "grad_ref", "grow",
        "jump_loss", "jump_ref", "last_status", "log_space", "loss0", "loss_base", "loss_eps",
        "loss_floor", "loss_gate", "loss_grace_until", "loss_prev", "loss_step", "loss_win_x",
        "loss_x_prev", "losses", "lr_jump", "lr_max", "lr_peak", "lr_prev", "lr_ramp",
        "lr_rising", "lr_up", "max_rel_update", "n", "on_error", "own_lr", "pending_mark",
        "persist", "policy", "proc", "pz_hot", "recent", "recover_level", "recover_ref",
        "recover_t", "ref", "ref_pinned", "rel_calm", "rel_prev", "rise", "run_log",
        "sdot", "severe_grad", "severe_loss", "severe_update", "shift_bad", "shift_g",
        "shift_x", "span", "spike_z", "step_last", "strict_start", "surge_hist", "t", "theta",
        "theta_alert", "theta_low", "tombstones", "upd_base", "ur_prev", "w_p", "w_s",
        "warmup", "warmup_bound", "window", "window_sec", "x_now", "z",
    )

    def __init__(
        self,
        *,
        rate_hz: float = 5.0,
        window_sec: float = 2.0,
        z: float = 2.5,
        persist: int = 3,
        window: int = 64,
        beta: float = 3.0,
        theta_alert: float = 0.6,
        warmup: int = 100,
        w_s: float = 0.7,
        w_p: float = 0.3,
        loss_floor: float = 0.25,
        spike_z: float = 6.0,
        severe_loss: float = 8.0,
        severe_grad: float = 200.0,
        severe_update: float = 30.0,
        max_rel_update: float = 0.1,
        strict_start: Optional[bool] = None,
        grad_growth: float = 3.0,
        co_rise: float = 2.0,
        lr_jump: float = 3.0,
        lr_ramp: float = 1.5,
        drift_persist: int = 8,
        loss_gate: float = 0.25,
        grace: Optional[int] = None,
        declared: bool = False,
        bad_batch_loss: float = 3.5,
        policy: Any = None,
        run_log: Any = None,
        tombstones: Any = None,
        on_error: str = "warn",
    ) -> None:
        self.n = max(1, round(positive(rate_hz, "rate_hz") * positive(window_sec, "window_sec")))
        self.window_sec = float(window_sec)
        self.z = positive(z, "z")
        self.persist = int(positive(persist, "persist", integer=True))
        self.window = int(positive(window, "window", integer=True))
        if self.window < _fp.SEGMENT:
            raise ValueError(f"window must be >= {_fp.SEGMENT}, got {window!r}")
        self.beta = positive(beta, "beta")
        self.theta_alert = float(theta_alert)
        self.warmup = int(warmup)
        self.w_s, self.w_p = float(w_s), float(w_p)
        self.loss_floor = float(loss_floor)
        self.spike_z = positive(spike_z, "spike_z")
        self.severe_loss = math.log(positive(severe_loss, "severe_loss"))
        self.severe_grad = math.log(positive(severe_grad, "severe_grad"))
        self.severe_update = math.log(positive(severe_update, "severe_update"))
        self.max_rel_update = positive(max_rel_update, "max_rel_update")
        self.strict_start = strict_start
        self.grad_growth = math.log(positive(grad_growth, "grad_growth"))
        self.co_rise_x = positive(co_rise, "co_rise")
        self.lr_jump = positive(lr_jump, "lr_jump")
        self.lr_ramp = positive(lr_ramp, "lr_ramp")
        self.warmup_bound = max(3 * int(warmup), 300)
        self.drift_persist = int(positive(drift_persist, "drift_persist", integer=True))
        self.loss_gate = float(loss_gate)
        self._base_len = max(4 * self.n, 16)
        self._n3 = min(self.n, 3)  # samples a recent window needs for a level
        self._sdot_every = max(16, self.window // 2)  # steps between Ṡ refreshes
        self.grace = int(grace) if grace is not None else self._base_len + self.n
        if not isinstance(declared, bool):
            raise TypeError(f"declared must be True or False, got {declared!r}")
        self.declared = declared
        self.bad_batch_loss = positive(bad_batch_loss, "bad_batch_loss")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.on_error = on_error
        if policy is None:
            from .policy import Policy

            policy = Policy()
        self.policy, self.run_log, self.tombstones = policy, run_log, tombstones
        self.reset()

    # ---- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything (a new run)."""
        n, base = self.n, self._base_len
        every = max(1, min(2 * n, base // 2))  # refresh baselines every ~4 s of samples
        self.t = 0
        self.recent = RecentWindow(n, seconds=self.window_sec)
        self.loss_base = RobustLevel(base, every)
        self.grad_recent = RecentWindow(n)
        self.grad_base = RobustLevel(base, every)
        self.upd_base = RobustLevel(base, every)
        self.proc = EWCorrelation(2.0 / (self.window + 1))
        self.cos_recent: Deque[float] = deque(maxlen=COS_RECENT)  # last per-step cos(−g, Δθ)
        self.cos_base = RobustLevel(base, every)
        self.coherent = True  # no processivity given, or the recent updates are coherent
        self.climb = 0  # consecutive steps going uphill coherently (see _coherence)
        self.climb_devs: List[float] = []  # the loss deviations of the streak's last steps
        self.climb_ur = math.inf
        # (grad_ratio, update_ratio, loss_dev) of the last 2 steps (see _surge)
        self.surge_hist: Deque[Any] = deque(maxlen=2)
        self.jump_ref: Optional[float] = None  # this step's loss level before it (scale x)
        self.jump_loss = 0.0  # this step's loss
        self.loss_win_x = math.nan  # the recent window's trimmed mean (scale x), NaN: < 3
        self.fp = _fp.StreamingFingerprint(self.window)
        self.ref: Optional[np.ndarray] = None
        self.ref_pinned = False
        self.theta = 1.0
        self.theta_low = 0  # consecutive fingerprint refreshes with theta < theta_alert
        self.drift_loss0: Optional[float] = None  # loss level when the fingerprint shifted
        self.losses: Deque[float] = deque(maxlen=self.window)  # last `window` losses, for Ṡ
        self.sdot = 0.0
        self.log_space = True
        self.loss_eps: Optional[float] = None
        self.loss0: Optional[float] = None  # the first finite loss: the run's own scale
        self.loss_prev: Optional[float] = None
        self.loss_step = 0.0
        self.drift_stalled = False
        self.shift_x: Optional[float] = None  # loss level (log space) a severe jump went to
        self.shift_g: Optional[float] = None  # log gradient norm at that jump
        self.shift_bad = False  # declared=True and the shift began out of a calm state
        self.early_ref = math.inf  # the lowest loss of a warm-up streak >= EARLY_RISE x
        # the first loss (where the jump went)
        self.early_big = 0  # steps of that streak >= EARLY_BLOWUP x the first loss
        self.step_last: Optional[int] = None  # the step of the row before
        self.gap = 1  # the steps this row stands for (its step - the row before's)
        self.span = 0  # steps the rows so far stand for (warm-up is measured in steps)
        self.pz_hot = self.rise = self.grad_hot = self.dead = self.co_hot = 0
        self.ur_prev = self.gr_prev = math.inf  # last step's update / gradient ratio
        self.loss_x_prev = 0.0  # last step's raw loss ratio, when its gradient ratio was large
        self.grow = 0  # steps in a row with both ratios above the step before
        self.rel_prev = math.inf  # last update / parameter norm (inf: none yet)
        self.rel_calm = False  # an update below max_rel_update x ||theta|| was seen
        self.recover_t = None  # step count when an action was taken (recovering since)
        self.recover_ref = None  # the loss level (reading scale) it must come back to
        self.recover_level = None  # the loss level before the incident (reading scale)
        self.lr_prev = self.lr_max = 0.0
        self.lr_peak: Optional[float] = None  # the schedule's peak once its warm-up is over
        self.lr_rising = False
        self.lr_up = False  # the Guard raised the lr itself at this step (own_lr_change)
        self.grace_until = 0
        self.loss_grace_until = 0  # (the loss rules' grace: not after a warm-up's end)
        self.pending_mark: Optional[str] = None
        self.own_lr = False  # the next lr change is the Guard's own (own_lr_change)
        self.grad_ref: Optional[float] = None  # log grad-norm level when the reference was taken
        self.last_status = "warming_up"
        self.checked = False
        self._warned = False
        self._sink_failed = False
        self._unwritten: List[Any] = []  # tombstones not yet written (a full disk)
        self.x_now = math.nan  # this step's loss in its reading scale (for the detectors)
        self.detectors = [cls() for cls in _DEFAULT_DETECTORS]

    def mark(self, event: str) -> None:
        """Declare an intended change (e.g. "batch_size_change") at the next update."""
        self.pending_mark = str(event)

    def own_lr_change(self) -> None:
        """The lr of the next update was changed by whoever acts on this Monitor's verdicts
        (the Guard's slow-down or recovery), not by the schedule: not a schedule event."""
        self.own_lr = True

    def measure_changed(self) -> None:
        """From the next update on, ``grad_norm``, ``step_norm``, ``param_norm`` and
        ``noise`` are measured over another set of parameters (layers unfrozen or frozen):
        their levels, and the rules and detectors built on them, start again from that
        step; the loss's are kept (the loss still measures the same thing, so an unfreeze
        at a too-high lr is judged against the loss's old level). The ``Guard`` calls it
        when the elements with a gradient double or halve."""
        self._reset_norm_levels()
        self.surge_hist.clear()
        self.grad_hot = self.co_hot = self.climb = self.grow = self.dead = 0
        self.climb_devs = []
        self.climb_ur = self.ur_prev = self.gr_prev = self.rel_prev = math.inf
        self.grad_ref = None
        self.fp = _fp.StreamingFingerprint(self.window)  # (its window: the old set's noise)
        self.theta, self.theta_low = 1.0, 0
        if not self.ref_pinned:
            self.ref = None
        for d in self.detectors:
            if d.name in _NORM_DETECTORS:
                d.reset()

    def start_recovery(self) -> None:
        """An action was taken on this Monitor's verdict (a skipped step, a slow-down, a
        rollback): until the loss is back at its level before the incident (or for at
        most ``RECOVER_MAX`` steps) a step that would be "healthy" reads "recovering".
        ``decide`` calls it for every action; the Guard calls it again after a rollback
        has restored this Monitor's state from the checkpoint."""
        base = self.loss_base
        if not base.ready:
            return
        self.recover_t, self.recover_level = self.t, base.center
        self.recover_ref = base.center + RECOVER_SIGMAS * max(base.scale, 1e-12)

    def pin_reference(self) -> None:
        """Take the current fingerprint window as the healthy reference now, and freeze it."""
        m = self.fp.mean_powers()
        if m is not None:
            self.ref, self.ref_pinned = m.copy(), True

    def reset_reference(self) -> None:
        """Drop the reference; a new one is taken at the next healthy, full window."""
        self.ref, self.ref_pinned, self.theta, self.theta_low = None, False, 1.0, 0

    # ---- the step ------------------------------------------------------------------------

    def update(
        self,
        loss: Any,
        *,
        step: Optional[int] = None,
        grad_norm: Any = None,
        step_norm: Any = None,
        noise: Any = None,
        lr: Any = None,
        time: Any = None,
        param_norm: Any = None,
        processivity: Any = None,
        update_lr: Any = None,
    ) -> Snapshot:
        """Feed one step; returns its ``Snapshot``. Only ``loss`` is required.

        ``grad_norm`` ||g|| and ``step_norm`` ||θ_after − θ_before|| of the step, in the
        gradients' / parameters' units; ``param_norm`` ||θ|| (with ``step_norm``: the
        relative size of the update); ``processivity`` cos(−g, Δθ) of the step, in
        [-1, 1] (how much the update went along the descent direction; the tap measures
        it); ``noise`` the gradient-noise norm; ``lr`` the learning rate of the step;
        ``time`` seconds (any origin). ``update_lr``: the lr the update in ``step_norm``
        was made with, where that is not ``lr`` (the ``Guard`` measures each update at the
        next step, so a schedule's change of lr would read as a jump of the update).

        Accepts Python floats, NumPy scalars and 0-d tensors. Bad types raise TypeError at
        the first call only; afterwards no input makes ``update`` raise.
        """
        if self.checked:  # (read_inputs(..., strict=False), inlined: the hot path)
            try:  # fast path: everything converts
                sig = Signals(
                    float(loss),
                    None if step is None else int(step),
                    None if grad_norm is None else float(grad_norm),
                    None if step_norm is None else float(step_norm),
                    None if noise is None else float(noise),
                    None if lr is None else float(lr),
                    None if time is None else float(time),
                    None if param_norm is None else float(param_norm),
                    None if processivity is None else float(processivity),
                    None if update_lr is None else float(update_lr),
                )
            except Exception:
                sig = read_lenient(
                    loss, step, grad_norm, step_norm, noise, lr, time, param_norm, processivity,
                    update_lr,
                )
        else:
            sig = read_inputs(
                loss,
                step,
                grad_norm,
                step_norm,
                noise,
                lr,
                time,
                param_norm,
                processivity,
                update_lr,
                strict=True,
            )
            self.checked = True
        try:
            snap = self._update(sig)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            snap = self._fallback(sig, exc)
        if self.run_log is not None:
            self._write(snap)  # (outside the try: a failing sink never hides a snapshot)
        return snap

    def _fallback(self, sig: Signals, exc: BaseException) -> Snapshot:
        """The snapshot of a step whose evaluation failed: a non-finite loss still alerts."""
        if not self._warned:
            warnings.warn(
                f"anet_lite.Monitor internal error (training continues): {exc!r}",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        bad = not math.isfinite(sig.loss) or (
            sig.grad_norm is not None and not math.isfinite(sig.grad_norm)
        )
        ev: Dict[str, Any] = {"error": repr(exc), "loss": sig.loss}
        if bad:
            ev["cause"] = "non_finite"
        return Snapshot(
            self.theta,
            self.sdot,
            0.0,
            0.0,
            bad,
            0.0,
            step=sig.step,
            status="collapsed" if bad else "warming_up",
            alert=bad,
            evidence=ev,
        )

    def _write(self, snap: Snapshot) -> None:
        """Write to the run log; a failure (a full disk, a dead sink) is reported once, loudly,
        and never reaches the training loop or hides the snapshot."""
        try:
            self.run_log.write(snap)
        except Exception as exc:
            if not self._sink_failed:
                _log.error(
                    "anet_lite: the run log could not be written (%r); alerts and actions go "
                    "on, but this run's log has a gap from step %s",
                    exc,
                    snap.step,
                )
            self._sink_failed = True

    def _update(self, s: Signals) -> Snapshot:
        """One step: measure every signal, climb the rule ladder, run the detectors, and
        make the snapshot."""
        t = self.t = self.t + 1
        step, last = s.step, self.step_last
        gap = step - last if step is not None and last is not None and step > last else 1
        if step is not None:
            self.step_last = step
        self.gap = gap = gap if gap < MAX_GAP else MAX_GAP
        self.span += gap
        G, S = s.grad_norm, s.step_norm
        if G is not None and S is not None:  # (one dict display: the common case)
            ev: Dict[str, Any] = {"loss": s.loss, "grad_norm": G, "step_norm": S}
        else:
            ev = {"loss": s.loss}
            if G is not None:
                ev["grad_norm"] = G
            if S is not None:
                ev["step_norm"] = S
        marked = self.pending_mark is not None
        # (no lr and no mark: no schedule event, nothing to record)
        event = self._schedule(s, ev) if marked or s.lr is not None else ""
        grace = t < self.grace_until or (self.lr_rising and self.lr_peak is None)
        pz, finite_grad = self._measure(s, ev, grace)
        cause, status = self._ladder(s, ev, pz, grace, finite_grad)
        restart = marked or event == "lr_restart"
        cause, status = self._detect(s, ev, cause, status, restart)
        if self.recover_t is not None and status in ("healthy", "warming_up"):
            status = self._recovery(ev, status)
        if cause:
            ev["cause"] = cause
        if event:
            ev["event"] = event
        if grace:
            ev["grace"] = True
        proc = self.proc.value()
        theta, sdot = self.theta, self.sdot
        ft = self.w_s * sdot + self.w_p * proc
        # (one assignment per key, in this order: what ev.update(theta=..., ...) did)
        ev["theta"] = theta
        ev["sdot"] = sdot
        ev["proc"] = proc
        ev["f_total"] = ft
        ev["precursor_z"] = pz
        self.last_status = status
        step = s.step if s.step is not None else t
        precursor = status == "precursor" or status == "collapsed"
        alert = True if cause else False  # noqa: SIM210 (bool(cause) without the call)
        return make_snapshot(theta, sdot, proc, ft, precursor, pz, step, status, alert, ev)

    def _measure(self, s: Signals, ev: Dict[str, Any], grace: bool) -> Any:
        """Loss, gradient and update levels, and the noise fingerprint; returns (the
        precursor z, whether the gradient norm was finite)."""
        self.x_now = _NAN
        L = s.loss
        if _isfinite(L):
            pz = self._loss_signals(s, ev)
        else:  # (no loss level to compare this step's jumps with)
            pz, self.jump_ref, self.loss_win_x = Z_CAP, None, _NAN
        finite_grad = self._grad_signals(s, ev)
        v = s.noise if s.noise is not None else s.grad_norm
        if v is None and _isfinite(L):
            v = self.loss_step  # loss only: fingerprint its step-to-step changes, not its trend
        if v is not None and _isfinite(v) and self.fp.push(v) is not None:
            self._refresh_theta(grace)
        return pz, finite_grad

    def _ladder(
        self, s: Signals, ev: Dict[str, Any], pz: float, grace: bool, finite_grad: bool
    ) -> Any:
        """The rules in order of precedence; returns (cause or "", status). The first rung
        that holds decides; the detectors (``_detect``) speak only where none alarmed."""
        w, b2 = self.warmup, 2 * self._base_len
        ready = self.loss_base.ready and self.t > (b2 if b2 < w else w)  # (min(w, b2))
        judge = ready and not grace
        # A rising lr (a warm-up) mutes the rules that read gradient and update levels,
        # which the schedule moves; not those that judge the loss against its own level,
        # nor does the grace after the warm-up's end (MonitorRules._schedule).
        loss_judge = ready and self.t >= self.loss_grace_until
        cause = ev.pop("severe") if "severe" in ev else ""  # (rare: no pop call otherwise)
        if not _isfinite(s.loss) or not finite_grad:
            return "non_finite", "collapsed"
        if cause:
            return cause, "precursor"
        if "lr_ramp" in ev:
            return "lr_ramp", "precursor"
        if "first_loss_ratio" in ev:
            return "bad_batch", "precursor"  # (declared=True: an undeclared level shift)
        if self.shift_x is not None:
            return "", "drifting"  # a level shift that is not (yet) climbing further
        if loss_judge and self.climb >= CLIMB_STEPS:
            return "ascent", "precursor"
        if judge and ev.get("compounding"):
            return "divergence", "precursor"  # (checked the loss gate itself)
        # A rise that leaves the loss far below where the run started is not a collapse
        # precursor (a near-perfect classifier's rare hard batches): the loss-window rules
        # need the loss, and the window's level, above loss_gate x the first loss. So does
        # the gradient's sustained growth where processivity speaks (near zero the
        # gradient follows the hard batches' share: a smaller batch, a reshuffle, new data
        # lift it 3-5x for steps; going uphill there is the ascent rule's); without it,
        # that growth is the only early sign of a sign bug near zero. One-step
        # gradient/update blow-ups are not gated: they must beat the run's own jitter
        # (SEVERE_Z), which is what tells a hard batch from a loss-scale bug. lr rules and
        # non-finite values neither.
        gate = self.loss_gate_open(s.loss)
        persist = self.persist
        if (
            judge
            and (self.grad_hot >= persist or self.co_hot >= persist)
            and self.coherent
            and (gate or "proc_lift" not in ev)
        ):
            return "grad_growth", "precursor"
        if not gate:
            return "", "healthy" if ready and self.ref is not None else "warming_up"
        if loss_judge and self.pz_hot >= self.persist and self._window_rise_matters():
            return ("oscillation" if (self.sdot > 0.2 or self.grad_hot) else "divergence"), (
                "precursor"
            )
        if (
            loss_judge
            and self.rise >= self.persist
            and pz >= RISE_PZ
            and self._window_rise_matters()
        ):
            return "divergence", "precursor"
        if ready and self.dead >= self.n and pz > -1.0:
            return "stagnation", "drifting"
        if self.theta_low >= 2 and not grace:
            stalled = self.theta_low >= self.drift_persist and self.drift_stalled
            # the dynamics changed AND progress stalled
            return ("fingerprint_shift" if stalled else ""), "drifting"
        return "", "warming_up" if not ready or self.ref is None else "healthy"

    def _window_rise_matters(self) -> bool:
        """The recent window's loss (raw: trimmed mean) is at least ``WINDOW_RISE`` x the
        loss's level. Large-batch LM logs have so little jitter that a +10-20 % bump is
        many sigmas: significant, and harmless (real runs recover from such bumps within
        ~50 steps; a loss smoothed before it was logged turns every bump into one).
        A sustained smaller rise is the slow detectors' (``LossCusum``, ``LossTrend``)."""
        r = self._window_loss_ratio()
        return r is None or r >= WINDOW_RISE

    def _detect(
        self, s: Signals, ev: Dict[str, Any], cause: str, status: str, restart: bool
    ) -> Any:
        """Run the detectors (never muted) and bound warm-up; returns (cause, status).

        The rules above keep precedence; a detector's finding decides only a step they
        did not alarm on. After ``warmup_bound`` steps a run is never "warming_up"."""
        p = s.param_norm
        lp = _mlog(p) if p is not None and 0.0 < p < _INF else _NAN  # log ||θ||, NaN: none
        view = _new_view((self.x_now, self.log_space, lp, restart, self.lr_up, self.gap))
        found = None
        for det in self.detectors:
            f = det.update(view)
            if f is not None and found is None:
                found = f
        if found is not None and not cause and status != "collapsed":
            ev.update(found.evidence)
            ev["detector"] = found.detector
            if found.status == "precursor":
                return found.cause, "precursor"
            ev["report"] = found.cause
            status = found.status
        if status == "warming_up" and self.span > self.warmup_bound:
            status = "healthy"
            ev["unsettled"] = True  # the reference never formed: judged without it
        return cause, status

    def _recovery(self, ev: Dict[str, Any], status: str) -> str:
        """"recovering" (not "healthy", nor "warming_up" while levels are learned again)
        until the loss window is back at its pre-incident level."""
        x = self.loss_win_x
        if (x == x and x <= self.recover_ref) or self.t - self.recover_t > RECOVER_MAX:
            self.recover_t = self.recover_ref = self.recover_level = None
            return status
        before = self._raw(self.recover_level)
        if x == x and before > 0.0:
            ev["loss_vs_before"] = self._raw(x) / before
        return "recovering"

    # ---- decisions and persistence -------------------------------------------------------

    def decide(self, snap: Snapshot, *, scope: Optional[Dict[str, Any]] = None) -> Any:
        """The policy's ``Action`` for this snapshot; actions other than "none" are tombstoned.

        A tombstone that cannot be written (a full disk) is kept in memory and written
        before the next one; the action is returned either way."""
        action = self.policy.decide(snap)
        if action.kind != "none":
            self.start_recovery()
        if action.kind != "none" and self.tombstones is not None:
            self._unwritten.append(
                (
                    action.kind,
                    {
                        "policy": action.policy,
                        "scope": dict(scope or {"step": snap.step}),
                        "evidence": {**action.evidence, "reason": action.reason},
                    },
                )
            )
        if self._unwritten and self.tombstones is not None:
            self._flush_tombstones()
        return action

    def _flush_tombstones(self) -> None:
        while self._unwritten:
            kind, kw = self._unwritten[0]
            try:
                self.tombstones.append(kind, **kw)
            except Exception as exc:
                _log.error(
                    "anet_lite: a %s tombstone could not be written (%r); the action was "
                    "taken, and %d record(s) are kept in memory to be written at the next one",
                    kind,
                    exc,
                    len(self._unwritten),
                )
                return
            self._unwritten.pop(0)

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this monitor is (JSON-serialisable)."""
        from ._state import dump

        return dump(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        from ._state import load

        load(self, state)
