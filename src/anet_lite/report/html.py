"""The HTML report: one file, no network (inline CSS, inline SVG plots, no scripts).

``RunData`` collects what the report shows while snapshots stream past (constant memory:
the plotted series are decimated to at most ~2 x ``target`` min/max buckets, incidents are
summarised); ``load_run(run_dir)`` fills one from a run folder written by ``RunLog``
(metrics.jsonl, else metrics.csv with the full snapshots of ``anet-lite analyze``'s
events.jsonl in place of its notable rows), and ``write_report`` renders it with the
folder's meta.json and tombstones.jsonl (verified with ``tombstone.verify``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import json
import math
import os
import re
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..explain import CAUSE_WORDS
from ..verdict import Snapshot

__all__ = ["INCIDENT_GAP", "RunData", "load_run", "plots_available", "write_report"]

INCIDENT_GAP = 50  # alerts at most this many steps apart belong to one incident
_SERIES = ("loss", "grad_norm", "theta", "f_total", "zscore")
_MAX_EVENTS = 200
_MAX_SPIKES = 2000
_MAX_INCIDENT_TEXTS = 1000
_NUMERIC_SKIP = {"cause", "event", "error"}


def cause_words(cause: Optional[str]) -> str:
    return CAUSE_WORDS["en"].get(str(cause or ""), str(cause or "unknown cause"))


class _Decimator:
    """Min/max envelopes of several columns over at most ~2 x target buckets (constant memory)."""

    def __init__(self, ncols: int, target: int = 1500) -> None:
        self.ncols = ncols
        self.target = target
        self.width = 1  # rows per bucket
        self.pending = array("d")
        self.x: List[np.ndarray] = []
        self.lo: List[np.ndarray] = []
        self.hi: List[np.ndarray] = []
        self.nb = 0

    def push(self, row: Tuple[float, ...]) -> None:
        self.pending.extend(row)
        if len(self.pending) >= self.ncols * self.width * 512:
            self._reduce(final=False)

    def push_block(self, a: np.ndarray) -> None:
        """``push`` of each row of ``a`` (shape (rows, ncols)), same buckets, one copy per fill."""
        k, i, n = self.ncols, 0, len(a)
        while i < n:
            take = min(n - i, self.width * 512 - len(self.pending) // k)
            self.pending.frombytes(np.ascontiguousarray(a[i : i + take], dtype=float).tobytes())
            i += take
            if len(self.pending) >= k * self.width * 512:
                self._reduce(final=False)

    def _reduce(self, final: bool) -> None:
        k = self.ncols
        a = np.frombuffer(self.pending, dtype=float).reshape(-1, k)
        w = self.width
        full = (len(a) // w) * w
        take = len(a) if final else full
        if take == 0:
            return
        head, rest = a[:full], a[full:take]
        if len(head):
            b = head.reshape(-1, w, k)
            with np.errstate(all="ignore"):
                self.x.append(b[:, 0, 0].copy())
                self.lo.append(np.fmin.reduce(b[:, :, 1:], axis=1))
                self.hi.append(np.fmax.reduce(b[:, :, 1:], axis=1))
            self.nb += len(b)
        if final and len(rest):
            self.x.append(rest[:1, 0].copy())
            self.lo.append(np.fmin.reduce(rest[:, 1:], axis=0)[None, :])
            self.hi.append(np.fmax.reduce(rest[:, 1:], axis=0)[None, :])
            self.nb += 1
            take = len(a)
        left = a[take:].ravel().tolist()
        self.pending = array("d", left)
        while self.nb > 2 * self.target:
            self._halve()

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
    except (TypeError, ValueError):
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
        loss = ev.get("loss")
        g = ev.get("grad_norm")
        self._dec.push(
            (
                step,
                math.nan if loss is None else loss,
                math.nan if g is None else g,
                snap.theta,
                snap.f_total,
                snap.zscore,
            )
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
            return "ok", f"Healthy — no alert in {self.steps:,} steps."
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

    def summary(self) -> Dict[str, Any]:
        """JSON-ready summary (used by ``anet-lite analyze --json``)."""
        return {
            "steps": self.steps,
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


def _unsafe_float(v: Any) -> Any:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def _snap_from_json(d: Dict[str, Any]) -> Snapshot:
    ev = {
        k: (v if k in _NUMERIC_SKIP else _unsafe_float(v))
        for k, v in (d.get("evidence") or {}).items()
    }
    return Snapshot(
        theta=_f(_unsafe_float(d.get("theta", 1.0))),
        sdot=_f(_unsafe_float(d.get("sdot", 0.0))),
        proc=_f(_unsafe_float(d.get("proc", 0.0))),
        f_total=_f(_unsafe_float(d.get("f_total", 0.0))),
        precursor=bool(d.get("precursor", False)),
        zscore=_f(_unsafe_float(d.get("zscore", 0.0))),
        step=d.get("step") if isinstance(d.get("step"), int) else None,
        status=str(d.get("status", "healthy")),
        alert=bool(d.get("alert", False)),
        evidence=ev,
    )


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
        step=int(step) if step.lstrip("-").isdigit() else None,
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
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                return  # a torn or damaged line: the CSV rows are used from here on
            if isinstance(d, dict):
                yield _snap_from_json(d)


def _iter_snapshots(run_dir: Path) -> Iterator[Snapshot]:
    j, c = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
    if j.is_file() and j.stat().st_size > 0:
        with open(j, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError:
                    if not line.endswith("\n"):
                        return  # a torn last line (the run was killed mid-write)
                    raise ValueError(f"{j}: line {no}: not valid JSON") from None
                if not isinstance(d, dict):
                    raise ValueError(f"{j}: line {no}: not a JSON object")
                yield _snap_from_json(d)
        return
    if c.is_file() and c.stat().st_size > 0:
        with open(c, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
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


def _read_meta(run_dir: Path) -> Dict[str, Any]:
    p = run_dir / "meta.json"
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"_error": "meta.json is not valid JSON"}
    return d if isinstance(d, dict) else {}


def load_run(run_dir: Any, lang: Optional[str] = None) -> RunData:
    """A ``RunData`` from a run folder's metrics.jsonl (or metrics.csv); ValueError if none."""
    rd = Path(run_dir)
    if not rd.is_dir():
        raise ValueError(f"{rd}: not a folder")
    meta = _read_meta(rd)
    data = RunData(lang=lang or str(meta.get("lang") or "en"))
    for snap in _iter_snapshots(rd):
        data.add(snap)
    return data


