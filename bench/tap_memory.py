"""Memory the tap holds beyond the model, per configuration (``GradNoiseTap.extra_memory_bytes``).

    python bench/tap_memory.py [--models 0.43M,25M,67M] [--time]

MLPs of 0.43M, 25M and 67M parameters, in float32 and in bfloat16, two SGD steps each
(buffers are made on first use); prints a markdown table: bytes held and the ratio to the
parameters' bytes. ``--time`` also times the tap's calls (measure_grads + measure_update,
median of 10 steps, one thread) for the default tap, the float32 EMA with
``chunk_numel=2**20`` and ``memory="low"`` on the 25M float32 model, in one process,
alternating (ratios to the default: compare those, not the times, on a shared machine).
"""

import argparse
import statistics
import time

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
    'Guard\'s default (the same, sample="auto")': dict(noise="sketch", max_abs=None, sample="auto"),
    "Guard's tap, sample=16": dict(noise="sketch", max_abs=None, sample=16),
    'Guard\'s tap, memory="low" (sample="auto": at most 2**20)': dict(
        noise="sketch", max_abs=None, sample="auto", memory="low"
    ),
    "default (noise=exact: EMA)": dict(),
    "noise=sketch, chunk_numel=2**20": dict(noise="sketch", chunk_numel=2**20),
    "noise=exact (EMA), chunk_numel=2**20": dict(chunk_numel=2**20),
    "EMA, ema_dtype=bfloat16, chunk_numel=2**20": dict(ema_dtype=torch.bfloat16, chunk_numel=2**20),
    'memory="low" (int8 EMA, chunk_numel=2**20)': dict(memory="low"),
    "exact_update=True": dict(exact_update=True),
}


def steps(model, tap, n, dtype, times=None):
    opt = torch.optim.SGD(model.parameters(), 1e-3)
    x = torch.randn(32, 256, dtype=dtype)
    y = torch.randint(0, 10, (32,))
    for _ in range(n):
        nn.functional.cross_entropy(model(x).float(), y).backward()
        t0 = time.perf_counter()
        tap.measure_grads()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        tap.measure_update()
        t3 = time.perf_counter()
        opt.zero_grad()
        if times is not None:
            times.append((t1 - t0) + (t3 - t2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(models))
    ap.add_argument("--time", action="store_true")
    args = ap.parse_args()
    print("| model (parameters) | tap | held beyond the model | ratio |")
    print("| --- | --- | ---: | ---: |")
    for mname in args.models.split(","):
        for dtype in (torch.float32, torch.bfloat16):
            for cname, kw in cfgs.items():
                if dtype == torch.bfloat16 and "exact_update" in kw:
                    continue
                torch.manual_seed(0)
                model = models[mname]().to(dtype)
                n = sum(p.numel() * p.element_size() for p in model.parameters())
                tap = GradNoiseTap(model, **kw)
                steps(model, tap, 2, dtype)
                e = tap.extra_memory_bytes()
                label = f"{mname} {str(dtype)[6:]} ({n / 2**20:.1f} MiB)"
                print(f"| {label} | {cname} | {e / 2**20:.1f} MiB | {e / n:.2f}x |", flush=True)
                del model, tap
    if args.time:
        torch.set_num_threads(1)  # (2 threads on a busy 2-core machine: ~ms waits per op)
        torch.manual_seed(0)
        base = models["25M"]()
        pairs = {"default": {}, "2**20": dict(chunk_numel=2**20), "low": dict(memory="low")}
        runs = {k: (mlp(2048, 6), []) for k in pairs}
        for m, _ in runs.values():
            m.load_state_dict(base.state_dict())
        taps = {k: GradNoiseTap(runs[k][0], **kw) for k, kw in pairs.items()}
        for k in pairs:
            steps(runs[k][0], taps[k], 2, torch.float32)  # warm-up: buffers made
        for _ in range(10):
            for k in pairs:
                steps(runs[k][0], taps[k], 1, torch.float32, runs[k][1])
        med = {k: statistics.median(runs[k][1]) * 1e3 for k in pairs}
        print("tap calls per step, 25M float32, 1 thread, median of 10 steps:")
        names = {"default": "default", "2**20": "chunk_numel=2**20", "low": 'memory="low"'}
        for k in pairs:
            print(f"  {names[k]}: {med[k]:.1f} ms ({med[k] / med['default']:.2f}x the default)")


if __name__ == "__main__":
    main()
