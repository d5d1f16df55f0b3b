"""The Monitor's processivity rules (a mixin of ``MonitorRules``): coherence and ascent.

``Monitor`` owns the state these methods read and write (see ``Monitor.reset``).
"""

from __future__ import annotations

import math
from itertools import islice
from typing import Any, Dict

# Processivity cos(−g, Δθ), when given. Healthy mini-batch training moves only partly along
# each step's gradient (cos ~0.1-0.5 with Adam or momentum, jumping around); an optimizer
# pushed the same way step after step -- a sign bug, a loss being maximised -- follows its
# gradient ever more closely. COS_* are lifts above the run's own median cos.
COS_RECENT = 4  # steps in the recent mean
COS_COHERENT = 0.15  # gradient growth counts as a precursor only with this lift
COS_INFORMATIVE = 0.9  # a median cos above this (plain SGD: always 1) carries no signal
CLIMB_COS = 0.3  # "ascent": cos this far above its median, the update growing, loss rising,
CLIMB_STEPS = 3  # for this many steps in a row
CLIMB_UR = 1.5  # update at least this multiple of its level
CLIMB_DEV = 1.0  # loss at least this many robust sigmas above its level
CLIMB_RISE = 0.5  # and the loss deviation grew by this much over the streak
# The fast way into "ascent": loss deviation, gradient ratio and update ratio each larger
# than the step before on 2 steps in a row (the middle step already >= SURGE_LEVEL), the
# loss now >= SURGE_DEV sigmas up and above every loss the Monitor still holds from
# before (``_loss_new_high``), while the recent updates follow their gradients SURGE_LIFT
# above the run's median cos. A sign bug compounds this way 2-4 steps before its
# collapse; a curriculum switch or an outlier batch jumps once and then decays; hard
# batches that rise two steps in a row (near zero loss, a small batch, a high lr) stay
# below the swings the run has already shown.
SURGE_LEVEL = (1.5, 1.5, 1.0)  # (grad_ratio, update_ratio, loss_dev) at the middle step
SURGE_DEV = 3.0
SURGE_LIFT = 0.25
SURGE_GRAD = 5.0  # without the lift: the gradient >= this x its level, rising 3 steps
# Gradient AND update both >= co_rise x their levels and the update growing, CO_ASCENT
# steps in a row (``co_hot``), while the updates follow their gradients SURGE_LIFT above
# the run's median cos, the loss past its gate: going uphill even while the batch loss
# still wobbles (a sign bug under momentum: the loss lags the optimizer by a step or two).
CO_ASCENT = 2
_isfinite = math.isfinite
_INF, _NEG_INF = math.inf, -math.inf


