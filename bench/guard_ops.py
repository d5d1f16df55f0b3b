"""What a Guard step costs on the host: ATen ops per step and CPU step-time ratios.

    python bench/guard_ops.py [--steps 60] [--repeats 3] [--quick] [--skip-ops] [--skip-time]
                              [--clock wall|cpu] [--only LABEL] [--passes]
                              [--cpu-sample-from N] [--breakdown]

1. Ops per step (issue 21): ``guard.observe(loss); optimizer.step()`` minus the same
   unguarded step, counted with a ``TorchDispatchMode`` (tests/pytorch/test_guard_ops.py asserts
   the target), for 10, 150 and 1,000 parameter tensors, with the Guard's default,
   ``sample=1``, ``sample=16`` (what ``"auto"`` picks at ~124M parameters) and
   ``memory="low"``; against ``clip_grad_norm_(foreach=True)``. Host us per step: the
   median wall time inside the Guard's two hooks over 20 steps (one thread).
2. CPU step-time ratios, one thread, AdamW: the transformer LM of bench/overhead.py
   (batch 16 x 64 characters of stdlib source) and an MLP 256 -> H -> H -> 10 (H = 512
   and 2048; sklearn's digits upsampled to 16 x 16, batch 64). Three copies of each model
   (same init, same batches) train side by side: unguarded, ``clip_grad_norm_`` (default
   foreach), a default ``Guard`` (``sample="auto"``: on a CPU from 2**21 elements the
   update on 1 in 16, the noise on every element), a ``Guard(sample=1)`` (every element)
   and a ``Guard(sample=16)`` (the noise and update statistics on one element in 16, the
   gradient norm exact); one step of each per round, the order rotating; the numbers the
   sampled Guards gave the Monitor are compared with ``sample=1``'s on the same steps;
   median step time per variant, repeated ``--repeats`` times (the spread of the ratios
   over repeats is the noise: the machine may be shared). ``--clock cpu`` times each step
   with the thread's CPU time instead of the wall clock (one thread: all of the step's
   work), which other processes on a shared machine disturb much less (not the caches).
   ``--only 512`` runs the cases whose label holds the text. ``--passes`` adds a variant
   "tap passes": the exact tap's tensor passes over a one-chunk model issued by hand in
   optimizer hooks (before the step: copy of g, <g, g>, sign flip, fold; after it: copy of
   theta, delta theta, three dots), without the tap's Python or the Monitor: what the
   exact measurement costs at the least with these ops. ``--cpu-sample-from N`` measures
   the default Guard with ``measure.CPU_SAMPLE_FROM = N`` (0: the CPU sample at any size).
3. ``--breakdown`` (instead of 2): where the default Guard's time goes on each case, per
   step (medians of each part, thread CPU time, one thread; timing the parts adds a
   little): the unguarded step; the Guard's two hooks; inside them the tap
   (``measure_grads``, ``measure_update``) and the Monitor (``update`` + ``decide``), the
   rest being the Guard's own Python; then, from a ``torch.profiler`` run (which adds its
   own overhead per op), the ATen ops the hooks dispatch, by name, with their time per step.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from anet_lite.torch import Guard, measure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import TinyLM, stdlib_text

WIDTH = 96
SEEN = ("grad_norm", "step_norm", "noise", "processivity")  # Monitor inputs compared
GUARDS = (("Guard", {}), ("Guard sample=1", {"sample": 1}), ("Guard sample=16", {"sample": 16}))
SAMPLED = ("Guard", "Guard sample=16")  # compared with "Guard sample=1" on the same steps
VARIANTS: Dict[str, Dict[str, Any]] = {
    "Guard default": {},
    "Guard sample=1": {"sample": 1},
    "Guard sample=16": {"sample": 16},
    'Guard memory="low"': {"memory": "low"},
}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def deep_mlp(tensors: int, vocab: int) -> nn.Module:
    """An MLP with ``tensors`` parameter tensors (as tests/pytorch/test_guard_ops.py)."""
    torch.manual_seed(0)
    layers: List[nn.Module] = [nn.Embedding(vocab, WIDTH // 8), nn.Flatten()]
    for _ in range((tensors - 2) // 2):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    layers.append(nn.Linear(WIDTH, vocab, bias=False))
    return nn.Sequential(*layers)


def char_batches(n: int, bs: int, ctx: int, seed: int = 0) -> List[Tuple[torch.Tensor, ...]]:
    text = stdlib_text(200_000)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ix = torch.randint(0, len(data) - ctx - 1, (bs,), generator=g).tolist()
        x = torch.stack([data[j : j + ctx] for j in ix])
        out.append((x, torch.stack([data[j + ctx] for j in ix]), len(chars)))
    return out


def guard_step_ops(
    model: nn.Module, kw: Optional[Dict[str, Any]], data: List, steps: int = 20
) -> Tuple[int, float]:
    """(ops of the last step's observe + step, median us inside the Guard's hooks)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = Guard(model, opt, on_error="raise", **kw) if kw is not None else None
    hook_t: List[float] = []
    if guard is not None:
        for name in ("_before_step", "_after_step"):
            fn = getattr(guard, name)

            def timed(fn: Callable = fn) -> None:
                t0 = time.perf_counter()
                fn()
                hook_t.append(time.perf_counter() - t0)

            setattr(guard, name, timed)
    loss_fn = nn.CrossEntropyLoss()
    ops = 0
    for i, (x, y, _) in enumerate(data[:steps]):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        counter = OpCounter() if i == steps - 1 else None
        if counter is not None:
            counter.__enter__()
        if guard is not None:
            guard.observe(loss)
        opt.step()
        if counter is not None:
            counter.__exit__(None, None, None)
            ops = sum(counter.ops.values())
    per_step = [a + b for a, b in zip(hook_t[0::2], hook_t[1::2])]
    return ops, statistics.median(per_step[3:]) * 1e6 if per_step else 0.0


