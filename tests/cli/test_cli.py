"""The anet-lite CLI: exit codes, files written, explanations, errors without tracebacks."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from repo_paths import BENCH_DETECTION, REAL_LOGS_DIR

from anet_lite import Monitor
from anet_lite.cli import main
from anet_lite.records.outputs import COLUMNS, DERIVED, RunLog
from anet_lite.records.tombstone import TombstoneLog

REAL = REAL_LOGS_DIR
REAL_LOGS = sorted(REAL.glob("*.csv")) if REAL.is_dir() else []


def _healthy_csv(path: Path, n: int = 400, seed: int = 0, nan_at: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("step,loss,grad_norm,lr\n")
        for i in range(n):
            loss = (0.5 + 1.5 * math.exp(-i / 100)) * math.exp(0.02 * rng.standard_normal())
            g = math.exp(0.1 * rng.standard_normal())
            cell = "nan" if nan_at is not None and i >= nan_at else f"{loss:.6f}"
            f.write(f"{i},{cell},{g:.6f},0.001\n")
    return path


def test_help_exits_zero_and_has_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "analyze" in out and "exit codes" in out
    for cmd in ("analyze", "report", "verify", "demo"):
        assert main([cmd, "--help"]) == 0
        assert "example" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["analyze"]) == 2
    assert main(["analyze", "x.csv", "--format", "xml"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_python_dash_m_help():
    r = subprocess.run(
        [sys.executable, "-m", "anet_lite", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "analyze" in r.stdout


def test_analyze_healthy_writes_run_folder(tmp_path, capsys):
    src = _healthy_csv(tmp_path / "run1.csv")
    assert main(["analyze", str(src)]) == 0
    out = capsys.readouterr().out
    assert "healthy: no alert" in out
    run = tmp_path / "run1.anet"  # default: next to the input
    for name in ("metrics.csv", "events.jsonl", "meta.json", "report.html"):
        assert (run / name).is_file(), name
        assert str(run / name) in out
    assert not (run / "metrics.jsonl").exists()  # per-step JSONL only with --jsonl
    meta = json.loads((run / "meta.json").read_text())
    assert meta["format"] == "csv" and meta["steps"] == 400
    assert meta["columns"] == {"step": "step", "loss": "loss", "grad_norm": "grad_norm", "lr": "lr"}
    assert len((run / "metrics.csv").read_text().splitlines()) == 401
    # a second run replaces the files instead of appending to them
    assert main(["analyze", str(src), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert len((run / "metrics.csv").read_text().splitlines()) == 401


def test_analyze_nan_loss_alerts_and_explains(tmp_path, capsys):
    src = _healthy_csv(tmp_path / "nan.csv", nan_at=300)
    out_dir = tmp_path / "out"
    assert main(["analyze", str(src), "--out", str(out_dir), "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "ALERT" in out and "step 300" in out
    assert "no longer a finite number" in out  # the Snapshot's explanation
    assert "1 incident" in out  # 100 NaN steps: one incident, not 100 messages
    assert out.count("no longer a finite number") == 1
    assert not (out_dir / "report.html").exists()
    assert main(["analyze", str(src), "--out", str(out_dir), "--lang", "ja", "--quiet"]) == 1


def test_analyze_json_summary(tmp_path, capsys):
    src = _healthy_csv(tmp_path / "j.csv", nan_at=350)
    assert main(["analyze", str(src), "--out", str(tmp_path / "o"), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["steps"] == 400 and d["exit_code"] == 1 and d["alerts"] == 50
    (inc,) = d["incidents"]
    assert inc["first_step"] == 350 and inc["cause"] == "non_finite"
    assert "finite" in inc["explanation"]
    assert Path(d["paths"]["report"]).is_file()


def test_analyze_map(tmp_path, capsys):
    src = tmp_path / "custom.csv"
    rows = ["it,objective,gn"]
    rng = np.random.default_rng(1)
    rows += [f"{i},{2 * math.exp(0.02 * rng.standard_normal()):.5f},1.0" for i in range(300)]
    src.write_text("\n".join(rows) + "\n")
    assert main(["analyze", str(src), "--out", str(tmp_path / "o")]) == 2  # no loss column
    err = capsys.readouterr().err
    assert "no loss column" in err and "--map" in err
    args = ["--map", "step=it", "--map", "loss=objective", "--map", "grad_norm=gn"]
    assert main(["analyze", str(src), "--out", str(tmp_path / "o"), *args]) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["columns"] == {"step": "it", "loss": "objective", "grad_norm": "gn"}
    assert main(["analyze", str(src), "--map", "bogus=x"]) == 2


def _update_csv(path: Path, big_at: int = 120, param_norm: str | None = "param_norm") -> Path:
    """step, loss, grad_norm, update_norm[, <param_norm>], lr: updates of ~1% of the weights'
    norm (50), one of 30% at ``big_at``; without the param_norm column if it is None."""
    rng = np.random.default_rng(7)
    head = "step,loss,grad_norm,update_norm" + (f",{param_norm}" if param_norm else "") + ",lr"
    rows = [head]
    for i in range(300):
        loss = 2.0 * math.exp(0.02 * rng.standard_normal())
        g = math.exp(0.1 * rng.standard_normal())
        u = 50.0 * (0.3 if i == big_at else 0.01 * math.exp(0.1 * rng.standard_normal()))
        pn = ",50.0" if param_norm else ""
        rows.append(f"{i},{loss:.6f},{g:.6f},{u:.6f}{pn},0.001")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_analyze_param_norm_oversized_update(tmp_path, capsys):
    """A log with update_norm and param_norm: a step that moves the weights by 30% alerts
    (oversized_update) at that step, as the live Monitor does; without param_norm it does not."""
    from anet_lite.readers import open_log

    src = _update_csv(tmp_path / "upd.csv")
    out = tmp_path / "o"
    assert main(["analyze", str(src), "--out", str(out), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    (inc,) = d["incidents"]
    assert inc["first_step"] == 120 and inc["cause"] == "oversized_update"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["columns"]["param_norm"] == "param_norm"
    assert meta["columns"]["step_norm"] == "update_norm"
    ev = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    alerts = [e for e in ev if e["alert"]]
    assert [e["step"] for e in alerts] == [120]
    assert alerts[0]["evidence"]["cause"] == "oversized_update"
    assert alerts[0]["evidence"]["rel_update"] == pytest.approx(0.3)
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [r["step"] for r in rows if r["alert"] == "1"] == ["120"]
    assert rows[120]["cause"] == "oversized_update"
    # the same verdicts as the live Monitor fed the same inputs
    m = Monitor()
    live = [
        m.update(
            r.loss,
            step=r.step,
            grad_norm=r.grad_norm,
            step_norm=r.step_norm,
            lr=r.lr,
            param_norm=r.param_norm,
        )
        for r in open_log(src)
    ]
    assert [s.step for s in live if s.alert] == [120]
    # `anet-lite report` on the folder finds the incident too
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    # --map param_norm=COLUMN for a name that is no alias
    src2 = _update_csv(tmp_path / "upd2.csv", param_norm="wnorm")
    out2 = tmp_path / "o2"
    args = ["--out", str(out2), "--quiet", "--no-report"]
    assert main(["analyze", str(src2), *args]) == 0  # wnorm is not read by default
    assert main(["analyze", str(src2), *args, "--map", "param_norm=wnorm"]) == 1
    ev2 = [json.loads(x) for x in (out2 / "events.jsonl").read_text().splitlines()]
    assert [e["evidence"]["cause"] for e in ev2 if e["alert"]] == ["oversized_update"]


def test_analyze_without_param_norm_no_oversized_update(tmp_path, capsys):
    src = _update_csv(tmp_path / "upd.csv", param_norm=None)
    out = tmp_path / "o"
    rc = main(["analyze", str(src), "--out", str(out), "--json", "--no-report"])
    d = json.loads(capsys.readouterr().out)
    assert "param_norm" not in json.loads((out / "meta.json").read_text())["columns"]
    assert all(i["cause"] != "oversized_update" for i in d["incidents"])
    text = (out / "events.jsonl").read_text() + (out / "metrics.csv").read_text()
    assert "oversized_update" not in text and "rel_update" not in text
    assert rc == (1 if d["incidents"] else 0)


def test_analyze_bad_param_norm_cell_names_line_and_column(tmp_path, capsys):
    src = _update_csv(tmp_path / "bad.csv")
    lines = src.read_text().splitlines()
    cells = lines[201].split(",")  # step 200 (line 202)
    cells[4] = "big"
    lines[201] = ",".join(cells)
    src.write_text("\n".join(lines) + "\n")
    assert main(["analyze", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{src}: line 202, column 5 ('param_norm')" in err and "not a number" in err


GRAD_SIGN_RUN = (
    BENCH_DETECTION
    / "cache"
    / "cnn_digits-grad_sign-s4800.csv.gz"
)


def _monitor_jsonl(path: Path, rows: list, processivity: bool) -> bytes:
    """RunLog's JSONL of a Monitor fed ``rows`` (the CSV's cells, read here without the
    readers), with or without the processivity column."""
    num = lambda c: float(c) if c.strip() else None  # noqa: E731
    m = Monitor()
    with RunLog(None, path) as rl:
        for r in rows:
            rl.write(
                m.update(
                    num(r["loss"]),
                    step=int(r["step"]),
                    grad_norm=num(r["grad_norm"]),
                    step_norm=num(r["update_norm"]),
                    noise=num(r["noise"]),
                    lr=num(r["lr"]),
                    time=num(r["time"]),
                    param_norm=num(r["param_norm"]),
                    processivity=num(r["processivity"]) if processivity else None,
                )
            )
    return path.read_bytes()


def test_analyze_passes_processivity_to_the_monitor(tmp_path, capsys):
    """A recorded gradient-sign-bug run (a processivity column): analyze's snapshots are
    those of the Monitor fed the same values, processivity included, and differ from
    those of a Monitor fed everything but processivity; --map processivity=COLUMN reads a
    column of another name."""
    import gzip

    text = gzip.decompress(GRAD_SIGN_RUN.read_bytes()).decode()
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 200 and all(r["processivity"].strip() for r in rows)
    with_p = _monitor_jsonl(tmp_path / "with.jsonl", rows, True)
    without_p = _monitor_jsonl(tmp_path / "without.jsonl", rows, False)
    assert with_p != without_p  # processivity changes the snapshots of this run
    src = tmp_path / "grad_sign.csv"
    src.write_text(text)
    out = tmp_path / "o"
    args = ["--quiet", "--jsonl", "--no-report"]
    assert main(["analyze", str(src), "--out", str(out), *args]) in (0, 1)  # not a usage error
    assert json.loads((out / "meta.json").read_text())["columns"]["processivity"] == "processivity"
    assert (out / "metrics.jsonl").read_bytes() == with_p
    # under a name that is no alias it is read only with --map
    src2 = tmp_path / "renamed.csv"
    src2.write_text(text.replace(",processivity,", ",cosine,", 1))
    main(["analyze", str(src2), "--out", str(tmp_path / "o2"), *args])
    assert (tmp_path / "o2" / "metrics.jsonl").read_bytes() == without_p
    main(
        ["analyze", str(src2), "--out", str(tmp_path / "o3"), *args, "--map", "processivity=cosine"]
    )
    assert (tmp_path / "o3" / "metrics.jsonl").read_bytes() == with_p
    meta3 = json.loads((tmp_path / "o3" / "meta.json").read_text())
    assert meta3["columns"]["processivity"] == "cosine"
    assert meta3["mapping"] == {"processivity": "cosine"}
    assert capsys.readouterr().err == ""


def test_analyze_bad_processivity_cell_names_line_and_column(tmp_path, capsys):
    src = tmp_path / "bad.csv"
    rows = ["step,loss,grad_norm,processivity"]
    rows += [f"{i},2.0,1.0,{'uphill' if i == 57 else 0.25}" for i in range(100)]
    src.write_text("\n".join(rows) + "\n")
    assert main(["analyze", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{src}: line 59, column 4 ('processivity')" in err and "not a number" in err


@pytest.mark.parametrize(
    "name, content, must",
    [
        ("missing.csv", "step,val_loss\n1,2\n", ["line 1", "loss"]),
        (
            "nonnum.csv",
            "step,loss\n1,2\n2,2\n3,2\n4,2\n5,2\nsix,x\n",
            ["line 7", "column 1"],
        ),
        ("nonnum2.csv", "step,loss\n1,2\n2,2\n3,2\n4,2\n5,2\n6,abc\n", ["line 7", "column 2"]),
        ("empty.csv", "", ["line 1", "empty"]),
        ("garbage.bin", None, ["line 1", "binary"]),
        ("diary.txt", "Dear diary,\ntoday the loss went down\n", ["line 1", "loss"]),
        ("notes.txt", "This is not a log\nat all\n", ["line 1", "unknown log format"]),
    ],
)
def test_analyze_bad_files_exit_2_without_traceback(tmp_path, capsys, name, content, must):
    p = tmp_path / name
    if content is None:
        p.write_bytes(os.urandom(3000) + b"\x00")
    else:
        p.write_text(content)
    assert main(["analyze", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(p) in err
    for m in must:
        assert m in err


def test_analyze_missing_input_and_unknown_format(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    p = tmp_path / "x.csv"
    p.write_text("step,loss\n1,2\n")
    assert main(["analyze", str(p), "--format", "tensorboard", "--out", str(tmp_path / "o")]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("log", REAL_LOGS, ids=[p.stem for p in REAL_LOGS])
def test_real_healthy_logs_are_not_called_collapsing(tmp_path, log):
    assert main(["analyze", str(log), "--out", str(tmp_path / "o"), "--quiet", "--no-report"]) == 0


@pytest.mark.skipif(not REAL_LOGS, reason=f"no real logs in {REAL}")
def test_real_logs_never_collapse_or_fail_to_read(tmp_path, capsys):
    """What holds today on every real log: read in full, no collapse / precursor alert."""
    for log in REAL_LOGS[:3]:
        out = tmp_path / log.stem
        rc = main(["analyze", str(log), "--out", str(out), "--json", "--no-report"])
        d = json.loads(capsys.readouterr().out)
        assert rc in (0, 1)
        assert d["steps"] > 1000 and d["gaps"]["rows_without_loss"] == 1
        assert all(i["status"] == "drifting" for i in d["incidents"])


def test_report_command(tmp_path, capsys):
    src = _healthy_csv(tmp_path / "r.csv", n=200)
    run = tmp_path / "r.anet"
    assert main(["analyze", str(src), "--out", str(run), "--no-report", "--quiet"]) == 0
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _tombstones(path: Path, n: int = 3, key: str | None = None) -> Path:
    log = TombstoneLog(path, key=key)
    for i in range(n):
        log.append("rollback", policy="auto", scope={"step": 100 + i}, evidence={"reason": f"r{i}"})
    return path


def test_verify_good_and_tampered(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANET_TOMBSTONE_KEY", raising=False)
    p = _tombstones(tmp_path / "t.jsonl")
    assert main(["verify", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 3 records, head sha256:")
    lines = p.read_text().splitlines()
    lines[1] = lines[1].replace('"r1"', '"r9"')
    p.write_text("\n".join(lines) + "\n")
    assert main(["verify", str(p)]) == 1
    out = capsys.readouterr().out
    assert "line 2" in out and "hash mismatch" in out
    assert main(["verify", str(p), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is False and d["line"] == 2 and d["records"] == 1
    assert main(["verify", str(tmp_path / "none.jsonl")]) == 2


def test_verify_head_and_key_env(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANET_TOMBSTONE_KEY", raising=False)
    p = _tombstones(tmp_path / "k.jsonl", key="s3cret")
    monkeypatch.setenv("MY_KEY", "s3cret")
    assert main(["verify", str(p), "--key-env", "MY_KEY"]) == 0
    monkeypatch.setenv("MY_KEY", "wrong")
    assert main(["verify", str(p), "--key-env", "MY_KEY"]) == 1
    assert main(["verify", str(p), "--key-env", "UNSET_VAR_XYZ"]) == 2
    capsys.readouterr()
    monkeypatch.setenv("MY_KEY", "s3cret")
    assert main(["verify", str(p), "--key-env", "MY_KEY", "--head", "sha256:" + "0" * 64]) == 1
    assert "head mismatch" in capsys.readouterr().out


def test_demo_help_is_the_demos_own(capsys):
    pytest.importorskip("torch")
    assert main(["demo", "--help"]) == 0
    assert "--fault" in capsys.readouterr().out


def _analyze_snaps(n=300):
    rng = np.random.default_rng(3)
    m = Monitor()
    snaps = []
    for i in range(n):
        loss = float("nan") if i == 250 else 2.0 * math.exp(0.05 * rng.standard_normal())
        if i == 200:
            loss *= 40.0  # a bad batch: an alert with evidence (loss_ratio) the CSV lacks
        g = float("inf") if i == 260 else math.exp(0.1 * rng.standard_normal())
        snaps.append(m.update(loss, step=i, grad_norm=g, lr=1e-3 if i < 150 else 1e-4))
    return snaps


def _write_csv(tmp_path, n=300, name="train.csv"):
    snaps = _analyze_snaps(n)
    p = tmp_path / name
    with open(p, "w") as f:
        f.write("step,loss,grad_norm,lr\n")
        for s in snaps:
            ev = s.evidence
            f.write(f"{s.step},{ev['loss']!r},{ev['grad_norm']!r},{ev['lr']!r}\n")
    return p


def test_analyze_files_match_runlog(tmp_path):
    """metrics.csv is RunLog's CSV with the Monitor's statistics at 6 significant digits;
    events.jsonl holds RunLog's JSONL line of every notable step; --jsonl the full JSONL."""
    from anet_lite.readers import open_log

    src = _write_csv(tmp_path)
    out = tmp_path / "o"
    assert main(["analyze", str(src), "--out", str(out), "--quiet", "--jsonl", "--no-report"]) == 1
    ref = tmp_path / "ref"
    m = Monitor()
    with RunLog(ref / "m.csv", ref / "m.jsonl") as rl:
        for r in open_log(src):
            rl.write(m.update(r.loss, step=r.step, grad_norm=r.grad_norm, lr=r.lr))
    assert (out / "metrics.jsonl").read_bytes() == (ref / "m.jsonl").read_bytes()
    got = (out / "metrics.csv").read_text().splitlines()
    want = (ref / "m.csv").read_text().splitlines()
    assert got[0] == want[0] and len(got) == len(want) == 301
    for g_line, w_line in zip(got[1:], want[1:]):
        for col, g_cell, w_cell in zip(COLUMNS, g_line.split(","), w_line.split(",")):
            if col in DERIVED and w_cell not in ("", "nan", "inf", "-inf"):
                assert g_cell == format(float(w_cell), ".6g"), (col, g_cell, w_cell)
            else:
                assert g_cell == w_cell, (col, g_cell, w_cell)
    jl = [json.loads(x) for x in (ref / "m.jsonl").read_text().splitlines()]
    notable = [
        x
        for x in jl
        if x["alert"]
        or x["status"] not in ("healthy", "warming_up")
        or "event" in x["evidence"]
        or x["evidence"].get("spike")
    ]
    ev = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert ev == notable and any(e["evidence"].get("loss_ratio") for e in ev)


