"""``NormGrowth``: the weights' norm growing geometrically, faster than the run ever did.

Healthy training grows ||θ|| fastest at the start and ever more slowly afterwards
(random-walk-like growth under a decaying effective step, or an equilibrium under weight
decay). A weight decay applied with the wrong sign, an optimizer pushed one way, or a
runaway of the logits grows it by a constant factor per step. The statistic is the growth
rate of log ||θ|| over the last ``SPAN`` steps, per step: it alarms when, ``HOLD`` steps
in a row, it is at least ``RATE`` (0.8 % per step) and ``ACCEL`` (42) x the slowest rate the
run has shown since its first ``2 * SPAN`` steps (floored at 0.05 % per step). On the
healthy calibration runs (``bench/calibrate_detectors.py``) this ratio stays below ~4.3
except after an undeclared change of data, where new data does make the weights grow
faster for a while (up to 38.4 over 351 runs); ``ACCEL`` is 1.1 x that. So a runaway
from a flat norm is seen from ~2 % growth per step.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, Optional

from ._base import Detector, Finding, View, finite

__all__ = ["NormGrowth"]

SPAN = 25
RATE = math.log(1.008)
ACCEL = 42.0
RATE_FLOOR = math.log(1.0005)
HOLD = 5
_FULL, _SETTLE = SPAN + 1, 2 * SPAN  # a full history; steps before the slowest rate counts


class NormGrowth(Detector):
    """Geometric growth of ||θ|| far faster than the run's own slowest ("runaway_weights")."""

    name = "norm_growth"
    STATE = ("n", "hot", "rmin")

    def reset(self) -> None:
        self.n = 0
        self.hot = 0
        self.rmin = math.inf
        self.hist: Deque[float] = deque(maxlen=_FULL)

    def state_dict(self) -> Dict[str, Any]:
        st = super().state_dict()
        st["hist"] = list(self.hist)
        return st

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.hist.extend(float(x) for x in state.get("hist", ()))

    def update(self, v: View) -> Optional[Finding]:
        if v.restart:
            self.reset()
        p = v.log_param
        if not finite(p):
            return None
        n = self.n = self.n + 1
        h = self.hist
        h.append(p)
        if len(h) < _FULL or n <= _SETTLE:  # (_FULL: the history's maxlen)
            return None
        rate = (h[-1] - h[0]) / SPAN
        rmin = self.rmin
        # (max(rmin, RATE_FLOOR) and min(rmin, rate) written out: the hot path)
        fast = rate >= RATE and rate >= ACCEL * (RATE_FLOOR if rmin < RATE_FLOOR else rmin)
        if rate < rmin:
            self.rmin = rate
        hot = self.hot = self.hot + 1 if fast else 0
        if hot >= HOLD:
            ev = {
                "param_growth_per_step": math.expm1(rate),
                "growth_accel": rate / max(self.rmin, RATE_FLOOR),
            }
            return Finding(self.name, "runaway_weights", "precursor", ev)
        return None
