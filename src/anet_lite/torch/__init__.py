"""PyTorch integration for anet-lite (optional: ``pip install 'anet-lite[torch]'``).

The core package (``import anet_lite``) is NumPy-only and never imports torch; importing
this subpackage does.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "anet_lite.torch needs PyTorch: pip install 'anet-lite[torch]' "
        "(on CPU machines: pip install torch==2.13.0 first)"
    ) from exc

from .forget import forget_layers, weights_hash
from .guard import Guard, GuardStop
from .merge import MergeScan, digits_batches, digits_mlp, digits_pairs, merge_state, scan
from .stepstats import (
    GRAD_DOT_AFTER,
    GRAD_DOT_BEFORE,
    GRAD_SQ,
    MAX_ABS_GRAD,
    MAX_SLOTS,
    N_GRAD_SLOTS,
    N_SLOTS,
    NOISE_SQ,
    PARAM_SQ,
    RANKS,
    SKETCH_GRAD_SQ,
    SLOT_NAMES,
    SUM_SLOTS,
    UPDATE_DOT_SKETCH,
    UPDATE_SQ,
    StepStats,
    combine_rank_stats,
    stats_from_values,
    update_sq,
)
from .tap import GradNoiseTap

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
    "SKETCH_GRAD_SQ",
    "SLOT_NAMES",
    "SUM_SLOTS",
    "UPDATE_DOT_SKETCH",
    "UPDATE_SQ",
    "GradNoiseTap",
    "Guard",
    "GuardStop",
    "MergeScan",
    "StepStats",
    "combine_rank_stats",
    "digits_batches",
    "digits_mlp",
    "digits_pairs",
    "forget_layers",
    "merge_state",
    "scan",
    "stats_from_values",
    "update_sq",
    "weights_hash",
]
