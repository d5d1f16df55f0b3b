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

from ..merge import MergeScan, merge_state, scan  # noqa: F401 - importable here too; see anet_lite.merge
from .forget import forget_layers, weights_hash
from .guard import Guard, GuardStop
from .stepstats import *  # noqa: F403 - the stats slots stay importable here; not the API
from .stepstats import StepStats
from .tap import GradNoiseTap

# The public API only. The stats slots (GRAD_SQ, N_SLOTS, ...) and their helpers live in
# ``anet_lite.torch.stepstats``; the merge scan in ``anet_lite.merge``; the digits MLPs of
# the merge demo in ``anet_lite.torch.digits``.
__all__ = [
    "GradNoiseTap",
    "Guard",
    "GuardStop",
    "StepStats",
    "forget_layers",
    "weights_hash",
]
