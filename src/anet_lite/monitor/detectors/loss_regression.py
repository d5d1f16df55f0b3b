"""``LossRegression``: the loss far above the best level the run reached (invariants).

Bounds that no state of the Monitor can mute (warm-up, grace, level shift, spike):

* ``loss_blowup``: the loss, in the Monitor's floored scale, at least ``BLOWUP`` x (10x)
  its best smoothed level, or its first loss (since the last restart), for
  ``BLOWUP_STEPS`` steps in a row. A healthy run's loss never stands an order of
  magnitude above where it has been: this is never a "spike".
  Or at least ``BLOWUP`` x its first loss for ``FIRST_STEPS`` (3) steps in a row: the
  untrained model's loss is the natural scale of a loss (chance for a classifier), and a
  network 10x worse than untrained is saturated, confidently wrong. The longest healthy
  streak there is 1 step (448 calibration runs; a curriculum's new data reaches 6.5x the
  first loss for 3 steps, the real public logs 2.2x).
  Or, on a single step, at least ``BLOWUP_ONCE`` x (100x) its first loss: no healthy run
  of 991 comes within 2.5x of it on any step (the largest, 38x, is a too-high lr at steps
  1-3 that the early rule reports anyway); a network that blew up that far and fell back
  to chance at once (ReLUs killed by one bad step) is otherwise never flagged.
* ``worse_than_untrained``: after the run had learned, the loss (floored scale) at least
  ``WORSE`` x (2x) its first loss for ``WORSE_STEPS`` (6) steps in a row. The model does
  worse than it did untrained: it is confidently wrong (it learned a corrupted shard's
  labels, or its weights were damaged). A healthy model meeting new data is briefly as
  wrong: the longest healthy streak is 5 steps (undeclared curricula on a CNN, the new
  classes' batches), over 1,150 healthy runs at other learning rates and batch sizes too.
* ``regression``: the smoothed loss at least ``FAR`` x (2x) its best level (a run that
  had learned: its best is below its first loss) for ``HOLD_RISE`` (33) steps while not
  falling (not below where it was ``BACK`` steps before), or for ``HOLD_LONG`` (60) steps
  whatever it does. Training that was undone (a run that never settles, a slow
  runaway) is reported within a bounded number of steps.
* ``regression`` too: every bit of progress lost -- the smoothed loss back at or above
  the first loss, after the run had learned, for ``HOLD`` steps (a dead network back at
  chance, a loss that jumped and settled where it started), falling or not. The longest
  such streak over the healthy calibration runs is 10 steps (a curriculum's new data).

Durations are training steps (``View.steps``: a line of a log written every 10th step
counts for 10, its first line for 1); a streak also needs ``MIN_ROWS`` lines, and the
smoothed level weighs a line as the steps it stands for. With a log of every step, all of
this is the per-step rule above.

Ratios are of ``loss + loss_floor * first loss``, so a near-zero loss's harmless
wiggles are not 10x jumps. The thresholds are round numbers checked against healthy runs
(``bench/calibrate_detectors.py`` reports their margins), not fitted to failures.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, Optional

from ._base import Detector, Finding, View, finite

__all__ = ["LossRegression"]

SMOOTH = 0.2  # smoothed level (EWMA weight per step)
FAR = math.log(2.0)
HOLD = 20
BACK = 10  # 'not falling': the smoothed level now >= BACK steps ago
# 1.1 x the longest healthy streak far above the best of the calibration sets (53,
# curricula). Two curricula of newer seeds hold 61; a corrupted shard whose loss goes back
# to chance and is learned again, flagged by this rule alone 59 steps after its collapse,
# is the same shape: the loss cannot tell them apart, and a collapse left unflagged is
# the worse error.
HOLD_LONG = 60
# 1.1 x the longest healthy streak far above the best at a step where it is not falling: 30
# (an undeclared curriculum on a CNN: back at chance for 20-40 steps before the new
# classes are learned), over 841 healthy runs. One more run the generator labels healthy
# reaches 83: SGD warmed up to 0.57, back at chance for ~60 steps before its lr decays.
HOLD_RISE = 33
BLOWUP = math.log(10.0)
BLOWUP_STEPS = 10
FIRST_STEPS = 3  # steps in a row >= BLOWUP x the first loss
BLOWUP_ONCE = math.log(100.0)  # one step this far above the first loss
LEARNED = math.log(1.25)  # the best level is this far below the first loss: it had learned
START = 5  # steps before the best level is tracked
WORSE = math.log(2.0)  # x the first loss, after the run had learned
WORSE_STEPS = 6  # 1.1 x the longest healthy streak there (5, undeclared curricula), rounded up
# Durations are in training steps: a row of a sparse log counts for the steps since the row
# before it (View.steps). A streak also needs this many rows (log lines): one line is one
# batch's loss, which a single hard batch can lift.
MIN_ROWS = 3
_HIST = BACK + 1  # the smoothed levels kept: now and the BACK lines before


class LossRegression(Detector):
    """A sustained return far above the best level ("regression", "loss_blowup"), or
    above the untrained model's loss ("worse_than_untrained")."""

    name = "loss_regression"
    STATE = (
        "n", "x_first", "sm", "best", "far", "blow", "over_first", "back", "hist", "rows",
        "ages", "worse",
    )

    def reset(self) -> None:
        self.n = 0
        self.x_first = math.nan  # the first loss since the (re)start: the run's or the regime's
        self.sm = math.nan
        self.best = math.inf
        self.far = 0  # steps in a row with the smoothed level >= FAR above best
        self.blow = 0  # steps in a row with the loss >= BLOWUP above best
        self.over_first = 0  # steps in a row with the loss >= BLOWUP above the first
        self.back = 0  # steps in a row with the smoothed loss back at the first loss
        self.worse = 0  # steps in a row with the loss >= WORSE x the first, after learning
        self.hist: Deque[float] = deque(maxlen=_HIST)
        self.ages: Deque[int] = deque(maxlen=_HIST)  # steps of each entry (since the reset)
        self.rows = [0, 0, 0, 0, 0]  # rows (log lines): far, blow, over, back, worse streaks

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.hist = deque((float(x) for x in self.hist), maxlen=_HIST)
        ages = [int(a) for a in self.ages] if "ages" in state else []
        if len(ages) != len(self.hist):  # (saved before steps were counted: one per row)
            ages = list(range(len(self.hist)))
        self.ages = deque(ages, maxlen=_HIST)
        if "rows" in state:
            self.rows = [int(r) for r in self.rows]
        else:  # (saved before rows were counted: one row per step)
            self.rows = [self.far, self.blow, self.over_first, self.back]
        if len(self.rows) < 5:  # (saved before the worse streak existed)
            self.rows.append(self.worse)

    def state_dict(self) -> Dict[str, Any]:
        st = super().state_dict()
        st["hist"] = list(self.hist)
        st["ages"] = list(self.ages)
        return st

    def update(self, v: View) -> Optional[Finding]:
        if v.restart:
            self.reset()
        x = v.x
        if not v.log_space or not finite(x):
            return None
        n = self.n = self.n + 1  # (state read into locals once: the hot path)
        k = v.steps
        if n == 1:
            self.x_first = sm = x
        else:
            sm = self.sm
            sm += (SMOOTH if k == 1 else 1.0 - (1.0 - SMOOTH) ** k) * (x - sm)
        self.sm = sm
        self.hist.append(sm)
        ages = self.ages
        ages.append(ages[-1] + k if ages else 0)
        best, first = self.best, self.x_first
        if n >= START and sm < best:
            self.best = best = sm
        # an order of magnitude above the best level, or above the first loss (a run
        # that blew up at its first steps never had a best level below it)
        low = first if first < best else best  # (min(best, first))
        # streaks in steps (a row adds the steps it stands for, a streak's first row 1) and
        # in rows (written out: the hot path)
        rows = self.rows
        if x - low >= BLOWUP:
            blow = self.blow = self.blow + k if self.blow else 1
            rows[1] += 1
        else:
            blow = self.blow = rows[1] = 0
        if x - first >= BLOWUP:
            over = self.over_first = self.over_first + k if self.over_first else 1
            rows[2] += 1
        else:
            over = self.over_first = rows[2] = 0
        known = finite(best)
        if known:
            learned = best <= first - LEARNED
            if learned and sm - best >= FAR:
                far = self.far = self.far + k if self.far else 1
                rows[0] += 1
            else:
                far = self.far = rows[0] = 0
            if learned and x - first >= WORSE:
                worse = self.worse = self.worse + k if self.worse else 1
                rows[4] += 1
            else:
                worse = self.worse = rows[4] = 0
            if learned and sm >= first:
                back = self.back = self.back + k if self.back else 1
                rows[3] += 1
            else:
                back = self.back = rows[3] = 0
        if (
            (blow >= BLOWUP_STEPS and rows[1] >= MIN_ROWS)
            or (over >= FIRST_STEPS and rows[2] >= MIN_ROWS)
            or x - first >= BLOWUP_ONCE
        ):
            ev = self._evidence(x, low)
            ev["blow_steps"] = max(blow, over)
            return Finding(self.name, "loss_blowup", "precursor", ev)
        if not known:
            return None
        if worse >= WORSE_STEPS and rows[4] >= MIN_ROWS:
            ev = self._evidence(x, low)
            ev["worse_steps"] = worse
            return Finding(self.name, "worse_than_untrained", "precursor", ev)
        rising = far >= HOLD_RISE and self.not_falling()
        if ((far >= HOLD_LONG or rising) and rows[0] >= MIN_ROWS) or (
            back >= HOLD and rows[3] >= MIN_ROWS
        ):
            return Finding(self.name, "regression", "precursor", self._evidence(x, low))
        return None

    def not_falling(self) -> bool:
        """The smoothed level is not below where it was ``BACK`` steps before (False until
        that many steps have been seen)."""
        hist, ages = self.hist, self.ages
        if len(hist) == _HIST and ages[-1] - ages[0] == BACK:  # (a log of every step)
            return self.sm >= hist[0]
        now = ages[-1] if ages else 0
        for i in range(len(hist) - 1 - MIN_ROWS, -1, -1):
            if now - ages[i] >= BACK:
                return self.sm >= hist[i]
        return False

    def _evidence(self, x: float, low: float) -> Dict[str, Any]:
        return {
            "best_ratio": math.exp(min(x - low, 700.0)),
            "first_ratio": math.exp(min(x - self.x_first, 700.0)),
            "far_steps": self.far,
        }
