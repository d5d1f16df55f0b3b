"""Memory the tap holds beyond the model, per configuration (``GradNoiseTap.extra_memory_bytes``).

    python bench/tap_memory.py

MLPs of 0.43M, 25M and 67M float32 parameters, two SGD steps each (buffers are made on
first use); prints a markdown table: bytes held and the ratio to the parameters' bytes.
"""

import torch
from torch import nn

from anet_lite.torch import GradNoiseTap

torch.set_num_threads(2)


def mlp(width, depth):
    layers = [nn.Linear(256, width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


models = {"0.43M": lambda: mlp(256, 5), "25M": lambda: mlp(2048, 6), "67M": lambda: mlp(2896, 8)}
cfgs = {
    "Guard's tap (noise=sketch, max_abs=False)": dict(noise="sketch", max_abs=False),
    "default (noise=exact: EMA)": dict(),
    "noise=sketch, chunk_numel=2**20": dict(noise="sketch", chunk_numel=2**20),
    "noise=exact (EMA), chunk_numel=2**20": dict(chunk_numel=2**20),
    "exact_update=True": dict(exact_update=True),
}
print("| model (parameters) | tap | held beyond the model | ratio |")
print("| --- | --- | ---: | ---: |")
for mname, mk in models.items():
    for cname, kw in cfgs.items():
        torch.manual_seed(0)
        model = mk()
        opt = torch.optim.SGD(model.parameters(), 1e-3)
        n = sum(p.numel() * p.element_size() for p in model.parameters())
        tap = GradNoiseTap(model, **kw)
        x = torch.randn(32, 256)
        y = torch.randint(0, 10, (32,))
        for _ in range(2):
            nn.functional.cross_entropy(model(x), y).backward()
            tap.measure_grads()
            opt.step()
            tap.measure_update()
            opt.zero_grad()
        e = tap.extra_memory_bytes()
        print(
            f"| {mname} ({n / 2**20:.1f} MiB) | {cname} | {e / 2**20:.1f} MiB | {e / n:.2f}x |",
            flush=True,
        )
