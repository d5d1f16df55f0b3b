"""Errors, ``Record`` and ``ReadStats``: what every reader yields and counts."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

__all__ = ["LogFormatError", "MissingDependencyError", "ReadStats", "Record"]


class LogFormatError(ValueError):
    """A log file that cannot be read: ``file``, ``line`` (1-based), ``column`` (1-based index
    or None), ``column_name`` and ``reason``; ``str()`` is one line naming all of them."""

    def __init__(
        self,
        reason: str,
        *,
        file: Any = None,
        line: Optional[int] = None,
        column: Optional[int] = None,
        column_name: Optional[str] = None,
    ) -> None:
        self.reason = reason
        self.file = None if file is None else str(file)
        self.line = line
        self.column = column
        self.column_name = column_name
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None or self.column_name is not None:
            if self.column is None:
                col = f"column {self.column_name!r}"
            elif self.column_name is None:
                col = f"column {self.column}"
            else:
                col = f"column {self.column} ({self.column_name!r})"
            where.append(col)
        head = ", ".join(where)
        if self.file is not None:
            head = f"{self.file}: {head}" if head else self.file
        return f"{head}: {self.reason}" if head else self.reason


class MissingDependencyError(RuntimeError):
    """An optional package is needed (the message names the pip extra)."""


class Record(NamedTuple):
    """One training step's inputs; None = not logged at this step."""

    step: int
    loss: float
    grad_norm: Optional[float] = None
    step_norm: Optional[float] = None
    noise: Optional[float] = None
    lr: Optional[float] = None
    time: Optional[float] = None
    param_norm: Optional[float] = None  # ||θ||; after the first seven, which keep their places
    processivity: Optional[float] = None  # cos(−g, Δθ) in [-1, 1]; last, as param_norm was


class ReadStats:
    """Counters filled while reading (a report line: gaps, non-finite cells, restarts)."""

    def __init__(self) -> None:
        self.lines = 0  # physical lines / events consumed so far
        self.records = 0  # records yielded
        self.rows_without_loss = 0
        self.missing_steps = 0  # steps skipped between consecutive records (by the stride)
        self.step_jumps = 0  # places where steps were skipped
        self.step_regressions = 0  # steps going back (restarts / resumed runs)
        self.time_resets = 0
        self.empty_cells: Dict[str, int] = {}
        self.non_finite: Dict[str, int] = {}
        self.stride: Optional[int] = None
        self._prev_step: Optional[int] = None
        self.step_source = "column"

    def note_empty(self, field: str) -> None:
        self.empty_cells[field] = self.empty_cells.get(field, 0) + 1

    def note_step(self, step: int) -> None:
        prev = self._prev_step
        self._prev_step = step
        if prev is None:
            return
        d = step - prev
        if d <= 0:
            self.step_regressions += d < 0
            return
        if self.stride is None or d < self.stride:
            self.stride = d
            return
        if d > self.stride:
            self.step_jumps += 1
            self.missing_steps += d // self.stride - 1

    def note_uniform_steps(self, first: int, stride: int, m: int) -> None:
        """``note_step`` of first, first + stride, ..., first + (m - 1) * stride (stride > 0)."""
        self.note_step(first)
        if m > 1:
            if self.stride is None or stride < self.stride:
                self.stride = stride  # the first difference sets it; the others equal it
            elif stride > self.stride:
                self.step_jumps += m - 1
                self.missing_steps += (m - 1) * (stride // self.stride - 1)
            self._prev_step = first + (m - 1) * stride

    @property
    def gaps(self) -> int:
        return self.missing_steps + self.rows_without_loss + sum(self.empty_cells.values())

    def as_dict(self) -> Dict[str, Any]:
        return {
            "records": self.records,
            "lines": self.lines,
            "rows_without_loss": self.rows_without_loss,
            "missing_steps": self.missing_steps,
            "step_jumps": self.step_jumps,
            "step_stride": self.stride,
            "step_regressions": self.step_regressions,
            "time_resets": self.time_resets,
            "empty_cells": dict(self.empty_cells),
            "non_finite": dict(self.non_finite),
            "step_source": self.step_source,
        }

    def summary(self) -> str:
        """One line for a report, e.g. 'gaps: 3 missing steps, 1 row without a loss'."""
        parts = []
        if self.missing_steps:
            parts.append(f"{self.missing_steps} missing steps in {self.step_jumps} jumps")
        if self.rows_without_loss:
            parts.append(f"{self.rows_without_loss} rows without a loss (skipped)")
        for k, v in sorted(self.empty_cells.items()):
            parts.append(f"{v} empty {k} cells")
        for k, v in sorted(self.non_finite.items()):
            parts.append(f"{v} non-finite {k} values")
        if self.step_regressions:
            parts.append(f"{self.step_regressions} step restarts")
        if self.time_resets:
            parts.append(f"{self.time_resets} clock restarts (stitched)")
        if self.step_source != "column":
            parts.append("no step column: steps are row numbers")
        return "gaps: " + (", ".join(parts) if parts else "none")
