"""The ONE collapse definition of the detection benchmark (pure Python, no torch).

``collapse_step(loss, onset, chance_loss=...)`` returns the step index (position in
``loss``) at which a run collapsed, or ``None``. The generator labels runs with it and the
scorer, the tests and the docs all refer to this function.

Definition (constants below):

1. **Non-finite**: the first step whose loss is NaN or +-inf.
2. **Sustained rise**: let ``s`` be the trailing rolling median of the loss over
   ``SMOOTH = 5`` steps. The pre-onset level ``L0`` is the median loss over the
   ``PRE_WINDOW = 20`` steps just before ``onset`` (for ``onset < 10`` -- including
   onset 0 / unknown -- the median of the first 5 losses, i.e. the initial loss).
   ``L_init`` is the median of the first 5 losses. The threshold is
   ``T = max(F * L0, (L0 + L_init) / 2)`` with ``F = 2``: the smoothed loss at least
   doubled *and* the run lost at least half of the progress it had made. Collapse is the
   first step ``t >= onset`` from which ``s`` stays above ``T`` for ``K = 20``
   consecutive steps (or until the end of the recording if fewer than ``K`` steps are
   left, provided at least ``MIN_TAIL = 5`` are). The step returned is then moved back
   over the *raw* losses above ``T`` that lead into it, so that the rolling median's lag
   (about 2 steps) does not hand every detector free lead time.
   For onset < 10 (onset 0 / unknown, e.g. a too-high LR from the start) ``L0`` at a
   candidate step ``t`` is the best (lowest) smoothed loss before ``t`` (at most the
   initial loss): with the initial loss alone a run that learned and then fell back to
   where it started could never count as collapsed.
3. **Return to chance** (dead-ReLU style, no NaN and no big rise): given
   ``chance_loss = ln(C)`` (C classes / vocabulary size), the first step ``t >= onset``
   from which ``s >= CHANCE_FRAC * chance_loss`` (``CHANCE_FRAC = 0.9``) for ``K``
   consecutive steps *and* the smoothed loss does not decrease over those steps
   (``s[t+K-1] >= s[t] - 0.02 * chance_loss``), provided the run had learned before, i.e.
   ``s`` was below ``CHANCE_FRAC * chance_loss`` at some step before ``t``. A run that
   never learned (stuck at chance from step 0) is not a collapse under this rule.

The earliest of the three is returned, but never earlier than ``onset + 1`` for a fault
with a known onset (``onset >= 1``): the loss recorded at step ``t`` is computed with the
weights *before* step ``t``'s update, which the fault injected at step ``t`` has not touched
yet. A corrupted batch makes its own loss jump at the onset step, but that jump measures
the data, not the model; the model can first be damaged at ``onset + 1``. An alarm at the
onset step is the last moment a guard can still skip the faulty update (labelling such runs
"collapsed at onset" would make them uncatchable by anyone).
"""

from __future__ import annotations

import math
from statistics import median
from typing import List, Optional, Sequence

F = 2.0
K = 20
SMOOTH = 5
PRE_WINDOW = 20
MIN_TAIL = 5
CHANCE_FRAC = 0.9


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def smoothed(loss: Sequence[float], width: int = SMOOTH) -> List[float]:
    """Trailing rolling median (over the finite values of the last ``width`` steps)."""
    out = []
    for i in range(len(loss)):
        w = [v for v in loss[max(0, i - width + 1) : i + 1] if _finite(v)]
        out.append(median(w) if w else math.nan)
    return out


def pre_onset_level(loss: Sequence[float], onset: int) -> float:
    """Median loss over ``PRE_WINDOW`` steps before ``onset`` (initial loss if onset < 10)."""
    if onset is None or onset < 10:
        w = [v for v in loss[:5] if _finite(v)]
    else:
        w = [v for v in loss[max(0, onset - PRE_WINDOW) : onset] if _finite(v)]
    return median(w) if w else math.nan


def first_nonfinite(loss: Sequence[float]) -> Optional[int]:
    for i, v in enumerate(loss):
        if not _finite(v):
            return i
    return None


def _sustained(s: Sequence[float], start: int, pred) -> Optional[int]:
    n = len(s)
    run = 0
    for i in range(start, n):
        if _finite(s[i]) and pred(i):
            run += 1
            if run >= K:
                return i - K + 1
        else:
            run = 0
    if run >= MIN_TAIL:  # the condition held until the end of the recording
        return n - run
    return None


