"""A run folder, written and read back: ``RunFolderWriter`` and ``load_run``.

``RunFolderWriter`` writes what ``anet-lite analyze`` / ``watch`` produce, chunk by chunk:
metrics.csv (``RunLog``'s columns), events.jsonl (the full snapshots of the notable steps)
and optionally metrics.jsonl. ``load_run`` reads a folder back for the report: snapshots
from metrics.jsonl (``RunLog``), else from metrics.csv with events.jsonl's full snapshots
in place of its notable rows, meta.json and the tombstone chain.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..records import outputs
from ..verdict import Snapshot
from .data import _NUMERIC_SKIP, RunData, _Decimator, _f

__all__ = ["CHUNK", "RunFolderWriter", "load_run"]

_MAX_META = 4 * 1024 * 1024  # bytes of meta.json read
_MAX_STEP = 2**63 - 1
CHUNK = 512  # steps formatted and written at once (small enough to still be in the CPU cache)


class RunFolderWriter:
    """Writes a run folder: metrics.csv (every step), events.jsonl (notable steps),
    metrics.jsonl (optional); ``anet-lite analyze`` and ``watch`` write with it,
    ``load_run`` reads it back.

    ``add(snap)`` collects; every ``chunk`` snapshots (and at ``close``) the chunk is
    written with one ``write`` per file and flushed, and passed to ``data.add_many``.
    The CSV header and the JSONL lines are ``RunLog``'s; see ``outputs.csv_chunk`` for the
    cells. Append-only: after a crash every finished chunk is on disk.
    """

    def __init__(self, out: Path, data: Any, *, jsonl: bool = False, chunk: int = CHUNK) -> None:
        self._o = outputs
        self.data = data
        self.chunk = max(1, int(chunk))
        self.buf: List[Any] = []  # the snapshots of the chunk being collected
        self.csv_path = out / "metrics.csv"
        self.events_path = out / "events.jsonl"
        #: metrics.jsonl, or None when it is not written (``jsonl=False``)
        self.jsonl_path: Optional[Path] = out / "metrics.jsonl" if jsonl else None
        self._csv = self._open(self.csv_path)
        self._csv.write(",".join(outputs.COLUMNS) + "\n")  # RunLog's header
        self._events = self._open(self.events_path)
        self._jsonl = self._open(self.jsonl_path) if self.jsonl_path is not None else None
        self._encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode

    @staticmethod
    def _open(p: Path) -> Any:
        # "x": O_CREAT | O_EXCL, so a file or (dangling) symlink planted there is an error,
        # never followed (the caller removed this run's own old outputs first)
        return open(p, "x", encoding="utf-8", newline="")

    def add(self, snap: Any) -> None:
        self.buf.append(snap)
        if len(self.buf) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        snaps = self.buf
        k = len(snaps)
        if not k:
            return
        o = self._o
        cols = o.snapshot_columns(snaps)
        self._csv.write(o.csv_chunk(cols, k))
        self._csv.flush()
        st, al, ev, sp = cols["status"], cols["alert"], cols["event"], cols["spike"]
        if any(al) or any(ev) or any(sp) or st.count("healthy") + st.count("warming_up") != k:
            lines = [
                o.json_line(snaps[i]) for i in range(k) if o.is_notable(st[i], al[i], ev[i], sp[i])
            ]
            self._events.write("".join(lines))
            self._events.flush()
        if self._jsonl is not None:
            self._jsonl.write("".join([self._json(s) for s in snaps]))
            self._jsonl.flush()
        self.buf = []
        self.data.add_many(snaps, cols)

    def _json(self, snap: Any) -> str:
        d = snap.to_dict()
        try:
            return self._encode(d) + "\n"
        except ValueError:  # a non-finite float: RunLog writes it as "nan"/"inf"/"-inf"
            return self._encode(self._o.json_safe(d)) + "\n"

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for f in (self._csv, self._events, self._jsonl):
                if f is not None and not f.closed:
                    f.close()


def _unsafe_float(v: Any) -> Any:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def _snap_from_json(d: Dict[str, Any]) -> Snapshot:
    ev = {
        k: (v if k in _NUMERIC_SKIP else _unsafe_float(v))
        for k, v in (d.get("evidence") if isinstance(d.get("evidence"), dict) else {}).items()
    }
    return Snapshot(
        theta=_f(_unsafe_float(d.get("theta", 1.0))),
        sdot=_f(_unsafe_float(d.get("sdot", 0.0))),
        proc=_f(_unsafe_float(d.get("proc", 0.0))),
        f_total=_f(_unsafe_float(d.get("f_total", 0.0))),
        precursor=bool(d.get("precursor", False)),
        zscore=_f(_unsafe_float(d.get("zscore", 0.0))),
        step=_int_step(d.get("step")),
        status=str(d.get("status", "healthy")),
        alert=bool(d.get("alert", False)),
        evidence=ev,
    )


def _int_step(v: Any) -> Optional[int]:
    ok = isinstance(v, int) and not isinstance(v, bool) and -_MAX_STEP <= v <= _MAX_STEP
    return v if ok else None


_CSV_EVIDENCE = (
    "loss",
    "grad_norm",
    "step_norm",
    "lr",
    "grad_ratio",
    "update_ratio",
    "loss_dev",
)


def _snap_from_csv(r: Dict[str, str]) -> Snapshot:
    ev: Dict[str, Any] = {}
    for k in _CSV_EVIDENCE:
        v = r.get(k) or ""
        if v:
            ev[k] = _f(v)
    for k in ("cause", "event"):
        if r.get(k):
            ev[k] = r[k]
    if r.get("spike") == "1":
        ev["spike"] = True
    z = _f(r.get("zscore"))
    ev["precursor_z"] = z
    step = r.get("step") or ""
    return Snapshot(
        theta=_f(r.get("theta")),
        sdot=_f(r.get("sdot")),
        proc=_f(r.get("proc")),
        f_total=_f(r.get("f_total")),
        precursor=r.get("precursor") == "1",
        zscore=z,
        step=_int_step(int(step)) if step.lstrip("-").isdigit() and len(step) < 20 else None,
        status=r.get("status") or "healthy",
        alert=r.get("alert") == "1",
        evidence=ev,
    )


def _csv_notable(r: Dict[str, str]) -> bool:
    """``outputs.is_notable`` on a metrics.csv row: the rows events.jsonl holds in full."""
    return (
        r.get("alert") == "1"
        or bool(r.get("event"))
        or r.get("spike") == "1"
        or (r.get("status") or "healthy") not in ("healthy", "warming_up")
    )


def _events_jsonl(run_dir: Path) -> Iterator[Snapshot]:
    """The snapshots in ``anet-lite analyze``'s events.jsonl (none if absent or unreadable)."""
    p = run_dir / "events.jsonl"
    if not p.is_file():
        return
    with open(p, "rb") as f:
        try:
            for line in _lines(f, p):
                try:
                    d = _loads(line)
                except ValueError:
                    return  # a torn or damaged line: the CSV rows are used from here on
                if isinstance(d, dict):
                    yield _snap_from_json(d)
        except ValueError:  # a line too long
            return


