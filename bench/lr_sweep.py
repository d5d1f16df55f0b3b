"""Learning-rate sweeps of a character transformer, read back as logs: what does the Monitor say?

    python bench/lr_sweep.py [--steps 1500] [--jobs 2] [--record DIR] [--out FILE]

Real CPU training, nothing injected (the benchmark's 2-layer character transformer on
the standard library's source text, batch 16 x 64): AdamW at lr 1e-3 to 0.1 with and
without a 100-step warm-up and cosine decay, SGD with momentum at lr 0.1 to 3, and a
wider model (d = 128) at AdamW lr 0.05 / 0.07 held constant after its warm-up; two
seeds each. A sweep is how most people meet a too-high lr: some runs learn, some stall
on a plateau, some learn and then give their progress back, some blow up.

Each run's loss (and lr) is then fed to a fresh ``Monitor`` the way a log reaches
``anet-lite analyze``: every step; every 10th step (a sparse log); the mean of each 10
steps (a logger that averages). Per run the table gives the best and the final level
(means over 50 and 200 steps), the share of the progress (first loss - best) given
back at the end, and the first alert of each view. Nothing here sets a threshold.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from multiprocessing import Pool
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "detection"))
import data  # noqa: E402  (stdlib source text, no downloads)
import models  # noqa: E402

from anet_lite import Monitor  # noqa: E402

Row = Tuple[int, float, float]  # (step, lr, loss)
CTX, BATCH = 64, 16


def runs() -> List[Tuple[str, str, float, int, int, int]]:
    """(name, optimizer, lr, warm-up steps (0: none; < 0: then constant), seed, width)."""
    out = []
    for seed in (1, 2):
        for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
            out.append((f"adamw lr {lr:g}", "adamw", lr, 0, seed, 64))
            out.append((f"adamw lr {lr:g} warm-up+cosine", "adamw", lr, 100, seed, 64))
        for lr in (0.1, 0.3, 1.0, 3.0):
            out.append((f"sgd+momentum lr {lr:g}", "sgdm", lr, 0, seed, 64))
        for lr in (0.05, 0.07):
            out.append((f"d128 adamw lr {lr:g} warm-up+constant", "adamw", lr, -100, seed, 128))
    return out


def train(spec: Tuple[str, str, float, int, int, int], steps: int) -> List[Row]:
    """One run; stops at the first non-finite loss (that row included)."""
    _, opt_name, lr, warm, seed, width = spec
    torch.set_num_threads(1)
    text = data.stdlib_text()
    n_win = len(text) // (CTX + 1)
    windows = torch.from_numpy(text[: n_win * (CTX + 1)].astype(np.int64)).view(n_win, CTX + 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = models.CharTransformer(d=width, ctx=CTX)
    if opt_name == "adamw":
        opt: Any = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def factor(t: int) -> float:
        if warm == 0:
            return 1.0
        ramp = min(1.0, (t + 1) / abs(warm))
        return ramp if warm < 0 else ramp * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rows: List[Row] = []
    for t in range(steps):
        b = windows[torch.from_numpy(rng.integers(0, n_win, BATCH))]
        logits = model(b[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        rows.append((t, opt.param_groups[0]["lr"], float(loss.detach())))
        opt.step()
        sched.step()
        if not math.isfinite(rows[-1][2]):
            break
    return rows


def views(rows: List[Row]) -> Dict[str, List[Row]]:
    means = [
        (rows[i][0], rows[i][1], sum(r[2] for r in rows[i : i + 10]) / len(rows[i : i + 10]))
        for i in range(0, len(rows), 10)
    ]
    return {"every step": rows, "every 10th": rows[::10], "10-step means": means}


def first_alert(rows: List[Row]) -> str:
    m = Monitor()
    for step, lr, loss in rows:
        snap = m.update(loss, step=step, lr=lr)
        if snap.alert:
            return f"{step} {snap.evidence.get('cause')}"
    return "-"


def summary(rows: List[Row]) -> Dict[str, Any]:
    loss = [r[2] for r in rows]
    if not all(math.isfinite(x) for x in loss):
        return {"best": min(loss[:-1] or [math.nan]), "final": math.nan, "given": math.nan,
                "end": f"non-finite at step {rows[-1][0]}"}
    w = min(50, len(loss))
    best = min(sum(loss[i : i + w]) / w for i in range(len(loss) - w + 1))
    final = sum(loss[-200:]) / len(loss[-200:])
    return {"best": best, "final": final, "given": (final - best) / (loss[0] - best), "end": ""}


def one(args: Tuple[Tuple[str, str, float, int, int, int], int, Optional[str]]) -> Dict[str, Any]:
    spec, steps, record = args
    rows = train(spec, steps)
    if record:
        path = os.path.join(record, f"{spec[0].replace(' ', '_').replace('+', '_')}-s{spec[4]}.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "lr", "loss"])
            w.writerows(rows)
    out = {"name": spec[0], "seed": spec[4], **summary(rows)}
    out["alerts"] = {k: first_alert(v) for k, v in views(rows).items()}
    return out


def table(res: List[Dict[str, Any]]) -> str:
    head = ["run", "seed", "best (50-step mean)", "final (last 200)", "progress given back",
            *res[0]["alerts"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res:
        nums = ("", "", r["end"]) if r["end"] else (f"{r['best']:.2f}", f"{r['final']:.2f}",
                                                     f"{100 * r['given']:.0f} %")
        lines.append("| " + " | ".join([r["name"], str(r["seed"]), *nums, *r["alerts"].values()])
                     + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--jobs", type=int, default=2, help="runs trained in parallel (processes)")
    ap.add_argument("--record", help="also write each run's step,lr,loss CSV into this folder")
    ap.add_argument("--out", help="also write the table to this markdown file")
    a = ap.parse_args(argv)
    if a.record:
        os.makedirs(a.record, exist_ok=True)
    work = [(s, a.steps, a.record) for s in runs()]
    with Pool(a.jobs) as pool:
        res = pool.map(one, work, chunksize=1)
    text = table(res)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            fh.write(f"# LR sweeps read back by the Monitor\n\n`python bench/lr_sweep.py "
                     f"--steps {a.steps} --out {a.out}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
