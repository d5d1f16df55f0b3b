"""CSV / TSV (plain, W&B, MLflow wide): block-wise reading with a column-wise fast path."""

from __future__ import annotations

import csv
from functools import partial
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

from .base import FormatReader
from .cells import MAX_STEP, _Clock, _num, _step_of
from .columns import ALIASES, FIELDS, _time_scale, resolve_columns
from .errors import LogFormatError, ReadStats, Record
from .files import bounded_lines

__all__ = ["CsvReader"]


def _csv_blocks(
    path: Path, stats: ReadStats, size: int = 512
) -> Iterator[Tuple[List[List[str]], List[int]]]:
    """(rows, their line numbers), ``size`` rows at a time (the first block: the header
    alone); LogFormatError on decode / csv errors and lines longer than ``MAX_LINE``,
    after the rows read before the error. Reads a pipe too (no seek)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = bounded_lines(f, path)
        reader = None
        n = 1
        while True:
            rows: List[List[str]] = []
            nums: List[int] = []
            add_row, add_line = rows.append, nums.append
            error: Optional[LogFormatError] = None
            try:
                if reader is None:
                    first = next(lines, "")
                    delim = "\t" if "\t" in first and "," not in first else ","
                    reader = csv.reader(chain((first,), lines), delimiter=delim)
                for row in islice(reader, n):
                    add_row(row)
                    add_line(reader.line_num)
            except UnicodeDecodeError:
                line = (reader.line_num if reader is not None else 0) + 1
                error = LogFormatError("not UTF-8 text (a binary file?)", file=path, line=line)
            except csv.Error as exc:
                line = reader.line_num if reader is not None else 1
                error = LogFormatError(f"malformed CSV ({exc})", file=path, line=line)
            except LogFormatError as exc:  # a line longer than MAX_LINE
                error = exc
            if rows:
                stats.lines = nums[-1]
                yield rows, nums
            if error is not None:
                raise error
            if len(rows) < n:
                return
            n = size


def _csv_rows(path: Path, stats: ReadStats) -> Iterator[Tuple[int, List[str]]]:
    """(line number, cells) for each row; LogFormatError on decode / csv errors."""
    for rows, lines in _csv_blocks(path, stats):
        yield from zip(lines, rows)


class _Block:
    """Consecutive CSV rows already converted column-wise (``CsvReader._fast_block``): steps,
    the value columns (FIELDS[1:]; None = not in the log) and the rows' line numbers."""

    __slots__ = ("cols", "lines", "steps")

    def __init__(self, steps: List[int], cols: List[Optional[List[Any]]], lines: List[int]):
        self.steps, self.cols, self.lines = steps, cols, lines

    def rows(self) -> Iterator[list]:
        """The block as ``_read_csv``'s row lists."""
        n = len(self.steps)
        cols = [c if c is not None else repeat(None, n) for c in self.cols]
        for r in zip(self.steps, *cols, self.lines):
            yield list(r)


def _whole(cell: str) -> int:
    """``int(cell)`` for a step cell in range; ValueError otherwise (``_num`` decides)."""
    if "_" in cell:
        raise ValueError(cell)
    v = int(cell)
    if not -MAX_STEP <= v <= MAX_STEP:
        raise ValueError(cell)
    return v


def _uniform(steps: List[int]) -> bool:
    """Integer steps rising by one constant stride (> 0)."""
    n = len(steps)
    if n < 2:
        return True
    first = steps[0]
    d = steps[1] - first
    if d <= 0 or steps[-1] != first + (n - 1) * d:
        return False
    return steps == list(range(first, first + n * d, d))


_new_record = partial(tuple.__new__, Record)  # Record(*nine) without the Python-level __new__
_NV = len(FIELDS) - 1  # value columns: FIELDS[1:]


