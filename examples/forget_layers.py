"""Explainable forgetting: train a tiny MLP, forget one layer, and leave a verifiable tombstone.

    python examples/forget_layers.py [LOG]     # LOG defaults to a fresh temporary file

Trains a 64-32-10 MLP on scikit-learn's digits (1,797 real 8x8 images, CPU, a few seconds)
with an anet-lite Monitor watching the loss, then re-initialises the output layer under the
"compliance" policy. The tombstone records the monitor's last snapshot (θ, F_Total, z), the
reason, and SHA-256 hashes of the layer's weights before and after; the chain is verified.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from anet_lite import Monitor, verify
from anet_lite.torch.forget import forget_layers, weights_hash


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> int:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(64, 32))
    model.add_module("act", nn.ReLU())
    model.add_module("out", nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = Monitor()
    snap = None
    step = 0
    for _epoch in range(4):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            gnorm = float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
            opt.step()
            step += 1
            snap = monitor.update(loss.item(), step=step, grad_norm=gnorm)
    print(f"trained {step} steps: accuracy {accuracy(model, x, y):.3f}")

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "tomb.jsonl"
    before = weights_hash(model.out)
    rec = forget_layers(
        model,
        ["out"],
        policy="compliance",
        log=path,
        reason="erasure request: drop the classifier head trained on the digits set",
        snapshot=snap,
    )
    assert rec["evidence"]["weights_before"]["out"] == before
    assert rec["evidence"]["weights_after"]["out"] == weights_hash(model.out)
    print(f"after forgetting 'out': accuracy {accuracy(model, x, y):.3f}")
    print(json.dumps(rec, indent=2, ensure_ascii=False))
    res = verify(path)
    print(f"log: {path}")
    print(f"chain: {res.reason}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
