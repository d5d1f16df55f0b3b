"""The tap's per-step stats tensor: slot layout, ``StepStats``, and the rank reduction.

Stats tensor layout (``pending_tensor()``; length ``N_SLOTS``, float64, or float32 on
devices without float64). The device only sums: every slot is a raw sum that adds across
chunks and ranks (except ``MAX_ABS_GRAD``, a max), and the few lines of algebra that turn
the sums into norms and the cosine run on the host (``derive``) once the numbers are
there anyway. Each device op is a kernel launch on a GPU and, on a CPU right after
backward, 10-20 us of dispatch; so the tap does one op where it can.

====  =====================  ======  ==================================================
slot  name                   reduce  value
====  =====================  ======  ==================================================
0     ``GRAD_SQ``            sum     sum of g**2 over every measured parameter (exact,
                                     also with ``sample``); NaN/inf: the gradient is
                                     not finite
1     ``NOISE_SQ``           sum     sum of (g - m)**2, m the EMA of g BEFORE this
                                     step's update (sketched with ``noise="sketch"``);
                                     the noise norm ||g - m_new|| is ema * sqrt(this)
2     ``RANKS``              sum     1.0 per rank: sums to the number of ranks
3     ``MAX_ABS_GRAD``       max     max |g| (NaN where the tap does not measure it)
4     ``SAMPLE_GRAD_SQ``     sum     sum of g**2 over the elements the update slots
                                     are measured on (== ``GRAD_SQ`` without sample)
5     ``UPDATE_SQ``          sum     ||S delta||^2, delta = theta_after - theta_before
                                     and S the sketch; ||delta||^2 with exact_update
6     ``UPDATE_DOT_SKETCH``  sum     <S delta, S g> (0 with exact_update)
7     ``SKETCH_GRAD_SQ``     sum     ||S g||^2 (0 with exact_update)
8     ``PARAM_SQ``           sum     sum of theta_after**2
9     ``GRAD_DOT_BEFORE``    sum     <g, theta_before> (0 with exact_update)
10    ``GRAD_DOT_AFTER``     sum     <g, theta_after> (<g, delta> with exact_update)
====  =====================  ======  ==================================================

With ``GradNoiseTap(sample=R)`` every sum slot except ``GRAD_SQ`` and ``RANKS`` is
measured on one element in R (``sample.sample_ranges``) and scaled by R on the device,
an unbiased estimate of the sum over all elements; ``MAX_ABS_GRAD`` is not measured (a
sample does not see every element). The cosine (processivity) and the update's
control variate use ``SAMPLE_GRAD_SQ``, so that they compare like with like.

``measure_grads`` fills slots 0-4 (``N_GRAD_SLOTS``), ``measure_update`` the rest.
<g, delta> is ``GRAD_DOT_AFTER - GRAD_DOT_BEFORE``. The update norm uses the gradient as a
control variate (see ``update_sq``): only the part of delta orthogonal to g carries
sketch error.

For FSDP-style sharded parameters (each element on one rank) the sums over ranks are the
global values. For DDP-style replicated parameters every rank holds the same values, so
divide the sum slots by the ``RANKS`` slot. ``combine_rank_stats`` does this for a tensor
gathered from all ranks with ONE ``all_gather_into_tensor``. The reduced tensor is then
handed to ``publish()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from torch import Tensor

__all__ = [
    "GRAD_DOT_AFTER",
    "GRAD_DOT_BEFORE",
    "GRAD_SQ",
    "MAX_ABS_GRAD",
    "MAX_SLOTS",
    "NOISE_SQ",
    "N_GRAD_SLOTS",
    "N_SLOTS",
    "PARAM_SQ",
    "RANKS",
    "SAMPLE_GRAD_SQ",
    "SKETCH_GRAD_SQ",
    "SLOT_NAMES",
    "SUM_SLOTS",
    "UPDATE_DOT_SKETCH",
    "UPDATE_SQ",
    "StepStats",
    "combine_rank_stats",
    "stats_from_values",
    "update_sq",
]

GRAD_SQ = 0
NOISE_SQ = 1
RANKS = 2
MAX_ABS_GRAD = 3
SAMPLE_GRAD_SQ = 4
N_GRAD_SLOTS = 5
UPDATE_SQ = 5
UPDATE_DOT_SKETCH = 6
SKETCH_GRAD_SQ = 7
PARAM_SQ = 8
GRAD_DOT_BEFORE = 9
GRAD_DOT_AFTER = 10
N_SLOTS = 11
SUM_SLOTS = (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)
"""Slots that add across ranks and chunks (squared norms, dot products, counts)."""
MAX_SLOTS = (3,)
"""Slots that need a MAX across ranks."""
SLOT_NAMES = (
    "grad_sq",
    "noise_sq",
    "ranks",
    "max_abs_grad",
    "sample_grad_sq",
    "update_sq",
    "update_dot_sketch",
    "sketch_grad_sq",
    "param_sq",
    "grad_dot_before",
    "grad_dot_after",
)


@dataclass(frozen=True)
class StepStats:
    """One optimizer step, as Python numbers.

    Norms are L2 norms over all measured parameters (those with ``requires_grad`` and a
    gradient), in the units of the parameters (``update_norm``, ``param_norm``) or of the
    gradients (``grad_norm``, ``noise_norm``, ``max_abs_grad``).

    * ``grad_norm``: ||g||, the gradient the optimizer was given (after any clipping the
      caller did before ``optimizer.step()``).
    * ``noise_norm``: ||g - m||, m the EMA of g updated with this step's g; NaN when the
      tap was built with ``ema=None``.
    * ``update_norm``: ||theta_after - theta_before||, the size of the step actually taken
      (sketched unless ``exact_update=True``); 0.0 when only ``measure_grads`` ran.
    * ``param_norm``: ||theta_after||.
    * ``processivity``: cos(-g, delta_theta) = -<g, delta_theta> / (||g|| ||delta_theta||)
      in [-1, 1]: 1 for plain SGD, lower when the optimizer turns the step away from the
      gradient (momentum, Adam's per-coordinate scaling, weight decay). 0.0 when either
      norm is 0, NaN when the step is not finite. This is the per-step cosine; the core's
      ``anet_lite.processivity`` is a different statistic over a window of norms.
    * ``max_abs_grad``: max |g_i|; NaN when the tap was built with ``max_abs=False``.
    * ``finite``: no gradient held a NaN/inf and every value above is finite.
    * ``step``: 1-based count of ``measure_grads`` calls on this tap.
    """

    grad_norm: float
    noise_norm: float
    update_norm: float
    param_norm: float
    processivity: float
    max_abs_grad: float
    finite: bool
    step: int


def cos_neg_grad_update(dot: float, grad_norm: float, update_norm: float) -> float:
    """Processivity cos(-g, dtheta) from <g, dtheta> and the two norms (both > 0), in [-1, 1]."""
    return min(1.0, max(-1.0, -dot / (grad_norm * update_norm)))


def update_sq(v: Sequence[float], at: int = 0) -> float:
    """||delta||^2 from the raw sums ``v[at:at + N_SLOTS]`` (any common scale).

    Sketched: delta = a g + r with a = <g, delta> / ||g||^2 known exactly, so
    ||delta||^2 = a <g, delta> + ||r||^2, and only ||r||^2 is taken from the sketch:
    ||S r||^2 = ||S delta||^2 - 2 a <S delta, S g> + a^2 ||S g||^2 (unbiased; 0 error
    for plain SGD, whose delta is a multiple of g). With ``exact_update`` (or g = 0) the
    sketch slots are 0 and ``UPDATE_SQ`` is ||delta||^2 itself.
    """
    gsq, sg = v[at + SAMPLE_GRAD_SQ], v[at + SKETCH_GRAD_SQ]
    usq = v[at + UPDATE_SQ]
    if not (sg > 0.0 and gsq > 0.0):
        return usq
    gdot = v[at + GRAD_DOT_AFTER] - v[at + GRAD_DOT_BEFORE]
    a = gdot / gsq
    r_sq = usq - 2.0 * a * v[at + UPDATE_DOT_SKETCH] + a * a * sg
    return a * gdot + max(r_sq, 0.0)


def stats_from_values(
    values: Any, step: int, *, ema: Optional[float], has_max: bool = True
) -> StepStats:
    """Turn a (reduced) stats tensor or sequence of ``N_SLOTS`` numbers into ``StepStats``.

    ``ema``: the tap's EMA decay (the noise norm is ema * sqrt(``NOISE_SQ``)); None where
    the tap measured no noise. ``has_max``: False where the tap did not measure max |g|
    (that slot then reads NaN and does not make the step non-finite). Reading a device
    tensor here syncs; ``GradNoiseTap.stats()`` only calls it on host copies that have
    landed.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().tolist()
    v = [float(x) for x in values]
    if len(v) != N_SLOTS:
        raise ValueError(f"values must have {N_SLOTS} entries, got {len(v)}")
    grad = _sqrt(v[GRAD_SQ])
    grad_ok = math.isfinite(grad)
    noise = ema * _sqrt(v[NOISE_SQ]) if ema is not None and grad_ok else math.nan
    usq = update_sq(v)
    upd = _sqrt(max(usq, 0.0)) if not math.isnan(usq) else math.nan
    param = _sqrt(v[PARAM_SQ])
    dot = v[GRAD_DOT_AFTER] - v[GRAD_DOT_BEFORE]
    gmax = v[MAX_ABS_GRAD]
    measured = (grad, upd, param, dot, gmax) if has_max else (grad, upd, param, dot)
    finite = all(math.isfinite(x) for x in measured)
    if ema is not None:
        finite = finite and math.isfinite(noise)
    if not finite:
        proc = math.nan
    elif grad > 0.0 and upd > 0.0 and v[SAMPLE_GRAD_SQ] > 0.0:
        proc = cos_neg_grad_update(dot, math.sqrt(v[SAMPLE_GRAD_SQ]), upd)
    else:
        proc = 0.0
    return StepStats(
        grad_norm=grad,
        noise_norm=noise,
        update_norm=upd,
        param_norm=param,
        processivity=proc,
        max_abs_grad=gmax,
        finite=finite,
        step=int(step),
    )


def combine_rank_stats(gathered: Tensor, *, replicated: bool = False) -> Tensor:
    """Reduce stats tensors gathered from all ranks (shape ``[world, N_SLOTS]``) to one.

    Sum slots are added and the max slot is maxed. ``replicated=True`` (DDP: every rank
    measured the same full parameters) divides the sum slots by the number of ranks, so
    the result reads like a single rank's. Stays on the device: no sync.
    """
    if gathered.dim() == 1:
        gathered = gathered.view(-1, N_SLOTS)
    if gathered.dim() != 2 or gathered.shape[1] != N_SLOTS:
        raise ValueError(
            f"gathered must have shape [world, {N_SLOTS}], got {tuple(gathered.shape)}"
        )
    out = gathered.sum(0)
    if replicated:
        out = out / gathered.shape[0]
    out.select(0, MAX_ABS_GRAD).copy_(gathered[:, MAX_ABS_GRAD].amax(0))
    return out


def _sqrt(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return math.sqrt(x) if x > 0.0 else 0.0
