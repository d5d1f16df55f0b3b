"""Model-merge danger boundaries (anet_lite.merge and `anet-lite merge-scan`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from anet_lite import merge as M  # noqa: E402, N812
from anet_lite.cli import main  # noqa: E402
from anet_lite.torch import digits as D  # noqa: E402, N812

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pairs():
    return D.digits_pairs()


@pytest.fixture(scope="module")
def batches():
    return D.digits_batches()


@pytest.fixture(scope="module")
def scans(pairs, batches):
    return {name: M.scan(a, b, batches) for name, (a, b) in pairs.items()}


def test_different_init_pair_has_a_danger_zone_in_the_middle(scans):
    r = scans["different_init"]
    i_mid = r.alphas.index(0.5)
    assert r.safe[0] and r.safe[-1]
    assert not r.safe[i_mid]
    assert not r.all_safe
    lo, hi = r.boundary
    assert 0.0 < lo <= 0.5 <= hi < 1.0
    assert r.losses[i_mid] > 1.5 * max(r.loss_a, r.loss_b)  # a real loss barrier
    assert r.safe_interval is not None and r.safe_interval[0] == 0.0
    assert len(r.safe_intervals) == 2


def test_shared_init_pair_is_safe_everywhere(scans):
    r = scans["shared_init"]
    assert r.all_safe and r.boundary == (None, None)
    assert r.safe_interval == (0.0, 1.0)
    assert max(r.losses) <= r.loss_limit
    assert min(max(a, b) for a, b in zip(r.theta_a, r.theta_b)) >= 0.6


def test_series_are_consistent(scans):
    for r in scans.values():
        n = len(r.alphas)
        assert r.alphas == list(M.DEFAULT_ALPHAS)
        for s in (r.losses, r.grad_norms, r.theta_a, r.theta_b, r.f_total, r.safe):
            assert len(s) == n
        assert r.theta_a[0] == 1.0 and r.theta_b[-1] == 1.0
        assert all(0.0 <= t <= 1.0 for t in r.theta_a + r.theta_b)
        assert all(-2.0 <= f <= 2.0 for f in r.f_total)
        d = json.loads(json.dumps(r.to_dict()))
        assert d["safe"] == r.safe and d["boundary"]["from_a"] == r.boundary[0]


def test_explain_en_ja(scans):
    bad, good = scans["different_init"], scans["shared_init"]
    en, ja = bad.explain("en"), bad.explain("ja")
    assert "danger zone" in en and "α = 0.5" in en
    assert "危険域" in ja and "安全区間" in ja
    assert "safe across" in good.explain() and "安全" in good.explain("ja")
    with pytest.raises(ValueError, match="lang"):
        good.explain("fr")


def test_html_report_is_self_contained_and_escaped(scans, tmp_path):
    pytest.importorskip("matplotlib")
    p = tmp_path / "r.html"
    doc = scans["different_init"].to_html(p, title="<b>A & B</b>", lang="ja")
    assert p.read_text(encoding="utf-8") == doc
    assert "<svg" in doc and "&lt;b&gt;A &amp; B&lt;/b&gt;" in doc
    assert "<b>A" not in doc and "<!--" not in doc
    assert "<script" not in doc and "<link" not in doc and 'src="http' not in doc
    assert "DANGER" in doc and "危険域" in doc


def test_state_dict_mismatch_names_the_key(pairs, batches):
    a, _ = pairs["shared_init"]
    other = torch.nn.Sequential()
    other.add_module("hidden", torch.nn.Linear(64, 64))
    other.add_module("act", torch.nn.ReLU())
    other.add_module("head", torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"out\.weight"):
        M.scan(a, other, batches)
    wide = torch.nn.Sequential()
    wide.add_module("hidden", torch.nn.Linear(64, 32))
    wide.add_module("act", torch.nn.ReLU())
    wide.add_module("out", torch.nn.Linear(32, 10))
    with pytest.raises(ValueError, match=r"'hidden\.weight' has shape"):
        M.scan(a, wide, batches)


def test_bad_arguments(pairs, batches):
    a, b = pairs["shared_init"]
    with pytest.raises(ValueError, match="at least 16 batches"):
        M.scan(a, b, batches[:10])
    with pytest.raises(ValueError, match="base="):
        M.scan(a, b, batches, method="task")
    with pytest.raises(ValueError, match="method"):
        M.scan(a, b, batches, method="ties")
    with pytest.raises(ValueError, match="increasing"):
        M.scan(a, b, batches, alphas=[0.5, 0.0])
    with pytest.raises(TypeError, match="model="):
        M.scan(a.state_dict(), b.state_dict(), batches)


def test_task_arithmetic_from_a_equals_linear(pairs, batches):
    a, b = pairs["different_init"]
    lin = M.scan(a, b, batches, alphas=[0.0, 0.5, 1.0])
    task = M.scan(a, b, batches, alphas=[0.0, 0.5, 1.0], method="task", base=a)
    assert task.losses == pytest.approx(lin.losses, rel=1e-5)
    # from a real base, α = 0.5 is the plain average of A and B
    base = D._init(7)
    sd = M.merge_state(a.state_dict(), b.state_dict(), 0.5, method="task", base=base.state_dict())
    avg = M.merge_state(a.state_dict(), b.state_dict(), 0.5)
    for k in sd:
        assert torch.allclose(sd[k], avg[k], atol=1e-6)


def test_per_layer_alpha(pairs, batches):
    a, b = pairs["different_init"]
    sa, sb = a.state_dict(), b.state_dict()
    sd = M.merge_state(sa, sb, 0.5, layer_alpha={"hidden": 0.0})
    assert torch.equal(sd["hidden.weight"], sa["hidden.weight"])
    assert torch.allclose(sd["out.weight"], 0.5 * (sa["out.weight"] + sb["out.weight"]))
    sd2 = M.merge_state(sa, sb, 0.3, layer_alpha=lambda k, t: 1.0 if k.startswith("out") else t)
    assert torch.equal(sd2["out.bias"], sb["out.bias"])
    r = M.scan(a, b, batches, alphas=[0.0, 1.0], layer_alpha={"": 0.0})  # everything stays A
    assert r.losses[1] == pytest.approx(r.loss_a, rel=1e-6)


def test_cli_loads_weights_only_checkpoints(pairs, tmp_path, capsys):
    paths = {}
    for name, (a, b) in pairs.items():
        pa, pb = tmp_path / f"{name}_a.pt", tmp_path / f"{name}_b.pt"
        torch.save(a.state_dict(), pa)
        torch.save(b.state_dict(), pb)
        paths[name] = (str(pa), str(pb))
    out = tmp_path / "rep"
    rc = main(["merge-scan", *paths["different_init"], "--json", "--out", str(out)])
    d = json.loads(capsys.readouterr().out)
    assert rc == 1 and d["exit_code"] == 1
    (scan_d,) = d["scans"].values()
    assert scan_d["safe"][5] is False and scan_d["boundary"]["from_a"] is not None
    assert (out / "merge_scan.html").is_file()
    rc = main(["merge-scan", *paths["shared_init"], "--lang", "ja", "--alphas", "5"])
    text = capsys.readouterr().out
    assert rc == 0 and "安全区間 α = 0〜1" in text


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["merge-scan"]) == 2
    assert main(["merge-scan", str(tmp_path / "nope.pt"), str(tmp_path / "nope.pt")]) == 2
    junk = tmp_path / "junk.pt"
    torch.save({"step": 3}, junk)
    assert main(["merge-scan", str(junk), str(junk)]) == 2
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    assert main(["merge-scan", str(wrong), str(wrong)]) == 2
    assert main(["merge-scan", "--demo", str(junk)]) == 2
    assert main(["merge-scan", str(junk), str(junk), "--arch", "nomodule"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no such file" in err and "state_dict" in err


def test_cli_demo_writes_both_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = main(["merge-scan", "--demo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "shared_init: SAFE" in out and "different_init: DANGER" in out
    for name in ("shared_init", "different_init"):
        assert "<svg" in (tmp_path / f"merge_{name}.html").read_text(encoding="utf-8")


def test_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "merge_scan.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shared_init: safe=True" in proc.stdout
    assert "different_init: safe=False" in proc.stdout
    assert (tmp_path / "merge_different_init.html").is_file()
