"""score.py's leave-one-mechanism-out plumbing, loss-only view, per-mechanism tables and
real logs without a time column. Hand-made runs written as real cache files (no torch)."""

from __future__ import annotations

import gzip
import json
import os
from typing import ClassVar

import pytest

# (bench/detection is on sys.path: tests/conftest.py)
import score

COLS = ["step", "time", "lr", "loss", "grad_norm", "update_norm", "param_norm"]
COLS += ["processivity", "noise", "max_abs_grad", "event"]


def _write_run(folder, run_id, losses, kind, onset=None, coll=None, benign=None):
    body = [",".join(COLS)]
    for i, v in enumerate(losses):
        body.append(f"{i},{0.01 * i},0.1,{v},1,0.1,10,0.5,0.2,0.3,")
    with gzip.open(os.path.join(folder, run_id + ".csv.gz"), "wt") as fh:
        fh.write("\n".join(body) + "\n")
    label = "healthy" if kind == "healthy" else ("collapsed" if coll is not None else "survived")
    return {
        "run_id": run_id,
        "kind": kind,
        "benign": benign,
        "label": label,
        "onset": onset,
        "collapse_step": coll,
        "n_steps": len(losses),
        "benign_event_steps": [],
        "split": "train",
        "file": run_id + ".csv.gz",
    }


@pytest.fixture
def cache(tmp_path):
    """Two mechanisms: 'spike' (loss x3 at 50) and 'slow' (loss x1.5 at 50, x3 at 80);
    two healthy runs, one with a x1.4 bump."""
    flat = [1.0] * 120
    runs = [
        _write_run(tmp_path, "h0", flat, "healthy", benign="none"),
        _write_run(tmp_path, "h1", flat[:60] + [1.4] * 5 + flat[65:], "healthy", benign="bump"),
        _write_run(tmp_path, "a", flat[:50] + [3.0] * 70, "spike", 50, 51),
        _write_run(tmp_path, "b", flat[:50] + [1.5] * 30 + [3.0] * 40, "slow", 50, 80),
    ]
    with open(tmp_path / "manifest.json", "w") as fh:
        json.dump({"runs": runs}, fh)
    return str(tmp_path)


class Ratio:
    """Alarm when loss > thr x the first loss; ``calibrate`` picks the lowest threshold
    (from a grid) that stays silent on the healthy runs and catches the most faults, and
    records what it was given."""

    seen: ClassVar[list] = []

    def __init__(self, thr=2.5):
        self.thr, self.first = thr, None

    def update(self, rec):
        if self.first is None:
            self.first = rec["loss"]
        return rec["loss"] > self.thr * self.first

    @classmethod
    def calibrate(cls, healthy, faults):
        cls.seen.append(
            (sorted(m["run_id"] for m, _ in healthy), sorted(m["kind"] for m, _ in faults))
        )
        top = max(max(r["loss"] for r in v) / v[0]["loss"] for _, v in healthy)
        grid = [t for t in (1.2, 1.3, 1.45, 2.0, 2.5) if t >= top]
        best = min(grid) if any(m["kind"] == "slow" for m, _ in faults) else max(grid)
        return lambda: cls(best)


class Plain(Ratio):
    calibrate = None


def test_lomo_fits_each_mechanism_without_it_and_healthy_runs_on_the_other_fold(cache):
    Ratio.seen = []
    res = score.evaluate({"r": Ratio}, "all", cache, None, lomo=True)
    kinds_seen = [k for _, k in Ratio.seen]
    assert ["spike"] in kinds_seen and ["slow"] in kinds_seen  # one fit without each
    healthy_seen = [h for h, k in Ratio.seen if k == ["slow", "spike"]]
    assert ["h0"] in healthy_seen and ["h1"] in healthy_seen  # 2 folds + the real-log fit
    by = {s["run_id"]: s for s in res["per_run"]["r"]}
    # 'slow' scored with a fit that never saw it: threshold 2.5, caught only at its collapse
    assert by["b"]["outcome"] == "late"
    # h0 scored with the fit on h1 (bump 1.4 -> 1.45): silent; h1 with the fit on h0
    # (no bump -> 1.2): alarmed. In-sample it would have been silent.
    assert not by["h0"]["any_alarm"] and by["h1"]["any_alarm"]
    assert "calibrated without each of 2 mechanisms" in res["notes"]["r"]
    plain = score.evaluate({"r": Ratio}, "all", cache, None)
    assert {s["run_id"]: s.get("outcome") for s in plain["per_run"]["r"]}["b"] == "late"


