"""Explainable forgetting: forget_layers / forget_dataset tombstones and `anet-lite tombstones`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from anet_lite import Monitor, Snapshot
from anet_lite.cli import main
from anet_lite.records.forgetting import forget_dataset, format_table
from anet_lite.records.tombstone import FIELDS, KEY_ENV, TombstoneLog, read, verify

torch = pytest.importorskip("torch")
nn = torch.nn

import repo_paths  # noqa: E402

from anet_lite.torch.forget import forget_layers, weights_hash  # noqa: E402

ROOT = str(repo_paths.ROOT)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def _model():
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("fc1", nn.Linear(6, 5))
    m.add_module("norm", nn.BatchNorm1d(5))
    m.add_module("act", nn.ReLU())
    m.add_module("fc2", nn.Linear(5, 3))
    m.train()
    m(torch.randn(16, 6))  # moves the BatchNorm running stats off their initial values
    return m


def _independent_hash(module) -> str:
    """The documented canonical hash, recomputed here from the tensors' NumPy bytes."""
    h = hashlib.sha256()
    sd = module.state_dict()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _snap():
    return Snapshot(theta=0.42, sdot=0.1, proc=-0.5, f_total=-0.8, precursor=True, zscore=3.1,
                    step=120, status="drifting", alert=True)  # fmt: skip


def test_reinit_hashes_match_real_weights_and_chain_verifies(tmp_path):
    m = _model()
    before = {n: _independent_hash(getattr(m, n)) for n in ("fc2", "norm")}
    old_w = m.fc2.weight.detach().clone()
    log = tmp_path / "t.jsonl"
    rec = forget_layers(
        m, ["fc2", "norm"], policy="compliance", log=log, reason="erasure #7", snapshot=_snap()
    )
    assert list(rec) == [*FIELDS[:6], "prev", "hash"]
    assert set(rec) == set(FIELDS)
    assert rec["event"] == "forget" and rec["policy"] == "compliance"
    assert rec["operator"] == "auto" and rec["prev"] is None
    assert rec["scope"] == {"layers": ["fc2", "norm"], "mode": "reinit"}
    ev = rec["evidence"]
    assert ev["weights_before"] == before
    assert ev["weights_after"] == {n: _independent_hash(getattr(m, n)) for n in ("fc2", "norm")}
    assert ev["weights_after"]["fc2"] == weights_hash(m.fc2)
    assert ev["weights_before"]["fc2"] != ev["weights_after"]["fc2"]
    assert not torch.equal(old_w, m.fc2.weight)
    assert torch.all(m.norm.running_mean == 0) and torch.all(m.norm.running_var == 1)
    assert (ev["theta"], ev["f_total"], ev["precursor_z"]) == (0.42, -0.8, 3.1)
    assert ev["step"] == 120 and ev["reason"] == "erasure #7"
    assert "zeroed" not in ev  # Linear and BatchNorm have reset_parameters
    assert verify(log).ok
    assert read(log) == [rec]


def test_zero_mode_zeroes_and_other_layers_are_untouched(tmp_path):
    m = _model()
    fc1 = {k: v.clone() for k, v in m.fc1.state_dict().items()}
    rec = forget_layers(m, "fc2", policy="drift", log=tmp_path / "z.jsonl", reason="drift",
                        mode="zero", monitor=Monitor())  # fmt: skip
    assert all(torch.count_nonzero(p) == 0 for p in m.fc2.parameters())
    assert all(torch.equal(fc1[k], v) for k, v in m.fc1.state_dict().items())
    assert rec["scope"]["mode"] == "zero"
    assert rec["evidence"]["theta"] == 1.0  # a fresh monitor: theta only
    assert "f_total" not in rec["evidence"]
    assert rec["evidence"]["weights_after"]["fc2"] == _independent_hash(m.fc2)


def test_reinit_zeroes_params_without_reset_parameters(tmp_path):
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.full((3,), 2.0))
            self.lin = nn.Linear(3, 3)

    m = nn.Sequential(Scale())
    rec = forget_layers(m, ["0"], policy="ttl", log=tmp_path / "s.jsonl", reason="ttl")
    assert torch.count_nonzero(m[0].gain) == 0
    assert rec["evidence"]["zeroed"] == ["0.gain"]


def test_unknown_layer_and_bad_arguments_leave_the_model_and_log_alone(tmp_path):
    m = _model()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    log = tmp_path / "bad.jsonl"
    with pytest.raises(ValueError, match="'fc9'"):
        forget_layers(m, ["fc1", "fc9"], policy="ttl", log=log, reason="x")
    with pytest.raises(ValueError, match="mode"):
        forget_layers(m, ["fc1"], policy="ttl", log=log, reason="x", mode="shred")
    with pytest.raises(ValueError, match="reason"):
        forget_layers(m, ["fc1"], policy="ttl", log=log, reason=" ")
    with pytest.raises(ValueError, match="layers"):
        forget_layers(m, [], policy="ttl", log=log, reason="x")
    with pytest.raises(ValueError, match="'layers'"):
        forget_layers(m, ["fc1"], policy="ttl", log=log, reason="x", scope={"layers": ["a"]})
    with pytest.raises(TypeError, match="model"):
        forget_layers("fc1", ["fc1"], policy="ttl", log=log, reason="x")
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    assert not log.exists() or log.read_bytes() == b""


