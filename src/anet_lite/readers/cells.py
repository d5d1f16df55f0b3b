"""Cells to numbers: gaps, non-finite values, whole-number steps, a clock that restarts."""

from __future__ import annotations

import math
from typing import Any, Optional

from .columns import _GAP
from .errors import LogFormatError, ReadStats

__all__ = ["MAX_STEP"]

MAX_STEP = 2**63 - 1  # steps are int64 everywhere downstream (arrays, the report)


class _Clock:
    """Seconds that never go back: a restart of the clock is stitched on and counted."""

    __slots__ = ("last", "offset", "scale", "stats")

    def __init__(self, scale: float, stats: ReadStats) -> None:
        self.scale, self.stats = scale, stats
        self.offset = 0.0
        self.last: Optional[float] = None

    def __call__(self, t: Optional[float]) -> Optional[float]:
        if t is None or t != t:
            return None
        if self.scale == 0.0:  # "timestamp": epoch ms above ~1e11 (year 1973 in seconds)
            self.scale = 1e-3 if abs(t) > 1e11 else 1.0
        t = t * self.scale + self.offset
        last = self.last
        if last is not None and t < last:
            self.offset += last - t
            t = last
            self.stats.time_resets += 1
        self.last = t
        return t


def _num(
    cell: str, field: str, stats: ReadStats, *, file: Any, line: int, col: int, name: str
) -> Optional[float]:
    try:
        if "_" in cell:  # float() takes "1_000"; a log cell may not
            raise ValueError(cell)
        v = float(cell)
    except ValueError:
        s = cell.strip()
        if s.lower() in _GAP:
            if field not in ("loss", "step"):  # those count as rows without a loss
                stats.note_empty(field)
            return None
        try:
            v = float(s.replace("_", "x"))  # reject "1_000" as Python would accept it
        except ValueError:
            raise LogFormatError(
                f"not a number: {s[:40]!r} (the {field} column must be numeric; "
                "empty cells are gaps)",
                file=file,
                line=line,
                column=col,
                column_name=name,
            ) from None
    if v - v != 0.0:  # nan or inf
        stats.non_finite[field] = stats.non_finite.get(field, 0) + 1
    return v


def _step_of(v: Optional[float], *, file: Any, line: int, col: int, name: str) -> Optional[int]:
    if v is None:
        return None
    if v != v or v in (math.inf, -math.inf) or not float(v).is_integer() or abs(v) > MAX_STEP:
        raise LogFormatError(
            f"step must be a whole number below 2**63, got {v!r}",
            file=file,
            line=line,
            column=col,
            column_name=name,
        )
    return int(v)


# ---- formats ---------------------------------------------------------------------------