def _tombstones(run_dir: Path) -> Dict[str, Any]:
    p = run_dir / "tombstones.jsonl"
    if not p.is_file():
        return {"present": False}
    from ..tombstone import verify

    try:
        res = verify(p)
        status = {"ok": res.ok, "line": res.line, "reason": res.reason, "records": res.records}
    except (TypeError, ValueError) as exc:
        status = {"ok": False, "line": None, "reason": str(exc), "records": 0}
    rows: List[Dict[str, Any]] = []
    with open(p, "rb") as f:
        for no, raw in enumerate(f, 1):
            if len(rows) >= 1000:
                break
            try:
                rec = json.loads(raw.decode("utf-8"))
            except ValueError:
                rows.append({"line": no, "bad": True})
                continue
            if isinstance(rec, dict):
                rows.append({"line": no, **rec})
    return {"present": True, "path": str(p), "status": status, "rows": rows}


# ---- rendering ----------------------------------------------------------------------------


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _action_steps(tomb: Dict[str, Any]) -> List[Tuple[int, str]]:
    out = []
    for r in tomb.get("rows", ()):
        scope = r.get("scope")
        if isinstance(scope, dict) and isinstance(scope.get("step"), int):
            out.append((scope["step"], str(r.get("event", "action"))))
    return out[:200]


