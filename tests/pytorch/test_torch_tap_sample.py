"""GradNoiseTap(sample=R): the block sample's layout, its estimates against the full tap on
a real model (stdlib text), the exact gradient norm, non-finite gradients outside the
sample, the Guard with a sample, argument checks."""

from __future__ import annotations

import math
import statistics

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch_fixtures import batches, char_mlp_wide, cuda_steps_without_sync  # noqa: E402

from anet_lite.torch import GradNoiseTap, Guard  # noqa: E402
from anet_lite.torch.sample import SAMPLE_MIN_BLOCKS, SAMPLE_UNIT, sample_ranges  # noqa: E402

pytestmark = pytest.mark.torch


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40_000), min_size=1, max_size=12),
    rate=st.integers(2, 32),
    seed=st.integers(0, 2**31),
)
def test_sample_ranges_are_sorted_disjoint_and_keep_one_in_rate(sizes, rate, seed):
    kept = sample_ranges(sizes, rate, seed)
    assert len(kept) == len(sizes)
    for n, ranges in zip(sizes, kept):
        if ranges is None:  # kept whole: too small to sample
            continue
        assert ranges and all(0 <= a < b <= n for a, b in ranges)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:]))
        blk = max(b - a for a, b in ranges)
        assert blk % SAMPLE_UNIT == 0 and n >= SAMPLE_MIN_BLOCKS * rate * blk
        # systematic: within one block of n / rate
        assert abs(sum(b - a for a, b in ranges) - n / rate) <= blk


def test_sample_ranges_keep_each_element_with_probability_one_in_rate():
    n, rate = 70_000, 4
    hits = torch.zeros(n)
    seeds = 400
    for seed in range(seeds):
        (ranges,) = sample_ranges([n], rate, seed)
        for a, b in ranges:
            hits[a:b] += 1
    frac = hits / seeds  # per element, over the phases: 1/rate in expectation
    assert frac.mean().item() == pytest.approx(1 / rate, rel=0.01)
    assert frac[:128].mean().item() == pytest.approx(1 / rate, abs=0.08)  # the wrap at the start
    assert frac[-128:].mean().item() == pytest.approx(1 / rate, abs=0.08)


@pytest.mark.parametrize("chunk_numel", [2**24, 5_000])
def test_a_sampled_fill_copies_exactly_the_kept_elements(chunk_numel):
    """The strided copies (one per run of blocks) and the per-segment ones give the same
    flat buffer as slicing every kept range, with blocks cut between chunks too."""
    from anet_lite.torch.sample import sampled_runs
    from anet_lite.torch.sketch import Seg, fill, fill_params

    model = char_mlp_wide()
    tap = GradNoiseTap(model, 0.9, noise="sketch", sample=4, chunk_numel=chunk_numel)
    x, y = next(batches(1))
    nn.functional.cross_entropy(model(x), y).backward()
    tap.measure_grads()
    tap.measure_update()
    assert len(tap._chunks) == (1 if chunk_numel == 2**24 else 25)
    with torch.no_grad():
        for c in tap._chunks:
            for get in (Seg.grad, Seg.local):
                want = torch.cat([get(sg).reshape(-1)[sg.start : sg.end] for sg in c.segs])
                want[: c.prescale] *= c.weight
                buf = torch.full((c.n_pad,), math.nan)
                got = fill(c, buf, get) if get is Seg.grad else fill_params(c, buf)
                assert torch.equal(got[: c.n], want)
    n = sum(c.n for c in tap._chunks)
    assert sum(len(c.segs) for c in tap._chunks) > 50 and n < 0.35 * 480_350
    assert any(rows for c in tap._chunks for _, rows, _ in sampled_runs(c))  # strided runs


