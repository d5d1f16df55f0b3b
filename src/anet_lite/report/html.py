"""The HTML report: one file, no network (inline CSS, inline SVG plots, no scripts).

``write_report(run_dir)`` renders a ``RunData`` (report/data.py; ``load_run`` in
report/runfolder.py fills one from a run folder) with the folder's meta.json and
tombstones.jsonl (verified with ``tombstone.verify``). Everything shown is escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..outputs import write_atomic
from .data import INCIDENT_GAP, RunData, cause_words
from .runfolder import _read_meta, _tombstones, load_run

__all__ = ["INCIDENT_GAP", "RunData", "load_run", "plots_available", "write_report"]


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _action_steps(tomb: Dict[str, Any]) -> List[Tuple[int, str]]:
    out = []
    for _, r in tomb.get("rows", ()):
        if r is None:
            continue
        scope = r.get("scope")
        if isinstance(scope, dict) and isinstance(scope.get("step"), int):
            out.append((scope["step"], str(r.get("event", "action"))))
    return out[:200]


PLOT_LIMIT = 1e100  # plotted values are clipped to [-PLOT_LIMIT, PLOT_LIMIT]


def _plots_or_note(data: RunData, series: Dict[str, Any], tomb: Dict[str, Any]) -> Tuple[str, str]:
    """(svg, note): the plots, or why there are none; a plotting failure never loses the
    report (the summary, alerts and tombstones are still written)."""
    if not plots_available():
        return "", "Plots need matplotlib: pip install 'anet-lite[report]'."
    try:
        plots = _svg_plots(data, series, _action_steps(tomb))
    except (ArithmeticError, ValueError) as exc:
        return "", f"No plots: matplotlib could not draw these values ({exc})."
    return plots, "" if plots else "Nothing to plot."


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
                # matplotlib's tickers overflow on spans near 1e308: a diverging run's
                # values are drawn at the limit (the tables and files keep them exact)
                ys = np.clip(ys, -PLOT_LIMIT, PLOT_LIMIT)
            ax.plot(xs, ys, color="#2563eb", lw=0.8)
            if key == "loss":
                pos = ys[np.isfinite(ys)]
                if len(pos) and pos.min() > 0 and pos.max() > 20 * pos.min():
                    ax.set_yscale("log")
                    ax.set_ylim(bottom=max(pos.min(), pos.max() / PLOT_LIMIT) / 2)
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


_FLAT_NOTES = {
    "zscore": (
        0.0,
        "The precursor z could not be computed on this run (it reads 0 on every step): its "
        "window never held 3 steps with a baseline behind them (a run that is too short, "
        "or steps logged too far apart for the window).",
    ),
    "theta": (
        1.0,
        "θ stays 1.0 on every step: no healthy noise-fingerprint reference was taken (the "
        "run never settled after warm-up, or it is too short), so θ says nothing here.",
    ),
}


def _flat_signal_notes(data: RunData, series: Dict[str, Any]) -> List[str]:
    """A sentence for each plotted signal that stayed at its 'not computed' value."""
    notes = []
    for key, (value, note) in _FLAT_NOTES.items():
        if not data.has.get(key) or key not in series:
            continue
        lo, hi = series[key]
        with np.errstate(all="ignore"):
            vals = np.concatenate([np.asarray(lo, float), np.asarray(hi, float)])
        vals = vals[np.isfinite(vals)]
        if len(vals) and np.all(vals == value):
            notes.append(note)
    return notes


def _render(
    data: RunData,
    meta: Dict[str, Any],
    tomb: Dict[str, Any],
    run_dir: Path,
    plots: str,
    plot_note: str,
    signal_notes: Tuple[str, ...] = (),
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
        for note in signal_notes:
            out.append(f'<p class="muted">{_e(note)}</p>')
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
        for no, r in tomb["rows"]:
            if r is None:
                out.append(f"<tr><td>{no:d}</td><td colspan=6>(not a JSON object)</td></tr>")
                continue
            scope = r.get("scope") if isinstance(r.get("scope"), dict) else {}
            evid = r.get("evidence") if isinstance(r.get("evidence"), dict) else {}
            h = str(r.get("hash", ""))
            out.append(
                "<tr>"
                + "".join(
                    f"<td>{_e(v)}</td>"
                    for v in (
                        no,
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
    tomb = _tombstones(rd, meta)
    plots, note = _plots_or_note(data, series, tomb)
    notes = tuple(_flat_signal_notes(data, series))
    text = _render(data, meta, tomb, rd, plots, note, notes)
    dest = Path(out) if out is not None else rd / "report.html"
    return write_atomic(dest, text, fsync=False)
