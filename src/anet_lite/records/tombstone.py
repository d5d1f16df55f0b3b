"""Tamper-evident tombstone log: every forget / rollback / skip / slow-down / stop decision.

Format: append-only JSONL (UTF-8), one JSON object per line, every line ending in ``"\\n"``::

    {"event":"forget","time":"2025-09-02T12:34:56Z","policy":"ttl","scope":{"layers":["L12"]},
     "evidence":{"theta":0.42,"f_total":-0.8,"precursor_z":3.1},"operator":"auto",
     "prev":null,"hash":"sha256:<64 hex digits>"}

* ``time``: UTC, ISO-8601, seconds resolution, ``Z`` suffix (``%Y-%m-%dT%H:%M:%SZ``).
* ``prev``: the previous line's ``hash``; ``null`` for the first record. The file is a hash chain.
* ``hash``: over ``B = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  .encode("utf-8")`` where ``rec`` is the record without ``hash`` (``prev`` included). Without a
  key it is ``"sha256:" + sha256(B).hexdigest()``; with one, ``"hmac-sha256:" +
  HMAC-SHA256(key, B).hexdigest()``. The key is ``key=`` (str is UTF-8 encoded, or bytes), else
  the env var ``ANET_TOMBSTONE_KEY`` (empty means unset). A log is all keyed or all unkeyed.
* ``scope`` / ``evidence`` are made JSON-native before hashing: tuples and arrays become lists,
  NumPy scalars Python numbers, and non-finite floats the strings ``"nan"``, ``"inf"``,
  ``"-inf"`` (so every line is strict JSON). Dict keys must be str. ``append`` returns the record
  exactly as written.

``verify`` stops at the first problem (lines with ``NaN``/``Infinity`` literals or a duplicate
key count as invalid). It names the first line that was edited (hash mismatch), removed or
reordered (``prev`` mismatch on the following line), or re-hashed (its own hash fits, the next
line's ``prev`` does not). Head and identity: ``TombstoneLog`` rewrites ``<path>.head``
(``{"chain": first hash, "head": last hash}``, atomically, under the lock) after every append;
``verify`` checks it when present, so deleting the last record(s) (``head mismatch``: ok iff
that hash is in the chain, so later appends are fine) or putting another run's log in place
(``chain identity mismatch``) is caught. It cannot see: a cut tail when the head file is gone
too and no ``head`` is given; and, without a key, a rewrite of the whole chain (anyone can
recompute plain SHA-256 hashes). With a key, records that are unkeyed or made with another key
fail. Clock errors in ``time`` are not checked. Lines are read with a cap of
``MAX_RECORD_BYTES``: memory stays bounded whatever the file.

Durability: each append opens the file with ``O_APPEND``, takes an exclusive ``fcntl.flock``
(Windows: ``msvcrt.locking`` on one byte far past the data; elsewhere no lock, so use one writer),
re-reads only the tail to find ``prev`` (another process may have appended), writes the line
with one ``os.write`` (no user-space buffer to flush) and calls ``os.fsync``; if the write or
fsync fails (a full disk), the file is truncated back to its size before, so no partial line
stays. flock may not lock across machines on network file systems.

Torn lines: a crash mid-write can leave a last line without ``"\\n"``. ``verify`` then reports
"line N: torn last line". A later append starts on a fresh line and chains to the last intact
record; ``verify`` then accepts the torn line because the chain continues over it, and names it
(``VerifyResult.skipped``). An unparseable line the chain does not continue over is reported as
"line N: not valid JSON (torn or edited line)".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "FIELDS",
    "KEY_ENV",
    "MAX_RECORD_BYTES",
    "LazyTombstoneLog",
    "TombstoneLog",
    "VerifyResult",
    "head_path",
    "read",
    "read_head",
    "read_lines",
    "verify",
]

_log = logging.getLogger("anet_lite")
KEY_ENV = "ANET_TOMBSTONE_KEY"
MAX_RECORD_BYTES = 8 * 1024 * 1024  # longest line read or written (bounded memory)
FIELDS = ("event", "time", "policy", "scope", "evidence", "operator", "prev", "hash")
_STR_FIELDS = ("event", "time", "policy", "operator", "hash")
_WIN_LOCK_OFFSET = 0x7FFFFFFF
KeyLike = Union[str, bytes, None]
PathLike = Union[str, "os.PathLike[str]"]


def _resolve_key(key: KeyLike) -> Optional[bytes]:
    if key is None:
        key = os.environ.get(KEY_ENV) or None
        if key is None:
            return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be str or bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    return bytes(key)


def _digest(rec: Dict[str, Any], key: Optional[bytes]) -> str:
    body = {k: v for k, v in rec.items() if k != "hash"}
    data = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
    if key is None:
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()


def _jsonable(x: Any, name: str) -> Any:
    """``x`` as plain JSON values (see module docstring); TypeError/ValueError naming ``name``."""
    if x is None or isinstance(x, (bool, np.bool_)):
        return None if x is None else bool(x)
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} holds a string that is not valid Unicode") from None
        return str(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        v = float(x)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist(), name)
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} keys must be str, got {type(k).__name__} {k!r}")
            out[k] = _jsonable(v, f"{name}[{k!r}]")
        return out
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, f"{name}[{i}]") for i, v in enumerate(x)]
    raise TypeError(f"{name} must hold only JSON values, got {type(x).__name__}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return d


def _loads(raw: bytes) -> Any:
    """One line parsed (strict JSON, no duplicate keys); ValueError for anything else."""
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_no_duplicates
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _lines(f: Any) -> Iterator[Tuple[int, bytes]]:
    """(line number, raw line) of a binary file, each at most ``MAX_RECORD_BYTES`` long;
    ValueError naming the line for a longer one (memory stays bounded)."""
    no = 0
    while True:
        raw = f.readline(MAX_RECORD_BYTES + 1)
        if not raw:
            return
        no += 1
        if len(raw) > MAX_RECORD_BYTES:
            raise _TooLong(no)
        yield no, raw


class _TooLong(ValueError):
    def __init__(self, line: int) -> None:
        why = f"longer than {MAX_RECORD_BYTES:,} bytes (not a tombstone log?)"
        super().__init__(f"line {line}: {why}")
        self.line = line


def read_lines(path: PathLike) -> Iterator[Tuple[int, Optional[Dict[str, Any]]]]:
    """(line number, record) for each non-blank line; record None if the line is not a JSON
    object (torn, edited, too long: reading stops after a too-long line). No hash check."""
    with open(path, "rb") as f:
        try:
            for no, raw in _lines(f):
                if not raw.strip():
                    continue
                try:
                    rec = _loads(raw)
                except ValueError:
                    rec = None
                yield no, rec if isinstance(rec, dict) else None
        except _TooLong as exc:
            yield exc.line, None


def _read_at(fd: int, offset: int, n: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)  # regular file: short only at EOF


def _tail(fd: int) -> Tuple[Optional[Dict[str, Any]], bool]:
    """(last parseable record or None, whether the file is empty or ends in a newline)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None, True
    ends_nl = _read_at(fd, size - 1, 1) == b"\n"
    block = 8192
    while True:  # reads at most ~4 x MAX_RECORD_BYTES, whatever the file
        start = max(0, size - block)
        pieces = _read_at(fd, start, size - start).split(b"\n")
        for raw in reversed(pieces[1:] if start > 0 else pieces):  # pieces[0] may be partial
            if len(raw) > MAX_RECORD_BYTES:
                raise ValueError(
                    f"a line near the end is longer than {MAX_RECORD_BYTES:,} bytes "
                    "(not a tombstone log, or damaged)"
                )
            with contextlib.suppress(ValueError):
                rec = _loads(raw)
                if isinstance(rec, dict) and isinstance(rec.get("hash"), str):
                    return rec, ends_nl
        if start == 0:
            return None, ends_nl
        if len(pieces[0]) > MAX_RECORD_BYTES:
            raise ValueError(
                f"a line near the end is longer than {MAX_RECORD_BYTES:,} bytes "
                "(not a tombstone log, or damaged)"
            )
        block *= 4


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``: one os.write in practice; a loop only on a short write."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _first_hash(fd: int) -> Optional[str]:
    """The hash of the file's first line (the chain's identity), or None."""
    n = 65536
    while True:
        raw = _read_at(fd, 0, n)
        cut = raw.find(b"\n")
        if cut >= 0 or len(raw) < n or n > MAX_RECORD_BYTES:
            break
        n *= 4
    try:
        rec = _loads(raw[: cut + 1] if cut >= 0 else raw)
    except ValueError:
        return None
    h = rec.get("hash") if isinstance(rec, dict) else None
    return h if isinstance(h, str) else None


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return
    try:
        import msvcrt
    except ImportError:  # no locking available: single writer only
        yield
        return
    os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
    try:
        yield
    finally:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class TombstoneLog:
    """Append-only, hash-chained JSONL log at ``path`` (created with its parent dirs).

    ``key`` (str/bytes; None reads ``ANET_TOMBSTONE_KEY``) switches to HMAC-SHA256. Opening a
    log written with the other scheme, or (keyed) whose last record fails this key, raises
    ValueError. ``head`` is the hash this object last wrote, or found at the end on opening.
    """

    def __init__(self, path: PathLike, key: KeyLike = None) -> None:
        self._path = Path(path)
        self._key = _resolve_key(key)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._fd() as fd, _locked(fd):
            try:
                last, _ = _tail(fd)
            except ValueError as exc:
                raise ValueError(f"{self._path}: {exc}") from None
            self._chain = _first_hash(fd)
        self._check(last, full=True)
        self._head: Optional[str] = last["hash"] if last else None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head(self) -> Optional[str]:
        return self._head

    @property
    def chain(self) -> Optional[str]:
        """The chain's identity: the hash of its first record (None while empty)."""
        return self._chain

    @contextlib.contextmanager
    def _fd(self) -> Iterator[int]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(self._path, flags, 0o644)
        try:
            yield fd
        finally:
            os.close(fd)

    def _check(self, last: Optional[Dict[str, Any]], full: bool = False) -> None:
        if last is None:
            return
        keyed = last["hash"].startswith("hmac-sha256:")
        if keyed != (self._key is not None):
            raise ValueError(
                f"{self._path} holds {'keyed (hmac-sha256)' if keyed else 'unkeyed (sha256)'} "
                f"records; open it {'with key= or ' + KEY_ENV if keyed else 'without a key'}"
            )
        if full and keyed and _digest(last, self._key) != last["hash"]:
            raise ValueError(f"{self._path}: the last record does not verify with this key")

    def append(
        self,
        event: str,
        *,
        policy: str,
        scope: Dict[str, Any],
        evidence: Dict[str, Any],
        operator: str = "auto",
    ) -> Dict[str, Any]:
        """Write one record (durably, under a file lock) and return it as written."""
        for name, val in (("event", event), ("policy", policy), ("operator", operator)):
            if not isinstance(val, str):
                raise TypeError(f"{name} must be a non-empty str, got {type(val).__name__}")
            if not val.strip():
                raise ValueError(f"{name} must be a non-empty str, got {val!r}")
            _jsonable(val, name)
        for name, val in (("scope", scope), ("evidence", evidence)):
            if not isinstance(val, dict):
                raise TypeError(f"{name} must be a dict, got {type(val).__name__}")
        rec: Dict[str, Any] = {
            "event": event,
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "policy": policy,
            "scope": _jsonable(scope, "scope"),
            "evidence": _jsonable(evidence, "evidence"),
            "operator": operator,
        }
        with self._fd() as fd, _locked(fd):
            last, ends_nl = _tail(fd)  # another process may have appended since we last did
            self._check(last)
            rec["prev"] = last["hash"] if last else None
            rec["hash"] = _digest(rec, self._key)
            line = json.dumps(rec, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            data = (b"" if ends_nl else b"\n") + line.encode("utf-8") + b"\n"
            if len(data) > MAX_RECORD_BYTES:
                raise ValueError(f"record is {len(data):,} bytes, over {MAX_RECORD_BYTES:,}")
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:  # e.g. ENOSPC: no partial line may stay (it would break the chain)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                raise
            if rec["prev"] is None or self._chain is None:
                self._chain = rec["hash"] if rec["prev"] is None else _first_hash(fd)
            self._head = rec["hash"]
            self._write_head()
        return rec

    def _write_head(self) -> None:
        """Record chain identity and head beside the log (``head_path``), still under the
        lock; a failure is logged, not raised: the record itself is already durable, and
        an older head stays valid (it is still in the chain)."""
        from .outputs import write_atomic

        body = json.dumps({"chain": self._chain, "head": self._head}) + "\n"
        try:
            write_atomic(head_path(self._path), body)
        except OSError as exc:
            _log.warning("%s: head not recorded (%s)", head_path(self._path), exc)


@dataclass(frozen=True)
class VerifyResult:
    """``ok``; ``line``: 1-based first bad line (None if ok or the tail is missing); ``reason``;
    ``records``: valid records before the first problem; ``head``: the last good hash."""

    ok: bool
    line: Optional[int]
    reason: str
    records: int
    head: Optional[str]
    skipped: Tuple[int, ...] = ()  # torn lines a later append chained over (crash artifacts)
    chain: Optional[str] = None  # the first record's hash (the chain's identity), if it verified

    def __bool__(self) -> bool:
        return self.ok


def _problem(rec: Any, prev: Optional[str], prev_line: int, key: Optional[bytes]) -> Optional[str]:
    if not isinstance(rec, dict):
        return "not a JSON object"
    for f in FIELDS:
        if f not in rec:
            return f"missing field {f!r}"
    bad = [f for f in _STR_FIELDS if not isinstance(rec[f], str)]
    bad += [f for f in ("scope", "evidence") if not isinstance(rec[f], dict)]
    if bad or not (rec["prev"] is None or isinstance(rec["prev"], str)):
        return f"field {(bad or ['prev'])[0]!r} has the wrong JSON type"
    h = rec["hash"]
    scheme = h.split(":", 1)[0]
    if scheme == "hmac-sha256" and key is None:
        return f"record is HMAC-keyed; pass key= or set {KEY_ENV} to verify it"
    if scheme == "sha256" and key is not None:
        return "record is unkeyed (sha256) but a key was given (unkeyed log, or forged without it)"
    if scheme not in ("sha256", "hmac-sha256"):
        return f"unknown hash scheme {scheme!r}"
    try:
        want = _digest(rec, key)
        h.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a string that is not valid Unicode (a lone surrogate)"
    if not hmac.compare_digest(h.encode("utf-8"), want.encode("utf-8")):
        return "HMAC mismatch (wrong key or edited)" if key else "hash mismatch (record edited)"
    if rec["prev"] != prev:
        if prev is None:
            return "prev of the first record must be null (records removed from the start?)"
        return f"prev does not match line {prev_line}'s hash (record removed or reordered)"
    return None


def head_path(path: PathLike) -> Path:
    """Where ``TombstoneLog`` records the chain's identity and head: ``<path>.head``."""
    p = Path(path)
    return p.with_name(p.name + ".head")


def read_head(path: PathLike) -> Optional[Dict[str, Optional[str]]]:
    """``{"chain": ..., "head": ...}`` from the log's head file; None if there is none;
    ValueError if it is unreadable (a damaged head file is itself a finding)."""
    hp = head_path(path)
    try:
        with open(hp, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{hp}: cannot read ({exc.strerror or exc})") from None
    try:
        d = _loads(raw)
    except ValueError as exc:
        raise ValueError(f"{hp}: not valid JSON ({exc})") from None
    ok = isinstance(d, dict) and all(
        d.get(k) is None or isinstance(d.get(k), str) for k in ("chain", "head")
    )
    if not ok:
        raise ValueError(f"{hp}: expected {{'chain': str, 'head': str}}")
    return {"chain": d.get("chain"), "head": d.get("head")}


def verify(
    path: PathLike,
    *,
    head: Optional[str] = None,
    key: KeyLike = None,
    chain: Optional[str] = None,
    head_file: bool = True,
) -> VerifyResult:
    """Check the whole chain; never raises for file problems (see the module docstring).

    ``head``: a hash kept elsewhere that must be in the chain (a cut-off tail is caught);
    ``chain``: the hash the log must start with (its identity: another run's log fails).
    Both default to the log's head file (``head_path``) when ``head_file`` and present."""
    k = _resolve_key(key)
    note = ""
    if head is None and chain is None and head_file:
        try:
            got = read_head(path)
        except ValueError as exc:
            return VerifyResult(False, None, f"head file: {exc}", 0, None)
        if got is not None:
            head, chain = got["head"], got["chain"]
            note = f" (head and chain identity from {head_path(path).name})"
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        why = "file not found" if isinstance(exc, FileNotFoundError) else "cannot open"
        return VerifyResult(False, None, f"{why}: {path} ({exc.strerror or exc})", 0, None)
    with f:
        res = _verify_lines(_lines(f), head, chain, k)
    if res.ok and note:
        return dataclasses.replace(res, reason=res.reason + note)
    return res


def _verify_lines(
    lines: Iterator[Tuple[int, bytes]], head: Optional[str], chain: Optional[str], k: Any
) -> VerifyResult:
    records, last, seen, first = 0, None, head is None, None
    torn: List[int] = []  # unparseable lines not yet chained over
    skipped: List[int] = []
    try:
        for no, raw in lines:
            try:
                rec = _loads(raw)
            except ValueError as exc:
                if not raw.endswith(b"\n"):
                    why = "torn last line (no trailing newline; crash mid-write?)"
                    return VerifyResult(False, no, f"line {no}: {why}", records, last)
                if "duplicate key" in str(exc):
                    return VerifyResult(False, no, f"line {no}: {exc}", records, last)
                torn.append(no)  # a torn line that a later append chained over, or damage
                continue
            problem = _problem(rec, last, no - 1, k)
            if problem and torn:  # the chain does not continue over the bad line(s)
                why = "not valid JSON (torn or edited line)"
                return VerifyResult(False, torn[0], f"line {torn[0]}: {why}", records, last)
            if problem:
                return VerifyResult(False, no, f"line {no}: {problem}", records, last)
            if records == 0 and chain is not None and rec["hash"] != chain:
                why = f"chain identity mismatch: the log starts with {rec['hash']}, not {chain}"
                return VerifyResult(False, no, f"line {no}: {why} (another run's log?)", 0, None)
            skipped += torn
            torn = []
            records, last = records + 1, rec["hash"]
            first = first or last
            seen = seen or last == head
    except _TooLong as exc:
        return VerifyResult(False, exc.line, str(exc), records, last)
    if torn:
        why = "not valid JSON (torn or edited line)"
        return VerifyResult(False, torn[0], f"line {torn[0]}: {why}", records, last)
    if not seen:
        where = f"ends at {last}" if last else "is empty"
        why = f"head mismatch: file {where} but expected {head} (truncated tail, or another log)"
        return VerifyResult(False, None, why, records, last)
    if records == 0 and chain is not None:
        why = f"chain identity mismatch: the log is empty, expected one starting with {chain}"
        return VerifyResult(False, None, why, 0, None)
    reason = f"ok: {records} record{'' if records == 1 else 's'}"
    if skipped:
        reason += (
            f" (torn line{'s' if len(skipped) > 1 else ''} {', '.join(map(str, skipped))}"
            " skipped: a crash mid-write; the chain continues over it)"
        )
    return VerifyResult(True, None, reason, records, last, tuple(skipped), first)


def read(path: PathLike) -> List[Dict[str, Any]]:
    """Parsed records, in file order (no hash check); ValueError naming file and line if bad."""
    out = []
    with open(path, "rb") as f:
        for no, raw in _lines(f):
            try:
                rec = _loads(raw)
            except ValueError as exc:
                raise ValueError(f"{path}: line {no}: not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {no}: not a JSON object")
            out.append(rec)
    return out


class LazyTombstoneLog:
    """A tombstone log at ``path`` whose file (and parent folders) are created on the first
    record only: a healthy run leaves no empty file behind. ``append`` and ``head`` as
    ``TombstoneLog``."""

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        self.path: Path = Path(path)
        self._log: Optional[TombstoneLog] = None

    @property
    def head(self) -> Optional[str]:
        return self._log.head if self._log is not None else None

    def append(self, *args: Any, **kwargs: Any) -> Any:
        if self._log is None:
            self._log = TombstoneLog(self.path)
        return self._log.append(*args, **kwargs)