@pytest.mark.parametrize("limit", [2**24, 40_000, 5_000])
def test_batched_gradient_copies_give_the_sample_and_the_exact_sum(limit):
    """``fill_sampled_grads`` (whole gradients copied in batches of ``limit`` elements,
    the sample copied out of them; parameters above ``limit`` run by run) fills the same
    buffer as the run-by-run copies, and its sum of g**2 is the exact one."""
    from anet_lite.torch.sample import fill_sampled_grads
    from anet_lite.torch.sketch import Seg, fill

    model = char_mlp_wide()
    tap = GradNoiseTap(model, 0.9, noise="sketch", sample=4)
    x, y = next(batches(1))
    nn.functional.cross_entropy(model(x), y).backward()
    tap.measure_grads()
    (c,) = tap._chunks
    assert c.sole and c.views_stay
    with torch.no_grad():
        want = fill(c, torch.full((c.n_pad,), math.nan), Seg.grad).clone()
        full = torch.empty(min(limit, 480_350))
        got = torch.full((c.n_pad,), math.nan)
        sq = fill_sampled_grads(c, got, full, limit)
        assert torch.equal(got[: c.n], want[: c.n])
        ref = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())
        assert float(sq) == pytest.approx(ref, rel=1e-5)
        big = [p for p in model.parameters() if p.numel() > limit]
        assert bool(big) == (limit < 262_144)  # the 512 x 512 layer: run by run


def test_bf16_gradients_sampled_give_the_exact_norm_in_fp32():
    """bf16 gradients: the exact norm accumulates in float32 (a float32 copy and dot),
    not in bf16 (3 significant digits)."""
    model = char_mlp_wide().to(torch.bfloat16)
    tap = GradNoiseTap(model, 0.9, noise="sketch", sample=4)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    for x, y in batches(3):
        opt.zero_grad()
        logits = model(x)
        nn.functional.cross_entropy(logits.float(), y).backward()
        tap.measure_grads()
        opt.step()
        tap.measure_update()
        ref = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
        s = tap.stats()
        assert s.finite and s.grad_norm == pytest.approx(ref, rel=1e-5)


