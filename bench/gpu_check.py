"""One short GPU check for a lent device: no host sync in a Guard step, overhead at >=100M params.

    python bench/gpu_check.py [--steps 30] [--layers 8] [--d 1024]

1. Sync check: one training step with ``torch.cuda.set_sync_debug_mode("error")`` around
   the Guard's work (observe + optimizer.step with its hooks) must not raise.
2. Overhead: a ~100M-parameter byte-level transformer LM (text of the Python standard
   library's own sources) trains with and without the Guard, interleaved step by step in
   one process; prints median ms/step and the ratio (goal <= 1.01).
Prints one JSON line at the end. Needs CUDA; exits 2 without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

from anet_lite.torch import Guard


def stdlib_bytes(n: int) -> torch.Tensor:
    root = os.path.dirname(os.__file__)
    buf = bytearray()
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as f:
                buf += f.read()
        if len(buf) >= n:
            break
    return torch.tensor(list(buf[:n]), dtype=torch.long)


class LM(nn.Module):
    def __init__(self, d: int, layers: int, ctx: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        layer = nn.TransformerEncoderLayer(d, d // 64, 4 * d, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d, 256)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(self.body(h, mask=self.mask, is_causal=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    data = stdlib_bytes(2_000_000).to(dev)
    models, opts = [], []
    for _ in range(2):
        torch.manual_seed(0)
        m = LM(args.d, args.layers, args.ctx).to(dev)
        models.append(m)
        opts.append(torch.optim.AdamW(m.parameters(), 3e-4, fused=True))
    n_params = sum(p.numel() for p in models[0].parameters())
    guard = Guard(models[1], opts[1], checkpoint_every=0, on_error="raise")
    gen = torch.Generator(device="cpu").manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int, k: int, sync_debug: bool = False) -> float:
        ix = torch.randint(0, len(data) - args.ctx - 1, (args.batch,), generator=gen).to(dev)
        off = torch.arange(args.ctx, device=dev)
        x, y = data[ix[:, None] + off], data[ix[:, None] + off + 1]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = loss_fn(models[k](x).flatten(0, 1), y.flatten())
        loss.backward()
        if sync_debug:
            torch.cuda.set_sync_debug_mode("error")
        try:
            if k == 1:
                guard.observe(loss)
            opts[k].step()
        finally:
            if sync_debug:
                torch.cuda.set_sync_debug_mode("default")
        opts[k].zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    for i in range(3):  # warm-up (allocations, the tap's buffers, the first lagged read)
        step(i, 0)
        step(i, 1)
    sync_ok, sync_err = True, ""
    try:
        step(3, 1, sync_debug=True)
        step(4, 1, sync_debug=True)
    except RuntimeError as exc:
        sync_ok, sync_err = False, str(exc)[:300]
    times: dict = {0: [], 1: []}
    for i in range(args.steps):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            times[k].append(step(i, k))
    base, guarded = statistics.median(times[0]), statistics.median(times[1])
    out = {
        "device": torch.cuda.get_device_name(0),
        "params": n_params,
        "steps": args.steps,
        "ms_baseline": round(base * 1e3, 2),
        "ms_guard": round(guarded * 1e3, 2),
        "ratio": round(guarded / base, 4),
        "sync_debug_ok": sync_ok,
        "sync_error": sync_err,
        "last_status": guard.last.status if guard.last else None,
    }
    print(json.dumps(out))
    return 0 if sync_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
