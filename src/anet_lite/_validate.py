"""Input checks shared by the public functions: clear errors that name the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def as_series(x: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a 1-D float64 array, or raise a TypeError/ValueError naming ``name``.

    Non-finite values are kept; callers decide what they mean.
    """
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(x).__name__}")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a sequence of numbers, got {type(x).__name__} "
            f"that cannot be read as numbers ({exc})"
        ) from None
    if arr.ndim == 0:
        raise TypeError(f"{name} must be a sequence of numbers, got a single number")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return arr


def as_number(x: Any, name: str) -> float:
    """Return ``x`` as a Python float (finite or not); TypeError naming ``name`` otherwise."""
    if isinstance(x, (bool, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if isinstance(x, numbers.Real):
        return float(x)
    try:
        return float(x)  # NumPy 0-d arrays, 0-d tensors, anything with __float__
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}") from None


def positive(x: Any, name: str, *, integer: bool = False) -> float:
    """Validate a strictly positive finite parameter (window, rate, ...)."""
    v = as_number(x, name)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {x!r}")
    if integer and v != int(v):
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return v


def non_negative(x: Any, name: str) -> float:
    v = as_number(x, name)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return v


def finite(x: Any, name: str) -> float:
    v = as_number(x, name)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return v