def _svg_plots(data: RunData, series: Dict[str, Any], actions: List[Tuple[int, str]]) -> str:
    from matplotlib import rc_context
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    x = series["x"]
    panels = [
        ("loss", "loss"),
        ("grad_norm", "gradient norm"),
        ("theta", "θ (noise-fingerprint similarity)"),
        ("f_total", "F_Total"),
        ("zscore", "precursor z"),
    ]
    panels = [(k, t) for k, t in panels if data.has[k]]
    if not panels or len(x) == 0:
        return ""
    spans = [(i["first_step"], i["last_step"], i["collapsed"]) for i in data.incidents[:300]]
    with rc_context(
        {"svg.fonttype": "path", "svg.hashsalt": "anet-lite", "font.size": 9, "axes.grid": True}
    ):
        fig = Figure(figsize=(11, 1.9 * len(panels) + 0.6))
        FigureCanvasSVG(fig)
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        xs = np.repeat(x, 2)
        for ax, (key, title) in zip(axes, panels):
            lo, hi = series[key]
            with np.errstate(all="ignore"):
                ys = np.column_stack([lo, hi]).ravel()
                ys = np.where(np.isfinite(ys), ys, np.nan)
            ax.plot(xs, ys, color="#2563eb", lw=0.8)
            if key == "loss":
                pos = ys[np.isfinite(ys)]
                if len(pos) and pos.min() > 0 and pos.max() / pos.min() > 20:
                    ax.set_yscale("log")
                if data.spikes:
                    sx, sy = zip(*data.spikes)
                    ax.plot(sx, sy, "o", ms=3, color="#f59e0b", zorder=3)
            if key == "theta":
                ax.axhline(0.6, color="#9ca3af", lw=0.8, ls=":")
            if key == "zscore":
                ax.axhline(2.5, color="#9ca3af", lw=0.8, ls=":")
                fin = ys[np.isfinite(ys)]
                if len(fin) and np.abs(fin).max() > 50:
                    ax.set_yscale("symlog", linthresh=10)
            for a, b, coll in spans:
                ax.axvspan(
                    a - 0.5, b + 0.5, color="#dc2626" if coll else "#ef4444", alpha=0.18, lw=0
                )
            for s, _ in data.events[:100]:
                ax.axvline(s, color="#6b7280", lw=0.7, ls="--")
            for s, _ in actions:
                ax.axvline(s, color="#7c3aed", lw=1.0)
            ax.set_ylabel(title, fontsize=8)
        axes[-1].set_xlabel("step")
        handles = [Line2D([], [], color="#2563eb", lw=1, label="value (min/max per bucket)")]
        if spans:
            handles.append(Patch(color="#ef4444", alpha=0.3, label="alert incident"))
        if data.events:
            handles.append(Line2D([], [], color="#6b7280", ls="--", label="schedule event"))
        if data.spikes:
            handles.append(
                Line2D([], [], color="#f59e0b", marker="o", ls="", label="one-step spike")
            )
        if actions:
            handles.append(Line2D([], [], color="#7c3aed", label="action (tombstone)"))
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
        h = fig.get_figheight()  # fixed margins (in inches): tight_layout costs ~0.25 s
        fig.subplots_adjust(
            left=0.075, right=0.985, bottom=0.45 / h, top=1.0 - 0.4 / h, hspace=0.12
        )
        buf = io.StringIO()
        fig.savefig(
            buf,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return svg.replace(
        "<svg ", '<svg role="img" aria-label="loss, gradient norm, θ, F_Total and z" ', 1
    )


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#111827;background:#f9fafb}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
header{padding:18px 24px;color:#fff}
header.ok{background:#15803d}header.warn{background:#b45309}header.bad{background:#b91c1c}
header h1{margin:0 0 4px;font-size:22px}header p{margin:0;font-size:16px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px 16px;
margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #f3f4f6;vertical-align:top}
th{color:#374151;font-weight:600;white-space:nowrap}
td.num{font-variant-numeric:tabular-nums}
.plots svg{width:100%;height:auto}
.muted{color:#6b7280}
ol.alerts li{margin:0 0 10px}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;color:#fff;
background:#6b7280}
.tag.collapsed,.tag.precursor{background:#dc2626}.tag.drifting{background:#d97706}
.ok-text{color:#15803d;font-weight:600}.bad-text{color:#b91c1c;font-weight:600}
code{font-size:12px;word-break:break-all}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _render(
    data: RunData,
    meta: Dict[str, Any],
    tomb: Dict[str, Any],
    run_dir: Path,
    plots: str,
    plot_note: str,
) -> str:
    name = meta.get("run_name") or run_dir.name.removesuffix(".anet") or "run"
    kind, sentence = data.verdict()
    first = data.incidents[0] if data.incidents else None
    rows: List[Tuple[str, str]] = [
        (
            "steps",
            f"{data.steps:,}" + (f" ({data.first_step} – {data.last_step})" if data.steps else ""),
        ),
        ("alert steps", f"{data.alerts:,}"),
        ("incidents", f"{len(data.incidents):,}"),
        ("first alert step", str(first["first_step"]) if first else "—"),
        ("cause", cause_words(first["cause"]) + f" ({first['cause']})" if first else "—"),
        ("schedule events", f"{data.n_events:,}"),
        ("one-step spikes (not alerts)", f"{data.n_spikes:,}"),
    ]
    if meta.get("source"):
        rows.append(("source", str(meta["source"])))
    if meta.get("format"):
        rows.append(("format", str(meta["format"])))
    if isinstance(meta.get("columns"), dict) and meta["columns"]:
        rows.append(("columns used", ", ".join(f"{k} ← {v}" for k, v in meta["columns"].items())))
    if meta.get("gaps_summary"):
        rows.append(("input", str(meta["gaps_summary"])))
    if tomb.get("present"):
        st = tomb["status"]
        rows.append(
            (
                "tombstone chain",
                f"ok ({st['records']} records)" if st["ok"] else f"BROKEN: {st['reason']}",
            )
        )
    out: List[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>anet-lite report: {_e(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header class="{kind}" id="verdict"><h1>anet-lite report: {_e(name)}</h1>',
        f"<p>{_e(sentence)}</p></header><main>",
        '<section id="summary"><h2>Summary</h2><table>',
    ]
    for k, v in rows:
        out.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    out.append("</table></section>")
    out.append('<section id="plots" class="plots"><h2>Signals over steps</h2>')
    if plots:
        out.append(plots)
        missing = [k for k in ("grad_norm",) if not data.has.get(k)]
        if missing:
            out.append(f'<p class="muted">Not logged: {_e(", ".join(missing))}.</p>')
    else:
        out.append(f'<p class="muted">{_e(plot_note)}</p>')
    out.append("</section>")
    out.append('<section id="alerts"><h2>Alerts</h2>')
    if not data.incidents:
        out.append('<p class="ok-text">No alerts.</p>')
    else:
        out.append(
            f'<p class="muted">{data.alerts:,} alert steps grouped into '
            f"{len(data.incidents):,} incident{'s' if len(data.incidents) != 1 else ''} "
            f"(alerts at most {data.incident_gap} steps "
            "apart form one incident); the first alert of each is explained.</p>"
        )
        out.append('<ol class="alerts">')
        for inc in data.incidents[:500]:
            span = (
                f"step {inc['first_step']}"
                if inc["first_step"] == inc["last_step"]
                else f"steps {inc['first_step']} – {inc['last_step']}"
            )
            causes = ", ".join(f"{c} ×{n}" for c, n in inc["causes"].items())
            out.append(
                f'<li><span class="tag {_e(inc["status"])}">{_e(inc["status"])}</span> '
                f"<b>{_e(span)}</b> · {inc['alerts']:,} alert steps · {_e(causes)}"
                f"<br>{_e(inc['explanation'])}</li>"
            )
        out.append("</ol>")
        if len(data.incidents) > 500:
            out.append(f'<p class="muted">… and {len(data.incidents) - 500:,} more.</p>')
    out.append("</section>")
    out.append('<section id="tombstones"><h2>Actions (tombstone log)</h2>')
    if not tomb.get("present"):
        out.append('<p class="muted">No tombstones.jsonl in this run folder.</p>')
    else:
        st = tomb["status"]
        if st["ok"]:
            out.append(f'<p class="ok-text">Chain verified: {st["records"]} records, intact.</p>')
        else:
            line = f"line {st['line']}: " if st["line"] and "line" not in st["reason"] else ""
            out.append(f'<p class="bad-text">Chain broken: {_e(line + st["reason"])}</p>')
        out.append(
            "<table><tr><th>line</th><th>event</th><th>time</th><th>policy</th>"
            "<th>step</th><th>reason</th><th>hash</th></tr>"
        )
        for r in tomb["rows"]:
            if r.get("bad"):
                out.append(f"<tr><td>{r['line']}</td><td colspan=6>(not valid JSON)</td></tr>")
                continue
            scope = r.get("scope") if isinstance(r.get("scope"), dict) else {}
            evid = r.get("evidence") if isinstance(r.get("evidence"), dict) else {}
            h = str(r.get("hash", ""))
            out.append(
                "<tr>"
                + "".join(
                    f"<td>{_e(v)}</td>"
                    for v in (
                        r["line"],
                        r.get("event", ""),
                        r.get("time", ""),
                        r.get("policy", ""),
                        scope.get("step", ""),
                        evid.get("reason", ""),
                    )
                )
                + f"<td><code>{_e(h[:24])}…</code></td></tr>"
            )
        out.append("</table>")
    out.append("</section>")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from .. import __version__

    out.append(
        f'<p class="muted">Generated by anet-lite {_e(__version__)} on {_e(now)} from '
        f"{_e(run_dir)}.</p></main></body></html>"
    )
    return "\n".join(out) + "\n"


def write_report(run_dir: Any, out: Any = None, *, data: Optional[RunData] = None) -> Path:
    """Write ``report.html`` (or ``out``) for a run folder and return its path.

    ``data`` (a ``RunData`` filled while the run streamed) skips re-reading the metrics.
    ValueError when the folder holds no metrics.
    """
    rd = Path(run_dir)
    meta = _read_meta(rd)
    if data is None:
        data = load_run(rd)
    series = data.finish_series()
    tomb = _tombstones(rd)
    plots, note = "", ""
    if plots_available():
        plots = _svg_plots(data, series, _action_steps(tomb))
        if not plots:
            note = "Nothing to plot."
    else:
        note = "Plots need matplotlib: pip install 'anet-lite[report]'."
    text = _render(data, meta, tomb, rd, plots, note)
    dest = Path(out) if out is not None else rd / "report.html"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)
    return dest