def _iter_snapshots(run_dir: Path) -> Iterator[Snapshot]:
    j, c = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
    if j.is_file() and j.stat().st_size > 0:
        with open(j, "rb") as f:
            for no, line in enumerate(_lines(f, j), 1):
                if not line.strip():
                    continue
                try:
                    d = _loads(line)
                except ValueError as exc:
                    if not line.endswith(b"\n"):
                        return  # a torn last line (the run was killed mid-write)
                    raise ValueError(f"{j}: line {no}: not valid JSON ({exc})") from None
                if not isinstance(d, dict):
                    raise ValueError(f"{j}: line {no}: not a JSON object")
                yield _snap_from_json(d)
        return
    if c.is_file() and c.stat().st_size > 0:
        with open(c, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(_lines(f, c))
            if not reader.fieldnames or "status" not in reader.fieldnames:
                raise ValueError(f"{c}: line 1: not a RunLog CSV (no 'status' column)")
            full = _events_jsonl(run_dir)
            nxt = next(full, None)
            for r in reader:
                if nxt is not None and _csv_notable(r) and r.get("step") == str(nxt.step):
                    yield nxt  # the full snapshot (all evidence) that analyze kept
                    nxt = next(full, None)
                else:
                    yield _snap_from_csv(r)
        return
    raise ValueError(f"{run_dir}: no metrics.jsonl or metrics.csv (not a run folder)")


def _lines(f: Any, path: Path) -> Iterator[Any]:
    """Lines of ``f`` (bytes or str) capped at ``MAX_LINE``; ValueError naming the line."""
    from ..readers.files import MAX_LINE

    no = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        no += 1
        if len(line) > MAX_LINE:
            raise ValueError(f"{path}: line {no}: longer than {MAX_LINE:,} characters")
        yield line


def _loads(line: Any) -> Any:
    """json.loads; ValueError for anything unreadable (deep nesting, bad UTF-8 too)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _read_meta(run_dir: Path) -> Dict[str, Any]:
    p = run_dir / "meta.json"
    if not p.is_file():
        return {}
    try:
        with open(p, "rb") as f:
            raw = f.read(_MAX_META + 1)
        if len(raw) > _MAX_META:
            return {"_error": f"meta.json is over {_MAX_META:,} bytes (not read)"}
        d = _loads(raw)
    except (OSError, ValueError):
        return {"_error": "meta.json is not valid JSON"}
    return d if isinstance(d, dict) else {}


def load_run(run_dir: Any, lang: Optional[str] = None) -> RunData:
    """A ``RunData`` from a run folder's metrics.jsonl (or metrics.csv); ValueError if none."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise ValueError(f"{rd}: not a folder")
    meta = _read_meta(rd)
    precision = meta.get("precision") if isinstance(meta.get("precision"), str) else None
    data = RunData(lang=lang or str(meta.get("lang") or "en"), precision=precision)
    for snap in _iter_snapshots(rd):
        data.add(snap)
    return data


def _tombstones(run_dir: Path, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The folder's tombstones.jsonl: its rows and its chain, verified against the head
    file beside it and against the head and chain identity meta.json recorded."""
    p = run_dir / "tombstones.jsonl"
    if not p.is_file():
        return {"present": False}
    from ..records.tombstone import verify

    rec = (meta or {}).get("tombstones")
    rec = rec if isinstance(rec, dict) else {}
    head, chain = rec.get("head"), rec.get("chain")
    try:
        res = verify(p)
        if res.ok and (isinstance(head, str) or isinstance(chain, str)):
            res = verify(
                p,
                head=head if isinstance(head, str) else None,
                chain=chain if isinstance(chain, str) else None,
                head_file=False,
            )
            if not res.ok:
                res = dataclasses.replace(res, reason=f"{res.reason} (as recorded in meta.json)")
        status = {"ok": res.ok, "line": res.line, "reason": res.reason, "records": res.records}
    except (TypeError, ValueError) as exc:
        status = {"ok": False, "line": None, "reason": str(exc), "records": 0}
    return {"present": True, "path": str(p), "status": status, "rows": _tombstone_rows(p)}


def _tombstone_rows(p: Path, limit: int = 1000) -> List[Tuple[int, Optional[Dict[str, Any]]]]:
    """(line number, record or None if unreadable) for the first ``limit`` lines: the line
    number is counted here, never taken from the file."""
    from ..records.tombstone import read_lines

    rows: List[Tuple[int, Optional[Dict[str, Any]]]] = []
    for no, rec in read_lines(p):
        if len(rows) >= limit:
            break
        rows.append((no, rec))
    return rows


_MAX_TWIN_ROWS = 1_000_000


def read_twin(run_dir: Path, meta: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The loss curve of the run meta.json names as this run's twin (``meta["twin"]``:
    ``{"path": folder, relative to this one or absolute, "guard": "watching" | "acting"}``,
    written by ``anet-lite demo`` when the same run was made with the other ``--no-guard``
    setting): ``{"path", "guard", "x", "loss"}`` decimated to min/max buckets, with
    ``"error"`` (and no points) when its metrics.csv cannot be read; None without a twin."""
    t = meta.get("twin")
    if not isinstance(t, dict) or not isinstance(t.get("path"), str):
        return None
    guard = t.get("guard") if t.get("guard") in ("watching", "acting") else "watching"
    out: Dict[str, Any] = {"path": t["path"], "guard": guard, "x": (), "loss": ()}
    p = run_dir / t["path"] / "metrics.csv"
    dec = _Decimator(2)
    try:
        if not p.is_file():
            raise ValueError(f"{p}: not a file")
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(_lines(f, p))
            if not reader.fieldnames or "loss" not in reader.fieldnames:
                raise ValueError(f"{p}: no 'loss' column")
            for no, r in enumerate(reader):
                if no >= _MAX_TWIN_ROWS:
                    break
                step = r.get("step") or ""
                if step.lstrip("-").isdigit() and len(step) < 16:
                    dec.push((float(step), _f(r.get("loss"))))
    except (OSError, ValueError, csv.Error) as exc:
        out["error"] = str(exc)
        return out
    x, lo, hi = dec.result()
    out["x"] = np.repeat(x, 2)
    out["loss"] = np.column_stack([lo[:, 0], hi[:, 0]]).ravel()
    return out


# ---- rendering ----------------------------------------------------------------------------