class CoherenceRules:
    """Processivity cos(−g, Δθ): gate gradient growth on coherent updates; going uphill."""

    def _coherence(self, c: Any, ev: Dict[str, Any], gr: Any, ur: Any) -> None:
        """Processivity: gate gradient growth on coherent updates; detect going uphill.
        Loss, gradient and update compounding (``_surge``; also the 4-step growth streak in
        ``MonitorRules._grad_signals``) is watched with or without it. ``gr``, ``ur``: this
        step's evidence "grad_ratio" and "update_ratio" (None: absent)."""
        if c is None and (gr is None or ur is None):
            # Neither processivity nor both ratios (a loss-only or loss-and-gradient log):
            # nothing to record or gate; a surge history or streak left from earlier ends
            if self.surge_hist:
                self._surge(None, _NEG_INF, ev)
            if self.climb or not self.coherent:
                self._no_coherence()
            return
        lift = self._cos_lift(c)
        if lift is not None:
            ev["proc_lift"] = lift
        dev = ev.get("loss_dev")
        now = None if gr is None or ur is None or dev is None else (gr, ur, dev)
        surge = self._surge(now, _NEG_INF if lift is None else lift, ev)
        if surge == "compounding":
            ev["compounding"] = True  # (Monitor._update reads it: cause "divergence")
        if lift is None:
            self._no_coherence()
            return
        self.coherent = lift >= COS_COHERENT
        cb = self.cos_base
        hot = (
            ur is not None
            and dev is not None
            and c >= cb.center + CLIMB_COS
            and ur >= CLIMB_UR
            and ur > self.climb_ur
            and dev >= CLIMB_DEV
        )
        self.climb_ur = ur if ur is not None else _INF
        if not hot:
            if self.climb:  # (no new list on every quiet step)
                self.climb, self.climb_devs = 0, []
        else:
            self.climb_devs = (self.climb_devs + [dev])[-CLIMB_STEPS:]
            rising = len(self.climb_devs) == CLIMB_STEPS and dev >= self.climb_devs[0] + CLIMB_RISE
            # a streak of coherent growth counts only while the loss climbs across it
            self.climb = self.climb + 1 if rising else min(self.climb + 1, CLIMB_STEPS - 1)
        if surge == "ascent" or (
            self.co_hot >= CO_ASCENT
            and lift >= SURGE_LIFT
            and self.loss_gate_open(ev.get("loss"))  # (MonitorRules)
        ):
            self.climb = max(self.climb, CLIMB_STEPS)

    def _cos_lift(self, c: Any) -> Any:
        """Record this step's cos; its recent mean's lift over the median, or None while
        the cos carries no information (absent, no baseline yet, or plain SGD's ~1)."""
        if c is None or not _isfinite(c):
            return None
        c = 1.0 if c > 1.0 else (-1.0 if c < -1.0 else c)
        rec, cb = self.cos_recent, self.cos_base
        k = len(rec)  # (after the append below: k, its maxlen COS_RECENT at most)
        if k == COS_RECENT:
            cb.push(rec[0])
        else:
            k += 1
        rec.append(c)
        if not cb.ready or cb.count < self.n or cb.center > COS_INFORMATIVE:
            return None
        return sum(rec) / k - cb.center

    def _surge(self, now: Any, lift: float, ev: Dict[str, Any]) -> str:
        """Loss, gradient and update each larger than the step before, 2 steps in a row:
        "ascent" with coherent updates (cos lifted); "compounding" without that lift when
        the gradient rose from an already raised level to ``SURGE_GRAD`` x its level and
        the loss (``ev["loss"]``) is past the loss gate (not near zero); "" otherwise."""
        hist = self.surge_hist  # a deque of the last 2 steps' triples
        if now is None:
            if hist:
                hist.clear()
            return ""
        kind = ""
        if len(hist) == 2 and now[2] >= SURGE_DEV:
            a, b = hist
            if all(a[i] < b[i] < now[i] and b[i] >= SURGE_LEVEL[i] for i in range(3)):
                # A sign bug under Adam on a transformer lifts cos by only ~0.1 (its median
                # is already ~0.3); it shows as a gradient growing 1.5-2x per step instead.
                if lift >= SURGE_LIFT:
                    kind = "ascent" if self._loss_new_high() else ""
                elif (
                    now[0] >= SURGE_GRAD
                    and a[0] >= SURGE_LEVEL[0]
                    and self.loss_gate_open(ev.get("loss"))  # (MonitorRules)
                ):
                    kind = "compounding"
        hist.append(now)
        return kind

    def _loss_new_high(self) -> bool:
        """This step's loss is above every loss the Monitor still holds from before the
        surge's three steps (its recent window and level): a run whose batches swing that
        far anyway has shown its tail; a runaway climbs out of it."""
        x = self.x_now
        items = self.recent.items
        k = len(items) - 3
        if k > 0 and x <= max(it[2] for it in islice(items, k)):
            return False
        vals = self.loss_base.values
        return not vals or x > max(vals)

    def _no_coherence(self) -> None:
        """No usable processivity this step: nothing is gated and no streak goes on."""
        self.coherent = True
        if self.climb:
            self.climb, self.climb_devs = 0, []