def ops_table() -> None:
    data = char_batches(20, 16, 8)
    vocab = data[0][2]
    print("ops per step (observe + optimizer hooks, minus the unguarded step; CPU, fp32)")
    print(f"{'variant':24s} {'10':>14s} {'150':>14s} {'1,000':>14s}   (ops / host us)")
    rows: Dict[str, List[str]] = {}
    for n in (10, 150, 1000):
        model = deep_mlp(n, vocab)
        base, _ = guard_step_ops(copy.deepcopy(model), None, data)
        for name, kw in VARIANTS.items():
            ops, us = guard_step_ops(copy.deepcopy(model), kw, data)
            rows.setdefault(name, []).append(f"{ops - base:6d} / {us:6.0f}")
        m = copy.deepcopy(model)
        x, y, _ = data[0]
        nn.CrossEntropyLoss()(m(x), y).backward()
        with OpCounter() as c:
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=True)
        rows.setdefault("clip_grad_norm_ foreach", []).append(f"{sum(c.ops.values()):6d} /   -   ")
    for name, cells in rows.items():
        print(f"{name:24s} " + " ".join(f"{c:>14s}" for c in cells))


def digits_batches(n: int, bs: int = 64) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x, y = x.flatten(1), torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    return [(x[i], y[i]) for i in (torch.randint(0, len(y), (bs,), generator=g) for _ in range(n))]


def lm_batches(n: int, bs: int = 16, ctx: int = 64) -> Tuple[List, int]:
    text = stdlib_text(400_000)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ix = torch.randint(0, len(data) - ctx - 1, (bs,), generator=g).tolist()
        x = torch.stack([data[j : j + ctx] for j in ix])
        y = torch.stack([data[j + 1 : j + 1 + ctx] for j in ix])
        out.append((x, y))
    return out, len(chars)


CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: time.thread_time
PASSES = False  # --passes: time the "tap passes" variant too


