"""What the report shows, collected while snapshots stream past: ``RunData``.

Constant memory: the plotted series are decimated to at most ~2 x ``target`` min/max
buckets (spikes survive decimation), incidents are summarised, events and spikes capped.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..monitor.explain import CAUSE_WORDS
from .words import ACTION_KINDS, action_word, count, fit_precision, status_word, words

__all__ = [
    "INCIDENT_GAP",
    "RunData",
    "cause_words",
]


INCIDENT_GAP = 50  # alerts at most this many steps apart belong to one incident
_SERIES = ("loss", "grad_norm", "lr", "theta", "f_total", "zscore")
ZOOM_BEFORE, ZOOM_AFTER = 30, 40  # raw rows kept before / after the first alert (zoom plot)
_MAX_EVENTS = 200
_MAX_SPIKES = 2000
_MAX_INCIDENT_TEXTS = 1000
_NUMERIC_SKIP = {"cause", "event", "error"}
_ROWS = 8192  # raw rows the decimator buffers before folding them into buckets
END_ROWS = 20  # the last finite losses whose mean is the run's end level
# A run whose end level is at least this share of its first loss ends where it started
# (a statement about the log, not an alert: a run that learned nothing that lasted, or a
# log that starts from a trained model)
ENDS_AT_START = 0.9


def cause_words(cause: Optional[str], lang: str = "en") -> str:
    """A cause's short name in ``lang`` (the name itself for a cause the registry lacks)."""
    table = CAUSE_WORDS.get(lang, CAUSE_WORDS["en"])
    return table.get(str(cause or ""), str(cause or "unknown cause"))


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
    """What a report shows, collected one snapshot at a time: ``add(snap)``.

    ``precision`` ("fp32", "fp16", "bf16", or None when unknown) fits the explanations to
    the run: an fp32 run gets no loss-scale advice (``words.fit_precision``).
    """

    def __init__(
        self, lang: str = "en", incident_gap: int = INCIDENT_GAP, precision: Optional[str] = None
    ) -> None:
        self.lang = lang
        self.incident_gap = int(incident_gap)
        self.precision = precision
        self.steps = 0
        self.first_step: Optional[int] = None
        self.last_step: Optional[int] = None
        self.last_status: Optional[str] = None
        self.last_loss = math.nan
        self.first_loss = math.nan  # the first finite loss
        self._end: Deque[float] = deque(maxlen=END_ROWS)  # the last finite losses
        self.collapse_step: Optional[int] = None  # first step "collapsed": loss/grad not finite
        self.alerts = 0
        self.incidents: List[Dict[str, Any]] = []
        self.events: List[Tuple[int, str]] = []
        self.n_events = 0
        self.spikes: List[Tuple[int, float]] = []
        self.n_spikes = 0
        self.statuses: Dict[str, int] = {}
        self.has: Dict[str, bool] = dict.fromkeys(_SERIES, False)
        self._dec = _Decimator(1 + len(_SERIES))
        # raw rows (step, *_SERIES) around the first alert, for the zoomed plot
        self._recent: Deque[Tuple[float, ...]] = deque(maxlen=ZOOM_BEFORE)
        self.zoom_rows: List[Tuple[float, ...]] = []
        self._zoom_left = -1  # -1: no alert yet; > 0: rows still to keep after it; 0: done

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
        self.last_status = st
        if st == "collapsed" and self.collapse_step is None:
            self.collapse_step = step
        loss = _f(ev.get("loss"))  # (a rebuilt snapshot may hold a string or a huge int)
        self.last_loss = loss
        if math.isfinite(loss):
            if self.first_loss != self.first_loss:
                self.first_loss = loss
            self._end.append(loss)
        row = (float(step), loss, _f(ev.get("grad_norm")), _f(ev.get("lr")), _f(snap.theta))
        row += (_f(snap.f_total), _f(snap.zscore))
        self._dec.push(row)
        self._zoom_push(row, bool(snap.alert))
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

    def _zoom_push(self, row: Tuple[float, ...], alert: bool) -> None:
        """Keep ``ZOOM_BEFORE`` rows before the first alert and ``ZOOM_AFTER`` after it."""
        if self._zoom_left == 0:
            return
        if self._zoom_left < 0:
            if not alert:
                self._recent.append(row)
                return
            self.zoom_rows = [*self._recent, row]
            self._zoom_left = ZOOM_AFTER
            return
        self.zoom_rows.append(row)
        self._zoom_left -= 1

    def _zoom_block(self, block: np.ndarray, alerts: Sequence[Any]) -> None:
        """``_zoom_push`` of each row of ``block`` (same rows kept)."""
        if self._zoom_left == 0:
            return
        i = 0
        if self._zoom_left < 0:
            first = next((j for j, a in enumerate(alerts) if a), None)
            if first is None:
                self._recent.extend(map(tuple, block[-ZOOM_BEFORE:].tolist()))
                return
            self._recent.extend(map(tuple, block[max(0, first - ZOOM_BEFORE) : first].tolist()))
            self.zoom_rows = [*self._recent, tuple(block[first].tolist())]
            self._zoom_left = ZOOM_AFTER
            i = first + 1
        take = block[i : i + self._zoom_left].tolist()
        self.zoom_rows.extend(map(tuple, take))
        self._zoom_left -= len(take)

    def add_many(self, snaps: Any, cols: Optional[Dict[str, List[Any]]] = None) -> None:
        """``add`` of each snapshot in order (the same result), from their columns.

        ``cols`` is ``outputs.snapshot_columns(snaps)`` when the caller has it already.
        """
        k = len(snaps)
        if not k:
            return
        if cols is None:
            from ..records.outputs import snapshot_columns

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
        self.last_status = status[-1]
        if self.collapse_step is None and "collapsed" in status:
            self.collapse_step = steps[status.index("collapsed")]
        block = np.empty((k, 1 + len(_SERIES)))
        block[:, 0] = steps
        for j, name in enumerate(_SERIES, start=1):
            block[:, j] = cols[name]  # None -> nan
        self.last_loss = _f(cols["loss"][-1])
        self._ends(block[:, 1])
        self._dec.push_block(block)
        self._zoom_block(block, cols["alert"])
        self._add_marks(steps, cols)
        alerts = cols["alert"]
        if any(alerts):
            for i, al in enumerate(alerts):
                if al:
                    self._alert(snaps[i], steps[i])

    def _ends(self, loss: np.ndarray) -> None:
        """The first finite loss and the last ``END_ROWS`` finite ones, from a block."""
        fin = np.flatnonzero(np.isfinite(loss))
        if not len(fin):
            return
        if self.first_loss != self.first_loss:
            self.first_loss = float(loss[fin[0]])
        self._end.extend(loss[fin[-END_ROWS:]].tolist())

    def end_vs_first(self) -> Optional[float]:
        """The mean of the last ``END_ROWS`` finite losses over the first finite loss (1.0:
        the run ends where it started); None for a loss that is not positive or a run of
        fewer than ``2 x END_ROWS`` lines."""
        first, end = self.first_loss, self._end
        if not first > 0.0 or self.steps < 2 * END_ROWS or len(end) < END_ROWS:
            return None
        r = sum(end) / len(end) / first
        return r if math.isfinite(r) and r > 0.0 else None

    def ends_where_it_started(self) -> Optional[float]:
        """``end_vs_first()`` when it is at least ``ENDS_AT_START`` (the loss ends where it
        started: not an alert, but not "healthy" either), else None."""
        r = self.end_vs_first()
        return r if r is not None and r >= ENDS_AT_START else None

    def _add_marks(self, steps: List[Any], cols: Dict[str, List[Any]]) -> None:
        """The schedule events and one-step spikes of a block of rows."""
        k = len(steps)
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
                text = fit_precision(snap.explain(self.lang), self.lang, self.precision)
            except Exception as exc:  # a snapshot rebuilt from a damaged line
                text = words(self.lang)["no_explanation"].format(exc=exc)
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

    def zoom(self) -> Dict[str, Any]:
        """The raw rows around the first alert as ``{"x": steps, name: values}`` (empty
        arrays when the run had no alert)."""
        a = np.array(self.zoom_rows, dtype=float).reshape(-1, 1 + len(_SERIES))
        out: Dict[str, Any] = {"x": a[:, 0]}
        for i, name in enumerate(_SERIES, start=1):
            out[name] = a[:, i]
        return out

    def verdict(self, actions: Sequence[Tuple[int, str]] = ()) -> Tuple[str, str]:
        """(css class, sentence) in the report's language; ``actions`` are the Guard's
        (step, kind) from the tombstone log.

        "bad" (red) only when the run failed: its loss stopped being finite and nothing
        acted, or it ended in an alert (precursor / collapsed). "protected" when the Guard
        acted and the run ended healthy; "warn" for a run the Guard stopped, alerts that
        ended healthy without an action, or a run too short to judge; "ok" when healthy.
        """
        w, lang = words(self.lang), self.lang
        if self.steps == 0:
            return "warn", w["no_steps"]
        if not self.incidents:
            judged = self.judged_steps
            unit = "line" if self.sparse else "step"  # (a sparse log: lines, not steps)
            if judged == 0:
                return "warn", w["not_judged"].format(n=count(self.steps, unit, lang))
            n, judged_n = count(self.steps, unit, lang), count(judged, unit, lang)
            r = self.ends_where_it_started()
            if r is not None:
                key = "ends_at_start" if self.starts_untrained else "ends_at_log_start"
                return "warn", w[key].format(
                    n=n, judged=judged_n, r=r, k=END_ROWS, s=self.first_step
                )
            return "ok", w["healthy"].format(n=n, judged=judged_n)
        first = self.incidents[0]
        acts = [(s, k) for s, k in actions if k in ACTION_KINDS]
        f = {
            "s": first["first_step"],
            "cause": cause_words(first["cause"], lang),
            "inc": count(len(self.incidents), "incident", lang),
            "alerts": count(self.alerts, "alert_step", lang),
            "last": self.last_step,
            "status": status_word(str(self.last_status), lang),
        }
        stop = next((s for s, k in acts if k == "stop"), None)
        if stop is not None:
            return "warn", w["protected_stop"].format(stop=stop, acts=self._acts(acts), **f)
        if self.collapse_step is not None and (not acts or self.last_status == "collapsed"):
            k = self.collapse_step - first["first_step"]
            if k <= 0:
                return "bad", w["collapsed_at_alert"].format(c=self.collapse_step, **f)
            return "bad", w["collapsed"].format(c=self.collapse_step, k=count(k, "step", lang), **f)
        if self.last_status in ("precursor", "collapsed") or not math.isfinite(self.last_loss):
            return "bad", w["ended_alert"].format(**f)
        if acts:
            return "protected", w["protected"].format(acts=self._acts(acts), a=acts[0][0], **f)
        return "warn", w["alerts_only"].format(**f)

    def _acts(self, acts: Sequence[Tuple[int, str]]) -> str:
        """ "slow down" for one action; "3 actions: skip ×2, roll back ×1" for more."""
        if len(acts) == 1:
            return action_word(acts[0][1], self.lang)
        kinds = Counter(k for _, k in acts)
        parts = [f"{action_word(k, self.lang)} ×{n}" for k, n in kinds.items()]
        return count(len(acts), "action", self.lang) + ": " + ", ".join(parts)

    @property
    def sparse(self) -> bool:
        """The lines span more steps than there are lines (a log of every k-th step)."""
        first, last = self.first_step, self.last_step
        return first is not None and last is not None and last - first + 1 > self.steps

    @property
    def starts_untrained(self) -> bool:
        """The log starts at step 0 or 1 (or has no step numbers): its first loss is the
        untrained model's, as far as the log can tell."""
        return self.first_step is None or self.first_step <= 1

    @property
    def judged_steps(self) -> int:
        """Steps the Monitor judged: every step but those it spent warming up."""
        return self.steps - self.statuses.get("warming_up", 0)

    def summary(self) -> Dict[str, Any]:
        """JSON-ready summary (used by ``anet-lite analyze --json``)."""
        return {
            "steps": self.steps,
            "judged_steps": self.judged_steps,
            "end_vs_first": self.end_vs_first(),
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