def test_keyed_log_and_chaining_with_existing_records(tmp_path):
    log = TombstoneLog(tmp_path / "k.jsonl", key="s3cret")
    r1 = forget_dataset(log, datasets=["users-2024"], policy="ttl", reason="90-day TTL",
                        evidence={"rows": 1200})  # fmt: skip
    r2 = forget_layers(_model(), ["fc1"], policy="compliance", log=log, reason="x",
                       scope={"datasets": ["users-2024"]})  # fmt: skip
    assert r1["scope"] == {"datasets": ["users-2024"]}
    assert r1["evidence"] == {"rows": 1200, "reason": "90-day TTL"}
    assert r2["prev"] == r1["hash"] and r2["hash"].startswith("hmac-sha256:")
    assert r2["scope"] == {"layers": ["fc1"], "mode": "reinit", "datasets": ["users-2024"]}
    assert verify(log.path, key="s3cret").ok


def test_forget_dataset_validation(tmp_path):
    log = tmp_path / "d.jsonl"
    rec = forget_dataset(log, datasets="foo", policy="compliance", reason="r", operator="alice")
    assert rec["scope"] == {"datasets": ["foo"]} and rec["operator"] == "alice"
    with pytest.raises(ValueError, match="datasets"):
        forget_dataset(log, datasets=[], policy="ttl", reason="r")
    with pytest.raises(ValueError, match=r"datasets\[1\]"):
        forget_dataset(log, datasets=["a", ""], policy="ttl", reason="r")
    with pytest.raises(ValueError, match="reason"):
        forget_dataset(log, datasets=["a"], policy="ttl", reason="r", evidence={"reason": "y"})
    with pytest.raises(TypeError, match="log"):
        forget_dataset(3, datasets=["a"], policy="ttl", reason="r")
    assert len(read(log)) == 1 and verify(log).ok


def _mixed_log(tmp_path):
    log = tmp_path / "mixed.jsonl"
    forget_layers(_model(), ["fc2"], policy="compliance", log=log, reason="erasure #7",
                  snapshot=_snap())  # fmt: skip
    forget_dataset(log, datasets=["users-2024"], policy="ttl", reason="90-day TTL")
    TombstoneLog(log).append("slow_down", policy="drift", scope={"step": 5},
                             evidence={"theta": 0.5, "reason": "theta low"})  # fmt: skip
    return log


def test_cli_tombstones_table_and_filters(tmp_path, capsys):
    log = _mixed_log(tmp_path)
    recs = read(log)
    assert main(["tombstones", str(log)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["time", "event", "policy", "scope", "evidence", "hash"]
    for r in recs:
        assert r["hash"][:19] in out  # "sha256:" + 12 hex digits
    assert "layers=fc2 mode=reinit" in out and "datasets=users-2024" in out
    assert "θ=0.42 F=-0.80 z=3.10 step=120: erasure #7" in out
    assert "3 of 3 records shown" in out and lines[-1] == "chain: ok (3 records)"

    assert main(["tombstones", str(log), "--event", "forget"]) == 0
    out = capsys.readouterr().out
    assert "slow_down" not in out and "2 of 3 records shown" in out
    assert main(["tombstones", str(log), "--policy", "ttl"]) == 0
    out = capsys.readouterr().out
    # (the fc2 record's scope is absent: "layers=fc2", not a bare "fc2" that a hash can hold)
    assert "users-2024" in out and "layers=fc2" not in out and "1 of 3" in out
    assert main(["tombstones", str(log), "--event", "rollback"]) == 0
    assert "no matching records" in capsys.readouterr().out


def test_cli_tombstones_ja_json_broken_and_missing(tmp_path, capsys):
    log = _mixed_log(tmp_path)
    assert main(["tombstones", str(log), "--lang", "ja"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "時刻",
        "イベント",
        "ポリシー",
        "範囲",
        "証拠",
        "ハッシュ",
    ]
    assert "チェーン: 正常 (3 件)" in out

    assert main(["tombstones", str(log), "--json", "--policy", "compliance"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total"] == 3 and d["shown"] == 1 and d["chain"]["ok"] is True
    assert d["records"] == read(log)[:1]

    lines = log.read_text("utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace("90-day TTL", "30-day TTL")
    log.write_text("".join(lines), "utf-8")
    assert main(["tombstones", str(log)]) == 1
    out = capsys.readouterr().out
    assert "30-day TTL" in out and "chain: BROKEN: line 2: hash mismatch" in out
    assert main(["tombstones", str(log), "--lang", "ja"]) == 1
    assert "チェーン: 破損" in capsys.readouterr().out

    assert main(["tombstones", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["tombstones", str(log), "--lang", "fr"]) == 2


def test_format_table_aligns_wide_characters():
    import unicodedata

    def col(line: str, text: str) -> int:  # display column (CJK characters count 2)
        pre = line[: line.index(text)]
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in pre)

    recs = [{"time": "t", "event": "忘却", "policy": "p", "scope": {}, "evidence": {}}]
    head, _rule, row = format_table(recs, lang="ja").splitlines()
    assert col(head, "ポリシー") == col(row, " p ") + 1
    assert col(head, "イベント") == col(row, "忘却")
    with pytest.raises(ValueError, match="lang"):
        format_table(recs, lang="de")


def test_example_forget_layers_runs(tmp_path):
    log = tmp_path / "ex.jsonl"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "forget_layers.py"), str(log)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chain: ok: 1 record " in proc.stdout and "1 records" not in proc.stdout
    (rec,) = read(log)
    assert rec["policy"] == "compliance" and rec["scope"]["layers"] == ["out"]
    assert "theta" in rec["evidence"] and verify(log).ok
