"""``Monitor``: one object, fed once per step, that says what is happening and why.

Streaming versions of the seed's metrics (O(1) amortised per update), plus the parts a
user would otherwise hand-roll: a healthy reference taken after warm-up and refreshed
only while healthy, schedule awareness (a change made on purpose is not a failure), and
spike-vs-precursor separation (severity and persistence decide). See docs/monitor.md.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional

import numpy as np

from . import fingerprint as _fp
from ._signals import Signals, read_inputs
from ._stream import EWCorrelation, RecentWindow, RobustLevel
from ._validate import positive
from .metrics import Z_CAP, _entropy_bins, _entropy_rate_core
from .verdict import Snapshot, make_snapshot


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


_DEAD = math.log(100.0)  # a gradient 100x below its healthy level: units stopped learning


class Monitor:
    """Streaming failure monitor. ``snap = m.update(loss, grad_norm=..., lr=...)`` per step.

    Parameters (defaults need no per-run tuning; units in brackets):
      rate_hz, window_sec  the precursor window: rate_hz * window_sec samples, or the last
                           window_sec seconds when ``time`` is passed [Hz, s]
      z                    precursor threshold on the robust z of the loss window
      window               samples in the noise fingerprint (and the Ṡ windows: 2 x window/2)
      beta, theta_alert    θ sensitivity and the θ below which the run is "drifting"
      warmup               steps before the healthy reference may be taken
      w_s, w_p             F_Total weights
      spike_z              one-step loss deviation (robust z) reported as a ``spike``
      severe_loss          one-step loss ratio to its baseline that alarms at once [x]
      severe_grad          one-step gradient-norm ratio that alarms at once [x]
      severe_update        one-step update-norm ratio (lr-normalised) that alarms at once [x]
      lr_jump              lr above this multiple of the largest earlier lr is a bug, not a schedule
      grace                steps after a schedule change during which slow signals are muted
      policy               a ``Policy`` for ``decide`` (default: ``Policy()``)
      run_log              an ``outputs.RunLog`` that gets every snapshot
      tombstones           a ``tombstone.TombstoneLog`` that gets every action ``decide`` takes
      on_error             "warn" (default: an internal error never reaches the training loop)
                           or "raise"
    """

    def __init__(
        self,
        *,
        rate_hz: float = 5.0,
        window_sec: float = 2.0,
        z: float = 2.5,
        window: int = 64,
        beta: float = 3.0,
        theta_alert: float = 0.6,
        warmup: int = 50,
        w_s: float = 0.7,
        w_p: float = 0.3,
        spike_z: float = 6.0,
        severe_loss: float = 4.0,
        severe_grad: float = 30.0,
        severe_update: float = 30.0,
        lr_jump: float = 3.0,
        grace: Optional[int] = None,
        policy: Any = None,
        run_log: Any = None,
        tombstones: Any = None,
        on_error: str = "warn",
    ) -> None:
        self.n = max(1, round(positive(rate_hz, "rate_hz") * positive(window_sec, "window_sec")))
        self.window_sec = float(window_sec)
        self.z = positive(z, "z")
        self.window = int(positive(window, "window", integer=True))
        if self.window < _fp.SEGMENT:
            raise ValueError(f"window must be >= {_fp.SEGMENT}, got {window!r}")
        self.beta = positive(beta, "beta")
        self.theta_alert = float(theta_alert)
        self.warmup = int(warmup)
        self.w_s, self.w_p = float(w_s), float(w_p)
        self.spike_z = positive(spike_z, "spike_z")
        self.severe_loss = math.log(positive(severe_loss, "severe_loss"))
        self.severe_grad = math.log(positive(severe_grad, "severe_grad"))
        self.severe_update = math.log(positive(severe_update, "severe_update"))
        self.lr_jump = positive(lr_jump, "lr_jump")
        base = max(4 * self.n, 16)
        self.grace = int(grace) if grace is not None else base + self.n
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.on_error = on_error
        if policy is None:
            from .policy import Policy

            policy = Policy()
        self.policy, self.run_log, self.tombstones = policy, run_log, tombstones
        self._base_len = base
        self.reset()

    # ---- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything (a new run)."""
        n, base = self.n, self._base_len
        self.t = 0
        self.recent = RecentWindow(n, seconds=self.window_sec)
        every = max(1, min(2 * n, base // 2))  # refresh baselines every ~4 s of samples
        self.loss_base = RobustLevel(base, every)
        self.grad_base = RobustLevel(base, every)
        self.upd_base = RobustLevel(base, every)
        self.proc = EWCorrelation(2.0 / (self.window + 1))
        self.fp = _fp.StreamingFingerprint(self.window)
        self.ref: Optional[np.ndarray] = None
        self.ref_pinned = False
        self.theta = 1.0
        self.theta_low = 0  # consecutive fingerprint refreshes with theta < theta_alert
        self.losses: list = []  # last `window` loss values for Ṡ
        self.sdot = 0.0
        self.log_space = True
        self.lr_prev = self.lr_max = 0.0
        self.lr_rising = False
        self.grace_until = 0
        self.pending_mark: Optional[str] = None
        self.grad_hot = 0  # recent steps with gradient z above the threshold (decays)
        self.grad_ref: Optional[float] = None  # log grad-norm level when the reference was taken
        self.dead = 0  # consecutive steps with the gradient 100x below that level
        self.last_status = "warming_up"
        self.checked = False
        self._warned = False

    def mark(self, event: str) -> None:
        """Declare an intended change (e.g. "batch_size_change") at the next update."""
        self.pending_mark = str(event)

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
    ) -> Snapshot:
        """Feed one step; returns its ``Snapshot``. Only ``loss`` is required.

        Accepts Python floats, NumPy scalars and 0-d tensors. Bad types raise TypeError at
        the first call only; afterwards no input makes ``update`` raise.
        """
        sig = read_inputs(
            loss, step, grad_norm, step_norm, noise, lr, time, strict=not self.checked
        )
        self.checked = True
        try:
            snap = self._update(sig)
            if self.run_log is not None:
                self.run_log.write(snap)
            return snap
        except Exception as exc:
            if self.on_error == "raise":
                raise
            if not self._warned:
                warnings.warn(
                    f"anet_lite.Monitor internal error (training continues): {exc!r}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned = True
            return Snapshot(
                self.theta,
                self.sdot,
                0.0,
                0.0,
                False,
                0.0,
                step=sig.step,
                status="warming_up",
                evidence={"error": repr(exc)},
            )

    def _update(self, s: Signals) -> Snapshot:
        self.t += 1
        t, n = self.t, self.n
        step = s.step if s.step is not None else t
        ev: Dict[str, Any] = {"loss": s.loss}
        if s.grad_norm is not None:
            ev["grad_norm"] = s.grad_norm
        if s.step_norm is not None:
            ev["step_norm"] = s.step_norm
        event, cause, severe = self._schedule(s, ev), "", False
        if event:
            ev["event"] = event
        grace = t < self.grace_until or self.lr_rising

        # -- loss ---------------------------------------------------------------------------
        L = s.loss
        pz = 0.0
        finite_loss = math.isfinite(L)
        if finite_loss:
            if L <= 0.0 and self.log_space:
                self.log_space = False
                self.recent.clear()
                self.loss_base.reset()
            x = math.log(L) if self.log_space else L
            base = self.loss_base
            floor = 1e-3 if self.log_space else 1e-3 * abs(base.center) + 1e-12
            if base.ready:
                dev = (x - base.center) / max(base.scale, floor)
                ev["loss_dev"] = dev
                if self.log_space and x - base.center >= self.severe_loss:
                    severe, cause = True, "bad_batch"
                elif dev >= self.spike_z:
                    ev["spike"] = True
            for old in self.recent.push(x, s.time if self._timed(s) else None):
                base.push(old)
            if base.ready and len(self.recent) >= min(n, 3):
                pz = (self.recent.trimmed_mean() - base.center) / max(base.scale, floor)
                pz = max(-Z_CAP, min(Z_CAP, pz)) if pz == pz else 0.0
            self.losses.append(L)
            if len(self.losses) > self.window:
                del self.losses[0]
            if t % max(16, self.window // 2) == 0 and len(self.losses) >= self.window:
                h = self.window // 2
                arr = np.asarray(self.losses)
                self.sdot = _entropy_rate_core(arr[:h], arr[h:], _entropy_bins(h))

        # -- gradient and update --------------------------------------------------------------
        G, S = s.grad_norm, s.step_norm
        finite_grad = G is None or math.isfinite(G)
        if G is not None and finite_grad and G > 0.0:
            lg = math.log(G)
            gb = self.grad_base
            if gb.ready:
                gd = lg - gb.center
                ev["grad_ratio"] = _exp(gd)
                gz = gd / max(gb.scale, 1e-3)
                ev["grad_z"] = gz
                self.grad_hot = self.grad_hot + 1 if gz > self.z else max(0, self.grad_hot - 1)
                if gd >= self.severe_grad and not severe:
                    severe, cause = True, "grad_explosion"
            gb.push(lg)
            ref = self.grad_ref
            self.dead = self.dead + 1 if ref is not None and gb.center < ref - _DEAD else 0
        if S is not None and math.isfinite(S) and S > 0.0:
            lr_ok = s.lr is not None and 0.0 < s.lr < math.inf
            lu = math.log(S) - (math.log(s.lr) if lr_ok else 0.0)
            ub = self.upd_base
            if ub.ready:
                ud = lu - ub.center
                ev["update_ratio"] = _exp(ud)
                if ud >= self.severe_update and not severe:
                    severe, cause = True, "update_blowup"
            ub.push(lu)
            if G is not None and finite_grad and G > 0.0:
                self.proc.update(math.log(G), math.log(S))
        if "lr_jump" in ev:
            severe, cause = True, "lr_jump"

        # -- noise fingerprint ----------------------------------------------------------------
        v = (
            s.noise
            if s.noise is not None
            else (G if G is not None else (L if finite_loss else None))
        )
        if v is not None and math.isfinite(v) and self.fp.push(v) is not None:
            self._refresh_theta(grace, t)

        # -- verdict --------------------------------------------------------------------------
        proc = self.proc.value()
        ft = self.w_s * self.sdot + self.w_p * proc
        ready = self.loss_base.ready and t > min(self.warmup, 2 * self._base_len)
        if not finite_loss or not finite_grad:
            status, cause = "collapsed", "non_finite"
            pz = Z_CAP
        elif severe:
            status = "precursor"
        elif ready and not grace and pz > self.z:
            status = "precursor"
            cause = "oscillation" if (self.sdot > 0.2 or self.grad_hot >= 2) else "divergence"
        elif ready and not grace and self.grad_hot >= n:
            status, cause = "precursor", "grad_growth"
        elif ready and self.dead >= n and pz > -1.0:
            status, cause = "drifting", "stagnation"
        elif self.ref is not None and self.theta_low >= 2 and not grace:
            status, cause = "drifting", "fingerprint_shift"
        elif not ready or self.ref is None:
            status = "warming_up"
        else:
            status = "healthy"
        if cause:
            ev["cause"] = cause
        ev.update(theta=self.theta, sdot=self.sdot, proc=proc, f_total=ft, precursor_z=pz)
        if grace:
            ev["grace"] = True
        self.last_status = status
        alert = status in ("precursor", "collapsed", "drifting")
        return make_snapshot(
            self.theta,
            self.sdot,
            proc,
            ft,
            status in ("precursor", "collapsed"),
            pz,
            step,
            status,
            alert,
            ev,
        )

    def _timed(self, s: Signals) -> bool:
        return s.time is not None and math.isfinite(s.time)

    def _schedule(self, s: Signals, ev: Dict[str, Any]) -> str:
        """Recognise intended changes (lr decay, restart, end of warm-up, marks) and lr bugs."""
        event = self.pending_mark or ""
        self.pending_mark = None
        lr = s.lr
        if lr is not None and math.isfinite(lr) and lr > 0.0:
            ev["lr"] = lr
            prev = self.lr_prev
            if prev > 0.0:
                ratio = lr / prev  # may underflow to 0 or overflow to inf
                if ratio > 1.0 and lr > self.lr_jump * self.lr_max:
                    ev["lr_jump"] = lr / self.lr_max
                elif (ratio < 0.905 or ratio > 1.105) and not event:  # |log ratio| > ~0.1
                    event = "lr_decay" if ratio < 1.0 else "lr_restart"
                elif self.lr_rising and ratio <= 1.0 and not event:
                    event = "warmup_end"
                self.lr_rising = ratio > 1.0 + 1e-12 and "lr_jump" not in ev and not event
            if "lr_jump" not in ev:
                self.lr_max = max(self.lr_max, lr)
            self.lr_prev = lr
        if event:
            self.grace_until = self.t + self.grace
            self.grad_hot = 0
            if not self.ref_pinned:
                self.ref = None  # re-take the healthy fingerprint in the new regime
        return event

    def _refresh_theta(self, grace: bool, t: int) -> None:
        if not self.fp.ready:
            return
        cur = self.fp.mean_powers()
        if self.ref is None:
            if t > self.warmup and not grace and self.last_status in ("healthy", "warming_up"):
                self.ref = cur.copy()
                self.grad_ref = self.grad_base.center if self.grad_base.ready else None
            return
        self.theta = _fp.similarity_of_powers(cur.tolist(), self.ref.tolist(), self.beta)
        self.theta_low = self.theta_low + 1 if self.theta < self.theta_alert else 0
        if not self.ref_pinned and self.last_status == "healthy" and self.theta >= self.theta_alert:
            self.ref += 0.02 * (cur - self.ref)  # follow a healthy run slowly, never a drift

    # ---- decisions ------------------------------------------------------------------------

    def decide(self, snap: Snapshot, *, scope: Optional[Dict[str, Any]] = None) -> Any:
        """The policy's ``Action`` for this snapshot; actions other than "none" are tombstoned."""
        action = self.policy.decide(snap)
        if action.kind != "none" and self.tombstones is not None:
            self.tombstones.append(
                action.kind,
                policy=action.policy,
                scope=dict(scope or {"step": snap.step}),
                evidence={**action.evidence, "reason": action.reason},
            )
        return action

    # ---- persistence ----------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this monitor is (JSON-serialisable)."""
        from ._monitor_state import dump

        return dump(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        from ._monitor_state import load

        load(self, state)
