"""The report's plots as inline SVG (matplotlib, imported lazily): the signals over the whole
run, and the same signals zoomed on the first incident so that a one-step incident is not a
sliver at the edge of a long run."""

from __future__ import annotations

import io
import re
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .data import RunData
from .words import words

PLOT_LIMIT = 1e100  # plotted values are clipped to [-PLOT_LIMIT, PLOT_LIMIT]
TWIN_COLOUR = "#e11d48"  # the twin run's loss (dashed)
MIN_SPAN = 0.006  # an incident is drawn at least this fraction of the x range wide

_PANELS = ("loss", "grad_norm", "lr", "theta", "f_total", "zscore")
_ZOOM_PANELS = ("loss", "grad_norm", "lr", "zscore")
_BLUE, _RED, _DARK_RED, _GREY, _AMBER, _PURPLE = (
    "#2563eb",
    "#ef4444",
    "#dc2626",
    "#6b7280",
    "#f59e0b",
    "#7c3aed",
)


def _clean(ys: np.ndarray) -> np.ndarray:
    """Non-finite -> NaN (a gap), and values clipped to ±PLOT_LIMIT: matplotlib's tickers
    overflow on spans near 1e308 (the tables and files keep the values exact)."""
    with np.errstate(all="ignore"):
        ys = np.where(np.isfinite(ys), ys, np.nan)
        return np.clip(ys, -PLOT_LIMIT, PLOT_LIMIT)


def _log_if_wide(ax: Any, *arrays: np.ndarray, ratio: float = 20.0) -> None:
    """Log y axis when every finite value is positive and they span more than ``ratio``."""
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    if len(vals) and vals.min() > 0 and vals.max() > ratio * vals.min():
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(vals.min(), vals.max() / PLOT_LIMIT) / 2)


def _style(ax: Any, key: str, ys: np.ndarray, twin: Optional[np.ndarray]) -> None:
    """Axis scale and reference lines of one panel."""
    if key == "loss":
        _log_if_wide(ax, ys, *(() if twin is None else (twin,)))
    elif key in ("lr", "grad_norm"):
        _log_if_wide(ax, ys)
    elif key == "theta":
        ax.axhline(0.6, color="#9ca3af", lw=0.8, ls=":")
    elif key == "zscore":
        ax.axhline(2.5, color="#9ca3af", lw=0.8, ls=":")
        fin = ys[np.isfinite(ys)]
        if len(fin) and np.abs(fin).max() > 50:
            ax.set_yscale("symlog", linthresh=10)


def _marks(
    ax: Any,
    data: RunData,
    actions: Sequence[Tuple[int, str]],
    lo: float,
    hi: float,
) -> None:
    """Incidents (shaded, at least MIN_SPAN of the range wide), schedule events and the
    Guard's actions, within [lo, hi]."""
    min_w = MIN_SPAN * max(hi - lo, 1.0)
    for inc in data.incidents[:300]:
        a, b = inc["first_step"] - 0.5, inc["last_step"] + 0.5
        if b < lo or a > hi:
            continue
        if b - a < min_w:
            mid = (a + b) / 2
            a, b = mid - min_w / 2, mid + min_w / 2
        ax.axvspan(a, b, color=_DARK_RED if inc["collapsed"] else _RED, alpha=0.18, lw=0)
    for s, _ in data.events[:100]:
        if lo <= s <= hi:
            ax.axvline(s, color=_GREY, lw=0.7, ls="--")
    for s, _ in actions:
        if lo <= s <= hi:
            ax.axvline(s, color=_PURPLE, lw=1.0)


def _legend(
    fig: Any, data: RunData, actions: Sequence[Any], twin: Optional[Dict[str, Any]]
) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    w = words(data.lang)
    handles = [Line2D([], [], color=_BLUE, lw=1, label=w["l_value"])]
    if twin is not None and len(twin.get("x", ())):
        handles.append(
            Line2D([], [], color=TWIN_COLOUR, lw=1, ls="--", label=w[f"l_twin_{twin['guard']}"])
        )
    if data.incidents:
        handles.append(Patch(color=_RED, alpha=0.3, label=w["l_incident"]))
    if data.events:
        handles.append(Line2D([], [], color=_GREY, ls="--", label=w["l_event"]))
    if data.spikes:
        handles.append(Line2D([], [], color=_AMBER, marker="o", ls="", label=w["l_spike"]))
    if actions:
        handles.append(Line2D([], [], color=_PURPLE, label=w["l_action"]))
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), frameon=False)


def _rc(lang: str) -> Dict[str, Any]:
    rc = {"svg.hashsalt": "anet-lite", "font.size": 9, "axes.grid": True}
    # Japanese labels stay text (the page's CJK font stack draws them); English ones are
    # paths (the same look everywhere, no font needed)
    rc["svg.fonttype"] = "none" if lang == "ja" else "path"
    return rc


