"""What the report shows, collected while snapshots stream past: ``RunData``.

Constant memory: the plotted series are decimated to at most ~2 x ``target`` min/max
buckets (spikes survive decimation), incidents are summarised, events and spikes capped.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..explain import CAUSE_WORDS

INCIDENT_GAP = 50  # alerts at most this many steps apart belong to one incident
_SERIES = ("loss", "grad_norm", "theta", "f_total", "zscore")
_MAX_EVENTS = 200
_MAX_SPIKES = 2000
_MAX_INCIDENT_TEXTS = 1000
_NUMERIC_SKIP = {"cause", "event", "error"}
_ROWS = 8192  # raw rows the decimator buffers before folding them into buckets


def cause_words(cause: Optional[str]) -> str:
    return CAUSE_WORDS["en"].get(str(cause or ""), str(cause or "unknown cause"))


class _Decimator:
    """Min/max envelopes of several columns over at most ~2 x target buckets (constant memory:
    at most ``_ROWS`` raw rows are buffered, and the bucket being filled is kept reduced)."""

    def __init__(self, ncols: int, target: int = 1500) -> None:
        self.ncols = ncols
        self.target = target
        self.width = 1  # rows per bucket
        self.pending = array("d")
        self.x: List[np.ndarray] = []
        self.lo: List[np.ndarray] = []
        self.hi: List[np.ndarray] = []
        self.nb = 0
        # the bucket being filled: (first x, lo, hi) over ``part_n`` rows so far
        self.part: Optional[Tuple[float, np.ndarray, np.ndarray]] = None
        self.part_n = 0

    def push(self, row: Tuple[float, ...]) -> None:
        self.pending.extend(row)
        if len(self.pending) >= self.ncols * _ROWS:
            self._reduce(final=False)

    def push_block(self, a: np.ndarray) -> None:
        """``push`` of each row of ``a`` (shape (rows, ncols)), same buckets, one copy per fill."""
        k, i, n = self.ncols, 0, len(a)
        while i < n:
            take = min(n - i, _ROWS - len(self.pending) // k)
            self.pending.frombytes(np.ascontiguousarray(a[i : i + take], dtype=float).tobytes())
            i += take
            if len(self.pending) >= k * _ROWS:
                self._reduce(final=False)

    def _reduce(self, final: bool) -> None:
        """Fold the buffered rows into buckets of ``width`` rows: first the bucket being
        filled, then whole buckets, then the start of the next one (kept reduced)."""
        a = np.frombuffer(self.pending, dtype=float).reshape(-1, self.ncols)
        self.pending = array("d")
        w, i = self.width, 0
        with np.errstate(all="ignore"):
            if self.part is not None and len(a):
                i = min(w - self.part_n, len(a))
                x0, lo, hi = self.part
                seg = a[:i, 1:]
                lo = np.fmin(lo, np.fmin.reduce(seg, axis=0))
                hi = np.fmax(hi, np.fmax.reduce(seg, axis=0))
                self.part, self.part_n = (x0, lo, hi), self.part_n + i
                if self.part_n >= w:
                    self._emit_part()
            full = ((len(a) - i) // w) * w
            if full:
                b = a[i : i + full].reshape(-1, w, self.ncols)
                self.x.append(b[:, 0, 0].copy())
                self.lo.append(np.fmin.reduce(b[:, :, 1:], axis=1))
                self.hi.append(np.fmax.reduce(b[:, :, 1:], axis=1))
                self.nb += len(b)
                i += full
            if i < len(a):
                rest = a[i:, 1:]
                lo, hi = np.fmin.reduce(rest, axis=0), np.fmax.reduce(rest, axis=0)
                self.part = (float(a[i, 0]), lo, hi)
                self.part_n = len(a) - i
        if final and self.part is not None:
            self._emit_part()
        while self.nb > 2 * self.target:
            self._halve()

    def _emit_part(self) -> None:
        x0, lo, hi = self.part  # type: ignore[misc]
        self.x.append(np.array([x0]))
        self.lo.append(lo[None, :])
        self.hi.append(hi[None, :])
        self.nb += 1
        self.part, self.part_n = None, 0

    def _halve(self) -> None:
        x = np.concatenate(self.x)
        lo, hi = np.concatenate(self.lo), np.concatenate(self.hi)
        n = (len(x) // 2) * 2
        with np.errstate(all="ignore"):
            nx = x[:n:2]
            nlo = np.fmin(lo[:n:2], lo[1:n:2])
            nhi = np.fmax(hi[:n:2], hi[1:n:2])
        self.x, self.lo, self.hi = [nx], [nlo], [nhi]
        if n < len(x):
            self.x.append(x[n:])
            self.lo.append(lo[n:])
            self.hi.append(hi[n:])
        self.nb = len(x) - n // 2
        self.width *= 2

    def result(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, lo, hi): x of shape (buckets,), lo/hi of shape (buckets, ncols - 1)."""
        self._reduce(final=True)
        if not self.x:
            e = np.zeros((0, self.ncols - 1))
            return np.zeros(0), e, e
        return np.concatenate(self.x), np.concatenate(self.lo), np.concatenate(self.hi)