def _backtrack(loss: Sequence[float], t: int, thr: float, lo: int) -> int:
    """Move ``t`` back over the raw losses above ``thr`` that lead into it (removes the
    lag of the rolling median: the collapse starts where the raw excursion starts)."""
    while t - 1 >= lo and _finite(loss[t - 1]) and loss[t - 1] > thr:
        t -= 1
    return t


def _rise_from_best(s: Sequence[float], Linit: float, loss: Sequence[float]) -> Optional[int]:
    n = len(s)
    best = Linit
    for t in range(n):
        thr = max(F * best, 0.5 * (best + Linit))
        stop = min(t + K, n)
        if stop - t >= (K if t + K <= n else MIN_TAIL) and all(
            _finite(s[u]) and s[u] > thr for u in range(t, stop)
        ):
            return _backtrack(loss, t, thr, 0)
        if _finite(s[t]):
            best = min(best, s[t])
    return None


def stays_collapsed(loss: Sequence[float], c: int) -> bool:
    """Whether a run that collapsed at ``c`` is still collapsed at its end: it reached a
    non-finite loss, or its last smoothed loss is above the threshold of the sustained-rise
    rule taken from its best level before ``c``. A healthy setting's run that diverged for good
    (a warm-up to a peak lr the model cannot take) is a collapse; a curriculum whose new
    data lifts the loss and is then learned is not."""
    loss = [float(v) if v is not None else math.nan for v in loss]
    if first_nonfinite(loss) is not None:
        return True
    s = smoothed(loss)
    Linit = pre_onset_level(loss, 0)
    best = min([Linit] + [v for v in s[:c] if _finite(v)])
    return s[-1] > max(F * best, 0.5 * (best + Linit))


def before_onset(
    loss: Sequence[float], onset: Optional[int], chance_loss: Optional[float] = None
) -> Optional[int]:
    """A fault's run that collapsed before the fault's ``onset`` (>= 1) and stayed collapsed
    up to it (a too-high lr diverging on its own): the step at which its losses before the
    onset meet the definition (as for onset 0), else ``None``. Such a run never met its
    fault; ``collapse_step`` with the onset would date its collapse ``onset + 1``."""
    if not onset:
        return None
    head = list(loss[:onset])
    c = collapse_step(head, 0, chance_loss)
    return c if c is not None and stays_collapsed(head, c) else None


def collapse_step(
    loss: Sequence[float],
    onset: Optional[int] = 0,
    chance_loss: Optional[float] = None,
) -> Optional[int]:
    """Step (index into ``loss``) at which the run collapsed, or ``None`` (see module doc)."""
    loss = [float(v) if v is not None else math.nan for v in loss]
    onset = int(onset or 0)
    cands = []
    nf = first_nonfinite(loss)
    if nf is not None and nf >= 0:
        cands.append(nf)
    # only finite prefix matters for the other two rules
    end = nf if nf is not None else len(loss)
    s = smoothed(loss[:end])
    L0 = pre_onset_level(loss, onset)
    Linit = pre_onset_level(loss, 0)
    if _finite(L0) and _finite(Linit):
        if onset >= 10:
            thr = max(F * L0, 0.5 * (L0 + Linit))
            t = _sustained(s, onset, lambda i: s[i] > thr)
            if t is not None:
                cands.append(_backtrack(loss, t, thr, onset))
        else:  # onset 0 / unknown: reference = best smoothed loss so far (<= initial loss)
            t = _rise_from_best(s, Linit, loss)
            if t is not None:
                cands.append(t)
    if chance_loss is not None and _finite(chance_loss) and chance_loss > 0:
        lvl = CHANCE_FRAC * chance_loss
        learned_at = next((i for i, v in enumerate(s) if _finite(v) and v < lvl), None)
        if learned_at is not None:
            start = max(onset, learned_at + 1)
            tol = 0.02 * chance_loss

            def at_chance(i: int) -> bool:
                return s[i] >= lvl

            t = start
            while t is not None and t < len(s):
                t = _sustained(s, t, at_chance)
                if t is None:
                    break
                last = min(t + K - 1, len(s) - 1)
                if s[last] >= s[t] - tol:
                    cands.append(_backtrack(loss, t, lvl - 1e-12, start))
                    break
                t += 1
    if not cands:
        return None
    first = min(cands)
    return max(first, onset + 1) if onset >= 1 else first
