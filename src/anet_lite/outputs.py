"""``RunLog``: every snapshot as one CSV and/or JSONL line, flushed per line, append-only.

After ``kill -9`` mid-run every complete line parses (each line is written with one
``write`` and flushed to the OS at once; pass ``fsync=True`` to survive a power cut too,
at ~1 ms per step). CSV columns are ``COLUMNS`` in that order (stable; new columns are
only ever appended); empty cells mean "not measured". JSONL lines are
``Snapshot.to_dict()`` with non-finite numbers written as the strings "nan"/"inf"/"-inf".
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

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
