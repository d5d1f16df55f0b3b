"""``NormGrowth``: the weights' norm growing geometrically, faster than the run ever did
(or shrinking fast).

Healthy training grows ||θ|| fastest at the start and ever more slowly afterwards
(random-walk-like growth under a decaying effective step, or an equilibrium under weight
decay). A weight decay applied with the wrong sign, an optimizer pushed one way, or a
runaway of the logits grows it by a constant factor per step. Two statistics of log ||θ||:

* its growth rate over the last ``SPAN`` steps, per step: alarms when, ``HOLD`` steps in a
  row, it is at least ``RATE`` (0.8 % per step) and ``ACCEL`` (42) x the slowest rate the
  run has shown since its first ``2 * SPAN`` steps (floored at 0.05 % per step). On the
  healthy calibration runs (``bench/calibrate_detectors.py``) this ratio stays below ~4.3
  except after an undeclared change of data, where new data does make the weights grow
  faster for a while (up to 38.4 over 351 runs); ``ACCEL`` is 1.1 x that. So a runaway
  from a flat norm is seen from ~2 % growth per step. A slower one is seen once it has
  held ``ACCEL_LONG`` (4) x the slowest rate, and ``RATE``, for ``HOLD_LONG`` (50) steps
  in a row: new data's growth stops sooner (healthy runs hold at most 1.1 x for 50 steps).
* its growth over the last ``2 * SPAN`` steps, once those start after the first
  ``2 * SPAN``: alarms when ||θ|| grew ``GROWTH`` (2.2) x or more and is not slowing down
  (the last ``SPAN`` steps grew it at least as much as the ``SPAN`` before), and the Guard
  did not raise the lr in those steps (its return to the schedule after a slow-down grows
  the weights faster; a schedule's own warm-up is judged: one to a peak the model cannot
  take does run away). A run whose slowest rate was already brisk (plain SGD at a high lr)
  hides a runaway from the first statistic; this one needs no reference. The largest
  healthy value is 1.94 (a warm-up to a 5-20x peak lr whose loss climbs; curricula 1.66;
  448 runs); ``GROWTH`` is 1.1 x that.

And the other way ("shrinking_weights"): ||θ|| down to ``SHRINK`` (0.8) x or less of what
it was ``SPAN`` steps before, once those start after the first ``2 * SPAN``: a weight decay
many times too strong, or applied twice, pulls the weights to 0 geometrically. Healthy
runs shrink it by at most 4.9 % over 25 steps (448 calibration runs, curricula); 20 % is a
round number 4.5x that in log terms.
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
# ... or, HOLD_LONG steps in a row, >= RATE and ACCEL_LONG x the slowest rate: geometric
# growth that does not stop. Healthy runs do not hold it: the largest ratio held for 50
# steps is 1.1 (448 calibration runs, and 150 fresh-seed ones; 1.8 in warm-ups to a peak
# lr that made a run diverge for good); weight-decay sign bugs and a momentum of 0.999
# hold 14-200. ACCEL_LONG is a round number well above the healthy runs.
HOLD_LONG = 2 * SPAN
ACCEL_LONG = 4.0
GROWTH = math.log(2.2)  # over 2 * SPAN steps, not slowing down
_SETTLE = 2 * SPAN  # steps before the slowest rate counts
_FULL = 2 * SPAN + 1  # the history: log ||θ|| now and 2 * SPAN steps before
_GROW_FROM = _SETTLE + 2 * SPAN  # steps before the growth over 2 * SPAN counts
# (not slowing down and GROWTH in all: the last SPAN steps grew >= GROWTH / 2)
_HALF_RATE = GROWTH / (2 * SPAN)
SHRINK = math.log(0.8)  # over SPAN steps
_SHRINK_RATE, _SHRINK_FROM = SHRINK / SPAN, _SETTLE + SPAN


class NormGrowth(Detector):
    """Geometric growth of ||θ|| far faster than the run's own slowest ("runaway_weights"),
    or a fast shrink ("shrinking_weights")."""

    name = "norm_growth"
    STATE = ("n", "hot", "rmin", "calm", "held")

    def reset(self) -> None:
        self.n = 0
        self.hot = 0
        self.held = 0  # steps in a row at >= RATE and ACCEL_LONG x the slowest rate
        self.rmin = math.inf
        self.calm = 0  # steps since the Guard last raised the lr
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
        self.calm = 0 if v.lr_up else self.calm + 1
        p = v.log_param
        if not finite(p):
            return None
        n = self.n = self.n + 1
        h = self.hist
        h.append(p)
        if n <= _SETTLE or len(h) <= SPAN:
            return None
        rate = (h[-1] - h[-1 - SPAN]) / SPAN
        rmin = self.rmin
        if rate >= RATE:  # (max(rmin, RATE_FLOOR) and min(rmin, rate) written out: hot path)
            slowest = RATE_FLOOR if rmin < RATE_FLOOR else rmin
            hot = self.hot = self.hot + 1 if rate >= ACCEL * slowest else 0
            held = self.held = self.held + 1 if rate >= ACCEL_LONG * slowest else 0
        else:
            hot = held = 0
            if self.hot or self.held:  # (no stores on a quiet step)
                self.hot = self.held = 0
        if rate < rmin:
            self.rmin = rate
        if rate <= _SHRINK_RATE and n > _SHRINK_FROM:
            ev = {"param_shrink": math.exp(rate * SPAN)}
            return Finding(self.name, "shrinking_weights", "precursor", ev)
        grown = 0.0
        if rate >= _HALF_RATE and n > _GROW_FROM and self.calm > _SETTLE and len(h) == _FULL:
            grown = h[-1] - h[0]
            mid = h[SPAN]
            if grown < GROWTH or h[-1] - mid < mid - h[0]:
                grown = 0.0
        if hot >= HOLD or grown or (held >= HOLD_LONG and self.calm > HOLD_LONG):
            ev = {
                "param_growth_per_step": math.expm1(rate),
                "growth_accel": rate / max(self.rmin, RATE_FLOOR),
                "param_growth": math.exp(h[-1] - h[0]) if len(h) == _FULL else math.nan,
            }
            return Finding(self.name, "runaway_weights", "precursor", ev)
        return None
