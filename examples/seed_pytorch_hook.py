"""The seed README's "Minimal PyTorch hook", run as written on a real model.

The seed leaves `model = ...` and `loader` open. Here: a small character-level MLP
language model (8 characters of context) trained with AdamW on the source text of
Python's own standard library, for 300 steps on CPU. Everything from `class
GradNoiseTap` down is the seed's code, unchanged. (anet_lite.torch has the fused,
sync-free version of this tap and a true update norm; this file shows the seed's API
still works as the seed wrote it.)

    python examples/seed_pytorch_hook.py
"""

from __future__ import annotations

import os
import types

import torch
from torch import nn

torch.manual_seed(0)
CONTEXT, STEPS, BATCH = 8, 300, 64


def stdlib_text() -> str:
    root = os.path.dirname(os.__file__)
    names = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "shlex.py")
    return "".join(open(os.path.join(root, n), encoding="utf-8").read() for n in names)


TEXT = stdlib_text()
VOCAB = sorted(set(TEXT))
IDS = torch.tensor([VOCAB.index(c) for c in TEXT])


class CharMLP(nn.Module):
    """Predicts the next character from the previous CONTEXT ones; returns `.loss`."""

    def __init__(self, vocab: int, dim: int = 32, hidden: int = 128):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.net = nn.Sequential(
            nn.Linear(CONTEXT * dim, hidden), nn.ReLU(), nn.Linear(hidden, vocab)
        )

    def forward(self, batch):
        x, y = batch
        logits = self.net(self.emb(x).flatten(1))
        return types.SimpleNamespace(loss=nn.functional.cross_entropy(logits, y))


def make_loader(steps: int = STEPS, batch: int = BATCH):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(IDS) - CONTEXT - 1, (batch,), generator=g)
        x = torch.stack([IDS[j : j + CONTEXT] for j in i.tolist()])
        yield x, IDS[i + CONTEXT]


loader = make_loader()

# ---- the seed README's code, as written (only `model = ...` filled in) ------------------------
import torch
from anet_lite import snapshot  # returns theta/sdot/proc/F/precursor


class GradNoiseTap:
    def __init__(self, model, ema=0.9):
        self.model, self.ema = model, ema
        self.m = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}

    def norm(self):
        acc = 0.0
        for n, p in self.model.named_parameters():
            if not p.requires_grad or p.grad is None:
                continue
            g = p.grad.detach()
            self.m[n].mul_(self.ema).add_(g, alpha=1 - self.ema)
            acc += float((g - self.m[n]).norm().cpu().item())
        return acc


logs = {"loss": [], "g": [], "s": []}
model = CharMLP(len(VOCAB))
opt = torch.optim.AdamW(model.parameters(), 3e-4)
tap = GradNoiseTap(model)
ref = []

for t, batch in enumerate(loader, 1):
    opt.zero_grad()
    loss = model(batch).loss
    loss.backward()
    gnorm = tap.norm()
    snorm = sum(
        float((p.grad**2).sum().sqrt().cpu()) for p in model.parameters() if p.grad is not None
    )
    opt.step()
    logs["loss"].append(float(loss))
    logs["g"].append(gnorm)
    logs["s"].append(snorm)
    if t < 100:
        ref.append(gnorm)
        continue
    snap = snapshot(
        loss_hist=logs["loss"][-64:],
        grad_norms=logs["g"][-64:],
        step_norms=logs["s"][-64:],
        noise_seq=logs["g"][-64:],
        ref_seq=ref[-64:],
    )
    if t % 20 == 0:
        print(
            f"[{t}] θ={snap.theta:.2f} F={snap.f_total:+.2f} pre={snap.precursor} z={snap.zscore:+.2f}"
        )
    if snap.precursor or snap.theta < 0.6:
        for g in opt.param_groups:
            g["lr"] *= 0.8  # slow down gently
