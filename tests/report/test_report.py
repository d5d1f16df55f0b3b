"""report.html: self-contained, escaped, with plots, alerts and the tombstone chain status."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from anet_lite import Monitor, RunLog, TombstoneLog
from anet_lite.report import html as report_html
from anet_lite.report import load_run, write_report

EVIL = "<script>alert(1)</script>"
CHROMIUM = "/usr/bin/chromium"


def _run_folder(d: Path, *, name: str = EVIL, n: int = 400, collapse_at: int = 300) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tomb = TombstoneLog(d / "tombstones.jsonl")
    with RunLog(d / "metrics.csv", d / "metrics.jsonl") as rl:
        m = Monitor(run_log=rl, tombstones=tomb)
        for i in range(n):
            loss = 2.0 * math.exp(0.02 * rng.standard_normal())
            if i == 200:
                loss *= 2.5  # a one-step spike
            if i >= collapse_at:
                loss = float("nan")
            lr = 1e-3 if i < 150 else 5e-4  # a schedule event at 150
            snap = m.update(loss, step=i, grad_norm=math.exp(0.1 * rng.standard_normal()), lr=lr)
            if snap.alert and i < collapse_at + 2:
                m.decide(snap)
    (d / "meta.json").write_text(
        json.dumps({"run_name": name, "source": f"/tmp/{name}.csv", "format": "csv"})
    )
    return d


def _protected_folder(d: Path, *, lang: str = "en", twin: str = "") -> Path:
    """A run whose lr jumps x100 for one step (step 300) and whose Guard slowed it down
    (one tombstone record); it ends healthy. ``twin``: a folder name beside it whose
    metrics.csv meta.json names as the same run without the Guard."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with RunLog(d / "metrics.csv", d / "metrics.jsonl") as rl:
        m = Monitor(run_log=rl, tombstones=TombstoneLog(d / "tombstones.jsonl"))
        for i in range(400):
            loss = 2.0 * math.exp(-i / 300) * math.exp(0.02 * rng.standard_normal())
            lr = 0.1 if i == 300 else 1e-3
            snap = m.update(loss, step=i, grad_norm=math.exp(0.1 * rng.standard_normal()), lr=lr)
            if snap.alert:
                m.decide(snap)
    meta = {"run_name": "guarded", "lang": lang}
    if twin:
        meta["twin"] = {"path": f"../{twin}", "guard": "watching"}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("ANET_TOMBSTONE_KEY", raising=False)