def _f(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return math.nan


class RunData:
    """What a report shows, collected one snapshot at a time: ``add(snap)``."""

    def __init__(self, lang: str = "en", incident_gap: int = INCIDENT_GAP) -> None:
        self.lang = lang
        self.incident_gap = int(incident_gap)
        self.steps = 0
        self.first_step: Optional[int] = None
        self.last_step: Optional[int] = None
        self.alerts = 0
        self.incidents: List[Dict[str, Any]] = []
        self.events: List[Tuple[int, str]] = []
        self.n_events = 0
        self.spikes: List[Tuple[int, float]] = []
        self.n_spikes = 0
        self.statuses: Dict[str, int] = {}
        self.has: Dict[str, bool] = dict.fromkeys(_SERIES, False)
        self._dec = _Decimator(1 + len(_SERIES))

    def add(self, snap: Any) -> None:
        """One snapshot (a ``Snapshot`` or anything with its fields)."""
        self.steps += 1
        step = snap.step if snap.step is not None else self.steps
        if self.first_step is None:
            self.first_step = step
        self.last_step = step
        ev = snap.evidence
        st = snap.status
        self.statuses[st] = self.statuses.get(st, 0) + 1
        loss = _f(ev.get("loss"))  # (a rebuilt snapshot may hold a string or a huge int)
        self._dec.push(
            (step, loss, _f(ev.get("grad_norm")), _f(snap.theta), _f(snap.f_total), _f(snap.zscore))
        )
        if "event" in ev:
            self.n_events += 1
            if len(self.events) < _MAX_EVENTS:
                self.events.append((step, str(ev["event"])))
        if ev.get("spike"):
            self.n_spikes += 1
            if len(self.spikes) < _MAX_SPIKES:
                self.spikes.append((step, _f(loss)))
        if snap.alert:
            self._alert(snap, step)

    def add_many(self, snaps: Any, cols: Optional[Dict[str, List[Any]]] = None) -> None:
        """``add`` of each snapshot in order (the same result), from their columns.

        ``cols`` is ``outputs.snapshot_columns(snaps)`` when the caller has it already.
        """
        k = len(snaps)
        if not k:
            return
        if cols is None:
            from ..outputs import snapshot_columns

            cols = snapshot_columns(snaps)
        steps = cols["step"]
        if None in steps:
            n0 = self.steps + 1
            steps = [n0 + i if v is None else v for i, v in enumerate(steps)]
        self.steps += k
        if self.first_step is None:
            self.first_step = steps[0]
        self.last_step = steps[-1]
        counts, status = self.statuses, cols["status"]
        st0 = status[0]
        for st, c in ((st0, k),) if status.count(st0) == k else Counter(status).items():
            counts[st] = counts.get(st, 0) + c
        block = np.empty((k, 1 + len(_SERIES)))
        for j, name in enumerate(("step", "loss", "grad_norm", "theta", "f_total", "zscore")):
            block[:, j] = cols[name]  # None -> nan
        self._dec.push_block(block)
        events = cols["event"]
        if events.count(None) != k:
            for i, e in enumerate(events):
                if e is not None:
                    self.n_events += 1
                    if len(self.events) < _MAX_EVENTS:
                        self.events.append((steps[i], str(e)))
        spikes = cols["spike"]
        if any(spikes):
            loss = cols["loss"]
            for i, sp in enumerate(spikes):
                if sp:
                    self.n_spikes += 1
                    if len(self.spikes) < _MAX_SPIKES:
                        self.spikes.append((steps[i], _f(loss[i])))
        alerts = cols["alert"]
        if any(alerts):
            for i, al in enumerate(alerts):
                if al:
                    self._alert(snaps[i], steps[i])

    def _alert(self, snap: Any, step: int) -> None:
        self.alerts += 1
        cause = str(snap.evidence.get("cause") or snap.status)
        inc = self.incidents[-1] if self.incidents else None
        if inc is not None and 0 <= step - inc["last_step"] <= self.incident_gap:
            inc["last_step"] = step
            inc["alerts"] += 1
            inc["causes"][cause] = inc["causes"].get(cause, 0) + 1
            if snap.status == "collapsed":
                inc["collapsed"] = True
            return
        text = ""
        if len(self.incidents) < _MAX_INCIDENT_TEXTS:
            try:
                text = snap.explain(self.lang)
            except Exception as exc:  # a snapshot rebuilt from a damaged line
                text = f"(no explanation: {exc})"
        self.incidents.append(
            {
                "first_step": step,
                "last_step": step,
                "alerts": 1,
                "status": snap.status,
                "cause": cause,
                "causes": {cause: 1},
                "collapsed": snap.status == "collapsed",
                "explanation": text,
                "zscore": snap.zscore,
                "theta": snap.theta,
            }
        )

    def finish_series(self) -> Dict[str, Any]:
        x, lo, hi = self._dec.result()
        out: Dict[str, Any] = {"x": x}
        for i, name in enumerate(_SERIES):
            lo_i, hi_i = lo[:, i], hi[:, i]
            out[name] = (lo_i, hi_i)
            self.has[name] = bool(np.isfinite(hi_i).any() or np.isfinite(lo_i).any())
        return out

    def verdict(self) -> Tuple[str, str]:
        """(css class, sentence)."""
        if self.steps == 0:
            return "warn", "No steps in this run."
        if not self.incidents:
            judged = self.judged_steps
            if judged == 0:
                return "warn", (
                    f"Not enough steps to judge: all {self.steps:,} steps were warm-up "
                    "(the Monitor learns the run's levels first); no alert."
                )
            return "ok", (
                f"Healthy — no alert in {self.steps:,} steps ({judged:,} judged after warm-up)."
            )
        first = self.incidents[0]
        n = len(self.incidents)
        kind = "bad" if any(i["status"] != "drifting" for i in self.incidents) else "warn"
        coll = next((i for i in self.incidents if i["collapsed"]), None)
        s = (
            f"{self.alerts:,} alert steps in {n:,} incident{'s' if n != 1 else ''}; "
            f"the first at step {first['first_step']}: {cause_words(first['cause'])}."
        )
        if coll is not None:
            s = f"Collapsed at step {coll['first_step']}. " + s
        return kind, s

    @property
    def judged_steps(self) -> int:
        """Steps the Monitor judged: every step but those it spent warming up."""
        return self.steps - self.statuses.get("warming_up", 0)

    def summary(self) -> Dict[str, Any]:
        """JSON-ready summary (used by ``anet-lite analyze --json``)."""
        return {
            "steps": self.steps,
            "judged_steps": self.judged_steps,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "alerts": self.alerts,
            "statuses": dict(self.statuses),
            "events": self.n_events,
            "spikes": self.n_spikes,
            "incidents": [
                {
                    "first_step": i["first_step"],
                    "last_step": i["last_step"],
                    "alerts": i["alerts"],
                    "status": i["status"],
                    "cause": i["cause"],
                    "causes": dict(i["causes"]),
                    "explanation": i["explanation"],
                }
                for i in self.incidents
            ],
        }


# ---- reading a run folder ----------------------------------------------------------------
