"""Per-step overhead of anet-lite's Guard and tap while training a small transformer LM.

    python bench/overhead.py [--steps 100] [--quick] [--threads 1]

A 2-layer, d=128 causal transformer learns characters of the Python standard library's
own source files on CPU. Five copies of it (same init, same batches) train side by side:

* ``baseline``: no measurement;
* ``seed tap``: the seed README's ``GradNoiseTap.norm()`` (inline copy below), one
  ``.cpu().item()`` per parameter tensor;
* ``tap``: ``anet_lite.torch.GradNoiseTap`` no-sync path (measure_grads, step,
  measure_update, stats);
* ``tap noise=sketch``: the same with the noise EMA kept in sketch space (the Guard's
  default);
* ``tap exact``: the same with ``exact_update=True``;
* ``tap sketched (4 chunks)``: the default tap with ``chunk_numel=2**17``: this model fits
  in one chunk, which the tap measures exactly; in 4 chunks it sketches the update, as it
  does for models above 2**24 elements, and the sketch's errors are reported;
* ``clip_grad_norm_``: ``torch.nn.utils.clip_grad_norm_`` alone, for scale;
* ``Guard``: ``anet_lite.torch.Guard`` with its defaults (tap + Monitor + policy +
  in-memory checkpoints every 100 steps), the user's one line ``guard.observe(loss)``;
* ``Guard + clip 1.0``: the same, clipping inside the Guard (compare with clip alone).

Variants are interleaved in rounds (A B C D E, B C D E A, ...: one step each, order
rotating) in one process so machine drift hits them alike; the table gives the median
step time and its ratio to baseline, and the median time spent inside the measuring calls
(for the Guard: inside its optimizer hooks), which is far less exposed to noise from
other processes on a shared machine. All variants see identical training trajectories,
so the sketch's errors on ||delta theta||, processivity and the noise norm are reported
too. On CPU a "sync" costs nothing, so this measures compute
overhead only; the seed's per-parameter syncs cost far more on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn

from anet_lite.torch import GradNoiseTap, Guard


class SeedGradNoiseTap:
    """The seed README's naive tap, verbatim apart from formatting (for comparison)."""

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