def test_report_is_self_contained_and_escaped(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run_folder(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert EVIL not in text
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "@import" not in text
    assert not re.search(r"url\(\s*['\"]?(?!#)", text)  # only in-document refs (clip paths)
    assert "<svg" in text and 'id="plots"' in text
    assert 'id="alerts"' in text and "step 300" in text
    assert "no longer a finite number" in text  # the first alert's explanation
    assert "Chain verified" in text
    assert "Collapsed at step 300" in text


def test_report_from_csv_only_and_tampered_chain(tmp_path):
    run = _run_folder(tmp_path / "run2", name="plain")
    (run / "metrics.jsonl").unlink()
    lines = (run / "tombstones.jsonl").read_text().splitlines()
    assert len(lines) >= 2
    lines[0] = lines[0].replace('"rollback"', '"none"').replace('"skip_step"', '"none"')
    lines[0] = lines[0].replace('"stop"', '"none"').replace('"slow_down"', '"none"')
    (run / "tombstones.jsonl").write_text("\n".join(lines) + "\n")
    text = write_report(run, tmp_path / "elsewhere" / "r.html").read_text()
    assert "Chain broken" in text and "line 1" in text
    data = load_run(run)
    assert data.steps == 400 and data.incidents[0]["first_step"] == 300


def test_report_without_matplotlib_still_written(tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "plots_available", lambda: False)
    run = _run_folder(tmp_path / "run3", name="x")
    text = write_report(run).read_text()
    assert "pip install &#x27;anet-lite[report]&#x27;" in text
    assert "<svg" not in text


def test_incidents_group_alerts_within_50_steps():
    data = report_html.RunData()
    from anet_lite.verdict import Snapshot

    def snap(step, alert):
        ev = {"loss": 1.0, "cause": "divergence"} if alert else {"loss": 1.0}
        return Snapshot(
            1.0,
            0.0,
            0.0,
            0.0,
            alert,
            3.0,
            step=step,
            status="precursor" if alert else "healthy",
            alert=alert,
            evidence=ev,
        )

    for s in range(1000):
        data.add(snap(s, s in (100, 101, 140, 300, 351, 352)))
    starts = [i["first_step"] for i in data.incidents]
    assert starts == [100, 300, 351]
    assert [i["alerts"] for i in data.incidents] == [3, 1, 2]


def test_decimation_keeps_extremes_in_constant_memory():
    data = report_html.RunData()
    from anet_lite.verdict import Snapshot

    n = 200_000
    for s in range(n):
        loss = 50.0 if s == 123_457 else 1.0
        data.add(Snapshot(1.0, 0.0, 0.0, 0.0, False, 0.0, step=s, evidence={"loss": loss}))
    series = data.finish_series()
    assert len(series["x"]) <= 2 * 1500 + 1
    assert np.nanmax(series["loss"][1]) == 50.0 and series["x"][0] == 0


@pytest.mark.parametrize("chunk", [1, 5, 4096, 100_000])
def test_add_many_equals_add_one_by_one(chunk):
    """RunData.add_many (analyze's chunked path) gives the same report data as add()."""
    rng = np.random.default_rng(chunk)
    m = Monitor()
    snaps = []
    for i in range(30_000):  # > 512 * 2 rows: the decimator halves its buckets several times
        loss = 2.0 * math.exp(0.05 * rng.standard_normal())
        if i % 5000 == 4000:
            loss *= 30.0
        if 20_000 <= i < 20_010:
            loss = float("nan")
        lr = 1e-3 if i < 10_000 else 1e-4
        g = None if i % 3 == 0 else math.exp(0.1 * rng.standard_normal())
        snaps.append(m.update(loss, step=None if i % 777 == 0 else i, grad_norm=g, lr=lr))
    one, many = report_html.RunData(), report_html.RunData()
    for s in snaps:
        one.add(s)
    for lo in range(0, len(snaps), chunk):
        many.add_many(snaps[lo : lo + chunk])
    assert many.summary() == one.summary() and one.alerts > 0 and one.n_events > 0
    assert (many.events, many.spikes, many.statuses) == (one.events, one.spikes, one.statuses)
    assert (many.collapse_step, many.last_status) == (one.collapse_step, one.last_status)
    assert one.collapse_step is not None and len(one.zoom_rows) == 1 + 30 + 40
    assert np.array_equal(np.array(many.zoom_rows), np.array(one.zoom_rows), equal_nan=True)
    a, b = one.finish_series(), many.finish_series()
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and np.array_equal(x, y, equal_nan=True), k
    assert one.has == many.has


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_a_run_that_ends_where_it_started_is_not_called_healthy(chunk):
    from anet_lite.verdict import Snapshot

    def run(losses, first_step=0, lang="en"):
        snaps = [
            Snapshot(1.0, 0.0, 0.0, 0.0, False, 0.0, step=first_step + i, status="healthy",
                     evidence={"loss": v})
            for i, v in enumerate(losses)
        ]
        one, many = report_html.RunData(lang=lang), report_html.RunData(lang=lang)
        for s in snaps:
            one.add(s)
        for lo in range(0, len(snaps), chunk):
            many.add_many(snaps[lo : lo + chunk])
        assert many.end_vs_first() == one.end_vs_first()
        return one

    learned = [2.3 * math.exp(-t / 30) + 0.1 for t in range(200)]
    kind, sentence = run(learned).verdict()
    assert kind == "ok" and sentence.startswith("Healthy")
    # learned a little, then back at its first loss (a network that died at chance);
    # rows without a loss at the end are not its end level
    died = learned[:8] + [2.39, 2.41] * 95 + [None] * 5
    data = run(died)
    assert data.end_vs_first() == pytest.approx(1.0, abs=0.01)
    kind, sentence = data.verdict()
    assert kind == "warn" and "the loss ends where it started" in sentence
    assert "last 20 values average 1.00× the first" in sentence
    assert "始めの値に戻って" in run(died, lang="ja").verdict()[1]
    kind, sentence = run(died, first_step=30_000).verdict()
    assert kind == "warn" and "ends where this log starts (step 30000)" in sentence
    # too short to say, or a loss that is not positive (no ratio): no such sentence
    assert run(died[:30]).end_vs_first() is None
    assert run([None if x is None else -x for x in died]).end_vs_first() is None


def _png_distinct_colours(png: Path) -> int:
    mpimg = pytest.importorskip("matplotlib.image")
    img = mpimg.imread(str(png))
    flat = (np.asarray(img)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(flat, axis=0))


def _chromium(tmp_path: Path, html_path: Path, png: Optional[Path] = None) -> str:
    """Headless Chromium: a screenshot into ``png`` (1200 x 2000), or the rendered DOM."""
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    what = ["--dump-dom"] if png is None else [f"--screenshot={png}", "--window-size=1200,2000"]
    r = subprocess.run(
        base + what + [html_path.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    if png is not None:
        assert png.is_file() and png.stat().st_size > 10_000, r.stderr[-2000:]
    return r.stdout


def _header_rgb(png: Path) -> tuple:
    mpimg = pytest.importorskip("matplotlib.image")
    img = np.asarray(mpimg.imread(str(png)))
    return tuple(round(float(v) * 255) for v in img[12, 600, :3])


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="no /usr/bin/chromium (Debian: apt-get install -y chromium) for the browser test",
)
def test_report_renders_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    html_path = write_report(_run_folder(tmp_path / "run4"))
    png = tmp_path / "shot.png"
    _chromium(tmp_path, html_path, png)
    assert _png_distinct_colours(png) > 50  # not a blank page
    assert _header_rgb(png) == (0xB9, 0x1C, 0x1C)  # red: this run failed (collapsed)
    dom = _chromium(tmp_path, html_path)
    assert "<svg" in dom and 'id="alerts"' in dom and 'class="alerts"' in dom
    assert 'id="tombstones"' in dom and "Chain verified" in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert 'id="zoom"' in dom and "Around the first incident (steps 270 – 340)" in dom

    # the Guard acted and the run recovered: a teal "protected" header, not a red one
    _run_folder(tmp_path / "p-noguard", name="twin")
    html_path = write_report(_protected_folder(tmp_path / "p", twin="p-noguard"))
    _chromium(tmp_path, html_path, png)
    assert _header_rgb(png) == (0x0F, 0x76, 0x6E)
    dom = _chromium(tmp_path, html_path)
    assert "Protected: 1 incident, recovered." in dom and "1 alert steps" not in dom
    assert "ok (1 record)" in dom and "../p-noguard" in dom

    # --lang ja: the page is Japanese, says so, and asks for a CJK font
    html_path = write_report(_protected_folder(tmp_path / "ja", lang="ja"))
    dom = _chromium(tmp_path, html_path)
    assert '<html lang="ja">' in dom and "Hiragino Sans" in dom
    assert "概要" in dom and "保護済み" in dom and "Summary" not in dom
    _chromium(tmp_path, html_path, png)
    assert _png_distinct_colours(png) > 50


def test_the_report_says_when_a_signal_could_not_be_computed(tmp_path):
    # 8 steps: the precursor window never has a baseline behind it (z reads 0) and no
    # fingerprint reference is ever taken (θ stays 1): the page says so under the plots
    from anet_lite.cli import main

    pytest.importorskip("matplotlib")
    src = tmp_path / "tiny.csv"
    rows = "".join(f"{t},{2.0 * math.exp(-t / 5) + 0.3}\n" for t in range(8))
    src.write_text("step,loss\n" + rows)
    assert main(["analyze", str(src), "--out", str(tmp_path / "run"), "-q"]) == 0
    text = (tmp_path / "run" / "report.html").read_text()
    assert "The precursor z could not be computed on this run" in text
    assert "θ stays 1.0 on every step" in text


def _section(text: str, sid: str) -> str:
    start = text.index(f'id="{sid}"')
    return text[start : text.index("</section>", start)]


def test_counts_read_singular_and_plural(tmp_path):
    from anet_lite.report.words import count

    assert count(1, "alert_step") == "1 alert step" and count(2, "alert_step") == "2 alert steps"
    assert count(0, "record") == "0 records" and count(1, "record") == "1 record"
    assert count(1_234, "incident") == "1,234 incidents"
    assert count(1, "alert_step", "ja") == "警報ステップ 1 件"
    pytest.importorskip("matplotlib")
    text = write_report(_protected_folder(tmp_path / "one")).read_text("utf-8")
    assert "1 alert steps" not in text and "(1 records)" not in text and "1 incidents" not in text
    assert "ok (1 record)" in text and "Chain verified: 1 record, intact." in text
    alerts = _section(text, "alerts")
    assert "1 alert step grouped into 1 incident" in alerts and "· 1 alert step ·" in alerts


def test_header_says_protected_when_the_guard_acted_and_the_run_recovered(tmp_path):
    pytest.importorskip("matplotlib")
    text = write_report(_protected_folder(tmp_path / "p")).read_text("utf-8")
    header = text[text.index("<header") : text.index("</header>")]
    assert 'class="protected"' in header and "Protected: 1 incident, recovered." in header
    assert "slow down" in header and "step 300" in header
    # the same run with no tombstone log: alerts that ended healthy, amber, not red
    (tmp_path / "p" / "tombstones.jsonl").unlink()
    text = write_report(tmp_path / "p").read_text("utf-8")
    assert '<header class="warn"' in text and "The run ended healthy." in text
    # red only for a run that failed: its loss stopped being finite (the first alert and
    # the collapse are the same step here)
    red = write_report(_run_folder(tmp_path / "c", name="c")).read_text("utf-8")
    assert '<header class="bad"' in red and "Collapsed at step 300" in red


def test_collapse_step_is_the_first_non_finite_loss_not_the_incident_start(tmp_path):
    from anet_lite.verdict import Snapshot

    data = report_html.RunData()
    for s in range(100):
        loss = 1.0 if s < 55 else float("nan")
        alert = s >= 50  # alerts from 50, the loss non-finite from 55: one incident
        st = "collapsed" if s >= 55 else ("precursor" if alert else "healthy")
        ev = {"loss": loss, "cause": "non_finite" if s >= 55 else "grad_explosion"}
        data.add(
            Snapshot(1.0, 0.0, 0.0, 0.0, alert, 3.0, step=s, status=st, alert=alert, evidence=ev)
        )
    assert data.incidents[0]["first_step"] == 50 and data.collapse_step == 55
    kind, sentence = data.verdict()
    assert kind == "bad" and sentence.startswith("Collapsed at step 55")
    assert "5 steps before, at step 50" in sentence


def test_lr_panel_and_zoom_on_the_first_incident(tmp_path):
    pytest.importorskip("matplotlib")
    run = _protected_folder(tmp_path / "z")
    text = write_report(run).read_text("utf-8")
    plots = _section(text, "plots")
    assert plots.count('<g id="axes_') == 6  # loss, grad norm, lr, θ, F_Total, z
    zoom = _section(text, "zoom")
    assert "Around the first incident (steps 270 – 340)" in zoom and "<svg" in zoom
    assert zoom.count('<g id="axes_') == 4  # loss, grad norm, lr, z
    data = load_run(run)
    z = data.zoom()
    assert list(z["x"]) == list(range(270, 341))
    assert z["lr"][30] == 0.1 and z["lr"][29] == z["lr"][31] == 1e-3
    # without an lr column there is no lr panel
    (run / "metrics.jsonl").unlink()
    csv_text = (run / "metrics.csv").read_text().splitlines()
    col = csv_text[0].split(",").index("lr")
    rows = [",".join(c for j, c in enumerate(r.split(",")) if j != col) for r in csv_text]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert _section(write_report(run).read_text("utf-8"), "plots").count('<g id="axes_') == 5


def test_a_one_step_incident_is_drawn_wider_than_a_sliver():
    pytest.importorskip("matplotlib")
    from anet_lite.report import _plots

    class Ax:
        def __init__(self):
            self.spans = []

        def axvspan(self, a, b, **kw):
            self.spans.append((a, b))

        def axvline(self, *a, **kw):
            pass

    data = report_html.RunData()
    data.incidents = [{"first_step": 9_000, "last_step": 9_000, "collapsed": False}]
    ax = Ax()
    _plots._marks(ax, data, [], 0, 10_000)
    ((a, b),) = ax.spans
    assert b - a == pytest.approx(_plots.MIN_SPAN * 10_000) and a < 9_000 < b


def test_fp32_runs_get_no_loss_scale_advice():
    from anet_lite.monitor.causes import CAUSES
    from anet_lite.report.words import FP16_ONLY, fit_precision

    texts = {lang: [" ".join(getattr(c, lang)) for c in CAUSES.values()] for lang in ("en", "ja")}
    for lang, pairs in FP16_ONLY.items():
        for old, _ in pairs:  # each fragment is still the registry's wording
            assert any(old in t for t in texts[lang]), (lang, old)
    for lang in ("en", "ja"):
        for t in texts[lang]:
            fitted = fit_precision(t, lang, "fp32")
            assert "loss scale" not in fitted and "mixed-precision" not in fitted
            assert "損失スケール" not in fitted and "混合精度" not in fitted
            assert fit_precision(t, lang, None) == t and fit_precision(t, lang, "fp16") == t
    from anet_lite.verdict import Snapshot

    ev = {"loss": float("nan"), "cause": "non_finite"}
    snap = Snapshot(
        1.0, 0.0, 0.0, 0.0, True, 3.0, step=5, status="collapsed", alert=True, evidence=ev
    )
    amp, fp32 = report_html.RunData(), report_html.RunData(precision="fp32")
    amp.add(snap)
    fp32.add(snap)
    assert "check the loss scale" in amp.incidents[0]["explanation"]
    assert "loss scale" not in fp32.incidents[0]["explanation"]
    assert fp32.incidents[0]["explanation"].startswith("The loss or gradient is no longer")


def test_report_in_japanese(tmp_path):
    pytest.importorskip("matplotlib")
    text = write_report(_protected_folder(tmp_path / "ja", lang="ja")).read_text("utf-8")
    assert '<html lang="ja">' in text and "Noto Sans CJK JP" in text
    for ja in ("概要", "ステップごとの信号", "最初のインシデントの周辺", "警報", "墓標チェーン"):
        assert ja in text, ja
    assert "保護済み：インシデント 1 件、回復しました" in text
    assert "<th>行</th><th>対処</th>" in text  # the tombstone table's headers
    for en in ("Summary", "Signals over steps", "Alerts", "tombstone chain", "Chain verified"):
        assert en not in text, en
    assert "学習率" in _section(text, "plots")  # the axis labels stay text (fonttype none)


def test_twin_loss_curve_and_a_missing_twin(tmp_path):
    pytest.importorskip("matplotlib")
    _run_folder(tmp_path / "g-noguard", name="twin")
    run = _protected_folder(tmp_path / "g", twin="g-noguard")
    text = write_report(run).read_text("utf-8")
    assert "the same run without the Guard (--no-guard): ../g-noguard" in text
    twin = report_html.read_twin(run, json.loads((run / "meta.json").read_text()))
    assert twin is not None and "error" not in twin and len(twin["x"]) == 2 * 400
    # the twin's curve is drawn in both plots, in its own colour
    from anet_lite.report._plots import TWIN_COLOUR

    for sid in ("plots", "zoom"):  # the legend's line and the curve
        assert _section(text, sid).count(f"stroke: {TWIN_COLOUR}") >= 2, sid
    import shutil as sh

    sh.rmtree(tmp_path / "g-noguard")
    text = write_report(run).read_text("utf-8")
    assert "its metrics could not be read" in text and "<svg" in text
