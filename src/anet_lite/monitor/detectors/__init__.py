"""Detectors: small objects behind one interface, run by the ``Monitor`` on every step.

Each detector owns its state and reads one frozen per-step ``View`` (the normalised
signals, computed once by the Monitor). ``update(view)`` returns a ``Finding`` or None.
Nothing in the Monitor can mute them: warm-up, grace after a schedule change, a level
shift or a spike do not reach them. A declared change (``Monitor.mark``) and an lr
restart re-reference them: a new regime, watched again from its own level.

Adding a detector = one module here + one entry in ``DEFAULT`` (+ its cause in
``anet_lite.monitor.causes`` if it names a new one). Every detector in ``DEFAULT`` goes through
the same contract tests (tests/monitor/test_detectors.py).
"""

from __future__ import annotations

from typing import Tuple, Type

from ._base import Detector, Finding, View
from .loss_cusum import LossCusum
from .loss_regression import LossRegression
from .loss_trend import LossTrend, SlowLossTrend
from .norm_growth import NormGrowth

DEFAULT: Tuple[Type[Detector], ...] = (
    LossRegression,
    NormGrowth,
    LossCusum,
    LossTrend,
    SlowLossTrend,
)

__all__ = [
    "DEFAULT",
    "Detector",
    "Finding",
    "LossCusum",
    "LossRegression",
    "LossTrend",
    "NormGrowth",
    "SlowLossTrend",
    "View",
]
