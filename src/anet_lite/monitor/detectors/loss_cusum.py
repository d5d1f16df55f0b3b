"""``LossCusum``: a one-sided CUSUM (Page 1954) on the loss's standardised innovations.

The loss is read in the Monitor's scale ``x`` (log of the floored loss). A slow
reference level ``mu`` (an EWMA with weight ``LAMBDA``) and the run's own jitter
``sigma`` (robust: 1.4826 MAD of one-step differences / sqrt 2, over the last 64 steps)
describe the run while it is in control. Each step adds ``min((x - mu) / sigma, CLIP) -
K`` to ``S`` (never below 0): noise around a flat or falling level keeps ``S`` at 0; a
level that creeps up by more than ``K`` sigmas accumulates, however slowly. While ``S``
> 0 the reference and the jitter are frozen (Basseville & Nikiforov 1993, ch. 2: the
in-control parameters are not re-estimated from the change being tested). An episode
ends when the smoothed loss falls ``BACK`` sigmas below its peak in the episode: a
level that comes back down (new data being learned, an early jump that recovers) is not
a divergence. ``CLIP`` bounds what one step can add, so a lone spike never alarms alone.
An alarm also needs the rise to matter: the smoothed level ``MIN_RISE`` (25 %) above the
reference, or a fifth of the progress the run made since its first loss given back
(``GIVE_BACK``; evidence ``given_back``).

The alarm threshold ``H`` is the only fitted number. It is set from healthy runs alone
(``bench/calibrate_detectors.py``: the largest ``S`` over every healthy run of the
calibration sets, plus a 10 % margin), never from a failure: every failure mechanism
is held out of its choice.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from .._stream import RobustLevel
from ._base import Detector, Finding, View, finite

__all__ = ["H", "LossCusum"]

LAMBDA = 0.02  # reference EWMA weight per step (a ~35-step half-life)
SMOOTH = 0.2  # the smoothed level used for the episode's peak (a ~3-step half-life)
K = 1.0  # allowance: drifts slower than K sigmas per step above mu are not accumulated
CLIP = 3.0  # at most CLIP - K per step
BACK = 2.0  # sigmas below the episode's peak that end it
BURN = 20  # steps after a (re)start before anything accumulates
H = 42.0  # 1.1 x the largest S over 351 healthy runs (38): bench/calibrate_detectors.py
# ... and a rise that matters: the smoothed level at least 25 % above the reference (in
# the floored scale). Large-batch LM logs have so little jitter that a 2 % drift is
# many sigmas: significant, and harmless.
MIN_RISE = math.log(1.25)
# ... or a rise that gives back GIVE_BACK (a fifth) of what the run had learned since its
# first loss: (loss - reference) >= GIVE_BACK x (first loss - reference), in raw loss units
# (the floor cancels), once the reference is LEARNED below the first loss. The floor makes
# MIN_RISE a rise of ~40 % of a mid-range loss (an LM at 2.3 nats from 5: +0.9 nats). A
# round number, not fitted: of the 448 healthy calibration runs one reaches S >= H (it
# gives back 41 % and alarms either way); the real public logs give back at most 1.4 %
# while S >= H (large-batch LM drift), an lr too high for a char LM 26-37 % (real runs).
GIVE_BACK = 0.2
LEARNED = math.log(1.25)
_JITTER = 64
_NEG_INF = -math.inf
_FLOOR = 1e-3


class LossCusum(Detector):
    """Sustained creep of the loss level above its in-control reference ("slow_rise")."""

    name = "loss_cusum"
    STATE = ("n", "mu", "sm", "s", "peak", "steps_up", "x0")

    def reset(self) -> None:
        self.n = 0
        self.mu = self.sm = math.nan
        self.s = 0.0
        self.peak = -math.inf
        self.steps_up = 0  # steps of the current episode
        self.x0 = math.nan  # the first loss since the (re)start, in the same scale
        self.jitter = RobustLevel(_JITTER, 16)

    def update(self, v: View) -> Optional[Finding]:
        if v.restart:
            self.reset()
        x = v.x
        if not finite(x):
            return None
        n = self.n = self.n + 1  # (state read into locals once: the hot path)
        if n == 1:
            self.mu = self.sm = self.x0 = x
            self.jitter.push(x)
            return None
        sm = self.sm = self.sm + SMOOTH * (x - self.sm)
        jit = self.jitter
        s = self.s
        if s == 0.0:
            jit.push(x)
        if n > BURN and jit.ready:
            fl = _FLOOR if v.log_space else _FLOOR * abs(jit.center) + 1e-12
            sigma = jit.scale
            if fl > sigma:  # (max(scale, floor) and min(z, CLIP) written out)
                sigma = fl
            z = (x - self.mu) / sigma
            s = s + (CLIP if z > CLIP else z) - K
            if s <= 0.0:
                s = 0.0
                if self.steps_up or self.peak != _NEG_INF:  # (no stores on a quiet step)
                    self.peak, self.steps_up = _NEG_INF, 0
            else:
                self.steps_up += 1
                peak = self.peak
                if sm > peak:  # (max(peak, sm))
                    self.peak = peak = sm
                if sm < peak - BACK * sigma:
                    s, self.peak, self.steps_up = 0.0, -math.inf, 0
                    if sm > self.mu:  # (a dip below the reference is no new level)
                        self.mu = sm
            self.s = s
        if s == 0.0:
            self.mu += LAMBDA * (x - self.mu)
        elif s >= H and (
            not v.log_space or sm - self.mu >= MIN_RISE or self.given_back() >= GIVE_BACK
        ):
            return Finding(self.name, "slow_rise", "precursor", self._evidence(v))
        return None

    def given_back(self) -> float:
        """The share of the progress since the first loss that the smoothed level's rise
        above the reference gave back (raw loss units; 0.2 = a fifth); NaN before the run
        has learned (or from a state saved without x0)."""
        learned = self.x0 - self.mu
        if not learned >= LEARNED:
            return math.nan
        return math.expm1(self.sm - self.mu) / math.expm1(learned)

    def _evidence(self, v: View) -> Dict[str, Any]:
        rise = self.sm - self.mu
        return {
            "cusum": self.s,
            "cusum_h": H,
            "rise_steps": self.steps_up,
            "level_ratio": math.exp(min(rise, 700.0)) if v.log_space else math.nan,
            "given_back": self.given_back() if v.log_space else math.nan,
        }

    def state_dict(self) -> Dict[str, Any]:
        st = super().state_dict()
        st["jitter"] = self.jitter.state_dict()
        return st

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "jitter" in state:
            self.jitter.load_state_dict(state["jitter"])