def stdlib_text(max_chars: int) -> str:
    """Source text of the standard library's own modules (sorted, deterministic)."""
    root = os.path.dirname(os.__file__)
    parts: List[str] = []
    total = 0
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        try:
            with open(os.path.join(root, name), encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int = 128, layers: int = 2, heads: int = 4, ctx: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def timed(fn: Callable, st: Dict) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            st["hook"] = st.get("hook", 0.0) + time.perf_counter() - t0

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    ap.add_argument("--quick", action="store_true", help="a few steps, for a smoke run")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=64)
    args = ap.parse_args()
    steps = 10 if args.quick else args.steps
    warmup = 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    text = stdlib_text(400_000)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    init = TinyLM(len(chars), ctx=args.ctx)
    n_params = sum(p.numel() for p in init.parameters())

    gen = torch.Generator().manual_seed(1)
    total_steps = warmup + steps
    starts = torch.randint(0, len(data) - args.ctx - 1, (total_steps, args.batch), generator=gen)

    def batch(i: int):
        ix = starts[i]
        x = torch.stack([data[j : j + args.ctx] for j in ix.tolist()])
        y = torch.stack([data[j + 1 : j + 1 + args.ctx] for j in ix.tolist()])
        return x, y

    batches = [batch(i) for i in range(total_steps)]

    variants: Dict[str, Dict] = {}
    seed_name = "seed tap (.item per tensor)"
    names = [
        "baseline",
        seed_name,
        "tap (no-sync)",
        "tap noise=sketch",
        "tap exact_update",
        "tap sketched (4 chunks)",
        "clip_grad_norm_",
        "Guard",
        "Guard + clip 1.0",
    ]
    for name in names:
        model = TinyLM(len(chars), ctx=args.ctx)
        model.load_state_dict(init.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        variants[name] = {"model": model, "opt": opt, "times": [], "i": 0, "upd": [], "meas": []}
    v = variants
    v[seed_name]["seed"] = SeedGradNoiseTap(v[seed_name]["model"])
    v["tap (no-sync)"]["tap"] = GradNoiseTap(v["tap (no-sync)"]["model"])
    v["tap noise=sketch"]["tap"] = GradNoiseTap(v["tap noise=sketch"]["model"], noise="sketch")
    v["tap exact_update"]["tap"] = GradNoiseTap(v["tap exact_update"]["model"], exact_update=True)
    # This model fits one chunk, which is measured exactly; chunks of 2**17 elements make
    # the tap sketch theta_after - theta_before, as it does for models above 2**24.
    v["tap sketched (4 chunks)"]["tap"] = GradNoiseTap(
        v["tap sketched (4 chunks)"]["model"], chunk_numel=2**17
    )
    for name, clip in (("Guard", None), ("Guard + clip 1.0", 1.0)):
        guard = Guard(v[name]["model"], v[name]["opt"], clip_grad_norm=clip, on_error="raise")
        v[name]["guard"] = guard
        for hook in ("_before_step", "_after_step"):  # the work inside the Guard's hooks
            setattr(guard, hook, timed(getattr(guard, hook), v[name]))

    loss_fn = nn.CrossEntropyLoss()

    def one_step(name: str) -> float:
        st = v[name]
        model, opt, i = st["model"], st["opt"], st["i"]
        x, y = batches[i]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits.view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        tap = st.get("tap")
        t1 = time.perf_counter()
        if name.startswith("seed"):
            st["seed"].norm()
        elif name.startswith("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if tap is not None:
            tap.measure_grads()
        if "guard" in st:
            st["guard"].observe(loss)  # the Guard itself runs inside opt.step() (its hooks)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if tap is not None:
            tap.measure_update()
            s = tap.stats()
        dt = time.perf_counter() - t0
        st["meas"].append(t2 - t1 + time.perf_counter() - t3 + st.pop("hook", 0.0))
        if tap is not None:
            st["upd"].append((s.update_norm, s.processivity, s.noise_norm))
        st["i"] = i + 1
        return dt

    run: Callable[[str], float] = one_step
    for _ in range(warmup):
        for name in names:
            run(name)
    t_start = time.perf_counter()
    for r in range(steps):
        # One step of each variant per round; the order rotates so none always runs first.
        k = r % len(names)
        for name in names[k:] + names[:k]:
            v[name]["times"].append(run(name))
    elapsed = time.perf_counter() - t_start

    base = statistics.median(v["baseline"]["times"])
    print(
        f"tiny LM: {n_params:,} params, batch {args.batch}x{args.ctx} chars, AdamW, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"{len(v['baseline']['times'])} timed steps/variant, {elapsed:.0f}s"
    )
    print(
        f"{'variant':30s} {'median ms/step':>15s} {'vs baseline':>12s} {'overhead ms':>12s}"
        f" {'in-call ms':>11s}"
    )
    for name in names:
        med = statistics.median(v[name]["times"])
        meas = statistics.median(v[name]["meas"]) * 1e3
        print(
            f"{name:30s} {med * 1e3:15.2f} {med / base:11.3f}x {(med - base) * 1e3:12.2f}"
            f" {meas:11.2f}"
        )
    print("(overhead = median step - baseline median; in-call = median time inside the")
    print(" measuring calls themselves, which is less exposed to noise from other processes)")
    one, sk, sn, ex = (
        v[n]["upd"]
        for n in (
            "tap (no-sync)",
            "tap sketched (4 chunks)",
            "tap noise=sketch",
            "tap exact_update",
        )
    )
    errs = sorted(abs(a[0] / b[0] - 1.0) for a, b in zip(sk, ex) if b[0] > 0)
    if errs:
        proc = max(abs(a[1] - b[1]) for a, b in zip(sk, ex))
        flat = max(abs(a[0] / b[0] - 1.0) for a, b in zip(one, ex) if b[0] > 0)
        noise = sorted(abs(a[2] / b[2] - 1.0) for a, b in zip(sn, one) if b[2] > 0)
        print(
            f"sketched (4 chunks) vs exact over {len(errs)} steps: ||delta theta|| median rel. "
            f"error {statistics.median(errs):.2%}, max {errs[-1]:.2%}; processivity max abs. "
            f"error {proc:.4f}. One chunk (the default here): ||delta theta|| max rel. error "
            f"{flat:.1e}. Noise norm (noise='sketch') vs the exact EMA: median rel. error "
            f"{statistics.median(noise):.2%}, max {noise[-1]:.2%}"
        )


if __name__ == "__main__":
    main()
