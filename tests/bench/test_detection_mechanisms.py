"""The failure-mechanism set of the detection benchmark (bench/detection/mechanisms.py).

Plan-level tests need no torch; each hook test builds a tiny real model and checks that the
bug it emulates is the one applied; the end-to-end test trains every new mechanism for a
few dozen steps on the smallest setup.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os

import collapse
import generate
import mechanisms
import numpy as np
import pytest

# (bench/detection is on sys.path: tests/conftest.py)
from repo_paths import BENCH_DETECTION

torch = pytest.importorskip("torch")
import models  # noqa: E402

pytestmark = pytest.mark.torch


def _spec(kind, opt="adamw", setup="mlp_bcancer", event=None, n=None, onset=None, **mag):
    spec = next(
        s
        for s in generate.plan_mech()
        if s["kind"] == kind and (event is None or s["benign"] == event)
    )
    spec = json.loads(json.dumps(spec))
    S = generate.ALL_SETUPS[setup]
    spec.update(setup=setup, family=S["family"], dataset=S["dataset"], optimizer=opt)
    spec["base_lr"] = generate.BASE_LR[(S["family"], opt)]
    if n is not None:
        spec["n_steps"] = n
    if onset is not None:
        spec["onset"] = onset
        spec["events"] = {kind: [onset]}
    spec["magnitude"].update(mag)
    return spec


# ----------------------------------------------------------------------------- the plan
def test_plan_is_deterministic_and_keeps_the_original_seeds():
    a, b = generate.plan_mech(), generate.plan_mech()
    assert a == b
    old = {s["seed"] for s in generate.plan()}
    new = [s["seed"] for s in a]
    assert len(set(new)) == len(new) and not old & set(new)
    assert min(new) >= 100 * generate.MECH_SEED_GROUP
    # the original plan is untouched by the new setups
    assert {s["setup"] for s in generate.plan()} == set(generate.SETUPS)


def test_at_least_twenty_mechanisms_four_optimizers_and_a_1m_parameter_model():
    kinds = set(generate.FAULTS) | set(mechanisms.MECH_FAULTS)
    assert len(kinds) >= 20 and not set(generate.FAULTS) & set(mechanisms.MECH_FAULTS)
    specs = generate.plan_mech()
    assert {s["kind"] for s in specs} >= set(mechanisms.MECH_FAULTS)
    opts = {s["optimizer"] for s in specs}
    assert opts >= {"sgd", "sgd_plain", "adamw", "rmsprop", "adafactor"}
    wide = generate.ALL_SETUPS["mlp_wide_digits"]
    m = models.MLP(64, 10, hidden=wide["hidden"])
    assert sum(p.numel() for p in m.parameters()) >= 1_000_000
    assert 0 < sum(s["setup"] == "mlp_wide_digits" for s in specs) <= 8


def test_each_mechanism_spreads_over_setups_and_onsets_follow_the_rule():
    specs = generate.plan_mech()
    for kind in mechanisms.MECH_FAULTS:
        mine = [s for s in specs if s["kind"] == kind]
        assert 2 <= len(mine) <= 4
        assert len({(s["setup"], s["optimizer"]) for s in mine}) == len(mine)
        for s in mine:
            if kind in mechanisms.MECH_ONSET_ZERO:
                assert s["onset"] == 0
            else:
                assert 0.3 * s["n_steps"] <= s["onset"] < 0.6 * s["n_steps"]
            assert s["events"][kind] == [s["onset"]]


# ----------------------------------------------------------------------------- the hooks
def _mlp(seed=0):
    torch.manual_seed(seed)
    return models.MLP(30, 2, hidden=(16, 8))


def test_wd_sign_grows_and_wd_scale_shrinks_theta_by_the_rate():
    for kind, sign in (("wd_sign", 1), ("wd_scale", -1)):
        inj = mechanisms.Injector(_spec(kind, onset=3), 0.01)
        m = _mlp()
        params = list(m.parameters())
        before = torch.cat([p.detach().flatten() for p in params]).norm()
        inj.after_step(2, params, 0.01)  # before the onset: nothing
        inj.after_step(3, params, 0.01)
        after = torch.cat([p.detach().flatten() for p in params]).norm()
        rate = inj.mag["rate_per_step"]
        assert float(after / before) == pytest.approx(1 + sign * rate, rel=1e-5)


def test_opt_state_reset_zeroes_the_moments_and_keeps_the_step_count():
    m = _mlp()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(8, 30)).sum().backward()
        opt.step()
    inj = mechanisms.Injector(_spec("opt_state_reset", onset=3), 1e-3)
    inj.before_step(3, m, opt, None)
    for st in opt.state.values():
        assert float(st["exp_avg"].abs().sum()) == 0 and float(st["exp_avg_sq"].abs().sum()) == 0
        assert float(st["step"]) == 3


def test_beta_change_sets_momentum_and_beta2():
    m = _mlp()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    inj = mechanisms.Injector(_spec("beta_change", opt="sgd", onset=5, momentum=0.999), 0.1)
    inj.before_step(4, m, sgd, None)
    assert sgd.param_groups[0]["momentum"] == 0.9
    inj.before_step(5, m, sgd, None)
    assert sgd.param_groups[0]["momentum"] == 0.999
    adam = torch.optim.AdamW(m.parameters(), lr=1e-3)
    inj = mechanisms.Injector(_spec("beta_change", opt="adamw", onset=5, beta2=0.1), 1e-3)
    inj.before_step(5, m, adam, None)
    assert adam.param_groups[0]["betas"] == (0.9, 0.1)


def _grads(m):
    m.zero_grad()
    torch.manual_seed(1)
    m(torch.randn(8, 30)).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_grad_accum_sum_multiplies_and_partial_sign_negates_only_the_picked_tensors():
    m = _mlp()
    ref = _grads(m)
    inj = mechanisms.Injector(_spec("grad_accum_sum", onset=0, k=16), 0.1)
    inj.after_backward(0, m)
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, 16 * ref[n])
    inj = mechanisms.Injector(_spec("partial_grad_sign", onset=2), 0.1)
    inj.prepare(m)
    assert 1 <= len(inj.negated) <= 2 and inj.mag["tensors"] == inj.negated
    _grads(m)
    inj.after_backward(1, m)  # before the onset: untouched
    inj.after_backward(2, m)
    for n, p in m.named_parameters():
        assert torch.equal(p.grad, -ref[n] if n in inj.negated else ref[n])


def test_fp16_without_scaler_underflows_small_and_overflows_large_gradients():
    m = _mlp()
    for p in m.parameters():
        p.grad = torch.full_like(p, 1e-9)
    w = m.net[0].weight
    w.grad[0, 0] = 1e6
    w.grad[0, 1] = 0.1
    inj = mechanisms.Injector(_spec("fp16_no_scaler", onset=0), 1e-3)
    inj.after_backward(0, m)
    assert math.isinf(float(w.grad[0, 0])) and float(w.grad[1, 1]) == 0.0
    assert float(w.grad[0, 1]) == pytest.approx(0.1, rel=1e-3) and float(w.grad[0, 1]) != 0.1


def test_stuck_loader_repeats_one_batch_then_resumes_and_label_noise_ramps():
    inj = mechanisms.Injector(_spec("stuck_loader", onset=5, length=10), 1e-3)
    rng = np.random.default_rng(0)
    b0 = (torch.arange(6.0), torch.arange(6))
    inj.batch(5, *b0, rng, 10)
    got = inj.batch(9, torch.zeros(6), torch.zeros(6, dtype=torch.long), rng, 10)
    assert torch.equal(got[0], b0[0]) and torch.equal(got[1], b0[1])
    fresh = (torch.ones(6), torch.ones(6, dtype=torch.long))
    assert inj.batch(15, *fresh, rng, 10)[0] is fresh[0]
    inj = mechanisms.Injector(_spec("label_noise_ramp", onset=10, noise_per_step=0.01), 1e-3)
    y = torch.zeros(20_000, dtype=torch.long)
    assert torch.equal(inj.labels(9, y, rng, 1000), y)
    changed = float((inj.labels(59, y, rng, 1000) != y).float().mean())
    assert changed == pytest.approx(0.5 * 0.999, abs=0.02)  # 50 steps x 1 %


def test_loss_sum_varbs_varies_the_batch_size_after_the_onset():
    inj = mechanisms.Injector(_spec("loss_sum_varbs", onset=10), 1e-3)
    rng = np.random.default_rng(0)
    assert inj.batch_size(9, 32, rng) == 32 and not inj.sum_loss(9)
    sizes = {inj.batch_size(t, 32, rng) for t in range(10, 60)}
    assert inj.sum_loss(10) and len(sizes) > 10 and min(sizes) >= 16 and max(sizes) <= 64


def test_unfreeze_and_output_logit_lr():
    m = _mlp()
    inj = mechanisms.Injector(_spec("unfreeze_high_lr", onset=4), 1e-3)
    inj.prepare(m)
    head = set(map(id, models.head_of(m).parameters()))
    assert all(p.requires_grad == (id(p) in head) for p in m.parameters())
    opt = torch.optim.AdamW(inj.param_groups(m, list(m.parameters())), lr=1e-3)
    assert len(opt.param_groups) == 2 and inj.group_mult(0, 1) == inj.mag["head_lr_mult"]
    inj.before_step(4, m, opt, None)
    assert all(p.requires_grad for p in m.parameters())
    inj = mechanisms.Injector(_spec("output_logit_divergence", onset=4), 1e-3)
    assert inj.group_mult(3, 1) == 1.0 and inj.group_mult(4, 0) == 1.0
    assert inj.group_mult(4, 1) == inj.mag["head_lr_mult"] >= 100


def test_bn_stats_corrupt_overwrites_the_frozen_running_statistics():
    spec = _spec("bn_stats_corrupt", setup="cnnbn_digits", onset=3, mode="scale", scale=50.0)
    torch.manual_seed(0)
    m = models.BNCNN(10)
    inj = mechanisms.Injector(spec, 1e-3)
    x = torch.rand(512, 64)
    inj.prepare(m, x)
    assert not m.b1.training and m.b1.momentum == 0.1
    var0 = m.b1.running_var.clone()
    inj.before_step(2, m, None, x[:64])
    assert torch.equal(m.b1.running_var, var0)
    inj.before_step(3, m, None, x[:64])
    assert not m.b1.training
    ratio = float((m.b1.running_var / var0).median())
    assert 50**2 / 3 < ratio < 50**2 * 3  # the corrupted batch's statistics, not a blend


def test_warmup_in_wrong_units_reaches_the_peak_at_once():
    bug = mechanisms.Injector(_spec("warmup_units", n=400), 0.1)
    ok = mechanisms.Injector(
        _spec("healthy", event="warmup_cosine", n=400, peak_mult=bug.mag["peak_mult"]), 0.1
    )
    peak = 0.1 * bug.mag["peak_mult"]
    assert bug.mag["warmup"] == 1 and bug.lr(0, 0.1) == pytest.approx(peak)
    w = ok.mag["warmup"]
    assert w >= 100 and ok.lr(0, 0.1) == pytest.approx(peak / w)
    assert ok.lr(w - 1, 0.1) == pytest.approx(peak)


def test_healthy_schedules_sgdr_overshoot_finetune():
    sg = mechanisms.Injector(_spec("healthy", event="sgdr", n=700), 1.0)
    p0 = sg.mag["period0"]
    assert sg.events["sgdr_restart"] == [p0, 3 * p0]
    assert sg.lr(p0 - 1, 1.0) < 0.05 and sg.lr(p0, 1.0) == pytest.approx(1 / 5)
    assert sg.lr(p0 + 4, 1.0) > 0.9
    ov = mechanisms.Injector(_spec("healthy", event="early_overshoot"), 1.0)
    assert [ov.lr(t, 1.0) > 10 for t in range(6)] == [False, True, True, True, False, False]
    ft = mechanisms.Injector(_spec("healthy", event="finetune"), 1.0)
    e = ft.events["finetune_start"][0]
    assert ft.lr(e - 1, 1.0) == 1.0 and ft.lr(e, 1.0) == pytest.approx(0.3)


# ----------------------------------------------------------------------------- end to end
def _rows(path):
    with gzip.open(path, "rt") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", mechanisms.MECH_FAULTS)
def test_every_mechanism_trains_records_its_onset_and_is_labelled_by_the_rule(kind, tmp_path):
    setup = {"bn_stats_corrupt": "cnnbn_digits", "attn_entropy_collapse": "tfm_stdlib"}.get(
        kind, "mlp_bcancer"
    )
    opt = "sgd" if kind == "beta_change" else "adamw"
    onset = 0 if kind in mechanisms.MECH_ONSET_ZERO else 15
    spec = _spec(kind, opt=opt, setup=setup, n=40, onset=onset)
    if kind == "stuck_loader":
        spec["magnitude"]["length"] = 10
    meta = generate.run_one(spec, str(tmp_path))
    rows = _rows(tmp_path / meta["file"])
    assert meta["onset"] == onset and rows[onset]["event"] == kind
    losses = [float(r["loss"]) for r in rows]
    assert meta["collapse_step"] == collapse.collapse_step(losses, onset, meta["chance_loss"])
    assert meta["label"] == ("collapsed" if meta["collapse_step"] is not None else "survived")
    if kind == "wd_sign":
        pn = [float(r["param_norm"]) for r in rows]
        assert pn[onset + 20] / pn[onset - 1] > 1.1
    if kind == "grad_accum_sum":
        g = [float(r["grad_norm"]) for r in rows]
        assert np.median(g[onset:]) > 3 * np.median(g[:onset])
    if kind == "stuck_loader":  # the same batch, memorised: its loss falls
        assert losses[onset + 9] < losses[onset]
    if kind == "attn_entropy_collapse":
        assert 0 <= meta["min_attn_entropy"] <= meta["attn_entropy_before_onset"]


def test_the_committed_mech_cache_matches_its_plan_and_the_collapse_rule():
    folder = os.path.join(BENCH_DETECTION, "cache_mech")
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        pytest.skip("cache_mech not generated")
    with open(os.path.join(folder, "manifest.json")) as fh:
        man = json.load(fh)
    runs = {r["run_id"]: r for r in man["runs"]}
    assert set(runs) == {s["run_id"] for s in generate.plan_mech()}
    size = sum(os.path.getsize(os.path.join(folder, r["file"])) for r in runs.values())
    assert size < 6e6
    for r in runs.values():
        losses = [float(x["loss"]) for x in _rows(os.path.join(folder, r["file"]))]
        assert len(losses) == r["n_steps"]
        if r["kind"] != "healthy":
            c = collapse.collapse_step(losses, r["onset"] or 0, r["chance_loss"])
            assert c == r["collapse_step"]


def test_attention_entropy_collapse_raises_the_qkv_lr_and_the_model_reports_entropy():
    spec = _spec("attn_entropy_collapse", setup="tfm_stdlib", onset=3)
    torch.manual_seed(0)
    m = models.CharTransformer(ctx=16)
    inj = mechanisms.Injector(spec, 1e-3)
    groups = inj.param_groups(m, list(m.parameters()))
    qkv = {id(p) for b in m.blocks for p in b.qkv.parameters()}
    assert {id(p) for p in groups[1]["params"]} == qkv
    assert not qkv & {id(p) for p in groups[0]["params"]}
    assert inj.group_mult(2, 1) == 1.0 and inj.group_mult(3, 1) == inj.mag["qkv_lr_mult"] >= 10
    m(torch.randint(0, 128, (2, 16)))
    # causal attention over <= 16 keys: entropy between 0 and the mean of log(1..16)
    assert 0 < m.min_attn_entropy() <= float(np.mean(np.log(np.arange(1, 17)))) + 1e-6


def test_batch_mult_trains_the_same_run_at_another_batch_size(tmp_path):
    spec = _spec("healthy", event="none", n=30)
    base = generate.run_one(json.loads(json.dumps(spec)), str(tmp_path / "a"))
    spec.update(batch_mult=4.0, run_id=spec["run_id"] + "-bsx4")
    big = generate.run_one(spec, str(tmp_path / "b"))
    assert "batch_size" not in base
    assert big["batch_size"] == 4 * generate.SETUPS["mlp_bcancer"]["bs"]
    a = [float(r["loss"]) for r in _rows(tmp_path / "a" / base["file"])]
    b = [float(r["loss"]) for r in _rows(tmp_path / "b" / big["file"])]
    assert len(a) == len(b) == 30 and a != b  # (other batches: another trajectory)


@pytest.mark.parametrize("flag", ["--batch-mult", "--lr-mult"])
def test_a_condition_needs_its_own_folder_and_a_positive_number(flag, capsys):
    for argv in (["--only", "healthy", flag, "4"],
                 ["--only", "healthy", flag, "0", "--out", "/nonexistent/x"]):
        with pytest.raises(SystemExit) as exc:
            generate.main(argv)
        assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_lr_mult_trains_the_same_runs_at_another_lr(tmp_path):
    specs = generate.plan()
    both = generate.under_condition(specs, batch_mult=4.0, lr_mult=2.0)
    assert [s["run_id"] for s in both] == [s["run_id"] + "-bsx4-lrx2" for s in specs]
    assert [s["base_lr"] for s in both] == [2.0 * s["base_lr"] for s in specs]
    assert "batch_mult" not in specs[0]  # (the plan itself is not changed)
    spec = _spec("healthy", event="none", n=30)
    base = generate.run_one(json.loads(json.dumps(spec)), str(tmp_path / "a"))
    (fast,) = generate.under_condition([spec], lr_mult=2.0)
    hot = generate.run_one(fast, str(tmp_path / "b"))
    assert hot["base_lr"] == 2.0 * base["base_lr"] and hot["run_id"].endswith("-lrx2")
    a = [float(r["loss"]) for r in _rows(tmp_path / "a" / base["file"])]
    b = [float(r["loss"]) for r in _rows(tmp_path / "b" / hot["file"])]
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "b" / hot["file"])]
    assert len(a) == len(b) == 30 and a[0] == b[0] and a[1:] != b[1:]  # (same start)
    assert lrs[0] == fast["base_lr"]


def test_a_run_that_collapsed_before_its_faults_onset_is_a_collapse_of_unknown_onset():
    # A too-high lr diverging on its own before the fault is injected (a run stops a few
    # steps after its first NaN): the onset rule alone dates its collapse onset + 1.
    nan = float("nan")
    gone = [2.0] * 30 + [0.5] * 30 + [nan] * 3
    assert collapse.collapse_step(gone, 124) == 125
    assert collapse.before_onset(gone, 124) == 60
    assert generate.label_fault(gone, 124, math.log(10)) == ("collapsed", 60, True)
    # risen for good before the onset: the onset rule sees no collapse at all
    stay = [2.3] * 5 + [0.5] * 50 + [5.0] * 30
    assert collapse.collapse_step(stay, 80) is None
    assert generate.label_fault(stay, 80, None) == ("collapsed", 55, True)
    # an excursion that recovered before the onset is not one; the fault's own collapse is
    back = [2.3] * 5 + [0.5] * 50 + [50.0] * 3 + [0.5] * 60 + [5.0] * 30
    assert collapse.before_onset(back, 118) is None
    assert generate.label_fault(back, 118, None) == ("collapsed", 119, False)
    assert generate.label_fault(stay, 0, None)[2] is False  # (onset unknown: no "before")