def _figure(n: int, height: float) -> Tuple[Any, Any]:
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height * n + 0.9))
    FigureCanvasSVG(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    h = fig.get_figheight()  # fixed margins (in inches): tight_layout costs ~0.25 s
    fig.subplots_adjust(left=0.075, right=0.985, bottom=0.45 / h, top=1.0 - 0.6 / h, hspace=0.12)
    return fig, axes


def _svg(fig: Any, aria: str) -> str:
    buf = io.StringIO()
    with warnings.catch_warnings():  # CJK glyphs missing from the measuring font
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        fig.savefig(
            buf,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    aria = aria.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{aria}" ', 1)


def _panels(data: RunData, keys: Sequence[str], ok: Any) -> List[Tuple[str, str]]:
    w = words(data.lang)
    return [(k, w[f"p_{k}"]) for k in keys if ok(k)]


def _twin_in(twin: Optional[Dict[str, Any]], lo: float, hi: float) -> Iterator[np.ndarray]:
    """The twin's (x, loss) rows within [lo, hi] (nothing without a twin)."""
    if twin is None or not len(twin.get("x", ())):
        return
    x, y = np.asarray(twin["x"], float), np.asarray(twin["loss"], float)
    keep = (x >= lo) & (x <= hi)
    yield x[keep]
    yield y[keep]


def svg_plots(
    data: RunData,
    series: Dict[str, Any],
    actions: Sequence[Tuple[int, str]],
    twin: Optional[Dict[str, Any]] = None,
) -> str:
    """The signals over the whole run, one panel each ("" when there is nothing to plot)."""
    from matplotlib import rc_context

    x = series["x"]
    panels = _panels(data, _PANELS, lambda k: data.has.get(k))
    if not panels or len(x) == 0:
        return ""
    lo, hi = float(x[0]), float(data.last_step if data.last_step is not None else x[-1])
    tw = list(_twin_in(twin, lo, hi))
    with rc_context(_rc(data.lang)):
        fig, axes = _figure(len(panels), 1.9)
        xs = np.repeat(x, 2)
        for ax, (key, title) in zip(axes, panels):
            ys = _clean(np.column_stack(series[key]).ravel())
            twin_y = None
            if key == "loss" and tw:
                twin_y = _clean(tw[1])
                ax.plot(tw[0], twin_y, color=TWIN_COLOUR, lw=0.9, ls="--")
            ax.plot(xs, ys, color=_BLUE, lw=0.8)
            _style(ax, key, ys, twin_y)
            if key == "loss" and data.spikes:
                sx, sy = zip(*data.spikes)
                ax.plot(sx, _clean(np.asarray(sy, float)), "o", ms=3, color=_AMBER, zorder=3)
            _marks(ax, data, actions, lo, hi)
            ax.set_ylabel(title, fontsize=8)
        pad = max(0.01 * (hi - lo), 1.0)
        axes[-1].set_xlim(lo - pad, hi + pad)
        axes[-1].set_xlabel(words(data.lang)["p_step"])
        _legend(fig, data, actions, twin)
        return _svg(fig, words(data.lang)["aria"])


def svg_zoom(
    data: RunData,
    actions: Sequence[Tuple[int, str]],
    twin: Optional[Dict[str, Any]] = None,
) -> str:
    """The loss, gradient norm, lr and z over the raw steps around the first alert ("" when
    the run had no alert)."""
    from matplotlib import rc_context

    z = data.zoom()
    x = z["x"]
    if len(x) == 0:
        return ""
    panels = _panels(data, _ZOOM_PANELS, lambda k: bool(np.isfinite(z[k]).any()))
    if not panels:
        return ""
    lo, hi = float(x[0]), float(x[-1])
    tw = list(_twin_in(twin, lo, hi))
    with rc_context(_rc(data.lang)):
        fig, axes = _figure(len(panels), 1.5)
        for ax, (key, title) in zip(axes, panels):
            ys = _clean(z[key])
            twin_y = None
            if key == "loss" and tw:
                twin_y = _clean(tw[1])
                ax.plot(tw[0], twin_y, ".--", ms=3, color=TWIN_COLOUR, lw=0.9)
            ax.plot(x, ys, ".-", ms=3, color=_BLUE, lw=0.9)
            _style(ax, key, ys, twin_y)
            _marks(ax, data, actions, lo, hi)
            ax.set_ylabel(title, fontsize=8)
        axes[-1].set_xlim(lo - 0.5, hi + 0.5)
        axes[-1].set_xlabel(words(data.lang)["p_step"])
        _legend(fig, data, actions, twin)
        return _svg(fig, words(data.lang)["aria"])
