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

from . import stepstats as _stepstats
from .forget import forget_layers, weights_hash
from .guard import Guard, GuardStop
from .merge import MergeScan, digits_batches, digits_mlp, digits_pairs, merge_state, scan
from .stepstats import *  # noqa: F403 - the stats slots and helpers (their list: stepstats.__all__)
from .tap import GradNoiseTap

__all__ = [
    "GradNoiseTap",
    "Guard",
    "GuardStop",
    "MergeScan",
    "digits_batches",
    "digits_mlp",
    "digits_pairs",
    "forget_layers",
    "merge_state",
    "scan",
    "weights_hash",
    *_stepstats.__all__,
]