def test_a_detector_without_the_hook_scores_the_same_with_and_without_lomo(cache):
    a = score.evaluate({"p": Plain}, "all", cache, None, lomo=True)
    b = score.evaluate({"p": Plain}, "all", cache, None)
    assert a["per_run"]["p"] == b["per_run"]["p"] and a["notes"]["p"] == score.NO_HOOK
    assert score.NO_HOOK in score.markdown(a)


def test_loss_only_blanks_every_column_but_step_and_loss(cache):
    seen = []

    class Spy:
        def update(self, rec):
            seen.append(rec)
            return False

    score.evaluate({"s": Spy}, "all", cache, None, loss_only=True)
    assert seen and all(r["loss"] == r["loss"] for r in seen)
    for c in score.NUM_COLUMNS:
        if c != "loss":
            assert all(r[c] is None for r in seen), c


def test_by_mechanism_table_counts(cache):
    res = score.evaluate({"r": Plain}, "all", cache, None)
    bm = score.by_mechanism(res["per_run"]["r"], res["benign_of"])
    assert bm["kinds"]["spike"]["collapsed"] == 1 and bm["kinds"]["spike"]["caught"] == 1
    assert bm["kinds"]["spike"]["lead_med"] == 1
    assert bm["kinds"]["slow"]["lead_frac_med"] == 0.0 and bm["kinds"]["slow"]["late"] == 1
    assert bm["healthy_variants"] == {
        "bump": {"runs": 1, "alarmed": 0},
        "none": {"runs": 1, "alarmed": 0},
    }
    res = score.evaluate({"r": lambda: Ratio(1.3)}, "all", cache, None)
    bm = score.by_mechanism(res["per_run"]["r"], res["benign_of"])
    assert bm["kinds"]["slow"]["caught"] == 1 and bm["kinds"]["slow"]["lead_frac_med"] == 1.0
    assert bm["healthy_alarmed"] == 1 and bm["healthy_alarms_per_10k"] == pytest.approx(
        1e4 * 5 / 240
    )
    text = score.markdown_by_mechanism(res)
    assert "| slow | 1 | 1 | 1 | 0 | 0 | 30 | 1.00 | 30 | 0 | 0/0 |" in text


def test_real_log_without_time_column_and_several_caches(cache, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    (logs / "a.csv").write_text("step,loss\n1,6.9\n2,18.8\n3,7.0\n")
    rows = score.load_real_log(str(logs / "a.csv"))
    assert [r["loss"] for r in rows] == [6.9, 18.8, 7.0] and rows[0]["time"] is None
    res = score.evaluate({"r": Plain}, "all", [cache, cache], [str(logs), "/nonexistent"])
    assert res["n_runs"] == 8 and res["rows"][0]["real_logs"] == 1
    assert res["rows"][0]["real_logs_with_alarm"] == 1  # 18.8 > 2.5 x 6.9


def test_cli_rejects_a_cache_without_manifest(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        score.main(["--cache", str(tmp_path)])
    assert e.value.code == 2 and "no manifest.json" in capsys.readouterr().err


def test_calibrated_loss_threshold_fits_its_factor_on_healthy_runs_only(cache):
    import baselines

    cal = baselines.LossThresholdCalibrated
    h = score.load_runs(cache)
    healthy = [(m, v) for m, v, _ in h if m["label"] == "healthy"]
    # the bumped run (1.4x its best) alarms at factor 1.0-1.4: the grid's 1.5 is quiet
    assert cal.calibrate(healthy, [])().factor == 1.5
    x4 = [
        (m, [dict(r, loss=r["loss"] * (4 if 60 <= r["step"] < 65 else 1)) for r in v])
        for m, v in healthy
    ]
    assert cal.calibrate(x4, [])().factor == 10.0  # 4.0 and 5.6 x the best: 5 alarms
    res = score.evaluate(baselines.CALIBRATED, "all", cache, None, lomo=True)
    assert "healthy runs alone" in res["notes"]["loss_threshold_cal"]


@pytest.mark.parametrize("spec", ["no_such_module:X", "baselines:NO_SUCH_DICT"])
def test_cli_rejects_an_unknown_extra_detector(spec, cache, capsys):
    with pytest.raises(SystemExit) as e:
        score.main(["--cache", cache, "--extra", spec, "--real-logs", ""])
    assert e.value.code == 2 and f"--extra {spec!r}" in capsys.readouterr().err
