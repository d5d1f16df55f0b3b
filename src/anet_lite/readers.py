"""Streaming training-log readers: CSV, JSONL, TensorBoard, W&B and MLflow exports.

    from anet_lite.readers import open_log
    log = open_log("train.csv", mapping={"loss": "train/loss"})
    for rec in log:                      # Record(step, loss, grad_norm, step_norm, noise, lr, time)
        snap = monitor.update(rec.loss, step=rec.step, grad_norm=rec.grad_norm, ...)
    log.stats.as_dict()                  # gaps, non-finite cells, time resets, ...

Every reader is a generator over the file: memory stays constant in the log length (the
MLflow long format and the MLflow file store read each metric's rows in their own pass and
merge them by step; TensorBoard scalars of different tags are joined by step in a bounded
buffer). Bad input raises ``LogFormatError`` naming the file, line and column.

Cells: empty, ``null``, ``None``, ``NA`` and ``-`` are *gaps* (not measured; counted).
``nan`` / ``inf`` are real values (a NaN loss is a collapse, not a gap) and counted too.
Rows without a loss are skipped and counted. ``time`` is seconds: columns named ``*_ms``
and MLflow timestamps (epoch ms) are divided by 1000; a clock that restarts (goes back)
is stitched so that it keeps increasing, and each restart is counted.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

__all__ = [
    "FIELDS",
    "FORMATS",
    "LogFormatError",
    "LogReader",
    "MissingDependencyError",
    "ReadStats",
    "Record",
    "detect_format",
    "open_log",
    "parse_mapping",
]

FIELDS = ("step", "loss", "grad_norm", "step_norm", "noise", "lr", "time")
FORMATS = ("auto", "csv", "jsonl", "tensorboard", "wandb", "mlflow")

# Known names per field, in priority order (compared lower-cased, after the W&B "run - "
# prefix and MLflow's "metrics." prefix are removed).
ALIASES: Dict[str, Tuple[str, ...]] = {
    "step": (
        "step",
        "_step",
        "global_step",
        "trainer/global_step",
        "steps",
        "iteration",
        "iter",
        "it",
        "train/global_step",
    ),
    "loss": (
        "loss",
        "train_loss",
        "train/loss",
        "loss/train",
        "training_loss",
        "train/train_loss",
        "train_loss_step",
        "loss_step",
        "train/loss_step",
        "training/loss",
    ),
    "grad_norm": (
        "grad_norm",
        "gradient_norm",
        "train/grad_norm",
        "train/gradient_norm",
        "grad-norm",
        "gradnorm",
        "grad_norm/total",
        "grad_norm_2.0_norm_total",
        "total_grad_norm",
        "optimizer/grad_norm",
    ),
    "step_norm": (
        "step_norm",
        "update_norm",
        "train/step_norm",
        "train/update_norm",
        "param_update_norm",
        "delta_norm",
        "update-norm",
    ),
    "noise": ("noise", "grad_noise", "noise_norm", "gradient_noise", "train/noise"),
    "lr": (
        "lr",
        "learning_rate",
        "train/learning_rate",
        "train/lr",
        "lr-adamw",
        "lr-adam",
        "lr-sgd",
        "optimizer/lr",
        "lr/group0",
        "lr_0",
    ),
    "time": (
        "time",
        "train_time",
        "_runtime",
        "runtime",
        "elapsed",
        "elapsed_time",
        "wall_time",
        "time_s",
        "train_time_s",
        "seconds",
        "time_ms",
        "train_time_ms",
        "elapsed_ms",
        "_timestamp",
        "timestamp",
    ),
}
_MS_NAMES = {"time_ms", "train_time_ms", "elapsed_ms"}
_GAP = {"", "null", "none", "na", "n/a", "-", "nil"}
_BINARY_MARKERS = (b"\x00",)


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


def parse_mapping(items: Optional[Iterable[str]]) -> Dict[str, str]:
    """``["loss=train/loss", ...]`` -> ``{"loss": "train/loss"}``; ValueError if malformed."""
    out: Dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--map needs FIELD=COLUMN, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k == "update_norm":
            k = "step_norm"
        if k == "learning_rate":
            k = "lr"
        if k not in FIELDS:
            raise ValueError(f"--map: unknown field {k!r} (one of {', '.join(FIELDS)})")
        if not v.strip():
            raise ValueError(f"--map {k}=: the column name is empty")
        out[k] = v.strip()
    return out


def _norm(name: str) -> str:
    n = name.strip()
    if " - " in n:  # W&B panel export: "<run name> - train/loss"
        n = n.rsplit(" - ", 1)[1]
    n = n.lower()
    if n.startswith("metrics."):  # MLflow search_runs / runs-table exports
        n = n[len("metrics.") :]
    return n


def _ignored(name: str) -> bool:
    s = name.strip()
    return s.endswith(("__MIN", "__MAX", "__min", "__max", "_MIN", "_MAX"))


def resolve_columns(
    names: List[str], mapping: Dict[str, str], *, file: Any, line: int = 1
) -> Dict[str, int]:
    """Field -> index into ``names`` (explicit mapping first, then the aliases)."""
    out: Dict[str, int] = {}
    for field, col in mapping.items():
        if col in names:
            out[field] = names.index(col)
            continue
        lowered = [n.strip().lower() for n in names]
        if col.strip().lower() in lowered:
            out[field] = lowered.index(col.strip().lower())
            continue
        raise LogFormatError(
            f"--map {field}={col}: no such column (columns: {', '.join(names[:20])})",
            file=file,
            line=line,
            column_name=col,
        )
    normed = [None if _ignored(n) else _norm(n) for n in names]
    used = set(out.values())
    for field in FIELDS:
        if field in out:
            continue
        for alias in ALIASES[field]:
            hit = [i for i, n in enumerate(normed) if n == alias and i not in used]
            if hit:
                out[field] = hit[0]
                used.add(hit[0])
                break
        else:
            # "train/xyz" or "train_xyz" when xyz is a known name of this field
            for i, n in enumerate(normed):
                if n is None or i in used:
                    continue
                for pre in ("train/", "train_", "training/"):
                    if n.startswith(pre) and n[len(pre) :] in ALIASES[field][:3]:
                        out[field] = i
                        used.add(i)
                        break
                if field in out:
                    break
    return out


def _time_scale(name: str, fmt: str) -> float:
    n = _norm(name)
    if n in _MS_NAMES or n.endswith("_ms"):
        return 1e-3
    if fmt == "mlflow" and n == "timestamp":
        return 1e-3
    if n == "timestamp":  # a bare "timestamp": epoch ms if it looks like one (decided later)
        return 0.0
    return 1.0


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
    if v != v or v in (math.inf, -math.inf) or not float(v).is_integer():
        raise LogFormatError(
            f"step must be a whole number, got {v!r}",
            file=file,
            line=line,
            column=col,
            column_name=name,
        )
    return int(v)


# ---- formats ---------------------------------------------------------------------------


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4096)


def detect_format(path: Any) -> str:
    """ "csv", "jsonl", "tensorboard", "wandb" or "mlflow" from the name and first line."""
    p = Path(path)
    if p.is_dir():
        if any("tfevents" in c.name for c in _walk_files(p, limit=2000)):
            return "tensorboard"
        if (p / "metrics").is_dir() or p.name == "metrics":
            return "mlflow"
        raise LogFormatError(
            "a folder, but neither a TensorBoard run folder (no *tfevents* file) nor an "
            "MLflow run folder (no metrics/ folder)",
            file=p,
        )
    if "tfevents" in p.name:
        return "tensorboard"
    head = _sniff(p)
    if not head:
        raise LogFormatError("empty file", file=p, line=1)
    if any(m in head for m in _BINARY_MARKERS):
        raise LogFormatError(
            "binary data, not a text log (use --format tensorboard for event files)",
            file=p,
            line=1,
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 4096-byte boundary
            line = head[: exc.start].count(b"\n") + 1
            raise LogFormatError("not UTF-8 text (a binary file?)", file=p, line=line) from None
        text = head[: exc.start].decode("utf-8")
    first = text.lstrip("\ufeff").lstrip().split("\n", 1)[0].strip()
    if first.startswith("{"):
        return "jsonl"
    ext = p.suffix.lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".csv", ".tsv", ".txt", "") or "," in first or "\t" in first:
        cells = _split_header(first)
        if len(cells) < 2:
            if len(first.split()) == 3 and _all_numbers(first.split()):
                return "mlflow"  # an MLflow file-store metric file: "timestamp value step"
            raise LogFormatError(
                "unknown log format: the first line is not a header with a step and a loss "
                "column (use --format)",
                file=p,
                line=1,
            )
        low = [_norm(c) for c in cells]
        if "value" in low and ({"key", "metric", "name"} & set(low) or "timestamp" in low):
            return "mlflow"
        if any(c.strip().endswith(("__MIN", "__MAX")) for c in cells) or any(
            " - " in c for c in cells
        ):
            return "wandb"
        if "_step" in low or "_runtime" in low:
            return "wandb"
        if any(c.strip().lower().startswith("metrics.") for c in cells):
            return "mlflow"
        return "csv"
    raise LogFormatError(
        f"unknown log format (extension {ext!r}); use --format csv|jsonl|tensorboard|wandb|mlflow",
        file=p,
        line=1,
    )


def _all_numbers(parts: List[str]) -> bool:
    try:
        [float(x) for x in parts]
    except ValueError:
        return False
    return True


def _split_header(first: str) -> List[str]:
    delim = "\t" if "\t" in first and "," not in first else ","
    return next(csv.reader([first], delimiter=delim), [])


def _walk_files(p: Path, limit: int = 100000) -> Iterator[Path]:
    n = 0
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for f in sorted(files):
            n += 1
            if n > limit:
                return
            yield Path(root) / f


class _Text:
    """A text file opened for the csv module; decode errors become LogFormatError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by owner

    def close(self) -> None:
        self.f.close()