def run_pair(opt_name: str, rate: int, steps: int = 50, noise: str = "sketch"):
    model = char_mlp_wide()
    if opt_name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), 3e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    full = GradNoiseTap(model, 0.9, noise="exact", max_abs=False)
    samp = GradNoiseTap(model, 0.9, noise=noise, sample=rate)
    pairs = []
    for x, y in batches(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        full.measure_grads()
        samp.measure_grads()
        opt.step()
        full.measure_update()
        samp.measure_update()
        pairs.append((full.stats(), samp.stats()))
    return pairs[5:], samp


@pytest.mark.parametrize("noise", ["sketch", "exact"])
def test_a_sample_of_one_in_4_estimates_the_full_stats(noise):
    pairs, samp = run_pair("adamw", 4, noise=noise)

    def rel(f):
        return [abs(f(b) / f(a) - 1) for a, b in pairs]

    # the gradient norm is exact (every element, one multi-tensor norm)
    assert max(rel(lambda s: s.grad_norm)) < 1e-4  # (float32 sums in another order)
    # measured here (AdamW, 0.48M parameters, 45 steps), worst of 12 sampling seeds:
    # update 3.8% median / 5.1% max, param 3.1%, processivity 0.011 / 0.031 absolute,
    # noise 8.2% / 15% (one seed's numbers differ with the torch version's generator)
    assert statistics.median(rel(lambda s: s.update_norm)) < 0.06
    assert max(rel(lambda s: s.update_norm)) < 0.10
    assert max(rel(lambda s: s.param_norm)) < 0.06
    proc = [abs(b.processivity - a.processivity) for a, b in pairs]
    assert statistics.median(proc) < 0.02 and max(proc) < 0.06
    assert statistics.median(rel(lambda s: s.noise_norm)) < 0.12
    assert max(rel(lambda s: s.noise_norm)) < 0.25
    assert all(b.finite for _, b in pairs)
    # and it measures about a quarter of the elements
    n_all = sum(p.numel() for p in samp.model.parameters())
    assert 0.2 < sum(c.n for c in samp._chunks) / n_all < 0.35


def test_a_nan_outside_the_sample_still_makes_the_step_non_finite():
    model = char_mlp_wide()
    tap = GradNoiseTap(model, 0.9, noise="sketch", sample=8)
    x, y = next(batches(1))
    nn.functional.cross_entropy(model(x), y).backward()
    tap.measure_grads()
    tap.measure_update()
    kept = torch.zeros(model[4].weight.numel(), dtype=torch.bool)
    for c in tap._chunks:
        for seg in c.segs:
            if seg.param is model[4].weight:
                kept[seg.start : seg.end] = True
    assert 0 < kept.sum() < kept.numel()  # this weight is sampled, not kept whole
    outside = int((~kept).nonzero()[0])
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    model[4].weight.grad.view(-1)[outside] = math.nan
    tap.measure_grads()
    tap.measure_update()
    s = tap.stats()
    assert not s.finite and math.isnan(s.grad_norm)


def test_the_guard_with_a_sample_survives_lr_times_100():
    from test_guard import tail, train  # the same run as the Guard's own lr x 100 test

    healthy, _ = train("adamw", 3e-3)
    broken, _ = train("adamw", 3e-3, factor=100.0, onset=200, guard=False)
    guarded, g = train("adamw", 3e-3, factor=100.0, onset=200, sample=4)
    assert g.tap.sample == 4 and sum(c.n for c in g.tap._chunks) < 0.3 * 58_334
    assert not math.isfinite(tail(broken)) or tail(broken) > 1.5 * tail(healthy)
    assert math.isfinite(tail(guarded)) and tail(guarded) < 1.05 * tail(healthy)
    assert g.actions and g.actions[0].kind == "slow_down" and g.actions[0].step == 201


def test_auto_sample_measures_small_models_whole_and_keeps_large_samples_bounded():
    assert GradNoiseTap.auto_sample(2**24) == 1
    assert GradNoiseTap.auto_sample(2**24 + 1) == 4
    assert GradNoiseTap.auto_sample(101_556_480) == 16  # bench/gpu_check.py's LM
    assert GradNoiseTap.auto_sample(10**9) == 128
    small = char_mlp_wide()
    g = Guard(small, torch.optim.SGD(small.parameters(), 0.1), checkpoint_every=0)
    x, y = next(batches(1))
    loss = nn.functional.cross_entropy(small(x), y)
    loss.backward()
    g.observe(loss)
    g.optimizer.step()
    assert g.tap.sample == 1 and g.tap.sample_auto  # the Guard's default: "auto"

    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 4096))  # 33.6M parameters
    tap = GradNoiseTap(big, 0.9, noise="sketch", sample="auto")
    whole = GradNoiseTap(big, 0.9, noise="sketch", sample="auto", max_abs=True)
    big(torch.randn(2, 4096)).square().mean().backward()
    for t in (tap, whole):
        t.measure_grads()
        t.measure_update()
    assert tap.sample == 8 and 3.5e6 < sum(c.n for c in tap._chunks) < 4.9e6
    assert whole.sample == 1  # max |g| needs every element: "auto" measures them all
    a, b = whole.stats(), tap.stats()
    ref = math.sqrt(sum(float(p.grad.double().square().sum()) for p in big.parameters()))
    # float32 dots per tensor (sampled) and per 2**24-element chunk (whole): ~2e-4 here
    assert b.grad_norm == pytest.approx(ref, rel=1e-3)
    assert a.grad_norm == pytest.approx(ref, rel=1e-3)
    assert b.noise_norm == pytest.approx(a.noise_norm, rel=0.1)
    assert b.param_norm == pytest.approx(a.param_norm, rel=0.02)


@pytest.mark.parametrize(
    "kw, err",
    [
        ({"sample": 0}, ValueError),
        ({"sample": True}, TypeError),
        ({"sample": 2.0}, TypeError),
        ({"sample": "all"}, TypeError),
        ({"sample": 4, "exact_update": True}, ValueError),
        ({"sample": 4, "memory": "low"}, ValueError),
        ({"sample": 4, "max_abs": True}, ValueError),
        ({"sample": 4, "ema_dtype": torch.bfloat16}, ValueError),
    ],
)
def test_bad_sample_arguments_are_named(kw, err):
    with pytest.raises(err, match=r"sample|max_abs"):
        GradNoiseTap(char_mlp_wide(64), 0.9, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampled_tap_does_not_sync():
    model = char_mlp_wide().cuda()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    tap = GradNoiseTap(model, 0.9, noise="sketch", sample=4)
    data = batches(10)

    def backward():
        x, y = next(data)
        nn.functional.cross_entropy(model(x.cuda()), y.cuda()).backward()

    cuda_steps_without_sync(tap, opt, backward)
