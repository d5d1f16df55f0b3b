"""Healthy training recipes under the default Guard: does it stay quiet?

    python bench/healthy_recipes.py [--part recipes|long|all] [--out FILE]

Real CPU training, nothing injected: every alert here is a false one. Two parts:

* ``recipes`` (400 steps, the tests' character MLP on stdlib text, batch 64): the
  schedules, optimizers and set-ups users copy from recipes -- LinearLR warm-ups from a
  start factor of 1e-3, OneCycle, cosine with warm restarts, cyclic lrs, step and
  plateau decays (down to gamma 1e-3), RMSprop / Adagrad / RAdam / NAdam / Adamax /
  Adafactor, batch 8 and 512, gradient accumulation, bf16 autocast, fp16 with a
  GradScaler, label smoothing, dropout with a large weight decay, a body frozen and then
  unfrozen, a body held at lr 0 in its own param group and then given an lr.
* ``long`` (1,500 steps, an MLP on four small sklearn tables, batch 32): runs trained
  far past the point where they fit their data, to a loss of 1e-3 to 1e-6 of the first.
  Single hard batches then move the gradient 10x; this part measures what that costs.

Prints a markdown table (one row per run: final loss, alerts, first alert, actions).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from torch_fixtures import batches, char_mlp  # noqa: E402  (real text, no downloads)

from anet_lite.torch import Guard  # noqa: E402

S = torch.optim.lr_scheduler
Result = Tuple[float, float, List[Tuple[int, str]], List[Tuple[int, str]]]
Row = Tuple[str, float, float, List[Tuple[int, str]], List[Tuple[int, str]]]


def _train(model: nn.Module, opt: Any, sched: Any, n: int, data: Any, hook=None, scaler=None,
           amp: Optional[torch.dtype] = None, accum: int = 1, ls: float = 0.0) -> Result:
    """(first loss, mean of the last 20, alerts as (step, cause), actions as (step, kind))"""
    guard = Guard(model, opt, scheduler=None if isinstance(sched, S.ReduceLROnPlateau) else sched)
    alerts, losses = [], []
    it = iter(data)
    for t in range(n):
        if hook is not None:
            hook(t)
        for _ in range(accum):
            x, y = next(it)
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y, label_smoothing=ls) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        guard.observe(loss * accum)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad()
        value = float(loss.detach()) * accum
        if isinstance(sched, S.ReduceLROnPlateau):
            sched.step(value)
        elif sched is not None:
            sched.step()
        losses.append(value)
        if guard.seen and guard.last.alert:
            alerts.append((guard.last.step, str(guard.last.evidence.get("cause"))))
    acts = [(a.step, a.kind) for a in guard.actions]
    return losses[0], sum(losses[-20:]) / 20, alerts, acts


def recipes(n: int = 400) -> List[Row]:
    def adamw(lr: float, **k: Any) -> Callable:
        return lambda p: torch.optim.AdamW(p, lr, **k)

    def sgd(lr: float, **k: Any) -> Callable:
        return lambda p: torch.optim.SGD(p, lr, **k)

    warm = lambda o: S.SequentialLR(  # noqa: E731
        o, [S.LinearLR(o, 1e-3, total_iters=40), S.CosineAnnealingLR(o, n)], [40]
    )
    plain: List[Tuple[str, Callable, Optional[Callable]]] = [
        ("AdamW 3e-3", adamw(3e-3), None),
        ("AdamW, LinearLR(1e-3) warm-up + cosine", adamw(3e-3), warm),
        ("AdamW, OneCycle max 1e-2", adamw(1e-2), lambda o: S.OneCycleLR(o, 1e-2, total_steps=n)),
        ("AdamW, cosine warm restarts T0=30 x2", adamw(3e-3),
         lambda o: S.CosineAnnealingWarmRestarts(o, T_0=30, T_mult=2)),
        ("SGD m0.9, cyclic 0.01-0.3", sgd(0.1, momentum=0.9),
         lambda o: S.CyclicLR(o, 0.01, 0.3, step_size_up=50)),
        ("SGD nesterov 0.3, step decay x0.1", sgd(0.3, momentum=0.9, nesterov=True),
         lambda o: S.StepLR(o, 100, 0.1)),
        ("SGD m0.9 0.3, MultiStep gamma 1e-3", sgd(0.3, momentum=0.9),
         lambda o: S.MultiStepLR(o, [200], gamma=1e-3)),
        ("Adam 3e-3, plateau x0.1", lambda p: torch.optim.Adam(p, 3e-3),
         lambda o: S.ReduceLROnPlateau(o, factor=0.1, patience=3)),
        ("RMSprop 1e-3", lambda p: torch.optim.RMSprop(p, 1e-3), None),
        ("Adagrad 0.05", lambda p: torch.optim.Adagrad(p, 0.05), None),
        ("RAdam 3e-3", lambda p: torch.optim.RAdam(p, 3e-3), None),
        ("NAdam 3e-3", lambda p: torch.optim.NAdam(p, 3e-3), None),
        ("Adamax 1e-2", lambda p: torch.optim.Adamax(p, 1e-2), None),
        ("Adafactor 1e-2", lambda p: torch.optim.Adafactor(p, lr=1e-2), None),
        ("SGD 1.0 (high, stable)", sgd(1.0), None),
    ]
    rows = []
    for name, make, make_sched in plain:
        model = char_mlp(seed=0)
        opt = make(model.parameters())
        sched = make_sched(opt) if make_sched else None
        rows.append((name,) + _train(model, opt, sched, n, batches(n)))
    for name, kw in (
        ("AdamW, batch 8", {"bs": 8}),
        ("AdamW, batch 512", {"bs": 512}),
        ("AdamW, accumulation 4 x 16", {"bs": 16, "accum": 4}),
        ("AdamW, bf16 autocast", {"amp": "bf16"}),
        ("AdamW, fp16 autocast + GradScaler", {"amp": "fp16"}),
        ("AdamW, label smoothing 0.1", {"ls": 0.1}),
    ):
        model = char_mlp(seed=0)
        opt = torch.optim.AdamW(model.parameters(), 3e-3 if kw.get("bs", 64) > 8 else 1e-3)
        accum = kw.get("accum", 1)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kw.get("amp", ""))
        scaler = torch.amp.GradScaler("cpu") if kw.get("amp") == "fp16" else None
        data = batches(n * accum, bs=kw.get("bs", 64))
        rows.append((name,) + _train(model, opt, None, n, data, scaler=scaler, amp=amp,
                                     accum=accum, ls=kw.get("ls", 0.0)))
    torch.manual_seed(0)
    base = list(char_mlp(seed=0))
    model = nn.Sequential(*base[:4], nn.Dropout(0.5), *base[4:])
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=0.1)
    row = _train(model, opt, None, n, batches(n))
    rows.append(("AdamW, dropout 0.5, weight decay 0.1",) + row)
    for name, make in (("AdamW 1e-3", adamw(1e-3)), ("SGD m0.9 0.05", sgd(0.05, momentum=0.9))):
        model = char_mlp(seed=0)
        body = list(model[:3].parameters())
        for p in body:
            p.requires_grad_(False)

        def thaw(t: int, body=body) -> None:
            if t == 150:
                for p in body:
                    p.requires_grad_(True)

        opt = make(model.parameters())
        rows.append((f"{name}, body frozen until step 150",)
                    + _train(model, opt, None, n, batches(n), hook=thaw))
    model = char_mlp(seed=0)
    opt = torch.optim.AdamW([{"params": model[:3].parameters(), "lr": 0.0},
                             {"params": model[3:].parameters(), "lr": 3e-3}])

    def body_lr(t: int, opt=opt) -> None:
        if t == 150:
            opt.param_groups[0]["lr"] = 3e-4

    rows.append(("AdamW, body group at lr 0, then 3e-4 at 150",)
                + _train(model, opt, None, n, batches(n), hook=body_lr))
    return rows


def long_runs(n: int = 1500) -> List[Row]:
    from sklearn import datasets

    rows = []
    for ds in ("digits", "breast_cancer", "wine", "iris"):
        X, Y = getattr(datasets, f"load_{ds}")(return_X_y=True)
        X = X / 16.0 if ds == "digits" else (X - X.mean(0)) / X.std(0)
        X, Y = torch.tensor(X, dtype=torch.float32), torch.tensor(Y)
        k = int(Y.max()) + 1
        for name, make in (
            ("AdamW 1e-3", lambda p: torch.optim.AdamW(p, 1e-3)),
            ("SGD m0.9 0.1", lambda p: torch.optim.SGD(p, 0.1, momentum=0.9)),
            ("Adam 5e-3", lambda p: torch.optim.Adam(p, 5e-3)),
            ("Adafactor 1e-2", lambda p: torch.optim.Adafactor(p, lr=1e-2)),
        ):
            for seed in (0, 1):
                torch.manual_seed(seed)
                model = nn.Sequential(nn.Linear(X.shape[1], 128), nn.ReLU(), nn.Linear(128, 64),
                                      nn.ReLU(), nn.Linear(64, k))
                gen = torch.Generator().manual_seed(seed)
                data = ((X[i], Y[i]) for i in (torch.randint(0, len(Y), (32,), generator=gen)
                                                for _ in range(n)))
                opt = make(model.parameters())
                rows.append((f"{ds}, {name}, seed {seed}",)
                            + _train(model, opt, None, n, data))
    return rows


def table(rows: List[Row]) -> str:
    out = ["| run | loss first -> last 20 | alerts | first alert | actions |"]
    out.append("|---|---|---:|---|---|")
    for name, first, last, alerts, acts in rows:
        fa = f"{alerts[0][0]} `{alerts[0][1]}`" if alerts else ""
        ac = ", ".join(f"{k}@{s}" for s, k in acts[:3]) + (" ..." if len(acts) > 3 else "")
        out.append(f"| {name} | {first:.3g} -> {last:.3g} | {len(alerts)} | {fa} | {ac} |")
    quiet = sum(1 for r in rows if not r[3])
    out.append(f"\n{quiet} of {len(rows)} runs without an alert.")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=["recipes", "long", "all"], default="all")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    parts = []
    if a.part in ("recipes", "all"):
        parts.append("## Recipes (400 steps)\n\n" + table(recipes()))
    if a.part in ("long", "all"):
        parts.append("## Trained far past fitting (1,500 steps)\n\n" + table(long_runs()))
    text = "\n\n".join(parts)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            cmd = f"python bench/healthy_recipes.py --part {a.part} --out {a.out}"
            fh.write(f"# Healthy recipes under the default Guard\n\n`{cmd}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