def _csv_rows(path: Path, stats: ReadStats) -> Iterator[Tuple[int, List[str]]]:
    """(line number, cells) for each row; LogFormatError on decode / csv errors."""
    t = _Text(path)
    try:
        first = t.f.readline()
        t.f.seek(0)
        delim = "\t" if "\t" in first and "," not in first else ","
        reader = csv.reader(t.f, delimiter=delim)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise LogFormatError(
                    "not UTF-8 text (a binary file?)", file=path, line=reader.line_num + 1
                ) from None
            except csv.Error as exc:
                raise LogFormatError(
                    f"malformed CSV ({exc})", file=path, line=reader.line_num
                ) from None
            stats.lines = reader.line_num
            yield reader.line_num, row
    finally:
        t.close()


class LogReader:
    """Iterable over ``Record``s of one log; ``format``, ``columns`` (field -> source column),
    ``stats`` (``ReadStats``) and ``path`` describe it. Iterate once."""

    def __init__(
        self,
        path: Any,
        fmt: str = "auto",
        mapping: Optional[Dict[str, str]] = None,
    ) -> None:
        self.path = Path(path)
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if not self.path.exists():
            raise LogFormatError("no such file or folder", file=self.path)
        self.format = detect_format(self.path) if fmt == "auto" else fmt
        self.mapping = dict(mapping or {})
        self.columns: Dict[str, str] = {}
        self.stats = ReadStats()
        self._it: Optional[Iterator[Record]] = None
        fmt_text = self.format in ("csv", "wandb", "jsonl", "mlflow")
        if fmt_text and self.path.is_file() and self.path.stat().st_size == 0:
            raise LogFormatError("empty file", file=self.path, line=1)

    def __iter__(self) -> Iterator[Record]:
        if self._it is None:
            self._it = self._records()
        return self._it

    def _records(self) -> Iterator[Record]:
        f = self.format
        if f in ("csv", "wandb"):
            raw = self._read_csv()
        elif f == "jsonl":
            raw = self._read_jsonl()
        elif f == "tensorboard":
            raw = self._read_tensorboard()
        else:
            raw = self._read_mlflow()
        return self._finish(raw)

    # -- post-processing shared by all formats: join same-step rows, count gaps ---------

    def _finish(self, raw: Iterator[list]) -> Iterator[Record]:
        stats = self.stats
        pending: Optional[list] = None
        for r in raw:  # r = [step, loss, grad, step_norm, noise, lr, time, line]
            if pending is not None and r[0] == pending[0]:
                for i in range(1, 7):
                    if r[i] is not None:
                        pending[i] = r[i]
                continue
            if pending is not None:
                rec = self._emit(pending)
                if rec is not None:
                    yield rec
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
        return Record(p[0], p[1], p[2], p[3], p[4], p[5], p[6])

    # -- CSV (plain, W&B, MLflow wide) ----------------------------------------------------

    def _read_csv(self) -> Iterator[list]:
        path, stats = self.path, self.stats
        rows = _csv_rows(path, stats)
        try:
            _, header = next(rows)
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
        nf = len(header)
        row_no = -1
        for line, row in rows:
            row_no += 1
            if len(row) < nf:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                row = row + [""] * (nf - len(row))
            vals: list = [None] * 8
            if si is None:
                vals[0] = row_no
            else:
                cell = row[si]
                try:
                    vals[0] = int(cell)
                except ValueError:
                    v = _num(cell, "step", stats, file=path, line=line, col=si + 1, name=names[0])
                    if v is None:
                        stats.rows_without_loss += 1
                        continue  # a row without a step cannot be placed
                    vals[0] = _step_of(v, file=path, line=line, col=si + 1, name=names[0])
            for k in range(1, 7):
                i = idx[k]
                if i is None:
                    continue
                cell = row[i]
                try:
                    v = vals[k] = float(cell)
                    if v - v != 0.0:
                        stats.non_finite[fields[k]] = stats.non_finite.get(fields[k], 0) + 1
                except ValueError:
                    vals[k] = _num(
                        cell, fields[k], stats, file=path, line=line, col=i + 1, name=names[k]
                    )
            if clock is not None:
                vals[6] = clock(vals[6])
            vals[7] = line
            yield vals

    # -- JSONL ----------------------------------------------------------------------------

    def _read_jsonl(self) -> Iterator[list]:
        path, stats = self.path, self.stats
        cache: Dict[Tuple[str, ...], Dict[str, int]] = {}
        clock: Optional[_Clock] = None
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise LogFormatError(f"cannot open ({exc.strerror})", file=path) from None
        row_no = -1
        with f:
            for line, raw in enumerate(f, 1):
                stats.lines = line
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8-sig" if line == 1 else "utf-8"))
                except UnicodeDecodeError:
                    raise LogFormatError(
                        "not UTF-8 text (a binary file?)", file=path, line=line
                    ) from None
                except json.JSONDecodeError as exc:
                    raise LogFormatError(
                        f"not valid JSON ({exc.msg})", file=path, line=line, column=exc.colno
                    ) from None
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
                    try:
                        cols = resolve_columns(list(keys), self.mapping, file=path, line=line)
                    except LogFormatError:
                        cols = resolve_columns(list(keys), {}, file=path, line=line)
                    if len(cache) < 1024:
                        cache[keys] = cols
                    for k, i in cols.items():
                        self.columns.setdefault(k, keys[i])
                vals: list = [None] * 8
                row_no += 1
                for k in range(1, 7):
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
                vals[7] = line
                yield vals
        if "loss" not in self.columns:
            raise LogFormatError(
                "no loss key in any line (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=KEY",
                file=path,
                line=1,
                column_name="loss",
            )

    def _jnum(self, v: Any, field: str, line: int, key: str) -> Optional[float]:
        if v is None:
            self.stats.note_empty(field)
            return None
        if isinstance(v, bool):
            raise LogFormatError(
                f"expected a number, got {v!r}", file=self.path, line=line, column_name=key
            )
        if isinstance(v, (int, float)):
            v = float(v)
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

    def _read_tensorboard(self) -> Iterator[list]:
        try:
            from tensorboard.backend.event_processing.event_file_loader import (
                EventFileLoader,
            )
        except ImportError:
            raise MissingDependencyError(
                "reading TensorBoard event files needs the tensorboard package: "
                "pip install 'anet-lite[tensorboard]'"
            ) from None
        p = self.path
        files = [p] if p.is_file() else [f for f in _walk_files(p) if "tfevents" in f.name]
        if not files:
            raise LogFormatError("no TensorBoard event file (*tfevents*) in this folder", file=p)
        stats = self.stats
        tag_field: Dict[str, Optional[str]] = {}
        want = {v: k for k, v in self.mapping.items()}
        buf: OrderedDict[int, list] = OrderedDict()
        lookback = 256
        clock = _Clock(1.0, stats)
        for path in files:
            try:
                events = EventFileLoader(str(path)).Load()
                for n, ev in enumerate(events, 1):
                    stats.lines += 1
                    summ = getattr(ev, "summary", None)
                    if summ is None or not summ.value:
                        continue
                    for val in summ.value:
                        tag = val.tag
                        field = tag_field.get(tag, "?")
                        if field == "?":
                            field = want.get(tag) or _tag_field(tag, self.mapping)
                            tag_field[tag] = field
                            if field is not None and field not in self.columns:
                                self.columns[field] = tag
                        if field is None:
                            continue
                        x = _tb_value(val)
                        if x is None:
                            continue
                        if x - x != 0.0:
                            stats.non_finite[field] = stats.non_finite.get(field, 0) + 1
                        step = int(ev.step)
                        rec = buf.get(step)
                        if rec is None:
                            rec = [step, None, None, None, None, None, None, n]
                            buf[step] = rec
                            while len(buf) > lookback:
                                out = buf.popitem(last=False)[1]
                                out[6] = clock(out[6])
                                yield out
                        rec[FIELDS.index(field)] = x
                        if rec[6] is None and "time" not in self.mapping:
                            rec[6] = float(ev.wall_time)
            except (OSError, ValueError) as exc:
                if isinstance(exc, LogFormatError):
                    raise
                raise LogFormatError(
                    f"not a readable TensorBoard event file ({exc})",
                    file=path,
                    line=stats.lines or None,
                ) from None
        for rec in buf.values():
            rec[6] = clock(rec[6])
            yield rec
        if "loss" not in self.columns:
            raise LogFormatError(
                "no loss scalar (looked for tags "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=TAG",
                file=p,
                column_name="loss",
            )
        if "time" not in self.mapping:
            self.columns.setdefault("time", "wall_time")

    # -- MLflow -----------------------------------------------------------------------------

    def _read_mlflow(self) -> Iterator[list]:
        p = self.path
        if p.is_dir():
            return self._merge(self._mlflow_store_sources(p))
        head = _sniff(p).decode("utf-8", "replace").lstrip("\ufeff").split("\n", 1)[0]
        cells = [_norm(c) for c in _split_header(head.strip())]
        if len(cells) < 2 and len(head.split()) == 3:
            field = _tag_field(p.name, self.mapping) or "loss"
            self.columns[field] = p.name
            return self._merge([(field, self._store_file(p))])
        if "value" in cells and "step" in cells:
            keycol = next((c for c in ("key", "metric", "name") if c in cells), None)
            if keycol is None:  # one metric per file: step,timestamp,value
                field = _tag_field(p.stem, self.mapping) or "loss"
                self.columns[field] = f"{p.stem}:value"
                return self._merge([(field, self._long_rows(p, None))])
            return self._merge(self._long_sources(p, cells.index(keycol)))
        self.format = "mlflow"  # wide table: a CSV with metrics.* columns
        return self._read_csv()

    def _long_sources(self, p: Path, kcol: int) -> List[Tuple[str, Iterator[list]]]:
        keys: OrderedDict[str, None] = OrderedDict()
        for line, row in _csv_rows(p, ReadStats()):
            if line > 1 and len(row) > kcol:
                keys.setdefault(row[kcol], None)
        want = {v: k for k, v in self.mapping.items()}
        out = []
        for key in keys:
            field = want.get(key) or _tag_field(key, self.mapping)
            if field is None or field in self.columns:
                continue
            self.columns[field] = key
            out.append((field, self._long_rows(p, key, kcol)))
        return out

    def _long_rows(self, p: Path, key: Optional[str], kcol: int = -1) -> Iterator[list]:
        stats = self.stats
        rows = _csv_rows(p, stats)
        _, header = next(rows)
        low = [_norm(c) for c in header]
        vi, si = low.index("value"), low.index("step")
        ti = low.index("timestamp") if "timestamp" in low else None
        for line, row in rows:
            if len(row) < len(header):
                if not row:
                    continue
                row = row + [""] * (len(header) - len(row))
            if key is not None and row[kcol] != key:
                continue
            v = _num(row[vi], "value", stats, file=p, line=line, col=vi + 1, name=header[vi])
            s = _num(row[si], "step", stats, file=p, line=line, col=si + 1, name=header[si])
            if s is None:
                continue
            t = None
            if ti is not None:
                t = _num(row[ti], "time", stats, file=p, line=line, col=ti + 1, name=header[ti])
                t = None if t is None else t / 1000.0  # MLflow timestamps are epoch ms
            yield [_step_of(s, file=p, line=line, col=si + 1, name=header[si]), v, t, line]

    def _mlflow_store_sources(self, p: Path) -> List[Tuple[str, Iterator[list]]]:
        root = p / "metrics" if (p / "metrics").is_dir() else p
        want = {v: k for k, v in self.mapping.items()}
        out = []
        for f in _walk_files(root):
            key = f.relative_to(root).as_posix()
            field = want.get(key) or _tag_field(key, self.mapping)
            if field is None or field in self.columns:
                continue
            self.columns[field] = key
            out.append((field, self._store_file(f)))
        if "loss" not in self.columns:
            raise LogFormatError(
                "no loss metric file in this MLflow run folder (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=KEY",
                file=root,
                column_name="loss",
            )
        return out

    def _store_file(self, f: Path) -> Iterator[list]:
        """MLflow file store: one "timestamp value step" line per point."""
        stats = self.stats
        with open(f, encoding="utf-8", errors="strict") as fh:
            try:
                for line, raw in enumerate(fh, 1):
                    parts = raw.split()
                    if not parts:
                        continue
                    if len(parts) not in (2, 3):
                        raise LogFormatError(
                            "expected 'timestamp value step'", file=f, line=line, column=1
                        )
                    cells = [
                        _num(c, "value", stats, file=f, line=line, col=i + 1, name=nm)
                        for i, (c, nm) in enumerate(zip(parts, ("timestamp", "value", "step")))
                    ]
                    step = cells[2] if len(cells) == 3 else 0.0
                    if step is None:
                        continue
                    t = None if cells[0] is None else cells[0] / 1000.0
                    yield [
                        _step_of(step, file=f, line=line, col=3, name="step"),
                        cells[1],
                        t,
                        line,
                    ]
            except UnicodeDecodeError:
                raise LogFormatError("not UTF-8 text (a binary file?)", file=f) from None

    def _merge(self, sources: List[Tuple[str, Iterator[list]]]) -> Iterator[list]:
        """k-way merge of per-metric streams (each sorted by step) into joined rows."""
        if not any(f == "loss" for f, _ in sources):
            raise LogFormatError(
                "no loss metric (looked for "
                + ", ".join(ALIASES["loss"][:4])
                + ", ...); name it with --map loss=KEY",
                file=self.path,
                column_name="loss",
            )
        stats = self.stats
        clock = _Clock(1.0, stats)

        def tagged(field: str, it: Iterator[list], k: int) -> Iterator[Tuple[int, int, Any]]:
            last = None
            for step, v, t, line in it:
                if last is not None and step < last:
                    raise LogFormatError(
                        f"steps of metric {self.columns.get(field, field)!r} go back "
                        f"({last} -> {step}); sort the file by metric and step",
                        file=self.path,
                        line=line,
                    )
                last = step
                yield step, k, (field, v, t, line)

        streams = [tagged(f, it, k) for k, (f, it) in enumerate(sources)]
        row: Optional[list] = None
        for step, _, (field, v, t, line) in heapq.merge(*streams):
            if row is None or row[0] != step:
                if row is not None:
                    yield row
                row = [step, None, None, None, None, None, None, line]
            row[FIELDS.index(field)] = v
            if t is not None and row[6] is None:
                row[6] = clock(t)
        if row is not None:
            yield row
        self.columns.setdefault("time", "timestamp")


def _tag_field(tag: str, mapping: Dict[str, str]) -> Optional[str]:
    if tag in mapping.values():
        return next(k for k, v in mapping.items() if v == tag)
    n = _norm(tag)
    for field in FIELDS[1:6]:  # step and time are not scalars/metrics here
        if field in mapping:
            continue
        if n in ALIASES[field]:
            return field
        for pre in ("train/", "train_", "training/"):
            if n.startswith(pre) and n[len(pre) :] in ALIASES[field][:3]:
                return field
    return None


def _tb_value(val: Any) -> Optional[float]:
    if val.HasField("simple_value"):
        return float(val.simple_value)
    if val.HasField("tensor"):
        try:
            from tensorboard.util import tensor_util

            arr = tensor_util.make_ndarray(val.tensor)
        except Exception:
            return None
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            return None
        return float(arr.reshape(()))
    return None


def _flatten(obj: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def open_log(path: Any, fmt: str = "auto", mapping: Optional[Dict[str, str]] = None) -> LogReader:
    """A ``LogReader`` over ``path`` (``fmt`` "auto" detects it from the name and first line)."""
    return LogReader(path, fmt, mapping)
