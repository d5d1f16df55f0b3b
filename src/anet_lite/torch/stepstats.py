"""The tap's per-step stats tensor: slot layout, ``StepStats``, and the rank reduction.

Stats tensor layout (``pending_tensor()``; length ``N_SLOTS``, float64, or float32 on
devices without float64). Each rank holds its local sums; summing over ranks is
meaningful for every slot except the last:

====  ===================  ======  ====================================================
slot  name                 reduce  value
====  ===================  ======  ====================================================
0     ``GRAD_SQ``          sum     sum of g**2
1     ``NOISE_SQ``         sum     sum of (g - m)**2, m the EMA after this step's update
                                   (sketched with ``noise="sketch"``); only meaningful
                                   where ``NONFINITE`` is 0
2     ``UPDATE_SQ``        sum     sum of (theta_after - theta_before)**2 (sketched or
                                   exact; the sketched value is an unbiased estimate)
3     ``PARAM_SQ``         sum     sum of theta_after**2
4     ``GRAD_DOT_UPDATE``  sum     <g, theta_after - theta_before>
5     ``NONFINITE``        sum     number of gradient chunks holding a NaN/inf (> 0 means
                                   the step's gradient is not finite)
6     ``RANKS``            sum     1.0 per rank: sums to the number of ranks
7     ``MAX_ABS_GRAD``     max     max |g|: needs a MAX reduce, not a sum
====  ===================  ======  ====================================================

For FSDP-style sharded parameters (each element on one rank) the sums over ranks are the
global values. For DDP-style replicated parameters every rank holds the same values, so
divide the sum slots by the ``RANKS`` slot (processivity is a ratio and needs no
division). ``combine_rank_stats`` does this for a tensor gathered from all ranks with ONE
``all_gather_into_tensor``; the alternative is two collectives on the views
``t[SUM_SLOTS]`` (SUM) and ``t[MAX_SLOTS]`` (MAX). The reduced tensor is then handed to
``publish()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "GRAD_DOT_UPDATE",
    "GRAD_SQ",
    "MAX_ABS_GRAD",
    "MAX_SLOTS",
    "NOISE_SQ",
    "NONFINITE",
    "N_SLOTS",
    "PARAM_SQ",
    "RANKS",
    "SLOT_NAMES",
    "SUM_SLOTS",
    "UPDATE_SQ",
    "StepStats",
    "combine_rank_stats",
    "stats_from_values",
]

GRAD_SQ = 0
NOISE_SQ = 1
UPDATE_SQ = 2
PARAM_SQ = 3
GRAD_DOT_UPDATE = 4
NONFINITE = 5
RANKS = 6
MAX_ABS_GRAD = 7
N_SLOTS = 8
SUM_SLOTS = slice(0, 7)
"""Slots that add across ranks (squared norms, dot products, counts)."""
MAX_SLOTS = slice(7, 8)
"""Slots that need a MAX across ranks."""
SLOT_NAMES = (
    "grad_sq",
    "noise_sq",
    "update_sq",
    "param_sq",
    "grad_dot_update",
    "nonfinite",
    "ranks",
    "max_abs_grad",
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


def stats_from_values(
    values: Any, step: int, *, has_noise: bool = True, has_max: bool = True
) -> StepStats:
    """Turn a (reduced) stats tensor or sequence of ``N_SLOTS`` numbers into ``StepStats``.

    ``has_noise`` / ``has_max``: False where the tap did not measure the noise / max |g|
    (those slots then read NaN and do not make the step non-finite). Reading a device
    tensor here syncs; ``GradNoiseTap.stats()`` only calls it on host
    copies that have landed.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().tolist()
    v = [float(x) for x in values]
    if len(v) != N_SLOTS:
        raise ValueError(f"values must have {N_SLOTS} entries, got {len(v)}")
    grad = _sqrt(v[GRAD_SQ])
    noise = _sqrt(v[NOISE_SQ]) if has_noise and v[NONFINITE] == 0.0 else math.nan
    upd = _sqrt(max(v[UPDATE_SQ], 0.0)) if not math.isnan(v[UPDATE_SQ]) else math.nan
    param = _sqrt(v[PARAM_SQ])
    dot = v[GRAD_DOT_UPDATE]
    gmax = v[MAX_ABS_GRAD]
    measured = (grad, upd, param, dot, gmax) if has_max else (grad, upd, param, dot)
    finite = v[NONFINITE] == 0.0 and all(math.isfinite(x) for x in measured)
    if has_noise:
        finite = finite and math.isfinite(noise)
    if not finite:
        proc = math.nan
    elif grad > 0.0 and upd > 0.0:
        proc = cos_neg_grad_update(dot, grad, upd)
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
    out = torch.empty_like(gathered[0])
    sums = gathered[:, SUM_SLOTS].sum(0)
    if replicated:
        sums = sums / gathered.shape[0]
    out[SUM_SLOTS] = sums
    out[MAX_SLOTS] = gathered[:, MAX_SLOTS].amax(0)
    return out


def _sqrt(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return math.sqrt(x) if x > 0.0 else 0.0
