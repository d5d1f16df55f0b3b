"""JSONL: one JSON object per line (nested objects flattened with ``/``)."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, Optional, Tuple

from .base import FormatReader
from .cells import _Clock, _num, _step_of
from .columns import ALIASES, FIELDS, _flatten, _time_scale, resolve_columns
from .errors import LogFormatError
from .files import bounded_lines

__all__ = ["JsonlReader"]

_NF = len(FIELDS)


def _has_key(keys: Tuple[str, ...], col: str) -> bool:
    low = col.strip().lower()
    return col in keys or any(k.strip().lower() == low for k in keys)


def _parse_line(raw: bytes, path: Any, line: int) -> Any:
    """One JSONL line parsed; LogFormatError naming the line for anything unreadable."""
    try:
        return json.loads(raw.decode("utf-8-sig" if line == 1 else "utf-8"))
    except UnicodeDecodeError:
        raise LogFormatError("not UTF-8 text (a binary file?)", file=path, line=line) from None
    except json.JSONDecodeError as exc:
        raise LogFormatError(
            f"not valid JSON ({exc.msg})", file=path, line=line, column=exc.colno
        ) from None
    except RecursionError:
        raise LogFormatError("JSON nested too deeply", file=path, line=line) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise LogFormatError(f"not readable JSON ({exc})", file=path, line=line) from None


class JsonlReader(FormatReader):
    """JSONL logs: one JSON object per line, nested objects flattened with ``/``."""

    formats = ("jsonl",)

    def rows(self) -> Iterator[list]:
        path, stats = self.path, self.stats
        cache: Dict[Tuple[str, ...], Dict[str, int]] = {}
        clock: Optional[_Clock] = None
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise LogFormatError(f"cannot open ({exc.strerror})", file=path) from None
        row_no = -1
        mapped: set = set()  # --map fields found in some line
        with f:
            for line, raw in enumerate(bounded_lines(f, path), 1):
                stats.lines = line
                if not raw.strip():
                    continue
                obj = _parse_line(raw, path, line)
                if not isinstance(obj, dict):
                    raise LogFormatError(
                        f"expected a JSON object per line, got {type(obj).__name__}",
                        file=path,
                        line=line,
                        column=1,
                    )
                if any(isinstance(v, dict) for v in obj.values()):
                    obj = _flatten(obj)
                keys = tuple(obj)
                cols = cache.get(keys)
                if cols is None:
                    cols = self._jsonl_columns(keys, line, mapped)
                    if len(cache) < 1024:
                        cache[keys] = cols
                    for k, i in cols.items():
                        self.columns.setdefault(k, keys[i])
                vals: list = [None] * (_NF + 1)  # FIELDS' values, then the line number
                row_no += 1
                for k in range(1, _NF):
                    i = cols.get(FIELDS[k])
                    if i is None:
                        continue
                    key = keys[i]
                    vals[k] = self._jnum(obj[key], FIELDS[k], line, key)
                si = cols.get("step")
                if si is None:
                    stats.step_source = "row number"
                    vals[0] = row_no
                else:
                    key = keys[si]
                    v = self._jnum(obj[key], "step", line, key)
                    if v is None:
                        stats.rows_without_loss += 1
                        continue
                    vals[0] = _step_of(v, file=path, line=line, col=None, name=key)
                if vals[6] is not None:
                    if clock is None:
                        tname = keys[cols["time"]]
                        clock = _Clock(_time_scale(tname, "jsonl"), stats)
                    vals[6] = clock(vals[6])
                vals[-1] = line
                yield vals
        missing = [f for f in self.mapping if f not in mapped]
        if missing:
            raise LogFormatError(
                f"--map {missing[0]}={self.mapping[missing[0]]}: no line has this key",
                file=path,
                column_name=self.mapping[missing[0]],
            )
        if "loss" not in self.columns:
            raise LogFormatError(
                "no loss key in any line (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=KEY",
                file=path,
                line=1,
                column_name="loss",
            )

    def _jsonl_columns(self, keys: Tuple[str, ...], line: int, mapped: set) -> Dict[str, int]:
        """Field -> index into ``keys``: the --map keys this line has, then the aliases
        (lines may differ: an eval line need not hold the mapped training loss)."""
        have = {f: c for f, c in self.mapping.items() if _has_key(keys, c)}
        mapped.update(have)
        return resolve_columns(list(keys), have, file=self.path, line=line)

    def _jnum(self, v: Any, field: str, line: int, key: str) -> Optional[float]:
        if v is None:
            self.stats.note_empty(field)
            return None
        if isinstance(v, bool):
            raise LogFormatError(
                f"expected a number, got {v!r}", file=self.path, line=line, column_name=key
            )
        if isinstance(v, (int, float)):
            try:
                v = float(v)
            except OverflowError:  # an integer of hundreds of digits
                raise LogFormatError(
                    f"number out of range ({len(str(v))} digits)",
                    file=self.path,
                    line=line,
                    column_name=key,
                ) from None
            if v - v != 0.0:
                self.stats.non_finite[field] = self.stats.non_finite.get(field, 0) + 1
            return v
        if isinstance(v, str):
            return _num(v, field, self.stats, file=self.path, line=line, col=None, name=key)
        raise LogFormatError(
            f"expected a number, got {type(v).__name__}",
            file=self.path,
            line=line,
            column_name=key,
        )

    # -- TensorBoard ------------------------------------------------------------------------
