"""Small real models and data for the torch tests (stdlib source text; no downloads)."""

from __future__ import annotations

import os

import torch
from torch import nn

CTX = 8


def stdlib_ids() -> torch.Tensor:
    root = os.path.dirname(os.__file__)
    names = ("json/decoder.py", "textwrap.py", "string.py", "shlex.py")
    parts = []
    for n in names:
        with open(os.path.join(root, n), encoding="utf-8") as f:
            parts.append(f.read())
    text = "".join(parts)
    vocab = sorted(set(text))
    return torch.tensor([vocab.index(c) for c in text]), len(vocab)


IDS, VOCAB = stdlib_ids()


def batches(n: int, bs: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        i = torch.randint(0, len(IDS) - CTX - 1, (bs,), generator=g)
        x = torch.stack([IDS[j : j + CTX] for j in i.tolist()])
        yield x, IDS[i + CTX]


def char_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(VOCAB, 32),
        nn.Flatten(),
        nn.Linear(CTX * 32, 128),
        nn.ReLU(),
        nn.Linear(128, VOCAB),
    )


def char_mlp_wide(width: int = 512, seed: int = 0) -> nn.Module:
    """An embedding and two hidden layers of ``width`` (~0.48M parameters at 512)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(VOCAB, 32),
        nn.Flatten(),
        nn.Linear(CTX * 32, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, VOCAB),
    )


def cuda_steps_without_sync(tap, opt, backward, steps: int = 3, after_step=None) -> None:
    """``steps`` training steps on CUDA with the tap's own calls run under
    ``torch.cuda.set_sync_debug_mode("error")``: any synchronizing call inside them raises."""
    for _ in range(steps):
        opt.zero_grad()
        backward()
        torch.cuda.synchronize()
        for call in (tap.measure_grads, opt.step, tap.measure_update):
            torch.cuda.set_sync_debug_mode("error" if call != opt.step else "default")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        if after_step is not None:
            after_step()