class CsvReader(FormatReader):
    """CSV / TSV logs, W&B CSV exports included: the header names the columns."""

    formats = ("csv", "wandb")

    def rows(self) -> Iterator[Any]:
        return self._read_csv()

    def _read_csv(self) -> Iterator[Any]:
        path, stats = self.path, self.stats
        blocks = _csv_blocks(path, stats)
        try:
            header = next(blocks)[0][0]
        except StopIteration:
            raise LogFormatError("empty file", file=path, line=1) from None
        if not any(c.strip() for c in header):
            raise LogFormatError("empty header line", file=path, line=1)
        cols = resolve_columns(header, self.mapping, file=path)
        if "loss" not in cols:
            raise LogFormatError(
                "no loss column (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=COLUMN",
                file=path,
                line=1,
                column_name="loss",
            )
        self.columns = {k: header[i] for k, i in cols.items()}
        idx = [cols.get(f) for f in FIELDS]
        names = [None if i is None else header[i] for i in idx]
        si = idx[0]
        if si is None:
            stats.step_source = "row number"
        tcol = idx[6]
        clock = _Clock(_time_scale(header[tcol], self.format), stats) if tcol is not None else None
        fields = FIELDS
        present = [(k, idx[k], fields[k]) for k in range(1, len(fields)) if idx[k] is not None]
        nf = len(header)
        row_no = -1
        for block, lines in blocks:
            fast = self._fast_block(block, lines, nf, si, present, row_no, clock)
            if fast is not None:
                row_no += len(block)
                yield fast
                continue
            yield from self._rows_one_by_one(block, lines, nf, si, present, names, row_no, clock)
            row_no += len(block)

    def _fast_block(
        self,
        block: List[List[str]],
        lines: List[int],
        nf: int,
        si: Optional[int],
        present: List[Tuple[int, int, str]],
        row_no: int,
        clock: Optional[_Clock],
    ) -> Optional[_Block]:
        """The block converted column-wise when every cell is a plain number (no gaps, no
        short rows, integer steps); None otherwise (``_rows_one_by_one`` then reads it,
        with its exact errors and gap counts). Changes nothing in ``stats`` unless it
        succeeds, and then exactly what ``_rows_one_by_one`` would have."""
        if set(map(len, block)) != {nf}:
            return None
        cols = list(zip(*block))
        out: List[Optional[List[Any]]] = [None] * _NV
        bad: List[Tuple[int, int, str, int]] = []
        try:
            if si is None:
                steps = list(range(row_no + 1, row_no + 1 + len(block)))
            else:
                if "_" in "".join(cols[si]):  # int() takes "1_000"; a log cell may not
                    return None
                steps = list(map(int, cols[si]))
                if steps and (max(steps) > MAX_STEP or min(steps) < -MAX_STEP):
                    return None
            for k, i, field in present:
                if "_" in "".join(cols[i]):
                    return None
                v = list(map(float, cols[i]))
                total = sum(v)
                if total - total != 0.0:  # a nan/inf somewhere (or an overflowing sum)
                    where = [j for j, x in enumerate(v) if x - x != 0.0]
                    if where:
                        bad.append((where[0], k, field, len(where)))
                out[k - 1] = v
        except ValueError:
            return None
        nonf = self.stats.non_finite
        for _, _, field, n_bad in sorted(bad):  # (first seen first, as row by row)
            nonf[field] = nonf.get(field, 0) + n_bad
        if clock is not None and out[5] is not None:  # time
            out[5] = [clock(t) for t in out[5]]
        return _Block(steps, out, lines)

    def _rows_one_by_one(
        self,
        block: List[List[str]],
        lines: List[int],
        nf: int,
        si: Optional[int],
        present: List[Tuple[int, int, str]],
        names: List[Optional[str]],
        row_no: int,
        clock: Optional[_Clock],
    ) -> Iterator[list]:
        """One row list per row of ``block`` (the general path: gaps, short rows, errors)."""
        path, stats = self.path, self.stats
        for line, row in zip(lines, block):
            stats.lines = line  # (the block was read ahead: an error names its own line)
            row_no += 1
            if len(row) != nf:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) > nf:
                    raise LogFormatError(
                        f"row has {len(row)} cells, the header has {nf}",
                        file=path,
                        line=line,
                        column=nf + 1,
                    )
                row = row + [""] * (nf - len(row))
            vals: list = [None] * (_NV + 2)  # FIELDS' values, then the line number
            if si is None:
                vals[0] = row_no
            else:
                cell = row[si]
                try:
                    vals[0] = _whole(cell)
                except ValueError:
                    v = _num(cell, "step", stats, file=path, line=line, col=si + 1, name=names[0])
                    if v is None:
                        stats.rows_without_loss += 1
                        continue  # a row without a step cannot be placed
                    vals[0] = _step_of(v, file=path, line=line, col=si + 1, name=names[0])
            for k, i, field in present:
                cell = row[i]
                try:
                    if "_" in cell:
                        raise ValueError(cell)
                    v = vals[k] = float(cell)
                    if v - v != 0.0:
                        stats.non_finite[field] = stats.non_finite.get(field, 0) + 1
                except ValueError:
                    vals[k] = _num(
                        cell, field, stats, file=path, line=line, col=i + 1, name=names[k]
                    )
            if clock is not None:
                vals[6] = clock(vals[6])
            vals[-1] = line
            yield vals
