"""``LossTrend``: the loss level kept rising, significantly, through two windows in a row.

The loss is read in the Monitor's scale ``x`` (log of the floored loss). Over the last
``HALF`` steps a least-squares line is fitted to ``x``; its slope's t statistic (slope over
its standard error, from the window's own residuals) says how sure the rise is. The
finding needs the same over the ``HALF`` steps before those (a sustained rise, not one
step up: a curriculum's new data, an early jump that recovers or a warm restart lift
the level once and then fall, so one of the two windows is not rising), and the level
of the last window at least ``MIN_RISE`` (5 %) above the window before it (a rise that
matters, not a drift the noise hides in large-batch logs).

The slope is the statistic of the linear-trend test (Basseville & Nikiforov 1993,
ch. 2); both windows are kept with running sums, so a step costs the same at any
``HALF``. ``HALF`` (30) and ``MIN_RISE`` (5 %) are round numbers chosen before any
scoring; ``T`` is set from healthy runs alone (``bench/calibrate_detectors.py`` prints the
largest statistic over every healthy run of the calibration sets): no failure was used to
choose any of them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, Optional

from ._base import Detector, Finding, View, finite

__all__ = ["BLOCK_SLOW", "HALF", "LossTrend", "SlowLossTrend", "T"]

HALF = 30  # values per window: a rise is followed for 2 x HALF steps (x BLOCK_SLOW, slow)
BLOCK_SLOW = 10  # SlowLossTrend: the same test on the means of blocks of this many steps
# Both windows' slope t >= T. The largest over 448 healthy calibration runs (189,400
# steps) is 2.54; with independent noise the largest over 50,000 steps is ~2.5 (median).
T = 2.6
MIN_RISE = math.log(1.05)  # the last window's mean level above the window before it
_SXX = HALF * (HALF * HALF - 1) / 12.0  # sum of (k - mean k)^2 over k = 0 .. HALF-1
_MID = (HALF - 1) / 2.0
_ROOT_SXX = math.sqrt(_SXX)
_SE_FLOOR = 1e-3  # residual sd floor (log units): a noiseless line is not infinitely sure
_EXACT = 4096  # the running sums are recomputed exactly every _EXACT values
_LAST, _DOF = HALF - 1, HALF - 2  # the newest value's position; the residuals' degrees of freedom
_sqrt = math.sqrt


class LossTrend(Detector):
    """A sustained, significant rise of the loss level ("rising_trend")."""

    name = "loss_trend"
    STATE: tuple = ("n", "s", "a", "q", "ys", "ts", "ms")

    def reset(self) -> None:
        self.n = 0  # finite values taken since the (re)start
        self.s = self.a = self.q = 0.0  # sum y, sum k*y (k = position), sum y^2 of the window
        self.ys: Deque[float] = deque(maxlen=HALF)
        self.ts: Deque[float] = deque(maxlen=HALF + 1)  # slope t of each full window
        self.ms: Deque[float] = deque(maxlen=HALF + 1)  # mean level of each full window

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ys = deque((float(y) for y in self.ys), maxlen=HALF)
        self.ts = deque((float(t) for t in self.ts), maxlen=HALF + 1)
        self.ms = deque((float(m) for m in self.ms), maxlen=HALF + 1)

    def state_dict(self) -> Dict[str, Any]:
        st = super().state_dict()
        st.update(ys=list(self.ys), ts=list(self.ts), ms=list(self.ms))
        return st

    def update(self, v: View) -> Optional[Finding]:
        if v.restart:
            self.reset()
        y = v.x
        if not v.log_space or not finite(y):
            return None
        return self._add(y, v.steps)

    def _push(self, y: float, steps: int = 1) -> Optional[Finding]:
        """Slide the windows by one value (a line's loss, or a block's mean) that stands
        for ``steps`` training steps (the finding's ``trend_steps``: 2 x HALF of them)."""
        n = self.n = self.n + 1  # (the window slid in place: the hot path)
        ys = self.ys
        if n <= HALF:
            self.a += (n - 1) * y
            self.s += y
            self.q += y * y
            ys.append(y)
            if n < HALF:
                return None
            s, a, q = self.s, self.a, self.q
        else:
            old = ys[0]
            ys.append(y)
            if n % _EXACT == 0:  # exact sums now and then: rounding never accumulates
                s, a, q = self._exact()
            else:
                s = self.s
                a = self.a = self.a + (_LAST * y - (s - old))
                s = self.s = s - old + y
                q = self.q = self.q + (y * y - old * old)
        mean = s / HALF
        b = (a - _MID * s) / _SXX
        rss = q - s * mean - b * b * _SXX
        se = _sqrt(rss / _DOF) if rss > 0.0 else 0.0
        t = b * _ROOT_SXX / (se if se > _SE_FLOOR else _SE_FLOOR)
        ts, ms = self.ts, self.ms
        ts.append(t)
        ms.append(mean)
        if t < T or len(ts) <= HALF:
            return None
        t0 = ts[0]
        if t0 >= T and mean - ms[0] >= MIN_RISE:
            return Finding(
                self.name,
                "rising_trend",
                "precursor",
                {
                    "trend_t": t if t < t0 else t0,
                    "trend_ratio": math.exp(min(mean - ms[0], 700.0)),
                    "trend_steps": 2 * HALF * steps,
                },
            )
        return None

    def _exact(self) -> Any:
        """The window's sums recomputed exactly (every _EXACT values)."""
        ys = self.ys
        self.s = math.fsum(ys)
        self.a = math.fsum(k * w for k, w in enumerate(ys))
        self.q = math.fsum(w * w for w in ys)
        return self.s, self.a, self.q

    _add = _push  # a line's value (SlowLossTrend: into its block)


class SlowLossTrend(LossTrend):
    """``LossTrend`` on the loss's means over blocks of ``BLOCK_SLOW`` (10) steps: two
    300-step windows. A run that gives its progress back over hundreds of steps rises by
    less than its batch-to-batch noise in any 30 steps (a char LM at a too-high lr: +0.5
    nats over 400 steps, the batch loss's sd 0.13); the means of 10 steps have a third of
    that noise and the 300-step windows see the whole rise. The same statistic and ``T``:
    under independent noise a block mean's t has the null distribution of a step's, and a
    block is a tenth of the tests. A line of a sparse log that stands for 10 steps or more
    is its own block (a log of every 10th step: this is ``LossTrend``)."""

    name = "loss_trend_slow"
    STATE = LossTrend.STATE + ("bsum", "bn", "bsteps")

    def reset(self) -> None:
        super().reset()
        self.bsum = 0.0  # sum of the current block's values
        self.bn = 0  # values in it
        self.bsteps = 0  # steps they stand for

    def _add(self, y: float, steps: int = 1) -> Optional[Finding]:
        self.bsum += y
        self.bn += 1
        self.bsteps += steps
        if self.bsteps < BLOCK_SLOW:
            return None
        mean, block = self.bsum / self.bn, self.bsteps
        self.bsum, self.bn, self.bsteps = 0.0, 0, 0
        return self._push(mean, block)
