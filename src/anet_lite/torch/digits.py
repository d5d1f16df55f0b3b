"""Built-in digits MLPs for the merge-scan demo, the examples and the tests (not the API).

``digits_pairs()`` trains two pairs of 64-64-10 MLPs on scikit-learn's digits (seeded,
CPU, about a second): ``"shared_init"`` (one initialisation, trained on the two halves of
the training set — merges well) and ``"different_init"`` (two initialisations, the whole
training set — a loss barrier in the middle). ``digits_batches()`` is the held-out
evaluation set as 50 batches of 8; ``digits_mlp()`` the architecture. Needs scikit-learn.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from ..merge import one_thread

__all__ = ["DIGITS_BATCH", "DIGITS_EVAL", "digits_batches", "digits_mlp", "digits_pairs"]

DIGITS_BATCH = 8
DIGITS_EVAL = 400


def digits_mlp() -> nn.Module:
    """The built-in architecture: Linear(64, 64) → ReLU → Linear(64, 10) (keys hidden.*, out.*)."""
    m = nn.Sequential()
    m.add_module("hidden", nn.Linear(64, 64))
    m.add_module("act", nn.ReLU())
    m.add_module("out", nn.Linear(64, 10))
    return m


def _digits_split() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.RandomState(0).permutation(len(d.target))
    x = torch.tensor(d.data[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target[order], dtype=torch.long)
    return x[DIGITS_EVAL:], y[DIGITS_EVAL:], x[:DIGITS_EVAL], y[:DIGITS_EVAL]


def digits_batches(batch_size: int = DIGITS_BATCH) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The held-out digits images (400, never trained on) as a fixed list of batches."""
    _, _, xt, yt = _digits_split()
    return list(zip(xt.split(batch_size), yt.split(batch_size)))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def _init(seed: int) -> nn.Module:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return digits_mlp()
    finally:
        torch.random.set_rng_state(state)


_PAIRS: Dict[str, Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]] = {}


def digits_pairs() -> Dict[str, Tuple[nn.Module, nn.Module]]:
    """{"shared_init": (A, B), "different_init": (A, B)}: seeded digits MLPs (cached).

    shared_init: one initialisation (seed 0), A trained on the first half of the training
    set, B on the second half. different_init: initialisations from seeds 1 and 2, both
    trained on the whole training set. SGD (lr 0.1, momentum 0.9, batch 32).
    """
    if not _PAIRS:
        with one_thread():
            _train_pairs()
    out: Dict[str, Tuple[nn.Module, nn.Module]] = {}
    for name, (s1, s2) in _PAIRS.items():
        m1, m2 = _init(0), _init(0)
        m1.load_state_dict(s1)
        m2.load_state_dict(s2)
        out[name] = (m1, m2)
    return out


def _train_pairs() -> None:
    x, y, _, _ = _digits_split()
    h = len(x) // 2
    init = _init(0)
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    _train(a, x[:h], y[:h], seed=10, epochs=20)
    _train(b, x[h:], y[h:], seed=11, epochs=20)
    c, d = _init(1), _init(2)
    _train(c, x, y, seed=12, epochs=20)
    _train(d, x, y, seed=13, epochs=20)
    for name, (m1, m2) in (("shared_init", (a, b)), ("different_init", (c, d))):
        _PAIRS[name] = (copy.deepcopy(m1.state_dict()), copy.deepcopy(m2.state_dict()))
