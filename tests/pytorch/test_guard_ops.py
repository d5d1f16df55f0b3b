"""ATen ops dispatched per Guard step (issue 21): counted with a ``TorchDispatchMode``.

The Guard's cost on a fast step is host time, and host time follows the number of ops
dispatched. Counted here: ``guard.observe(loss); optimizer.step()`` (the Guard's hooks)
minus the same optimizer step without a Guard, on models of 10, 150 and 1,000 parameter
tensors (a character MLP on stdlib text), against ``clip_grad_norm_(foreach=True)`` on
the same model. Target: at most 4x clip's ops, and not growing with the tensors.

``sample="auto"`` measures a CPU model above 2**21 elements (the 1,000-tensor MLP: 4.7M)
another way (the update on a sample, the noise on every element): its count at 1,000
tensors is compared with the same way of measuring at 10 and 150 tensors (forced there by
lowering ``CPU_SAMPLE_FROM``).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Dict, Optional
from unittest import mock

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch_fixtures import CTX, VOCAB, batches  # noqa: E402

from anet_lite.torch import Guard, measure  # noqa: E402

pytestmark = pytest.mark.torch

WIDTH = 96  # 96 x 96 weights: 9,216 elements, enough blocks to be sampled at 1 in 16
TENSORS = (10, 150, 1000)
TARGET = 4  # Guard ops <= TARGET x clip_grad_norm_(foreach=True) ops


class OpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched while active (views and scalar reads included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def n(self) -> int:
        return sum(self.ops.values())


def deep_mlp(tensors: int, seed: int = 0) -> nn.Module:
    """Embedding, (tensors - 2) / 2 Linear(96, 96) + Tanh, a bias-free head: ``tensors``
    parameter tensors."""
    torch.manual_seed(seed)
    layers = [nn.Embedding(VOCAB, WIDTH // CTX), nn.Flatten()]
    for _ in range((tensors - 2) // 2):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    layers.append(nn.Linear(WIDTH, VOCAB, bias=False))
    model = nn.Sequential(*layers)
    assert len(list(model.parameters())) == tensors
    return model


def step_ops(model: nn.Module, guard_kw: Optional[Dict[str, Any]], steps: int = 8) -> Counter:
    """Ops of the last of ``steps`` steps' ``observe + optimizer.step()`` (no Guard: None)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = Guard(model, opt, **guard_kw) if guard_kw is not None else None
    loss_fn = nn.CrossEntropyLoss()
    counter = OpCounter()
    for x, y in batches(steps, bs=16):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        counter = OpCounter()
        with counter:
            if guard is not None:
                guard.observe(loss)
            opt.step()
    if guard is not None:
        guard.close()
        assert guard.tap.step == steps
        counter.ops.mode = (guard.tap.sample, guard.tap.full_noise)  # how it measured
    return counter.ops


def clip_ops(model: nn.Module) -> int:
    x, y = next(iter(batches(1, bs=16)))
    nn.CrossEntropyLoss()(model(x), y).backward()
    with OpCounter() as counter:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    return counter.n


VARIANTS = {
    "default": {},  # sample="auto": every element up to 2**21 (150 tensors), see CPU_SAMPLED
    "sample=16": {"sample": 16},  # what "auto" picks at ~124M parameters
    "sample=1": {"sample": 1},
    "memory=low": {"memory": "low"},  # chunks of 2**20 elements: 5 at 1,000 tensors
    "clip inside": {"clip_grad_norm": 1.0},  # the packed (GPU-shaped) path on CPU
    "lag + gate": {"lag": True},  # the CUDA path: read one step late, same-step gate
}
# sample="auto": on a CPU, sampled above 2**21 elements (so at 1,000 tensors here)
CPU_SAMPLED = ("default", "clip inside", "lag + gate")
FORCED = " (CPU sample)"  # the same variant with CPU_SAMPLE_FROM = 0: sampled at any size
# The Guard that clips does a clip's work too: its budget is one clip more.
EXTRA_CLIPS = {"clip inside": 1, "clip inside" + FORCED: 1}
# Measured before the batched sample copies (10 / 150 / 1,000 tensors; clip: 8 / 8 / 8):
# default 32 / 32 / 32, sample=16 131 / 1527 / 8027, sample=1 32 / 32 / 32,
# memory=low 32 / 32 / 204, clip inside 35 / 35 / 35.
NOT_YET = {
    "memory=low": "a sample of at most 2**20 elements, but its gradients are copied in "
    "batches of 2**20 elements: ~3 ops per 2**20 elements of model (41 at 4.7M). Taking "
    "the sample straight from the gradients needs a view of each gradient per step "
    "(they are new tensors every step), i.e. ops per tensor; a model-sized buffer is "
    "what the default uses instead",
}


@pytest.fixture(scope="module")
def counts() -> Dict[str, Dict[Any, Any]]:
    """Ops per variant and tensors; ``"<variant>/mode"``: (sample, full_noise) used."""
    names = [*VARIANTS, *(v + FORCED for v in CPU_SAMPLED)]
    out: Dict[str, Dict[Any, Any]] = {k: {} for v in names for k in (v, v + "/mode")}
    out["clip_grad_norm_"] = {}
    for n in TENSORS:
        model = deep_mlp(n)
        base = sum(step_ops(copy.deepcopy(model), None).values())
        for name in names:
            kw = VARIANTS[name.replace(FORCED, "")]
            with mock.patch.object(measure, "CPU_SAMPLE_FROM", 0 if FORCED in name else 2**21):
                ops = step_ops(copy.deepcopy(model), kw)
            out[name][n] = sum(ops.values()) - base
            out[name + "/mode"][n] = ops.mode
        out["clip_grad_norm_"][n] = clip_ops(copy.deepcopy(model))
    return out


def test_the_counter_sees_clip_grad_norm_as_a_few_ops_whatever_the_tensors(counts):
    clip = counts["clip_grad_norm_"]
    assert clip[10] == clip[150] == clip[1000]
    assert 2 <= clip[10] <= 16


def test_the_counter_sees_the_per_tensor_work_of_an_unguarded_step():
    """The baseline the Guard is measured against does grow with the tensors (a
    non-foreach AdamW on CPU): the counter sees ops dispatched inside the step."""
    small = sum(step_ops(deep_mlp(10), None).values())
    large = sum(step_ops(deep_mlp(150), None).values())
    assert large > 10 * small


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(v, marks=pytest.mark.xfail(reason=NOT_YET[v], strict=True))
        if v in NOT_YET
        else v
        for v in [*VARIANTS, *(v + FORCED for v in CPU_SAMPLED)]
    ],
)
def test_guard_ops_per_step_are_a_few_times_a_clip_and_do_not_grow(counts, variant):
    got, clip, mode = counts[variant], counts["clip_grad_norm_"], counts[variant + "/mode"]
    print(f"{variant}: Guard ops per step {got}, clip_grad_norm_ {clip}, mode {mode}")
    budget = TARGET + EXTRA_CLIPS.get(variant, 0)
    for n in TENSORS:
        assert got[n] > 0, "the Guard dispatches ops of its own"
        assert got[n] <= budget * clip[n], (variant, n, got, clip)
    if FORCED in variant:
        assert all(m == (measure.CPU_SAMPLE, True) for m in mode.values()), mode
    for n in TENSORS[1:]:  # against 10 tensors measured the same way
        same = variant if mode[n] == mode[10] else variant + FORCED
        assert counts[same + "/mode"][10] == mode[n], (variant, n, mode)
        assert got[n] <= counts[same][10] + 2, (variant, n, got, counts[same])