def attach_passes(model: nn.Module, opt: torch.optim.Optimizer, k: int = 1031) -> None:
    """The exact one-chunk tap's tensor passes (noise sketched, update exact), issued by
    hand from optimizer hooks: the floor of that measurement with these ops."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    rows = -(-n // (32 * k)) * 32
    buf = {r: torch.zeros(rows * k) for r in "gpq"}
    masks = torch.randint(-(2**31), 2**31 - 1, (rows * k,), dtype=torch.int32)
    ones = torch.ones(rows)
    views, off = [], 0
    for p in params:
        views.append(buf["g"][off : off + p.numel()].view(p.shape))
        off += p.numel()
    flat = [p.detach().reshape(-1) for p in params]
    out: Dict[str, Any] = {}

    def pre(*_: Any) -> None:
        g, q = buf["g"], buf["q"]
        torch._foreach_copy_(views, [p.grad for p in params])
        out["g"] = torch.dot(g, g)
        torch.bitwise_xor(g.view(torch.int32), masks, out=q.view(torch.int32))
        out["sketch"] = torch.mv(q.view(rows, k).t(), ones)

    def post(*_: Any) -> None:
        g, p, q = buf["g"], buf["p"], buf["q"]
        with torch.no_grad():
            torch.cat(flat, out=q[:n])
            torch.sub(q, p, out=p)
            out["update"] = (torch.dot(p, p), torch.dot(q, q), torch.dot(g, p))
        buf["p"], buf["q"] = q, p

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)


def time_ratios(make: Callable[[], nn.Module], data: List, steps: int) -> Dict[str, float]:
    """Median step time of each variant / the unguarded one's, interleaved in rounds."""
    init = make()
    names = ["unguarded", "clip_grad_norm_", "Guard", "Guard sample=1", "Guard sample=16"]
    names += ["tap passes"] if PASSES else []
    st: Dict[str, Dict[str, Any]] = {}
    for name in names:
        model = copy.deepcopy(init)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        st[name] = {"model": model, "opt": opt, "times": []}
        if name == "tap passes":
            attach_passes(model, opt)
    for name, kw in GUARDS:
        guard = Guard(st[name]["model"], st[name]["opt"], on_error="raise", **kw)
        st[name]["guard"], st[name]["seen"] = guard, []
        update = guard.monitor.update

        def record(*a: Any, _u: Callable = update, _s: List = st[name]["seen"], **k: Any) -> Any:
            _s.append({key: k.get(key) for key in SEEN})  # what the Monitor is given
            return _u(*a, **k)

        guard.monitor.update = record
    loss_fn = nn.CrossEntropyLoss()

    def step(name: str, i: int) -> float:
        s = st[name]
        model, opt = s["model"], s["opt"]
        x, y = data[i % len(data)]
        t0 = CLOCK()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        if name == "clip_grad_norm_":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        elif "guard" in s:
            s["guard"].observe(loss)
        opt.step()
        return CLOCK() - t0

    for i in range(5):  # warm-up
        for name in names:
            step(name, i)
    for r in range(steps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            st[name]["times"].append(step(name, 5 + r))
    base = statistics.median(st["unguarded"]["times"])
    out = {name: statistics.median(st[name]["times"]) / base for name in names}
    out["unguarded ms"] = base * 1e3
    # same init, same batches, no action taken: the Guards saw the same steps
    ref = st["Guard sample=1"]["seen"][10:]
    for name in SAMPLED:
        for key in SEEN:
            pairs = [
                (a[key], b[key])
                for a, b in zip(ref, st[name]["seen"][10:])
                if a[key] and b[key] is not None
            ]
            if key == "processivity":
                err = [abs(b - a) for a, b in pairs]
            else:
                err = [abs(b / a - 1.0) for a, b in pairs]
            out[f"{name}/{key}"] = max(err) if err else float("nan")
    return out


def breakdown(label: str, make: Callable[[], nn.Module], data: List, steps: int) -> None:
    """``--breakdown``: the default Guard's time per step, by part and by ATen op."""
    from torch.profiler import ProfilerActivity, profile, record_function

    init = make()
    runs: Dict[str, Dict[str, Any]] = {}
    for name in ("unguarded", "Guard"):
        model = copy.deepcopy(init)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        runs[name] = {"model": model, "opt": opt, "t": {}}
    guard = Guard(runs["Guard"]["model"], runs["Guard"]["opt"], on_error="raise")
    runs["Guard"]["guard"] = guard
    times: Dict[str, List[float]] = runs["Guard"]["t"]
    parts = (
        (guard.tap, "measure_grads", "tap.measure_grads"),
        (guard.tap, "measure_update", "tap.measure_update"),
        (guard.monitor, "update", "Monitor.update"),
        (guard.monitor, "decide", "Monitor.decide"),
        (guard, "_before_step", "pre-hook"),
        (guard, "_after_step", "post-hook"),
    )
    for obj, attr, key in parts:
        fn = getattr(obj, attr)

        def timed(*a: Any, _fn: Callable = fn, _key: str = key, **k: Any) -> Any:
            t0 = time.thread_time()
            try:
                return _fn(*a, **k)
            finally:
                times.setdefault(_key, []).append(time.thread_time() - t0)

        setattr(obj, attr, timed)
    loss_fn = nn.CrossEntropyLoss()

    def step(name: str, i: int) -> float:
        r = runs[name]
        model, opt = r["model"], r["opt"]
        x, y = data[i % len(data)]
        t0 = time.thread_time()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        if "guard" in r:
            r["guard"].observe(loss)
        opt.step()
        return time.thread_time() - t0

    for i in range(10):
        for name in runs:
            step(name, i)
    for t in times.values():
        t.clear()
    step_t: Dict[str, List[float]] = {name: [] for name in runs}
    for i in range(steps):
        for name in (runs if i % 2 else list(runs)[::-1]):
            step_t[name].append(step(name, 10 + i))

    def per_step(key: str) -> float:  # (one call per step each)
        v = times.get(key, [])
        return statistics.median(v) * 1e6 if v else 0.0

    base = statistics.median(step_t["unguarded"]) * 1e6
    guarded = statistics.median(step_t["Guard"]) * 1e6
    hooks = per_step("pre-hook") + per_step("post-hook")
    tap = per_step("tap.measure_grads") + per_step("tap.measure_update")
    mon = per_step("Monitor.update") + per_step("Monitor.decide")
    print(f"\n{label}: unguarded step {base:.0f} us, Guard step {guarded:.0f} us "
          f"(+{guarded - base:.0f} us, {guarded / base:.3f})")
    print(f"  hooks {hooks:.0f} us = tap {tap:.0f} (measure_grads "
          f"{per_step('tap.measure_grads'):.0f}, measure_update "
          f"{per_step('tap.measure_update'):.0f}) + Monitor {mon:.0f} "
          f"+ the Guard's own {hooks - tap - mon:.0f}")
    for attr in ("_before_step", "_after_step"):  # profile the hooks' ops
        fn = getattr(guard, attr)

        def traced(_fn: Callable = fn, _name: str = attr) -> None:
            with record_function("guard" + _name):
                _fn()

        setattr(guard, attr, traced)
    n_prof = max(10, steps // 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(n_prof):
            step("Guard", i)
    events = prof.events()
    spans = [e.time_range for e in events if e.name.startswith("guard_")]
    ops: Counter = Counter()
    for e in events:
        parent = e.cpu_parent
        nested = parent is not None and parent.name.startswith("aten::")
        if nested or not e.name.startswith("aten::"):
            continue
        r = e.time_range
        if any(s.start <= r.start and r.end <= s.end for s in spans):
            ops[e.name] += e.cpu_time_total
    total = sum(ops.values()) / n_prof
    print(f"  ATen ops inside the hooks (torch.profiler): {total:.0f} us per step")
    for name, t in ops.most_common(10):
        print(f"    {name:28s} {t / n_prof:8.1f} us")


def mlp(h: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))


def ratio_table(steps: int, repeats: int, only: str = "") -> None:
    lm_data, vocab = lm_batches(64)
    digits = digits_batches(64)
    cases: List[Tuple[str, Callable[[], nn.Module], List]] = [
        ("LM (bench/overhead.py)", lambda: TinyLM(vocab, ctx=64), lm_data),
        ("MLP H=512", lambda: mlp(512), digits),
        ("MLP H=2048", lambda: mlp(2048), digits),
    ]
    cases = [c for c in cases if only in c[0]]
    print(
        f"\nCPU step time ({'thread CPU' if CLOCK is time.thread_time else 'wall'} clock) "
        f"/ unguarded step, {torch.get_num_threads()} thread, AdamW, "
        f"{steps} interleaved steps per variant, {repeats} repeats (median [min, max])"
    )
    cols: Tuple[str, ...] = ("clip_grad_norm_", "Guard", "Guard sample=1", "Guard sample=16")
    cols += ("tap passes",) if PASSES else ()
    acc: List[Tuple[str, Dict[str, float]]] = []
    head = f"{'model':24s} {'params':>10s} {'unguarded ms':>13s}"
    print(head + "".join(f"{c:>24s}" for c in cols))
    for label, make, data in cases:
        n_params = sum(p.numel() for p in make().parameters())
        runs = [time_ratios(make, data, steps) for _ in range(repeats)]
        cells = []
        for key in cols:
            v = sorted(r[key] for r in runs)
            cells.append(f"{statistics.median(v):.3f} [{v[0]:.3f}, {v[-1]:.3f}]")
        base = statistics.median(r["unguarded ms"] for r in runs)
        print(f"{label:24s} {n_params:10,d} {base:13.2f}" + "".join(f"{c:>24s}" for c in cells))
        acc.append((label, {k: max(r[k] for r in runs) for k in runs[0] if "/" in k}))
    print(
        "\nThe default Guard and Guard(sample=16) against Guard(sample=1) on the same steps"
        " (max over the steps after the first 10 and the repeats): relative error of"
        " grad_norm, step_norm, noise; absolute error of the step processivity"
    )
    for label, errs in acc:
        for name in SAMPLED:
            cells = [
                f"{k} {errs[f'{name}/{k}']:.2%}"
                if k != "processivity"
                else f"{k} {errs[f'{name}/{k}']:.3f}"
                for k in SEEN
            ]
            print(f"{label:24s} {name:16s} " + "  ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--skip-ops", action="store_true")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="step timer")
    ap.add_argument("--only", default="", help="step-time cases whose label holds this text")
    ap.add_argument("--passes", action="store_true", help="time the exact tap's passes alone")
    ap.add_argument("--cpu-sample-from", type=int, default=None, metavar="N")
    ap.add_argument("--breakdown", action="store_true", help="where the Guard's time goes")
    args = ap.parse_args()
    global CLOCK, PASSES
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    PASSES = args.passes
    if args.cpu_sample_from is not None:
        measure.CPU_SAMPLE_FROM = args.cpu_sample_from
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}")
    if not args.skip_ops:
        ops_table()
    if args.breakdown:
        lm_data, vocab = lm_batches(64)
        digits = digits_batches(64)
        for label, make, data in (
            ("LM (bench/overhead.py)", lambda: TinyLM(vocab, ctx=64), lm_data),
            ("MLP H=512", lambda: mlp(512), digits),
            ("MLP H=2048", lambda: mlp(2048), digits),
        ):
            if args.only in label:
                breakdown(label, make, data, 8 if args.quick else args.steps)
        return
    if not args.skip_time:
        ratio_table(8 if args.quick else args.steps, 1 if args.quick else args.repeats, args.only)


if __name__ == "__main__":
    main()
