"""The HTML report: one file, no network (inline CSS, inline SVG plots, no scripts).

``write_report(run_dir)`` renders a ``RunData`` (report/data.py; ``load_run`` in
report/runfolder.py fills one from a run folder) with the folder's meta.json and
tombstones.jsonl (verified with ``tombstone.verify``), in the run's language (``RunData.lang``,
"en" or "ja"; report/words.py). Everything shown is escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..records.outputs import write_atomic
from ._plots import PLOT_LIMIT, svg_plots, svg_zoom
from .data import INCIDENT_GAP, RunData, cause_words
from .runfolder import _read_meta, _tombstones, load_run, read_twin
from .words import ACTION_KINDS, action_word, count, status_word, words

__all__ = ["INCIDENT_GAP", "PLOT_LIMIT", "RunData", "load_run", "plots_available", "write_report"]


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _action_steps(tomb: Dict[str, Any], limit: int = 200) -> List[Tuple[int, str]]:
    """(step, event) of the tombstone log's records that name a step (the first ``limit``
    of the rows read)."""
    out = []
    for _, r in tomb.get("rows", ()):
        if r is None:
            continue
        scope = r.get("scope")
        if isinstance(scope, dict) and isinstance(scope.get("step"), int):
            out.append((scope["step"], str(r.get("event", "action"))))
    return out[:limit]


def _plots_or_note(
    data: RunData,
    series: Dict[str, Any],
    actions: List[Tuple[int, str]],
    twin: Optional[Dict[str, Any]] = None,
) -> Tuple[str, str, str]:
    """(overview svg, zoom svg, note): the plots, or why there are none; a plotting failure
    never loses the report (the summary, alerts and tombstones are still written)."""
    w = words(data.lang)
    if not plots_available():
        return "", "", w["need_mpl"]
    try:
        plots = svg_plots(data, series, actions, twin)
        zoom = svg_zoom(data, actions, twin) if plots else ""
    except (ArithmeticError, ValueError) as exc:
        return "", "", w["no_plots"].format(exc=exc)
    return plots, zoom, "" if plots else w["nothing"]


_FONTS = {
    "en": 'system-ui,-apple-system,"Segoe UI",Roboto,sans-serif',
    "ja": '"Hiragino Sans","Hiragino Kaku Gothic ProN","Yu Gothic UI","Yu Gothic",Meiryo,'
    '"Noto Sans CJK JP","Noto Sans JP","Source Han Sans JP","IPAexGothic",system-ui,sans-serif',
}

_CSS = """
body{font:14px/1.45 %(font)s;margin:0;color:#111827;background:#f9fafb}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
header{padding:18px 24px;color:#fff}
header.ok{background:#15803d}header.warn{background:#b45309}header.bad{background:#b91c1c}
header.protected{background:#0f766e}
header h1{margin:0 0 4px;font-size:22px}header p{margin:0;font-size:16px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px 16px;
margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #f3f4f6;vertical-align:top}
th{color:#374151;font-weight:600;white-space:nowrap}
td.num{font-variant-numeric:tabular-nums}
.plots svg{width:100%%;height:auto}
.plots svg text{font-family:%(font)s}
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


_FLAT_NOTES = {"zscore": (0.0, "z_flat"), "theta": (1.0, "theta_flat")}


def _flat_signal_notes(data: RunData, series: Dict[str, Any]) -> List[str]:
    """A sentence for each plotted signal that stayed at its 'not computed' value."""
    notes = []
    for key, (value, word) in _FLAT_NOTES.items():
        if not data.has.get(key) or key not in series:
            continue
        lo, hi = series[key]
        with np.errstate(all="ignore"):
            vals = np.concatenate([np.asarray(lo, float), np.asarray(hi, float)])
        vals = vals[np.isfinite(vals)]
        if len(vals) and np.all(vals == value):
            notes.append(words(data.lang)[word])
    return notes


class _Page:
    """Everything one report shows; ``html()`` renders it, one method per section."""

    def __init__(
        self,
        data: RunData,
        meta: Dict[str, Any],
        tomb: Dict[str, Any],
        run_dir: Path,
        plots: Tuple[str, str, str],
        signal_notes: Tuple[str, ...] = (),
        twin: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.data, self.meta, self.tomb, self.run_dir = data, meta, tomb, run_dir
        self.svg, self.zoom, self.plot_note = plots
        self.signal_notes, self.twin = signal_notes, twin
        self.lang = data.lang if data.lang in _FONTS else "en"
        self.w = words(self.lang)
        self.actions = _action_steps(tomb, limit=1000)  # all rows read: a late "stop" counts

    def html(self) -> str:
        name = self.meta.get("run_name") or self.run_dir.name.removesuffix(".anet") or "run"
        out = self.head(str(name))
        out += self.summary()
        out += self.plots()
        out += self.alerts()
        out += self.tombstones()
        out += self.footer()
        return "\n".join(out) + "\n"

    def head(self, name: str) -> List[str]:
        kind, sentence = self.data.verdict(self.actions)
        title = self.w["title"].format(name=name)
        return [
            "<!DOCTYPE html>",
            f'<html lang="{self.lang}"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS % {'font': _FONTS[self.lang]}}</style></head><body>",
            f'<header class="{kind}" id="verdict"><h1>{_e(title)}</h1>',
            f"<p>{_e(sentence)}</p></header><main>",
        ]

    def summary_rows(self) -> List[Tuple[str, str]]:
        d, w, lang, meta = self.data, self.w, self.lang, self.meta
        first = d.incidents[0] if d.incidents else None
        span = f" ({d.first_step} – {d.last_step})" if d.steps else ""
        acts = [a for a in self.actions if a[1] in ACTION_KINDS]
        rows = [
            (w["r_steps"], f"{d.steps:,}{span}"),
            (w["r_alerts"], f"{d.alerts:,}"),
            (w["r_incidents"], f"{len(d.incidents):,}"),
            (w["r_first"], str(first["first_step"]) if first else "—"),
            (
                w["r_cause"],
                f"{cause_words(first['cause'], lang)} ({first['cause']})" if first else "—",
            ),
            (w["r_collapse"], "—" if d.collapse_step is None else str(d.collapse_step)),
        ]
        if acts:
            rows.append(
                (w["r_actions"], ", ".join(f"{action_word(k, lang)} @ {s}" for s, k in acts[:20]))
            )
        rows += [(w["r_events"], f"{d.n_events:,}"), (w["r_spikes"], f"{d.n_spikes:,}")]
        for key, word in (
            ("source", "r_source"),
            ("format", "r_format"),
            ("precision", "r_precision"),
        ):
            if meta.get(key):
                rows.append((w[word], str(meta[key])))
        if isinstance(meta.get("columns"), dict) and meta["columns"]:
            used = ", ".join(f"{k} ← {v}" for k, v in meta["columns"].items())
            rows.append((w["r_columns"], used))
        if meta.get("gaps_summary"):
            rows.append((w["r_input"], str(meta["gaps_summary"])))
        if self.twin is not None:
            text = w[f"twin_{self.twin['guard']}"].format(path=self.twin["path"])
            if self.twin.get("error"):
                text += " " + w["twin_missing"].format(why=self.twin["error"])
            rows.append((w["r_twin"], text))
        if self.tomb.get("present"):
            st = self.tomb["status"]
            n = count(st["records"], "record", lang)
            ok = (
                w["chain_ok"].format(n=n)
                if st["ok"]
                else w["chain_bad"].format(reason=st["reason"])
            )
            rows.append((w["r_chain"], ok))
        return rows

    def summary(self) -> List[str]:
        out = [f'<section id="summary"><h2>{_e(self.w["h_summary"])}</h2><table>']
        for k, v in self.summary_rows():
            out.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
        out.append("</table></section>")
        return out

    def plots(self) -> List[str]:
        w = self.w
        out = [f'<section id="plots" class="plots"><h2>{_e(w["h_plots"])}</h2>']
        if not self.svg:
            out.append(f'<p class="muted">{_e(self.plot_note)}</p></section>')
            return out
        out.append(self.svg)
        if not self.data.has.get("grad_norm"):
            out.append(f'<p class="muted">{_e(w["not_logged"].format(what="grad_norm"))}</p>')
        for note in self.signal_notes:
            out.append(f'<p class="muted">{_e(note)}</p>')
        out.append("</section>")
        if self.zoom:
            rows = self.data.zoom_rows
            a, b = int(rows[0][0]), int(rows[-1][0])
            n = count(len(rows), "step", self.lang)
            out.append(
                f'<section id="zoom" class="plots"><h2>{_e(w["h_zoom"].format(a=a, b=b))}</h2>'
            )
            out.append(self.zoom)
            out.append(f'<p class="muted">{_e(w["zoom_note"].format(n=n))}</p></section>')
        return out

    def alerts(self) -> List[str]:
        d, w, lang = self.data, self.w, self.lang
        out = [f'<section id="alerts"><h2>{_e(w["h_alerts"])}</h2>']
        if not d.incidents:
            out.append(f'<p class="ok-text">{_e(w["no_alerts"])}</p></section>')
            return out
        intro = w["alerts_intro"].format(
            alerts=count(d.alerts, "alert_step", lang),
            inc=count(len(d.incidents), "incident", lang),
            gap=d.incident_gap,
        )
        out.append(f'<p class="muted">{_e(intro)}</p>')
        out.append('<ol class="alerts">')
        for inc in d.incidents[:500]:
            a, b = inc["first_step"], inc["last_step"]
            span = w["span_one"].format(a=a) if a == b else w["span_many"].format(a=a, b=b)
            causes = ", ".join(f"{c} ×{n}" for c, n in inc["causes"].items())
            tag = status_word(inc["status"], lang)
            out.append(
                f'<li><span class="tag {_e(inc["status"])}">{_e(tag)}</span> '
                f"<b>{_e(span)}</b> · {_e(count(inc['alerts'], 'alert_step', lang))} · "
                f"{_e(causes)}<br>{_e(inc['explanation'])}</li>"
            )
        out.append("</ol>")
        if len(d.incidents) > 500:
            more = w["more"].format(n=f"{len(d.incidents) - 500:,}")
            out.append(f'<p class="muted">{_e(more)}</p>')
        out.append("</section>")
        return out

    def tombstones(self) -> List[str]:
        w, tomb = self.w, self.tomb
        out = [f'<section id="tombstones"><h2>{_e(w["h_tomb"])}</h2>']
        if not tomb.get("present"):
            out.append(f'<p class="muted">{_e(w["no_tomb"])}</p></section>')
            return out
        st = tomb["status"]
        if st["ok"]:
            ok = w["tomb_ok"].format(n=count(st["records"], "record", self.lang))
            out.append(f'<p class="ok-text">{_e(ok)}</p>')
        else:
            line = f"line {st['line']}: " if st["line"] and "line" not in st["reason"] else ""
            bad = w["tomb_bad"].format(why=line + st["reason"])
            out.append(f'<p class="bad-text">{_e(bad)}</p>')
        heads = ("t_line", "t_event", "t_time", "t_policy", "t_step", "t_reason", "t_hash")
        out.append("<table><tr>" + "".join(f"<th>{_e(w[h])}</th>" for h in heads) + "</tr>")
        for no, r in tomb["rows"]:
            out.append(self.tomb_row(no, r))
        out.append("</table></section>")
        return out

    def tomb_row(self, no: int, r: Optional[Dict[str, Any]]) -> str:
        if r is None:
            return f"<tr><td>{no:d}</td><td colspan=6>{_e(self.w['not_json'])}</td></tr>"
        scope = r.get("scope") if isinstance(r.get("scope"), dict) else {}
        evid = r.get("evidence") if isinstance(r.get("evidence"), dict) else {}
        h = str(r.get("hash", ""))
        cells = (
            no,
            r.get("event", ""),
            r.get("time", ""),
            r.get("policy", ""),
            scope.get("step", ""),
            evid.get("reason", ""),
        )
        return (
            "<tr>"
            + "".join(f"<td>{_e(v)}</td>" for v in cells)
            + f"<td><code>{_e(h[:24])}…</code></td></tr>"
        )

    def footer(self) -> List[str]:
        from .. import __version__

        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = self.w["footer"].format(v=__version__, now=now, src=self.run_dir)
        return [f'<p class="muted">{_e(text)}</p></main></body></html>']


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
    twin = read_twin(rd, meta)
    plots = _plots_or_note(data, series, _action_steps(tomb), twin)
    notes = tuple(_flat_signal_notes(data, series))
    text = _Page(data, meta, tomb, rd, plots, notes, twin).html()
    dest = Path(out) if out is not None else rd / "report.html"
    return write_atomic(dest, text, fsync=False)
