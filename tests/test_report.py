"""report.html: self-contained, escaped, with plots, alerts and the tombstone chain status."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

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
    a, b = one.finish_series(), many.finish_series()
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and np.array_equal(x, y, equal_nan=True), k
    assert one.has == many.has


def _png_distinct_colours(png: Path) -> int:
    mpimg = pytest.importorskip("matplotlib.image")
    img = mpimg.imread(str(png))
    flat = (np.asarray(img)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(flat, axis=0))


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="no /usr/bin/chromium (Debian: apt-get install -y chromium) for the browser test",
)
def test_report_renders_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run_folder(tmp_path / "run4")
    html_path = write_report(run).resolve()
    png = tmp_path / "shot.png"
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
    shot = subprocess.run(
        base + [f"--screenshot={png}", "--window-size=1200,2000", html_path.as_uri()],
        capture_output=True,
        timeout=90,
        env=env,
    )
    assert png.is_file() and png.stat().st_size > 10_000, shot.stderr[-2000:]
    assert _png_distinct_colours(png) > 50  # not a blank page
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    dom = subprocess.run(
        base + ["--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    ).stdout
    assert "<svg" in dom and 'id="alerts"' in dom and 'class="alerts"' in dom
    assert 'id="tombstones"' in dom and "Chain verified" in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


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
