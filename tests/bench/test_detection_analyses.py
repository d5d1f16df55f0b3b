"""The detection benchmark's analysis scripts (separability.py, matched.py) end to end on
the committed cache: train split to fit or tune on, test split to report on."""

from __future__ import annotations

import json
from functools import partial

# (bench/detection is on sys.path: tests/conftest.py)
import anet_detector
import baselines
import matched
import pytest
import score
import separability

TRAIN, TEST = f"{score.CACHE}:train", f"{score.CACHE}:test"


def _monitor_on_test():
    res = score.evaluate({"m": anet_detector.AnetMonitor}, "test", score.CACHE, None)
    r = res["rows"][0]
    return [r["caught"], r["n_collapsed"], round(r["healthy_alarm_share"] * r["n_healthy"])]


def test_separability_reports_the_monitor_and_a_classifier_in_json(capsys):
    pytest.importorskip("sklearn")
    assert separability.main(["--train", TRAIN, "--test", TEST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["monitor"]
    assert [m["caught"], m["collapsed"], m["healthy_alarmed"]] == _monitor_on_test()
    rows = out["rows"]
    caught = [r["shard_first_steps_caught"] for r in rows]
    assert caught == sorted(caught, reverse=True)  # thresholds 0.5, 0.9, 0.98
    for r in rows:  # the union never has fewer catches or fewer alarms than the Monitor
        assert r["with_monitor_caught"] >= m["caught"]
        assert r["with_monitor_healthy_alarmed"] >= m["healthy_alarmed"]
    assert {name for name, _ in out["importance"]} == set(separability.FEATURES)


def test_matched_keeps_only_settings_within_the_monitors_healthy_alarm_share(capsys, monkeypatch):
    grid = {
        "zclip": [(f"z_thresh={z}", partial(baselines.ZClip, z_thresh=z)) for z in (2.5, 50)],
        "megatron_10x": [("factor=10", baselines.Megatron10x)],
    }
    monkeypatch.setattr(matched, "GRIDS", grid)
    assert matched.main(["--tune", TRAIN, "--test", TEST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for rows in out.values():
        budget = rows[0]["tune"][2] / rows[0]["tune"][3]
        for r in rows[1:]:
            if r["setting"] is not None:
                assert r["tune"][2] / r["tune"][3] <= budget
    default = {r["detector"]: r for r in out["anet"]}
    assert default["anet-lite"]["test"][:3] == _monitor_on_test()
    assert default["zclip"]["setting"] != "z_thresh=2.5"  # ZClip's default alarms on ~all
