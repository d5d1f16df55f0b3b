"""``LogReader`` and ``open_log``: one iterable of ``Record``s for every format."""

from __future__ import annotations

from itertools import islice, repeat
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional

from .base import FormatReader
from .columns import FIELDS
from .csv_files import _Block, _new_record, _uniform
from .detect import detect_format
from .errors import LogFormatError, ReadStats, Record
from .files import check_regular, is_regular
from .registry import reader_class

__all__ = ["LogReader", "open_log"]

_NF = len(FIELDS)  # a row list: FIELDS' values, then the line number


class LogReader:
    """Iterable over ``Record``s of one log; ``format``, ``columns`` (field -> source column),
    ``stats`` (``ReadStats``) and ``path`` describe it. Iterate once.

    The format's own reading is done by its ``FormatReader`` (``registry.READERS``); this
    class joins rows of the same step, counts gaps and makes the ``Record``s."""

    def __init__(
        self,
        path: Any,
        fmt: str = "auto",
        mapping: Optional[Dict[str, str]] = None,
        allow_special: bool = False,
    ) -> None:
        self.path = Path(path)
        if fmt != "auto":
            reader_class(fmt)  # ValueError naming the formats for an unknown one
        if not self.path.exists():
            raise LogFormatError("no such file or folder", file=self.path)
        check_regular(self.path, allow_special)
        self.allow_special = bool(allow_special)
        if fmt == "auto" and not self.path.is_dir() and not is_regular(self.path):
            raise LogFormatError("not a regular file: name its format with --format", file=path)
        self.format = detect_format(self.path) if fmt == "auto" else fmt
        self.mapping = dict(mapping or {})
        self.stats = ReadStats()
        cls = reader_class(self.format)
        self.source: FormatReader = cls(
            self.path, self.format, self.mapping, self.allow_special, self.stats
        )
        self._it: Optional[Iterator[Record]] = None
        if cls.text and self.path.is_file() and self.path.stat().st_size == 0:
            raise LogFormatError("empty file", file=self.path, line=1)

    @property
    def columns(self) -> Dict[str, str]:
        """Field -> the source column it was read from (filled while reading)."""
        return self.source.columns

    def __iter__(self) -> Iterator[Record]:
        if self._it is None:
            self._it = self._records()
        return self._it

    def _records(self) -> Iterator[Record]:
        return self._finish(self.source.rows())

    # -- post-processing shared by all formats: join same-step rows, count gaps ---------

    def _finish(self, raw: Iterator[Any]) -> Iterator[Record]:
        stats = self.stats
        note_step = stats.note_step
        pending: Optional[list] = None
        # r = [step, loss, grad, step_norm, noise, lr, time, param_norm, processivity, line]
        # (FIELDS' values, then the line number) or a _Block
        for r in raw:
            if type(r) is _Block:
                steps = r.steps
                n = len(steps)
                if (pending is None or steps[0] != pending[0]) and _uniform(steps):
                    # No step repeats inside (nothing to join): every row but the last is a
                    # record as it is; the last waits, as any row does, for the next one.
                    if pending is not None:
                        rec = self._emit(pending)
                        if rec is not None:
                            yield rec
                    if n > 1:
                        stats.note_uniform_steps(steps[0], steps[1] - steps[0], n - 1)
                        stats.records += n - 1
                        cols = [c if c is not None else repeat(None) for c in r.cols]
                        yield from map(_new_record, islice(zip(steps, *cols), n - 1))
                    pending = [steps[-1]] + [c[-1] if c is not None else None for c in r.cols]
                    pending.append(r.lines[-1])
                    continue
                rows: Iterable[list] = r.rows()
            else:
                rows = (r,)
            for r in rows:
                if pending is not None:
                    if r[0] == pending[0]:
                        for i in range(1, _NF):
                            if r[i] is not None:
                                pending[i] = r[i]
                        continue
                    note_step(pending[0])  # = self._emit(pending), inlined
                    if pending[1] is None:
                        stats.rows_without_loss += 1
                    else:
                        stats.records += 1
                        yield _new_record(pending[:_NF])
                pending = r
        if pending is not None:
            rec = self._emit(pending)
            if rec is not None:
                yield rec
        if stats.records == 0:
            raise LogFormatError(
                "no step with a loss value in the whole log"
                + (f" (columns used: {self.columns})" if self.columns else ""),
                file=self.path,
            )

    def _emit(self, p: list) -> Optional[Record]:
        stats = self.stats
        stats.note_step(p[0])
        if p[1] is None:
            stats.rows_without_loss += 1
            return None
        stats.records += 1
        return _new_record(p[:_NF])


def open_log(
    path: Any,
    fmt: str = "auto",
    mapping: Optional[Dict[str, str]] = None,
    allow_special: bool = False,
) -> LogReader:
    """A ``LogReader`` over ``path`` (``fmt`` "auto" detects it from the name and first line).

    ``allow_special``: also read a FIFO / device (with an explicit ``fmt``); by default
    only regular files and folders are read (a FIFO could block forever)."""
    return LogReader(path, fmt, mapping, allow_special)
