"""The merge scan moved to ``anet_lite.merge`` and its digits fixtures to
``anet_lite.torch.digits``; these names stay importable here."""

from ..merge import (
    DEFAULT_ALPHAS,
    DEFAULT_MARGIN,
    DEFAULT_THETA_MIN,
    METHODS,
    MergeScan,
    check_compatible,
    merge_state,
    scan,
)
from .digits import DIGITS_BATCH, DIGITS_EVAL, digits_batches, digits_mlp, digits_pairs

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_MARGIN",
    "DEFAULT_THETA_MIN",
    "DIGITS_BATCH",
    "DIGITS_EVAL",
    "METHODS",
    "MergeScan",
    "check_compatible",
    "digits_batches",
    "digits_mlp",
    "digits_pairs",
    "merge_state",
    "scan",
]
