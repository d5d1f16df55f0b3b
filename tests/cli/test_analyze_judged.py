"""`analyze` says how much of a log it could judge: a log that never left warm-up is not
"healthy"."""

from __future__ import annotations

import json
import math

from anet_lite.cli import main


def _csv(path, n):
    rows = ["step,loss"]
    for t in range(n):
        loss = 2.0 * math.exp(-t / 20) + 0.3
        rows.append(f"{t},{loss * (2.0 if t >= 40 else 1.0)}")  # doubles at step 40
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_log_that_never_left_warm_up_is_not_enough_to_judge(tmp_path, capsys):
    src = _csv(tmp_path / "short.csv", 60)
    assert main(["analyze", str(src), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "not enough steps to judge: all 60 steps were warm-up" in out
    assert "healthy" not in out
    assert main(["analyze", str(src), "--no-report", "--json", "--out", str(tmp_path / "j")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["judged_steps"] == 0 and summary["steps"] == 60


def test_a_long_healthy_log_says_how_many_steps_were_judged(tmp_path, capsys):
    losses = [2.0 * math.exp(-t / 60) + 0.3 + 0.01 * (t % 3) for t in range(400)]
    rows = ["step,loss"] + [f"{t},{v}" for t, v in enumerate(losses)]
    src = tmp_path / "long.csv"
    src.write_text("\n".join(rows) + "\n")
    assert main(["analyze", str(src), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "healthy: no alert in 400 steps (" in out and "judged after warm-up)" in out


def test_a_sparse_log_counts_its_lines_and_the_steps_they_span(tmp_path, capsys):
    # a log written every 10th step: 40 lines over steps 0-390, warm-up over after 300
    # steps (not 300 lines), so its last lines are judged
    losses = [2.0 * math.exp(-t / 60) + 0.3 + 0.01 * (t % 3) for t in range(0, 400, 10)]
    rows = ["step,loss"] + [f"{10 * i},{v}" for i, v in enumerate(losses)]
    src = tmp_path / "sparse.csv"
    src.write_text("\n".join(rows) + "\n")
    assert main(["analyze", str(src), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "40 log lines over steps 0-390 (csv" in out
    assert "healthy: no alert in 40 log lines (" in out
    assert "not enough steps" not in out
    assert main(["analyze", str(src), "--out", str(tmp_path / "run")]) == 0
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "no alert in 40 log lines" in html


def _flat_csv(path, first_step=0, n=300):
    rows = ["step,loss"] + [
        f"{first_step + 10 * t if first_step else t},{2.3 + 0.02 * ((7 * t) % 5)}" for t in range(n)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_log_whose_loss_ends_where_it_started_is_not_called_healthy(tmp_path, capsys):
    # no alert (nothing rises), but nothing was learned either: say so, exit 0
    src = _flat_csv(tmp_path / "flat.csv")
    assert main(["analyze", str(src), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "no alert in 300 steps (" in out and "healthy" not in out
    assert "but the loss ends where it started: its last 20 values average 1.0" in out
    assert main(["analyze", str(src), "--no-report", "--json", "--out", str(tmp_path / "j")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0.97 < summary["end_vs_first"] < 1.03 and summary["alerts"] == 0
    # a log that starts mid-run (a resumed run, the second half of a record): no progress
    # over the logged steps, said as such
    src = _flat_csv(tmp_path / "late.csv", first_step=30_000)
    assert main(["analyze", str(src), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "but the loss ends where this log starts (step 30,000)" in out
    # a run that learned ends far below its first loss: healthy, and its ratio is reported
    src = _csv(tmp_path / "learns.csv", 400)
    main(["analyze", str(src), "--no-report", "--json", "--out", str(tmp_path / "k")])
    assert json.loads(capsys.readouterr().out)["end_vs_first"] < 0.9
