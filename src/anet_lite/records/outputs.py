"""``RunLog``: every snapshot as one CSV and/or JSONL line, flushed per line, append-only.

After ``kill -9`` mid-run every complete line parses, and a log reopened after one drops
the torn last line first (so the next row starts on a fresh line) (each line is written with one
``write`` and flushed to the OS at once; pass ``fsync=True`` to survive a power cut too,
at ~1 ms per step). CSV columns are ``COLUMNS`` in that order (stable; new columns are
only ever appended); empty cells mean "not measured". JSONL lines are
``Snapshot.to_dict()`` with non-finite numbers written as the strings "nan"/"inf"/"-inf".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from array import array
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = [
    "COLUMNS",
    "DERIVED",
    "PathLike",
    "RunLog",
    "csv_chunk",
    "is_notable",
    "json_line",
    "json_safe",
    "snapshot_columns",
    "write_atomic",
]

COLUMNS = (
    "step",
    "status",
    "alert",
    "cause",
    "event",
    "spike",
    "loss",
    "grad_norm",
    "step_norm",
    "lr",
    "theta",
    "sdot",
    "proc",
    "f_total",
    "precursor",
    "zscore",
    "grad_ratio",
    "update_ratio",
    "loss_dev",
)
_FROM_SNAP = {"step", "status", "alert", "theta", "sdot", "proc", "f_total", "precursor", "zscore"}

PathLike = Union[str, "os.PathLike[str]"]


def _cell(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    s = str(v)
    if any(c in s for c in ',"\n\r'):
        s = '"' + s.replace('"', '""') + '"'
    return s


def json_safe(v: Any) -> Any:
    """Replace non-finite floats (recursively) so that the output is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


_UMASK: List[int] = []


def _umask() -> int:
    """The process umask (read once: ``os.umask`` can only be read by setting it)."""
    if not _UMASK:
        old = os.umask(0o022)
        os.umask(old)
        _UMASK.append(old)
    return _UMASK[0]