def test_report_from_analyze_folder_keeps_the_explanations(tmp_path):
    """`anet-lite report` on analyze's folder (metrics.csv + events.jsonl, no metrics.jsonl)
    finds the same incidents, with the same explanations, as the streamed report."""
    from anet_lite.report.html import RunData, load_run

    src = _write_csv(tmp_path)
    out = tmp_path / "o"
    assert main(["analyze", str(src), "--out", str(out), "--quiet"]) == 1
    meta = json.loads((out / "meta.json").read_text())
    data = load_run(out)
    assert data.steps == meta["steps"] == 300 and data.alerts == meta["alerts"]
    ref = RunData()
    for s in _analyze_snaps():
        ref.add(s)
    assert data.incidents and [i["explanation"] for i in data.incidents] == [
        i["explanation"] for i in ref.incidents
    ]
    assert main(["report", str(out)]) == 0


def test_analyze_keeps_the_steps_before_a_bad_line(tmp_path):
    """A bad line mid-file: exit 2, and every step before it is in metrics.csv (chunks are
    flushed, and the last partial chunk is written on the error too)."""
    p = tmp_path / "bad.csv"
    lines = ["step,loss"] + [f"{i},{1.0 + 0.01 * (i % 5)}" for i in range(9000)]
    lines[6001] = "6000,oops"
    p.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    assert main(["analyze", str(p), "--out", str(out), "--quiet"]) == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    # (step 5999 waits, as every row does, for the next one: rows of one step are joined)
    assert len(rows) == 1 + 5999 and rows[-1].startswith("5998,")
