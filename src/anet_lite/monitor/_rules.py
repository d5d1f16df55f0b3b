"""The Monitor's per-signal rules (a mixin): loss, gradient/update, schedule, fingerprint
(processivity: ``_monitor_coherence``).

Split from monitor.py to keep each file readable; ``Monitor`` owns the state these methods
read and write (see ``Monitor.reset``) and combines their findings into one verdict.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from .. import fingerprint as _fp
from ..metrics import Z_CAP, entropy_rate_of_windows
from ._coherence import COS_INFORMATIVE, CoherenceRules
from ._signals import Signals

DEAD = math.log(100.0)  # a gradient 100x below its healthy level: units stopped learning
# Gradient growth (window) and explosion (one step) must also beat the run's own jitter,
# in robust sigmas of log grad-norm: a near-zero-loss run whose gradient swings 100x from
# batch to batch is not exploding at 200x.
GROWTH_Z = 2.5
SEVERE_Z = 4.0
PZ_DEV = 1.0  # the precursor window counts only while the current step is also high (z)
# Steps in a row >= spike_z / 2 count as a divergence only while the precursor window
# (trimmed mean of the last n) is also this far up: a run of three noisy batches in a
# long, heavy-tailed loss-only log (real GPT-2 speedruns) does not lift the window.
RISE_PZ = 2.0
EARLY_RISE = 1.5  # x the first loss within warm-up, and climbing on: diverging from the start
EARLY_BLOWUP = 10.0  # x the first loss within warm-up on EARLY_BIG steps: diverged,
EARLY_BIG = 2  # whatever comes next (one such step that falls back is a jump that recovers)
SHIFT_MARGIN = math.log(1.5)  # a shifted loss (or gradient) 1.5x past its jump: diverging
# Gradient and update each larger than the step before, GROW_STEPS steps in a row, the
# gradient now >= GROW_X x its level, the loss past its gate: compounding. A sign bug
# under Adam grows this way for 4-9 steps while its normalised update grows slowly and
# its cos barely lifts (no ascent) and its batch loss still wobbles (no surge); a
# one-batch spike or new data jumps once and then decays.
GROW_STEPS = 4
GROW_X = 5.0
# An update >= max_rel_update x ||theta|| alarms only when it is also out of character for
# the run: >= OVERSIZED_X x the run's own (lr-normalised) update level, or, before that
# level exists, not smaller than the update before it (``strict_start``: at once, until
# an update below the limit). A start-up transient (RMSprop's uncorrected second moment,
# plain SGD's first large gradients) shrinks step by step, and a high but stable lr keeps
# its own size; a bug (a weight-decay or loss-scale factor, a too-high lr diverging from
# step 0) jumps or grows.
# A jump the loss accounts for (its raw loss rose as much: a hard batch under RMSprop's
# decayed second moment) is the batch's doing, as for the one-step rules. Healthy
# calibration runs (bench/calibrate_detectors.py, 448 runs, 189,400 steps) reach 13.3x.
OVERSIZED_X = math.log(20.0)
# Gradient AND update >= SCALE_JUMP_X x their levels beyond what the step's raw loss
# accounts for (min(ratios) / max(1, raw loss / its raw level)), once the run has a
# reference fingerprint: a batch's gradient grows with how wrong the model is on it, so a
# jump the loss does not show is the gradient's computation or the optimizer changing
# (accumulated gradients summed, a loss scale, layers unfrozen). The raw loss, not the
# floored scale, is the yardstick here: a near-perfect classifier's gradient follows its
# raw loss (a new batch 10x as wrong moves it 10x), which the floored scale reads as flat.
# The largest healthy value is 3.8 over 448 calibration runs (bench/calibrate_detectors.py;
# 5.9 over 598 with the fresh-seed sets); SCALE_JUMP_X ~ 2 x the calibration runs' largest,
# as the statistic is one step's and heavy-tailed. Not on a step whose gradient ratio is at
# most the step before's, when that step's raw loss rose at least this ratio: an outlier
# batch (the loss showed it) leaves its update in the optimizer's momentum for a few steps,
# and the gradient at the weights it moved is larger too (a digits MLP, full-batch AdamW:
# 15x and 8x the step after a noisy-label batch with loss 900x, gradient 218x).
SCALE_JUMP_X = 7.5


def echo_of_larger_jump(gr: float, prev_gr: float, prev_loss_x: float) -> bool:
    """A gradient ratio ``gr`` no larger than the step before's (``prev_gr``; inf: none),
    whose raw loss rose at least ``gr`` x (``prev_loss_x``): not a new scale jump."""
    return gr <= prev_gr < math.inf and prev_loss_x >= gr
SCALE_JUMP_DEV = 1.0  # a loss read linearly (it can be <= 0): did not rise = <= 1 robust sigma
SAME_SIGNAL = 1e-3  # |update ratio - gradient ratio| / gradient ratio: the same signal
EXPLAINED_CAP = math.log(1000.0)  # a one-step jump this large alarms whatever the loss
# did (a garbage batch's 1e4x gradient must be skipped), unless the raw loss rose as much
# and stays below the first loss: a near-perfect classifier's new data lifts its loss and
# gradient 300-4,000x alike, to no worse than the untrained model


def _ratio(num: float, den: float) -> float:
    return num / den if num > 0.0 and den > 0.0 else 0.0


def _log(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf


def exp_capped(x: float) -> float:
    return math.exp(700.0 if x > 700.0 else x)  # (min(x, 700.0), NaN included)


_isfinite, _mlog = math.isfinite, math.log  # (module globals: the hot path)
_INF, _NAN = math.inf, math.nan
_ALERTED = ("precursor", "collapsed")  # statuses that are alerts


class MonitorRules(CoherenceRules):
    """Per-step rules; each writes its findings into the evidence dict ``ev``."""

    # (the attributes are created by Monitor.reset)

    def _loss_signals(self, s: Signals, ev: Dict[str, Any]) -> float:
        """One-step severity, spikes, the precursor window and Ṡ; returns the precursor z."""
        L = s.loss
        if self.loss_eps is None:
            self.loss0 = abs(L)
            self.loss_eps = self.loss_floor * abs(L) if L > 0 else 0.0
        eps, log_space = self.loss_eps, self.log_space
        if log_space and L + eps <= 0.0:
            self.log_space = log_space = False  # a loss that can be <= 0: read it linearly
            self.recent.clear()
            self.loss_base.reset()
        x = _mlog(L + eps) if log_space else L
        self.x_now = x
        base = self.loss_base
        center, ready = base.center, base.ready
        floor = 1e-3 if log_space else 1e-3 * abs(center) + 1e-12
        pz, dev = 0.0, 0.0
        self.jump_ref = center if ready else None  # (for _loss_accounts_for)
        self.jump_loss = L
        if ready:
            sc = base.scale  # (max(scale, floor) written out: the hot path)
            dev = (x - center) / (floor if floor > sc else sc)
            ev["loss_dev"] = dev
            elevated = dev >= 0.5 * self.spike_z
            if log_space and x - center >= self.severe_loss:
                ev["loss_ratio"] = exp_capped(x - center)  # in the floored loss scale
                if self.shift_x is None and not self.rise:
                    # A severe jump out of a calm state: a level shift (harder data, a bad
                    # shard) until the loss or gradient climbs past where it jumped to.
                    self.shift_x = x
                    # a loop that declares its data changes did not declare this one; a
                    # jump that follows an alert is that incident's, not a batch's
                    self.shift_bad = self.declared and self.last_status != "precursor"
            if dev >= self.spike_z:
                ev["spike"] = True
            if self.shift_x is not None:
                if not elevated:
                    self.shift_x = self.shift_g = None  # back to the old level: it passed
                elif x > self.shift_x + SHIFT_MARGIN:
                    self.shift_x = self.shift_g = None  # still climbing: a divergence
                    ev["shift_over"] = True
                else:
                    ev["level_shift"] = True
                    ev["loss_ratio"] = exp_capped(x - center)
                    if self.declared and self.shift_bad and self.loss0:
                        # a batch this far above the untrained model's loss contradicts
                        # what the model learned (Monitor._update: cause "bad_batch")
                        first = L / self.loss0
                        if first >= self.bad_batch_loss:
                            ev["first_loss_ratio"] = first
            self.rise = self.rise + 1 if elevated else 0
        if not ready and self.t <= self.warmup and log_space and self.loss0:
            # Before any baseline exists the first loss is the yardstick: a healthy run
            # does not climb well above where it started (a too-high lr from step 0 does).
            # An early jump is watched like a level shift (real runs jump 2-3.5x at step 2
            # and recover: Muon, no warm-up; a 25x lr for 3 steps lifts one step 19x): it
            # alarms once the loss climbs on, 1.5x past where the jump went, or once it has
            # been an order of magnitude above the first loss on two steps -- then on every
            # step it stays >= 1.5x the first loss. A row of a sparse log (steps apart)
            # stands for the steps since the row before it: it counts for two.
            ratio0 = L / self.loss0
            if ratio0 < EARLY_RISE:
                self.early_ref, self.early_big = math.inf, 0
            else:
                self.early_ref = min(self.early_ref, L)
                if ratio0 >= EARLY_BLOWUP:
                    self.early_big += 2 if self.gap >= 2 else 1
                if self.early_big >= EARLY_BIG or EARLY_RISE * self.early_ref <= L:
                    ev["severe"] = "early_divergence"
                    ev["loss_ratio"] = ratio0
        prev = self.loss_prev
        self.loss_step = x - prev if prev is not None else 0.0
        self.loss_prev = x
        t = s.time
        recent = self.recent
        for old in recent.push(x, t if t is not None and _isfinite(t) else None):
            base.push(old)
        self.loss_win_x = math.nan
        if len(recent.items) >= self._n3:  # (= len(recent), without its Python __len__)
            self.loss_win_x = tm = recent.trimmed_mean()
            if base.ready:  # (the push may have refreshed the level)
                sc = base.scale
                pz = (tm - base.center) / (floor if floor > sc else sc)
                if pz != pz:
                    pz = 0.0
                elif pz > Z_CAP:  # (clipped to +-Z_CAP)
                    pz = Z_CAP
                elif pz < -Z_CAP:
                    pz = -Z_CAP
        # persistent = the window is high AND so is this step (two spikes in the window
        # keep its mean up for n steps while the loss between them is back to normal)
        self.pz_hot = self.pz_hot + 1 if pz > self.z and dev >= PZ_DEV else 0
        self.losses.append(L)  # a deque(maxlen=window): O(1)
        if self.t % self._sdot_every == 0 and len(self.losses) >= self.window:
            h = self.window // 2
            arr = np.fromiter(self.losses, np.float64, self.window)
            self.sdot = entropy_rate_of_windows(arr[:h], arr[h:])
        return pz

    def _grad_signals(self, s: Signals, ev: Dict[str, Any]) -> bool:
        """Gradient and update checks; returns False for a non-finite gradient norm."""
        G, S = s.grad_norm, s.step_norm
        if G is not None and not _isfinite(G):
            return False
        if G == 0.0 and self.grad_ref is not None and "severe" not in ev:
            # A run that had a healthy gradient level now gets none at all: no example
            # of the batch moves the weights. A float32 cross-entropy's gradient is
            # exactly 0 only when every logit margin is past ~100 (outputs saturated,
            # e.g. inputs scaled far out of range) -- or every unit is dead.
            ev["severe"] = "zero_gradient"
        gr = ur = None  # this step's gradient / update ratio to its level, when known
        if G is not None and G > 0.0:
            lg = _mlog(G)
            gb = self.grad_base
            if gb.ready:
                gd = lg - gb.center
                ev["grad_ratio"] = gr = exp_capped(gd)
                lim, zs = self.severe_grad, SEVERE_Z * gb.scale
                if gd >= (zs if zs > lim else lim) and self._off_recent(lg, lim, zs):
                    self._one_step(gd, "grad_explosion", ev)
            if self.shift_x is not None:  # a level shift: where the gradient jumped to
                if self.shift_g is None:
                    self.shift_g = lg
                elif lg > self.shift_g + 2.0 * SHIFT_MARGIN:
                    self.shift_x = self.shift_g = None  # the gradient keeps growing
                    ev.pop("level_shift", None)
                    ev["shift_over"] = True
            recent = self.grad_recent
            for old in recent.push(lg, None):
                gb.push(old)
            if gb.ready and len(recent.items) >= self._n3:
                gup = recent.trimmed_mean() - gb.center
                # growth the loss window matched (raw) is not the gradient leading the loss
                lim, zs = self.grad_growth, GROWTH_Z * gb.scale
                up = gup >= (zs if zs > lim else lim) and not self._loss_window_rose(gup)
                self.grad_hot = self.grad_hot + 1 if up else 0
            ref = self.grad_ref
            self.dead = self.dead + 1 if ref is not None and gb.center < ref - DEAD else 0
        if S is not None and _isfinite(S) and S > 0.0:
            lr = s.update_lr or s.lr  # (an update made at lr 0 has no size: S > 0 here)
            ls = lu = _mlog(S)
            if lr is not None and 0.0 < lr < _INF:
                lu -= _mlog(lr)
            else:
                lr = 1.0  # (no lr: sizes per unit of lr are the sizes)
            ub = self.upd_base
            ud = _NAN
            if ub.ready:
                ud = lu - ub.center
                ev["update_ratio"] = ur = exp_capped(ud)
                lim, zs = self.severe_update, SEVERE_Z * ub.scale
                if ud >= (zs if zs > lim else lim):
                    self._one_step(ud, "update_blowup", ev)
            ub.push(lu)
            if G is not None and G > 0.0:
                self.proc.update(lg, ls)  # (log G, log S: computed above)
            P = s.param_norm
            if P is not None and P > 0.0 and _isfinite(P):
                # A step that moves the weights by a tenth of their norm, out of character
                # for the run (OVERSIZED_X), is damage done. Whatever its character, it
                # sizes the slow-down of any cause on this step.
                rel = S / P
                ev["rel_update"] = rel
                # (per unit of lr: an update that grew with a warm-up's lr is the schedule's)
                rn = rel / lr
                lim = self.max_rel_update
                if rel < lim:
                    if not self.rel_calm:
                        self.rel_calm = True
                else:
                    ev["rel_update_limit"] = lim  # (sizes the slow-down)
                    # in a level shift (SGD: the update jumps with the gradient) or in
                    # the grace after a schedule event or a declared change (new data,
                    # a warm restart) it waits, below twice the limit
                    held = (
                        self.shift_x is not None or self.t < self.grace_until
                    ) and rel < 2.0 * lim
                    if "severe" not in ev and not held and self._out_of_character(rel, ud, rn):
                        ev["severe"] = "oversized_update"
                self.rel_prev = rn
        if gr is not None and ur is not None:
            # gradient AND update far above their levels, the update growing step after step:
            # the optimizer is being pushed one way (a one-batch spike decays instead). An
            # update that is the gradient times the lr (plain SGD: equal ratios, or a
            # processivity whose median is ~1) is one signal, not two that agree: it is left
            # to the gradient's own rule. (The two levels lag differently, so plain SGD's
            # ratios can differ by a few per cent while their steps are the same numbers.)
            cb = self.cos_base  # (its median cos ~1: the update points along the gradient)
            one = abs(ur - gr) <= SAME_SIGNAL * gr or (cb.ready and cb.center > COS_INFORMATIVE)
            low = ur if ur < gr else gr  # (min(ur, gr))
            hot = (
                low >= self.co_rise_x
                and ur > self.ur_prev
                and not one
                and not self._loss_window_rose(_mlog(low))
            )
            self.co_hot = self.co_hot + 1 if hot else 0
            gp, lp = self.gr_prev, self.loss_x_prev
            grows = gr > gp and ur > self.ur_prev and not one
            self.grow = self.grow + 1 if grows else 0
            self.ur_prev, self.gr_prev = ur, gr
            # (only a large gradient ratio can be echoed: the ratio computed for those alone)
            self.loss_x_prev = (self._step_loss_ratio() or 0.0) if gr >= SCALE_JUMP_X else 0.0
            if (
                low >= SCALE_JUMP_X
                and "severe" not in ev
                and not echo_of_larger_jump(gr, gp, lp)
                and self.ref is not None
                and (
                    self._unexplained_jump(low) >= SCALE_JUMP_X
                    if self.log_space  # (a loss that can be <= 0 has no ratio: its deviation)
                    else ev.get("loss_dev", _INF) <= SCALE_JUMP_DEV
                )
            ):
                ev["severe"] = "scale_jump"
            if self.grow >= GROW_STEPS and gr >= GROW_X and self.loss_gate_open(s.loss):
                ev["compounding"] = True  # (Monitor._update: cause "divergence")
        else:
            self.co_hot = self.grow = 0
            self.ur_prev = self.gr_prev = math.inf
        if "lr_jump" in ev:
            ev["severe"] = "lr_jump"
        self._coherence(s.processivity, ev, gr, ur)
        return True

    def _off_recent(self, lg: float, lim: float, zs: float) -> bool:
        """The log gradient ``lg`` is a jump of at least max(``lim``, ``zs``) from the steps
        just before, too (the recent window's trimmed mean, when it has ``_n3`` values).

        A one-step explosion is a jump from where the gradient was. After new data near
        zero loss (an undeclared curriculum) the gradient stands 100-1,000x above its slow
        level for tens of steps; a step there whose loss rose a little less than its
        gradient is the new regime, not an explosion. Growth over several steps is the
        growth rules' (``grad_growth``, compounding, ``ascent``). A regime entered with an
        alert is that incident's (a loss scale gone wrong stays 1e4x): while the step
        before alerted, the slow level alone is the reference."""
        recent = self.grad_recent
        if len(recent.items) < self._n3 or self.last_status in _ALERTED:
            return True
        return lg - recent.trimmed_mean() >= (zs if zs > lim else lim)

    def _out_of_character(self, rel: float, ud: float, rn: float) -> bool:
        """An update >= max_rel_update x ||theta|| (``rel``; ``ud``: log ratio to the
        run's update level, NaN while there is none) that is out of character: with
        ``strict_start``, any until the run has made one below the limit (a level learned
        from oversized updates is no reference); else >= OVERSIZED_X x the level with the
        loss not accounting for it, or, with no level yet (the first updates, after a
        declared change), no smaller per unit of lr (``rn``) than the update before."""
        if self.strict_start and not self.rel_calm:
            return True
        if ud == ud:
            return ud >= OVERSIZED_X and not self._loss_accounts_for(ud)
        return rn >= self.rel_prev

    def _one_step(self, d: float, cause: str, ev: Dict) -> None:
        """A one-step jump ``d`` (log of the ratio to its level) that beat its ratio and
        SEVERE_Z x the run's jitter is severe unless the loss accounts for it: in a level
        shift (new data, a bad shard: the gradient jumps with the loss and alarms once it
        climbs past where it jumped) or when the raw loss rose at least as much (a
        cross-entropy's gradient grows with its loss). At EXPLAINED_CAP and above, only
        the latter, with the loss still below the first loss."""
        if "severe" in ev:
            return
        if d < EXPLAINED_CAP:
            if self.shift_x is not None or self._loss_accounts_for(d):
                return
        elif self._loss_accounts_for(d) and self.loss0 and self.jump_loss < self.loss0:
            return
        ev["severe"] = cause

    def _raw(self, x: float) -> float:
        """A level in the loss's reading scale back in loss units."""
        return exp_capped(x) - self.loss_eps if self.log_space else x

    def _step_loss_ratio(self) -> Any:
        """This step's raw loss over its raw level (0 when either is <= 0); None with no
        loss level."""
        ref = self.jump_ref
        return None if ref is None else _ratio(self.jump_loss, self._raw(ref))

    def _loss_accounts_for(self, d: float) -> bool:
        """This step's loss rose (raw, vs. its level) at least as much as exp(``d``)."""
        raw = self._step_loss_ratio()
        return raw is not None and _log(raw) >= d

    def _unexplained_jump(self, x: float) -> float:
        """A jump of ``x`` (a ratio to its level, >= 1) divided by how much this step's
        raw loss rose above its raw level (1 when it did not rise); 0 with no loss level."""
        raw = self._step_loss_ratio()
        if raw is None:
            return 0.0
        return x / raw if raw > 1.0 else x

    def _window_loss_ratio(self) -> Any:
        """The recent loss window's level over the loss's level, both raw (0 when the
        window's is <= 0); None with no window or level, or a level <= 0."""
        x, base = self.loss_win_x, self.loss_base
        if x != x or not base.ready:
            return None
        level = self._raw(base.center)
        return _ratio(self._raw(x), level) if level > 0.0 else None

    def _loss_window_rose(self, d: float) -> bool:
        """The recent loss window's level rose (raw) at least as much as exp(``d``)."""
        r = self._window_loss_ratio()
        return r is not None and _log(r) >= d

    def loss_gate_open(self, loss: Any) -> bool:
        """The loss, and the recent window's level, are above ``loss_gate`` x the first
        loss: a near-perfect classifier's hard batches lift single steps over it, not the
        window's trimmed mean."""
        if loss is None or not math.isfinite(loss):
            return False
        if self.loss0 is None:
            return True
        bar = self.loss_gate * self.loss0
        if loss < bar:
            return False
        x = self.loss_win_x  # (NaN until the window has 3 losses)
        return x != x or x >= (_log(bar + self.loss_eps) if self.log_space else bar)

    def _rebaseline(self) -> None:
        """A declared change (``mark``): the old levels no longer describe the run.

        Loss, gradient, update and processivity levels are learned again from this step,
        as at the start of a run; until they are, only the rules that need no level
        (non-finite values, lr bugs, ``oversized_update``) can fire.
        """
        self.recent.clear()
        self.loss_base.reset()
        self.shift_x = None
        self.loss_prev = None
        self._reset_norm_levels()

    def _reset_norm_levels(self) -> None:
        """The gradient, update and processivity levels, learned again from the next step
        (``_rebaseline``; ``Monitor.measure_changed``)."""
        self.grad_recent.clear()
        for base in (self.grad_base, self.upd_base, self.cos_base):
            base.reset()
        self.cos_recent.clear()
        self.shift_g = None

    def lr_first_rise(self) -> bool:
        """True while the lr has not moved off the schedule's first value: its first rise
        is a warm-up's, whatever its size (the first lr is an arbitrary start factor:
        ``LinearLR(start_factor=1e-3)``, a warm-up from 1e-7), never an ``lr_jump``. Later
        rises are judged against the lrs after it."""
        return self.lr_peak is None and not self.lr_rising

    def _schedule(self, s: Signals, ev: Dict[str, Any]) -> str:
        """Recognise intended changes (lr decay, restart, end of warm-up, marks) and lr bugs."""
        event = self.pending_mark or ""
        self.pending_mark = None
        if event:
            self.lr_peak = None  # a declared change may bring a new warm-up and peak
            self._rebaseline()
        lr = s.lr
        if lr is not None and math.isfinite(lr) and lr > 0.0:
            ev["lr"] = lr
            prev = self.lr_prev
            if self.own_lr:  # the Guard's own change: compare the next steps with this lr
                self.lr_up = lr > prev  # (its return towards the schedule: View.lr_up)
                prev, self.own_lr = 0.0, False
            elif self.lr_up:
                self.lr_up = False
            if prev > 0.0:
                ratio = lr / prev  # may underflow to 0 or overflow to inf
                if ratio > 1.0 and lr > self.lr_jump * self.lr_max and not self.lr_first_rise():
                    ev["lr_jump"] = lr / self.lr_max
                elif self.lr_peak is None and ratio > 1.0:
                    pass  # the initial warm-up is still rising: not an event
                elif (ratio < 0.905 or ratio > 1.105) and not event:  # |log ratio| > ~0.1
                    event = "lr_decay" if ratio < 1.0 else "lr_restart"
                elif self.lr_rising and ratio <= 1.0 and not event:
                    event = "warmup_end"
                rising = ratio > 1.0 + 1e-12 and "lr_jump" not in ev
                if not rising and self.lr_peak is None:
                    self.lr_peak = max(self.lr_max, lr)  # the initial warm-up (if any) is over
                self.lr_rising = rising and not event
            if (
                self.lr_peak is not None
                and lr > self.lr_ramp * self.lr_peak
                and "lr_jump" not in ev
            ):
                ev["lr_ramp"] = lr / self.lr_peak
            if "lr_jump" not in ev and "lr_ramp" not in ev and lr > self.lr_max:
                self.lr_max = lr  # (max(lr_max, lr))
            self.lr_prev = lr
        elif self.lr_up:
            self.lr_up = False
        if event:
            self.grace_until = self.t + self.grace
            if event != "warmup_end":
                # the end of a warm-up gives the loss no reason to rise (the lr stops
                # rising): the rules that judge the loss against its level keep judging,
                # where a too-high peak lr blows a run up
                self.loss_grace_until = self.grace_until
            self.pz_hot = self.rise = self.grad_hot = self.co_hot = self.climb = self.grow = 0
            self.climb_devs = []
            self.surge_hist.clear()
            if not self.ref_pinned:
                self.ref = None  # re-take the healthy fingerprint in the new regime
        return event

    def _refresh_theta(self, grace: bool) -> None:
        if not self.fp.ready:
            return
        cur = self.fp.mean_powers()
        if self.ref is None:
            if self.t > self.warmup and not grace and self.last_status in ("healthy", "warming_up"):
                self.ref = cur.copy()
                self.grad_ref = self.grad_base.center if self.grad_base.ready else None
                self.theta_low, self.drift_loss0 = 0, None
            return
        c, r = cur.tolist(), self.ref.tolist()
        self.theta = _fp.similarity_of_powers(c, r, self.beta)
        self.drift_stalled = False
        if self.theta < self.theta_alert:
            level = self.recent.trimmed_mean() if len(self.recent) else None
            self.theta_low += 1
            if self.theta_low == 1:
                self.drift_loss0 = level
            known = level is not None and self.drift_loss0 is not None
            # improved = clearly below, not by noise: 1 robust sigma of the difference of
            # two window means (sigma * sqrt(2 / n)), not of one step's loss
            margin = max(self.loss_base.scale * math.sqrt(2.0 / max(len(self.recent), 1)), 1e-3)
            self.drift_stalled = known and level > self.drift_loss0 - margin
            if self.theta_low >= 16 and known and not self.drift_stalled and not self.ref_pinned:
                # A new fingerprint under which the run kept improving is the new healthy one.
                self.ref, self.theta, self.theta_low, self.drift_loss0 = cur.copy(), 1.0, 0, None
        else:
            self.theta_low, self.drift_loss0 = 0, None
            if not self.ref_pinned and self.last_status == "healthy":
                # follow a healthy run slowly, never a drift: ref += 0.02 * (cur - ref), in
                # Python floats (the same numbers; 4 values do not pay for 3 NumPy calls)
                self.ref[:] = [a + 0.02 * (b - a) for a, b in zip(r, c)]
