"""Small torch models for the detection benchmark (CPU, seconds per run)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class MLP(nn.Module):
    def __init__(self, d_in: int, n_classes: int, hidden=(128, 64)):
        super().__init__()
        layers = []
        d = d_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """8x8 digit images: conv16-conv32-maxpool-linear."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, n_classes)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, qk_norm: bool):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        dh = d // n_head
        self.qk_norm = qk_norm
        if qk_norm:
            self.qn = nn.LayerNorm(dh)
            self.kn = nn.LayerNorm(dh)
        self.max_logit = 0.0

    def forward(self, x):
        B, T, D = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).split(D, dim=2)
        dh = D // self.n_head
        q = q.view(B, T, self.n_head, dh).transpose(1, 2)
        k = k.view(B, T, self.n_head, dh).transpose(1, 2)
        v = v.view(B, T, self.n_head, dh).transpose(1, 2)
        if self.qk_norm:
            q, k = self.qn(q), self.kn(k)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(dh)  # explicit logits (Wortsman et al.)
        self.max_logit = float(att.detach().abs().max())
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        with torch.no_grad():  # mean attention entropy (nats) over heads and queries
            self.entropy = float(-torch.special.xlogy(att, att).sum(-1).mean())
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab=128, d=64, n_layer=2, n_head=4, ctx=64, qk_norm=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(d, n_head, qk_norm) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))

    def max_attn_logit(self) -> float:
        return max(b.max_logit for b in self.blocks)

    def min_attn_entropy(self) -> float:
        return min(b.entropy for b in self.blocks)


class CharGRU(nn.Module):
    def __init__(self, vocab=128, d_emb=32, hidden=96):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_emb)
        self.rnn = nn.GRU(d_emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx):
        h, _ = self.rnn(self.emb(idx))
        return self.head(h)


class BNCNN(nn.Module):
    """8x8 digit images: conv16-BN-conv32-BN-maxpool-linear (for the BatchNorm faults).

    ``frozen_bn()`` puts every BatchNorm layer in eval mode (running statistics used,
    affine weights still trained): the "frozen BN" fine-tuning setup of detection and
    segmentation models trained with small batches.
    """

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.b2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 4 * 4, n_classes)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc(x.flatten(1))

    def bn_layers(self):
        return [self.b1, self.b2]

    def frozen_bn(self) -> None:
        for b in self.bn_layers():
            b.eval()


def head_of(model: nn.Module) -> nn.Module:
    """The output layer (the one that produces the logits) of every benchmark model."""
    if isinstance(model, MLP):
        return model.net[-1]
    if isinstance(model, (SmallCNN, BNCNN)):
        return model.fc
    return model.head