def write_atomic(path: PathLike, data: Union[str, bytes], *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` all at once: a fresh temporary file in the same folder
    (created with ``O_EXCL``: a planted file or symlink is never followed or overwritten),
    flushed (and fsynced), then renamed over ``path`` (a link there is replaced, not
    followed). A reader sees the old file or the new one, never a part. Returns ``path``."""
    import tempfile

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 -> what open() would have given
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def _drop_torn_tail(p: Path) -> int:
    """Cut a torn last line (a crash mid-write: no newline at the end) so that a reopened
    log starts on a fresh line; returns the bytes dropped (logged as a warning)."""
    with open(p, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        end, block = size, 1 << 16
        while end > 0:  # back to the last newline, 64 KiB at a time
            start = max(0, end - block)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        f.truncate(end)
    logging.getLogger("anet_lite").warning(
        "%s: dropped a torn last line of %d bytes (a crash mid-write)", p, size - end
    )
    return size - end


class RunLog:
    """Append snapshots to ``csv`` and/or ``jsonl`` paths (parent folders are created)."""

    def __init__(
        self,
        csv: Optional[PathLike] = None,
        jsonl: Optional[PathLike] = None,
        *,
        fsync: bool = False,
    ) -> None:
        if csv is None and jsonl is None:
            raise ValueError("RunLog needs a csv path, a jsonl path, or both")
        self.fsync = bool(fsync)
        self._csv = self._open(csv, header=True) if csv is not None else None
        self._jsonl = self._open(jsonl, header=False) if jsonl is not None else None
        self.csv_path = Path(csv) if csv is not None else None
        self.jsonl_path = Path(jsonl) if jsonl is not None else None

    @staticmethod
    def _open(path: PathLike, header: bool) -> Any:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_file():
            _drop_torn_tail(p)
        new = not p.exists() or p.stat().st_size == 0
        f = open(p, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open for the run
        if header and new:
            f.write(",".join(COLUMNS) + "\n")
            f.flush()
        return f

    def _emit(self, f: Any, line: str) -> None:
        f.write(line)
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())

    def write(self, snap: Any) -> None:
        """Write one snapshot (one line per file)."""
        ev = snap.evidence
        if self._csv is not None:
            cells = [_cell(getattr(snap, c) if c in _FROM_SNAP else ev.get(c)) for c in COLUMNS]
            self._emit(self._csv, ",".join(cells) + "\n")
        if self._jsonl is not None:
            line = json.dumps(json_safe(snap.to_dict()), ensure_ascii=False, allow_nan=False)
            self._emit(self._jsonl, line + "\n")

    def close(self) -> None:
        for f in (self._csv, self._jsonl):
            if f is not None and not f.closed:
                f.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- chunked writing (``anet-lite analyze``) -------------------------------------------------

DERIVED = ("theta", "sdot", "proc", "f_total", "zscore", "grad_ratio", "update_ratio", "loss_dev")
"""Columns computed by the Monitor; ``csv_chunk`` writes them with 6 significant digits."""
_DERIVED = frozenset(DERIVED)
_EXACT = frozenset(("loss", "grad_norm", "step_norm", "lr"))
_BOOLS = frozenset(("alert", "precursor"))
_STATUSES = frozenset(
    ("warming_up", "healthy", "recovering", "drifting", "precursor", "collapsed")
)
_FROM_EVIDENCE = tuple(c for c in COLUMNS if c not in _FROM_SNAP)


def _cell6(v: Any) -> str:
    """``_cell`` with numbers (not bools) written as ``%.6g`` (nan/inf/-inf as ``_cell``)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, ".6g")
    return _cell(v)


def snapshot_columns(snaps: Sequence[Any]) -> Dict[str, List[Any]]:
    """``COLUMNS`` name -> the raw values of ``snaps`` (None where an evidence key is absent)."""
    cols: Dict[str, List[Any]] = {
        "step": [s.step for s in snaps],
        "status": [s.status for s in snaps],
        "alert": [s.alert for s in snaps],
        "theta": [s.theta for s in snaps],
        "sdot": [s.sdot for s in snaps],
        "proc": [s.proc for s in snaps],
        "f_total": [s.f_total for s in snaps],
        "precursor": [s.precursor for s in snaps],
        "zscore": [s.zscore for s in snaps],
    }
    evs = [s.evidence for s in snaps]
    k = len(evs)
    for c in _FROM_EVIDENCE:
        try:
            cols[c] = list(map(dict.get, evs, repeat(c, k)))
        except TypeError:  # an evidence mapping that is not a dict
            cols[c] = [e.get(c) for e in evs]
    return cols


def _constant(col: List[Any], by_value: bool) -> bool:
    """All of ``col`` is one value: compared with ``==`` (bools, strings) or bit for bit
    (numbers: -0.0 is not 0.0, and a NaN can be constant)."""
    first = col[0]
    if by_value:
        return col[-1] == first and col.count(first) == len(col)
    try:
        return col[-1] == first and (
            array("d", col).tobytes() == array("d", (first,)).tobytes() * len(col)
        )
    except (TypeError, OverflowError):
        return False


_STEPWISE = frozenset(("theta", "sdot", "f_total", "proc"))  # refreshed every 8-32 steps


def _format_runs(col: List[Any], k: int) -> Optional[List[str]]:
    """``%.6g`` cells of a column with few distinct values, each value formatted once; None
    when it has many, a zero (0.0 and -0.0 would share one entry) or a non-number."""
    distinct = dict.fromkeys(col)
    if len(distinct) * 4 > k or 0.0 in distinct:
        return None
    try:
        text = {v: format(v, ".6g") for v in distinct}  # (= "%.6g" % v for numbers)
    except (TypeError, ValueError):
        return None
    return list(map(text.__getitem__, col))


def csv_chunk(cols: Dict[str, List[Any]], k: int) -> str:
    """``k`` CSV lines (``COLUMNS`` order) from ``snapshot_columns``, formatted in one go.

    Cells are ``RunLog``'s (``_cell``) except the ``DERIVED`` columns, written with 6
    significant digits (``%.6g``): full ``repr`` of those statistics costs more than the
    Monitor itself at a million steps and adds nothing readable. Inputs (loss, grad_norm,
    step_norm, lr) stay exact. Columns of plain types are formatted by one ``%`` over the
    whole chunk; anything else (gaps, strings, odd types) goes through ``_cell``/``_cell6``.
    """
    if k == 0:
        return ""
    specs: List[str] = []
    args: List[List[Any]] = []
    for c in COLUMNS:
        col = cols[c]
        first = col[0]
        if first is None and col.count(None) == k:
            specs.append("")  # a column nobody measured: empty cells, no formatting at all
            continue
        spec = ""
        if None not in col:
            if c in _DERIVED:
                spec = "%.6g"  # any number formats as _cell6 does; anything else: TypeError
            elif c in _EXACT:
                if set(map(type, col)) <= {float}:
                    spec = "%r"
            elif c == "step":
                if set(map(type, col)) <= {int}:
                    spec = "%d"
            elif c in _BOOLS:
                if set(map(type, col)) <= {bool}:
                    spec = "%d"
            elif c == "status" and set(col) <= _STATUSES:
                spec = "%s"
            if spec and c != "step" and _constant(col, c in _BOOLS or c == "status"):
                # the same value all chunk long (alert 0, status healthy, proc 0, ...): one
                # literal cell instead of k formatted ones
                specs.append((spec % (first,)).replace("%", "%%"))
                continue
            if c in _STEPWISE:
                cells = _format_runs(col, k)
                if cells is not None:
                    col, spec = cells, "%s"
        if not spec:
            cell = _cell6 if c in _DERIVED else _cell
            col = [cell(v) for v in col]
            spec = "%s"
        specs.append(spec)
        args.append(col)
    row = ",".join(specs) + "\n"
    try:
        if not args:
            return row * k
        return (row * k) % tuple(chain.from_iterable(zip(*args)))
    except TypeError:  # a non-number in a DERIVED column: cell by cell
        return "".join(
            ",".join((_cell6 if c in _DERIVED else _cell)(v) for c, v in zip(COLUMNS, r)) + "\n"
            for r in zip(*(cols[c] for c in COLUMNS))
        )


def is_notable(status: str, alert: bool, event: Any, spike: Any) -> bool:
    """A step worth its full snapshot in ``events.jsonl``: an alert, a status other than
    healthy / warming_up, a schedule event or a one-step spike (the same test on a
    metrics.csv row: alert == "1", status, non-empty event, spike == "1")."""
    return bool(alert) or bool(event) or bool(spike) or status not in ("healthy", "warming_up")


def json_line(snap: Any) -> str:
    """``RunLog``'s JSONL line (with the newline) for one snapshot."""
    return json.dumps(json_safe(snap.to_dict()), ensure_ascii=False, allow_nan=False) + "\n"
