"""One short GPU check for a lent device: no host sync in a Guard step, overhead at >=100M params.

    python bench/gpu_check.py [--steps 40] [--layers 8] [--d 1024] [--json-out F]

1. Sync check: training steps with ``torch.cuda.set_sync_debug_mode("error")`` around
   the Guard's work (observe + optimizer.step with its hooks) must not raise, for every
   Guard variant below (the default one samples: ``sample="auto"`` is 16 at this size).
2. Overhead: a ~100M-parameter byte-level transformer LM (text of the Python standard
   library's own sources) trains in fp32 with fused AdamW, one model per variant, the
   variants interleaved step by step in one process (their order rotating each step).
   Prints median and mean ms/step per variant, the ratio of medians to the plain step
   (goal <= 1.01), the GPU time of the region after backward (observe + step, CUDA
   events) and the host time spent there.
3. The same in bf16 autocast (a faster step, so a larger ratio), and in fp32 at
   ``--big-batch`` sequences per step (4x the tokens).
4. The sampled estimates against the full tap on one model (``sample_error``), and the
   cost of one healthy checkpoint (``checkpoint_every``; pinned CPU memory) in ms.
5. Same-step actions (``same_step``), on the same model with a fused AdamW and the default
   Guard (reads one step late, same-step gate on), every step under
   ``set_sync_debug_mode("error")``: a bad batch (its loss x1e4, then one with a NaN loss)
   must be skipped in the optimizer's kernel at its own step (weights unchanged, bit for
   bit) and an lr x100 must not move the weights by more than ~3x a healthy step at the
   faulty step (faults injected once the Monitor has left its warm-up); the gate's cost
   is the ``guard`` / ``guard_nogate`` pair in the timings.
6. ``--profile-out F``: torch.profiler tables of 3 steps per variant, by GPU time, and the
   host time spent inside observe + step by op (where the hooks' host time goes).
Prints one JSON line at the end. Needs CUDA; exits 2 without it (``--cpu-smoke`` runs the
code paths on a tiny model on CPU, timings meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from anet_lite.torch import GradNoiseTap, Guard


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
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 256)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(self.body(h, mask=self.mask, is_causal=True))


def guard_variants(sample_ok: bool) -> Dict[str, Any]:
    """name -> how to build the Guard for (model, optimizer); None: the plain step; "clip" /
    "norm": ``clip_grad_norm_`` / ``get_total_norm`` alone."""

    def guard(**kw: Any) -> Callable[[nn.Module, Any], Any]:
        return lambda m, o: Guard(m, o, **{"checkpoint_every": 0, "on_error": "raise", **kw})

    v: Dict[str, Any] = {"plain": None, "guard": guard(), "guard_nogate": guard(gate=False)}
    if sample_ok:  # the default is sample="auto" (16 here); these measure every element
        v["guard_sample1"] = guard(sample=1)
        v["guard_1chunk"] = lambda m, o: Guard(
            m,
            o,
            tap=GradNoiseTap(m, 0.9, noise="sketch", max_abs=False, chunk_numel=2**27),
            checkpoint_every=0,
            on_error="raise",
        )
        v["guard_sample32"] = guard(sample=32)
    v["guard_clip"] = guard(clip_grad_norm=1.0)
    v["guard_ckpt10"] = guard(checkpoint_every=10)
    v["clip_only"] = "clip"
    v["norm_only"] = "norm"
    return v


def sample_error(args: Any, dev: torch.device, batch: Any, loss_fn: Any, cuda: bool) -> Dict:
    """Median / max relative error of the sampled tap (8, 16) against the full one-chunk
    tap (float32 EMA), 25 AdamW steps of one model (the first 5 not counted)."""
    torch.manual_seed(0)
    m = LM(args.d, args.layers, args.ctx).to(dev)
    o = torch.optim.AdamW(m.parameters(), 3e-4, fused=cuda)
    full = GradNoiseTap(m, 0.9, noise="exact", max_abs=False, chunk_numel=2**27)
    taps = {r: GradNoiseTap(m, 0.9, noise="sketch", sample=r) for r in (16, 8)}
    errs: Dict[str, List[float]] = {}
    for i in range(25):
        x, y = batch()
        loss_fn(m(x).flatten(0, 1), y.flatten()).backward()
        for t in (full, *taps.values()):
            t.measure_grads()
        o.step()
        for t in (full, *taps.values()):
            t.measure_update()
        o.zero_grad(set_to_none=True)
        a = full.stats(sync=True)
        for r, t in taps.items():
            b = t.stats(sync=True)
            if i < 5:
                continue
            for k in ("grad_norm", "update_norm", "param_norm", "noise_norm"):
                errs.setdefault(f"{k}_{r}", []).append(abs(getattr(b, k) / getattr(a, k) - 1))
            errs.setdefault(f"processivity_abs_{r}", []).append(
                abs(b.processivity - a.processivity)
            )
    res = {k: [round(statistics.median(v), 5), round(max(v), 5)] for k, v in errs.items()}
    res["measured_fraction"] = {
        r: round(sum(c.n for c in t._chunks) / sum(p.numel() for p in m.parameters()), 4)
        for r, t in taps.items()
    }
    res["segments"] = {r: sum(len(c.segs) for c in t._chunks) for r, t in taps.items()}
    del m, o, full, taps
    return res


def same_step(args: Any, dev: torch.device, batch: Any, loss_fn: Any, cuda: bool) -> Dict:
    """Bad batches and an lr x100 acted on at the faulty step, without a host sync (see the
    module docstring, 5). The faults come once the Monitor has left its warm-up (it acts
    on an lr jump from then on, on CPU as on CUDA). Returns what happened at each."""
    torch.manual_seed(0)
    m = LM(args.d, args.layers, args.ctx).to(dev)
    o = torch.optim.AdamW(m.parameters(), 3e-4, fused=True)
    g = Guard(m, o, checkpoint_every=0, on_error="raise", lag=True)
    params = list(m.parameters())
    moved: List[float] = []
    same: Dict[str, bool] = {}
    sync_ok = "ok"

    def one(spoil: float = 1.0, lr_x: float = 1.0) -> None:
        nonlocal sync_ok
        x, y = batch()
        before = [p.detach().clone() for p in params]
        for grp in o.param_groups:
            grp["lr"] *= lr_x
        loss = loss_fn(m(x).flatten(0, 1), y.flatten()) * spoil
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            g.observe(loss)
            o.step()
        except RuntimeError as exc:
            sync_ok = str(exc)[:300]
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        o.zero_grad(set_to_none=True)
        d = torch.stack([(p.detach() - b).float().norm() for p, b in zip(params, before)])
        moved.append(float(d.norm()))
        if spoil != 1.0:
            same[f"step {g.step} ({spoil:g} x loss)"] = all(
                torch.equal(p, b) for p, b in zip(params, before)
            )

    while g.step < 300 and (g.step < 20 or g.last.status == "warming_up"):
        one()
    warm = g.step
    healthy = statistics.median(moved[-8:])
    one(lr_x=100.0)
    lr_move = moved[-1] / healthy
    for _ in range(20):  # (the lr incident closes; the bad batches are a new one)
        one()
    for spoil in (1e4, 1.0, float("nan"), 1.0):
        one(spoil)
    return {
        "steps_before_faults": warm,
        "sync_debug": sync_ok,
        "bad_batch_skipped_at_its_step": same,
        "lr_x100_step_move_over_healthy": round(lr_move, 3),
        "actions": [(a.step, a.kind, a.policy, a.evidence.get("cause")) for a in g.actions],
    }


def host_table(events: Any, marker: str, rows: int = 30) -> str:
    """Self host time of the ops run inside the ``marker`` ranges, by op name, in ms
    (where the hooks' host time goes; the profiler's own cost is included)."""
    spans = [(e.time_range.start, e.time_range.end) for e in events if e.name == marker]
    tot: Dict[str, List[float]] = {}
    for e in events:
        if e.name == marker or getattr(e, "device_type", None) != events[0].device_type:
            continue
        a, b = e.time_range.start, e.time_range.end
        if any(s0 <= a and b <= s1 for s0, s1 in spans):
            t = tot.setdefault(e.name, [0.0, 0])
            t[0] += e.self_cpu_time_total / 1e3
            t[1] += 1
    inside = sum((s1 - s0) / 1e3 for s0, s1 in spans)
    lines = [f"marker ranges: {len(spans)}, {inside:.2f} ms in all"]
    for name, (ms, n) in sorted(tot.items(), key=lambda kv: -kv[1][0])[:rows]:
        lines.append(f"{ms:9.3f} ms  {n:6d}x  {name[:80]}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--big-batch", type=int, default=64, help="0: skip that pass")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--profile-out", default="", help="torch.profiler table of 3 Guard steps")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    if smoke:
        args.d, args.layers, args.ctx, args.batch, args.steps = 64, 1, 16, 2, 3
        args.big_batch = 4
    elif not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if smoke else "cuda")
    cuda = dev.type == "cuda"
    sample_ok = "sample" in GradNoiseTap.__init__.__code__.co_varnames
    variants = guard_variants(sample_ok)
    if args.only:
        keep = set(args.only.split(",")) | {"plain"}
        variants = {k: v for k, v in variants.items() if k in keep}
    names = list(variants)
    data = stdlib_bytes(2_000_000).to(dev)
    gen = torch.Generator(device="cpu").manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()
    out: Dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    out["torch"] = torch.__version__

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def build(names_: List[str]) -> Dict[str, Dict[str, Any]]:
        runs = {}
        for name in names_:
            torch.manual_seed(0)
            m = LM(args.d, args.layers, args.ctx).to(dev)
            o = torch.optim.AdamW(m.parameters(), 3e-4, fused=cuda)
            how = variants[name]
            g = how(m, o) if callable(how) else None
            runs[name] = {"model": m, "opt": o, "guard": g, "kind": how}
            runs[name].update(t=[], gpu=[], cpu=[])
        return runs

    def batch(bs: int = 0) -> tuple:
        bs = bs or args.batch
        ix = torch.randint(0, len(data) - args.ctx - 1, (bs,), generator=gen).to(dev)
        off = torch.arange(args.ctx, device=dev)
        return data[ix[:, None] + off], data[ix[:, None] + off + 1]

    def step(r: Dict[str, Any], bf16: bool = False, sync_debug: bool = False, bs: int = 0) -> None:
        x, y = batch(bs)
        sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16, enabled=bf16 and cuda):
            loss = loss_fn(r["model"](x).flatten(0, 1), y.flatten())
        loss.backward()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else None
        if ev:
            ev[0].record()
        c0 = time.perf_counter()
        if sync_debug:
            torch.cuda.set_sync_debug_mode("error")
        marker = torch.profiler.record_function("anet_hooks")
        marker.__enter__()
        try:
            if r["guard"] is not None:
                r["guard"].observe(loss)
            elif r["kind"] == "clip":
                torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0, foreach=True)
            elif r["kind"] == "norm":
                grads = [p.grad for p in r["model"].parameters() if p.grad is not None]
                r["norm"] = torch.nn.utils.get_total_norm(grads, foreach=True)
            r["opt"].step()
        finally:
            marker.__exit__(None, None, None)
            if sync_debug:
                torch.cuda.set_sync_debug_mode("default")
        r["cpu"].append(time.perf_counter() - c0)
        if ev:
            ev[1].record()
        r["opt"].zero_grad(set_to_none=True)
        sync()
        r["t"].append(time.perf_counter() - t0)
        if ev:
            r["gpu"].append(ev[0].elapsed_time(ev[1]))

    def timed_loop(runs: Dict[str, Dict[str, Any]], bf16: bool, bs: int = 0) -> Dict[str, Any]:
        order = list(runs)
        for _ in range(3):  # warm-up: allocations, the tap's buffers, the first lagged read
            for k in order:
                step(runs[k], bf16, bs=bs)
        for r in runs.values():
            r["t"].clear()
            r["gpu"].clear()
            r["cpu"].clear()
        for i in range(args.steps):
            rot = order[i % len(order) :] + order[: i % len(order)]
            for k in rot:
                step(runs[k], bf16, bs=bs)
        base = statistics.median(runs["plain"]["t"])
        base_gpu = statistics.median(runs["plain"]["gpu"]) if cuda else 0.0
        res = {}
        for k, r in runs.items():
            med = statistics.median(r["t"])
            res[k] = {
                "ms": round(med * 1e3, 2),
                "ms_mean": round(statistics.mean(r["t"]) * 1e3, 2),
                "ratio": round(med / base, 4),
                "after_backward_gpu_ms": round(statistics.median(r["gpu"]), 3) if cuda else None,
                "extra_gpu_ms": round(statistics.median(r["gpu"]) - base_gpu, 3) if cuda else None,
                "after_backward_cpu_ms": round(statistics.median(r["cpu"]) * 1e3, 3),
                "last_status": r["guard"].last.status if r["guard"] and r["guard"].last else None,
            }
        return res

    runs = build(names)
    out["params"] = sum(p.numel() for p in runs["plain"]["model"].parameters())
    out["steps"] = args.steps
    # 1. sync check, after a warm-up step each
    sync_res = {}
    for k, r in runs.items():
        if r["guard"] is None:
            continue
        step(r)
        try:
            for _ in range(3):
                step(r, sync_debug=cuda)
            sync_res[k] = "ok"
        except RuntimeError as exc:
            sync_res[k] = str(exc)[:300]
    out["sync_debug"] = sync_res
    out["fp32"] = timed_loop(runs, bf16=False)
    print(json.dumps({"fp32": out["fp32"]}), flush=True)
    if not args.no_bf16:
        keep = ["plain", "guard", "guard_nogate", "guard_sample1", "guard_1chunk", "guard_sample32"]
        keep = [k for k in keep if k in runs]
        out["bf16_autocast"] = timed_loop({k: runs[k] for k in keep}, bf16=True)
        print(json.dumps({"bf16": out["bf16_autocast"]}), flush=True)
    if args.big_batch:  # 4x the tokens per step: the same Guard work over a longer step
        keep = [k for k in ("plain", "guard", "guard_sample1") if k in runs]
        out[f"fp32_batch{args.big_batch}"] = timed_loop(
            {k: runs[k] for k in keep}, bf16=False, bs=args.big_batch
        )
        print(json.dumps({"big_batch": out[f"fp32_batch{args.big_batch}"]}), flush=True)
    # 5. the sampled estimates against the full tap, on one model and optimizer
    if sample_ok:
        out["sample_error"] = sample_error(args, dev, batch, loss_fn, cuda)
        print(json.dumps({"sample_error": out["sample_error"]}), flush=True)
    out["same_step"] = same_step(args, dev, batch, loss_fn, cuda)
    print(json.dumps({"same_step": out["same_step"]}), flush=True)
    # 4. one healthy checkpoint into CPU memory
    g = runs["guard"]["guard"] if "guard" in runs else None
    if g is not None:
        sync()
        t0 = time.perf_counter()
        g._save_checkpoint()
        sync()
        out["checkpoint_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        if cuda:
            out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for k, r in runs.items():
        if r["guard"] is not None:
            out.setdefault("tap_extra_memory_mib", {})[k] = round(
                r["guard"].tap.extra_memory_bytes() / 2**20, 1
            )
    if args.profile_out:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with open(args.profile_out, "w") as f:
            for k in ("plain", "guard", "guard_1chunk"):
                if k not in runs:
                    continue
                with profile(activities=acts) as prof:
                    for _ in range(3):
                        step(runs[k])
                sort = "cuda_time_total" if cuda else "cpu_time_total"
                f.write(f"=== {k} (3 steps) ===\n")
                f.write(prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
                f.write(f"=== {k}: host time inside observe + step (3 steps) ===\n")
                f.write(host_table(prof.events(), "anet_hooks") + "\n")
    print(json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
    ok = all(v == "ok" for v in sync_res.values()) and out["same_step"]["sync_debug"] == "ok"
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
