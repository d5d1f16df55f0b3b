"""``anet-lite demo``: a real model, a real fault, detected, explained, acted on, recorded.

Runs are short (300 steps, the fault at step 200; ~1-3 s each on one CPU thread) and shared
between tests through module-scoped fixtures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")

from anet_lite import verify
from anet_lite.cli import main
from anet_lite.cli.demo import run_demo

pytestmark = pytest.mark.torch

STEPS, AT = 300, 200
FILES = ("metrics.csv", "metrics.jsonl", "tombstones.jsonl", "meta.json", "report.html")


def demo(out: Path, fault: str, *flags: str) -> dict:
    """Run ``anet-lite demo FAULT ... --out OUT`` in-process; return meta.json (+ exit code)."""
    code = main(["demo", fault, "--steps", str(STEPS), "--out", str(out), "--quiet", *flags])
    meta = json.loads((out / "meta.json").read_text("utf-8"))
    meta["exit_code"] = code
    meta["out"] = out
    return meta


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    unguarded = demo(tmp / "lr-noguard", "lr_jump", "--no-guard")  # first: the guarded run's twin
    return {
        "healthy": demo(tmp / "healthy", "none"),
        "guarded": demo(tmp / "lr", "lr_jump"),
        "unguarded": unguarded,
    }


def nonfinite(v) -> bool:
    return isinstance(v, str) or not math.isfinite(v)  # meta.json writes nan as "nan"


def test_guarded_run_writes_a_verified_run_folder(runs):
    g = runs["guarded"]
    assert g["exit_code"] == 0
    for name in FILES:
        assert (g["out"] / name).is_file(), name
    assert "<html" in (g["out"] / "report.html").read_text("utf-8")
    res = verify(g["out"] / "tombstones.jsonl")
    assert res.ok and res.records == len(g["actions"]) >= 1
    assert g["tombstones"]["ok"] and g["fault_step"] == AT and g["steps_run"] == STEPS
    lines = (g["out"] / "metrics.csv").read_text("utf-8").splitlines()
    assert lines[0].startswith("step,status,alert") and len(lines) == STEPS + 1


def test_alert_comes_after_the_fault_and_before_the_blow_up(runs):
    g, u = runs["guarded"], runs["unguarded"]
    first = g["first_alert"]
    assert first is not None and first["step"] >= AT
    assert u["blowup"] is not None, "without the Guard the lr x100 must blow the loss up"
    assert first["step"] < u["blowup"]["step"]
    assert g["actions"][0]["step"] == first["step"]
    assert g["actions"][0]["kind"] in ("slow_down", "skip_step", "rollback")
    assert runs["healthy"]["first_alert"] is None or runs["healthy"]["first_alert"]["step"] >= AT


def test_guarded_run_recovers_to_the_healthy_loss(runs):
    g, h = runs["guarded"], runs["healthy"]
    assert g["blowup"] is None and g["stopped"] is None
    assert math.isfinite(g["final_loss_heldout"]) and math.isfinite(h["final_loss_heldout"])
    assert abs(g["final_loss_heldout"] - h["final_loss_heldout"]) < 0.1 * h["final_loss_heldout"]


def test_no_guard_collapses_and_takes_no_action(runs):
    u, h = runs["unguarded"], runs["healthy"]
    assert u["exit_code"] == 0 and u["guard"] == "watching"
    assert u["actions"] == [] and verify(u["out"] / "tombstones.jsonl").records == 0
    held = u["final_loss_heldout"]
    assert nonfinite(held) or held > 2 * h["final_loss_heldout"]
    assert u["first_alert"] is not None and u["first_alert"]["step"] >= AT  # it still explains


def test_same_seed_same_alerts_and_actions(runs, tmp_path):
    again = demo(tmp_path / "again", "lr_jump")
    g = runs["guarded"]
    assert again["first_alert"] == g["first_alert"] and again["actions"] == g["actions"]
    a = (tmp_path / "again" / "metrics.csv").read_bytes()
    assert a == (g["out"] / "metrics.csv").read_bytes()


def test_bad_batch_in_japanese(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "bad_batch", "--steps", str(STEPS), "--lang", "ja"])
    text = capsys.readouterr().out
    assert code == 0
    # its own folder: the English demo's folder (anet-demo-bad_batch) is left alone
    out = tmp_path / "anet-demo-bad_batch-ja"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    page = (out / "report.html").read_text("utf-8")
    assert '<html lang="ja">' in page and "概要" in page and "保護済み" in page
    assert "まとめ" in text and "警報" in text and "対処" in text  # the demo's own words
    assert "バッチ" in text  # the library's explanation (Snapshot.explain("ja"))
    assert "summary:" not in text
    meta = json.loads((out / "meta.json").read_text("utf-8"))
    assert meta["first_alert"]["step"] >= AT and meta["actions"][0]["kind"] == "skip_step"
    assert meta["blowup"] is None and math.isfinite(meta["final_loss_heldout"])


@pytest.mark.parametrize("fault", ["bad_batch", "loss_scale"])
def test_fault_unguarded_blows_up(fault, tmp_path):
    u = demo(tmp_path / fault, fault, "--no-guard")
    assert u["exit_code"] == 0 and u["actions"] == []
    assert u["blowup"] is not None and u["blowup"]["step"] < AT + 30
    assert u["first_alert"]["step"] >= AT and u["first_alert"]["step"] < u["blowup"]["step"]


def test_loss_scale_guarded_never_lets_the_loss_blow_up(tmp_path):
    g = demo(tmp_path / "ls", "loss_scale")
    assert g["exit_code"] == 0 and g["first_alert"]["step"] >= AT
    assert g["blowup"] is None and math.isfinite(g["final_loss_heldout"])
    assert g["final_loss_heldout"] < g["uniform_loss"]
    assert verify(g["out"] / "tombstones.jsonl").records == len(g["actions"]) >= 1
    # a persistent fault: 16 skips do not end it, so the Guard clips the gradients to
    # their level from then on (the model trains on: held-out loss below uniform above).
    # The loss the loop reports stays 1e4x, so the alert goes on: the Guard may roll back
    # and stop, or the run ends in that alert.
    kinds = [a["kind"] for a in g["actions"]]
    assert kinds[:17] == ["skip_step"] * 16 + ["clip"], kinds
    page = (g["out"] / "report.html").read_text("utf-8")
    header = page[page.index("<header") : page.index("</header>")]
    if g["stopped"] is not None:
        assert g["actions"][-1]["kind"] == "stop" and g["steps_run"] < STEPS
        # not red (the Guard kept the weights finite), not "recovered" either
        assert (
            'class="warn"' in header and f"stopped the run at step {g['stopped']['step']}" in header
        )
    else:
        assert "the run ended in an alert" in header


def test_help_shows_flags_and_an_example(capsys):
    assert run_demo(["--help"]) == 0
    text = capsys.readouterr().out
    assert "anet-lite demo --no-guard" in text and "--fault" in text and "--lang" in text
    assert main(["demo", "--help"]) == 0  # the CLI hands --help to the demo's own parser
    assert "anet-lite demo --no-guard" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "10"],
        ["--fault", "bogus"],
        ["lr_jump", "--fault", "none"],
        ["--fault-step", "150"],
        ["--steps", "300", "--fault-step", "301"],
    ],
)
def test_usage_errors_return_2(argv, tmp_path, capsys):
    assert run_demo([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "error" in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert run_demo(["--out", str(f)]) == 2


def test_cli_passes_leading_flags_through(tmp_path):
    out = tmp_path / "flags"
    code = main(["demo", "--fault", "none", "--steps", "250", "--out", str(out), "--quiet"])
    assert code == 0 and (out / "report.html").is_file()


def test_default_folders_per_fault_guard_and_language():
    from anet_lite.cli.demo import _parse

    def out(*argv):
        return _parse(list(argv))[0].out

    assert out() == "anet-demo-lr_jump" and out("--no-guard") == "anet-demo-lr_jump-noguard"
    assert out("--lang", "ja") == "anet-demo-lr_jump-ja"
    assert out("bad_batch", "--no-guard", "--lang", "ja") == "anet-demo-bad_batch-noguard-ja"


def test_one_collapse_step_for_the_unguarded_run(runs):
    """meta.json, the printed summary and the report give the same collapse step: the first
    step whose loss or gradient is not a finite number (after the first alert, and not
    before the model loss passed a uniform guess)."""
    from anet_lite.cli.demo import _collapse_line

    u = runs["unguarded"]
    rows = (u["out"] / "metrics.csv").read_text("utf-8").splitlines()
    head = rows[0].split(",")
    cells = [dict(zip(head, r.split(","))) for r in rows[1:]]
    nonfinite_steps = [
        int(c["step"])
        for c in cells
        if any(c[k] and not math.isfinite(float(c[k])) for k in ("loss", "grad_norm"))
    ]
    c = u["collapsed_at"]
    assert c == nonfinite_steps[0] and u["first_alert"]["step"] < c
    assert u["blowup"]["step"] <= c
    assert _collapse_line(u, "en").startswith(f"collapse         step {c}: the loss or gradient")
    page = (u["out"] / "report.html").read_text("utf-8")
    header = page[page.index("<header") : page.index("</header>")]
    assert 'class="bad"' in header and f"Collapsed at step {c}:" in header
    assert f"<th>collapse step (loss or gradient not finite)</th><td>{c}</td>" in page
    assert runs["guarded"]["collapsed_at"] is None


def test_guarded_report_is_protected_and_shows_the_unguarded_twin(runs):
    from anet_lite.report._plots import TWIN_COLOUR

    g, u = runs["guarded"], runs["unguarded"]
    assert g["twin"] == {"path": "../lr-noguard", "guard": "watching"}
    assert "twin" not in u and "twin" not in runs["healthy"]  # run before their twin / none
    page = (g["out"] / "report.html").read_text("utf-8")
    header = page[page.index("<header") : page.index("</header>")]
    assert 'class="protected"' in header and "Protected: 1 incident, recovered." in header
    assert "the same run without the Guard (--no-guard): ../lr-noguard" in page
    assert page.count(f"stroke: {TWIN_COLOUR}") >= 4  # the legend and the curve, twice
    assert 'id="zoom"' in page and "learning rate" not in header


def test_fp32_demo_gives_no_loss_scale_advice(tmp_path, capsys):
    # the unguarded lr jump ends in a non-finite loss, whose explanation (for fp16/AMP
    # runs) says to check the loss scale: this fp32 model has none
    out = tmp_path / "fp32"
    assert main(["demo", "lr_jump", "--no-guard", "--steps", str(STEPS), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no longer a finite number (numeric overflow)" in text
    assert "loss scale" not in text and "mixed-precision" not in text
    page = (out / "report.html").read_text("utf-8")
    assert "loss scale" not in page and "precision</th><td>fp32" in page


def test_actions_are_printed_once(tmp_path, capsys, caplog):
    # the demo prints each action with its reason; the Guard's own log line per action
    # (logger "anet_lite", WARNING) would repeat it on stderr
    import logging

    log = logging.getLogger("anet_lite")
    before = log.level
    out = tmp_path / "once"
    assert main(["demo", "bad_batch", "--steps", str(STEPS), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("ACTION skip this update") == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "anet_lite"]
    assert not any("skip this update [skip_step" in m for m in logged), logged
    assert "skip this update [skip_step" not in cap.err
    assert log.level == before


def test_twin_folders_are_matched_by_name_and_run(tmp_path):
    import argparse

    from anet_lite.cli.demo import _twin

    def args(no_guard, seed=0, lang="en"):
        return argparse.Namespace(
            fault="lr_jump", fault_step=250, steps=500, seed=seed, no_guard=no_guard, lang=lang
        )

    def made(name, guard, seed=0):
        d = tmp_path / name
        d.mkdir()
        meta = {"fault": "lr_jump", "fault_step": 250, "steps": 500, "seed": seed, "guard": guard}
        (d / "meta.json").write_text(json.dumps(meta))
        (d / "metrics.csv").write_text("step,loss\n")

    made("run", "acting")
    made("run-noguard-ja", "watching")
    # a --no-guard run finds the guarded one; a guarded run finds no twin without one
    assert _twin(args(True), tmp_path / "run-noguard") == {"path": "../run", "guard": "acting"}
    assert _twin(args(False), tmp_path / "run") is None
    assert _twin(args(False, lang="ja"), tmp_path / "run-ja") == {
        "path": "../run-noguard-ja",
        "guard": "watching",
    }
    assert _twin(args(True, seed=1), tmp_path / "run-noguard") is None  # another seed
    assert _twin(args(True), tmp_path / "custom") is None  # not a -noguard name
