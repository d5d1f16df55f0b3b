"""Other tasks: the default Monitor on training runs of tasks the benchmark does not have.

    python bench/detection/other_tasks.py [--seeds 6] [--out bench/detection/results/other_tasks.md]

The detection benchmark (``generate.py``) trains classifiers only (cross-entropy). This
script trains small MLPs on two other bundled scikit-learn datasets, written apart from the
generator and never used to choose anything: **diabetes** (regression, mean squared error
on the standardised target: a loss with no chance level) and **wine** (3 classes, 178
examples). Adam (lr 1e-3) and SGD with momentum (lr 0.02), 400 steps of 32 examples.

Healthy runs: as they are, and with the batch cut to 8 at step 250 (noisier batches).
Faults from step 200: the lr 30x (Adam) or 15x (SGD) from then on; a shard of 6 batches
with corrupted targets (regression: y x 8 + 3; classes: shifted by one); the first layer's
gradients negated from then on (a partial sign bug); weight decay 0.5 with the wrong sign.

Each run is labelled with the benchmark's collapse rule (``collapse.collapse_step``; the
chance loss ln 3 for wine, none for the regression) and replayed through a fresh default
``Monitor``: every signal a loop measures without the Guard (loss, gradient norm, update
norm, lr, weight norm) and the loss alone. Caught = first alarm in [onset, collapse).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import collapse  # noqa: E402
import data  # noqa: E402
import score as bench_score  # noqa: E402

from anet_lite import Monitor  # noqa: E402

ONSET, STEPS, BATCH = 200, 400, 32
FAULTS = ("lr_jump", "shard", "partial_sign", "wd_sign")
HEALTHY = ("none", "batch_cut")


def _data(task: str):
    import torch

    if task == "wine":
        X, y, _ = data.classification("wine")  # (standardised, as the benchmark's sets)
        return torch.tensor(X), torch.tensor(y)
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]


def train(task: str, opt: str, seed: int, variant: str) -> List[Dict[str, float]]:
    """One run; returns its rows (loss, grad_norm, update_norm, lr, param_norm)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X, y = _data(task)
    out = 1 if task == "diabetes" else 3
    model = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, out),
    )
    params = list(model.parameters())
    lr0 = 1e-3 if opt == "adam" else 0.02
    if opt == "adam":
        o = torch.optim.Adam(params, lr0)
    else:
        o = torch.optim.SGD(params, lr0, momentum=0.9)
    lossf = torch.nn.MSELoss() if task == "diabetes" else torch.nn.CrossEntropyLoss()
    rows = []
    for t in range(STEPS):
        bs = 8 if variant == "batch_cut" and t >= 250 else BATCH
        idx = rng.integers(0, len(X), bs)
        xb, yb = X[idx], y[idx].clone()
        after = t >= ONSET
        lr = lr0 * (30 if opt == "adam" else 15) if variant == "lr_jump" and after else lr0
        if variant == "shard" and ONSET <= t < ONSET + 6:
            yb = yb * 8 + 3 if task == "diabetes" else (yb + 1) % 3
        for g in o.param_groups:
            g["lr"] = lr
        before = [p.detach().clone() for p in params]
        loss = lossf(model(xb), yb)
        o.zero_grad()
        loss.backward()
        if variant == "partial_sign" and after:
            for p in params[:2]:
                p.grad.neg_()
        if variant == "wd_sign" and after:
            for p in params:
                p.grad.add_(p.detach(), alpha=-0.5)
        with torch.no_grad():
            gn = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
            o.step()
            un = math.sqrt(sum(float((p - b).pow(2).sum()) for p, b in zip(params, before)))
            pn = math.sqrt(sum(float(p.pow(2).sum()) for p in params))
        rows.append(
            {"loss": float(loss.detach()), "grad_norm": gn, "update_norm": un, "lr": lr,
             "param_norm": pn}
        )
    return rows


def alarms(rows: List[Dict[str, float]], loss_only: bool, every: int = 1) -> List[int]:
    """The steps on which a fresh default Monitor alerts; ``every``: feed only every
    ``every``-th row (a sparse log), with its step number."""
    m, out = Monitor(), []
    for t, r in enumerate(rows):
        if t % every:
            continue
        if loss_only:
            s = m.update(r["loss"], step=t)
        else:
            s = m.update(
                r["loss"], step=t, grad_norm=r["grad_norm"], step_norm=r["update_norm"],
                lr=r["lr"], param_norm=r["param_norm"],
            )
        if s.alert:
            out.append(t)
    return out


def score(runs: List[Dict[str, Any]], loss_only: bool) -> Dict[str, Any]:
    """caught / late / never of the collapsed fault runs (first alarm at or after the
    onset), fault runs alarmed before their onset, healthy runs alarmed."""
    key = "alarms_lo" if loss_only else "alarms"
    res = {"caught": 0, "late": 0, "never": 0, "collapsed": 0, "pre": 0, "healthy": 0,
           "h_alarm": 0}
    for r in runs:
        healthy = r["variant"] in HEALTHY
        if healthy and r["collapse"] is not None:
            continue  # (a healthy setting that diverged: neither)
        label = "healthy" if healthy else "survived" if r["collapse"] is None else "collapsed"
        meta = {"label": label, "onset": None if healthy else ONSET,
                "collapse_step": r["collapse"], "n_steps": STEPS}
        s = bench_score.score_run(r[key], meta)  # (the benchmark's own scoring)
        if healthy:
            res["healthy"] += 1
            res["h_alarm"] += s["any_alarm"]
            continue
        res["pre"] += s["false_alarm_pre_onset"]
        if label == "collapsed":
            res["collapsed"] += 1
            res[{"missed": "never"}.get(s["outcome"], s["outcome"])] += 1
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "other_tasks.md"))
    a = ap.parse_args()
    runs = []
    for task in ("diabetes", "wine"):
        chance = None if task == "diabetes" else math.log(3.0)
        for opt in ("adam", "sgd"):
            for seed in range(a.seeds):
                for variant in HEALTHY + FAULTS:
                    rows = train(task, opt, seed, variant)
                    loss = [r["loss"] for r in rows]
                    onset = ONSET if variant in FAULTS else None
                    c = collapse.collapse_step(loss, onset if onset else 0, chance_loss=chance)
                    runs.append(
                        {"task": task, "opt": opt, "seed": seed, "variant": variant,
                         "collapse": c, "alarms": alarms(rows, False),
                         "alarms_lo": alarms(rows, True)}
                    )
    lines = [
        "# Other tasks (`python bench/detection/other_tasks.py`)", "",
        "Tasks the benchmark does not have, never used to choose a threshold: see the "
        "script's docstring. Caught = first alarm in [onset, collapse).", "",
        "| task | signals | collapsed faults | caught / late / never | fault runs alarmed "
        "before their onset | healthy runs alarmed |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for task in ("diabetes", "wine"):
        sel = [r for r in runs if r["task"] == task]
        for lo in (False, True):
            s = score(sel, lo)
            lines.append(
                f"| {task} | {'loss only' if lo else 'every signal'} | {s['collapsed']} | "
                f"{s['caught']} / {s['late']} / {s['never']} | {s['pre']} | "
                f"{s['h_alarm']} / {s['healthy']} |"
            )
    lines += [
        "", "Every run that collapsed or alarmed (first alarm; every signal, loss only):", "",
        "| run | collapse | first alarm | loss only |", "| --- | ---: | ---: | ---: |",
    ]
    for r in runs:
        if r["collapse"] is not None or r["alarms"] or r["alarms_lo"]:
            name = f"{r['task']}-{r['opt']}-{r['variant']}-s{r['seed']}"
            first = [al[0] if al else None for al in (r["alarms"], r["alarms_lo"])]
            lines.append(f"| {name} | {r['collapse']} | {first[0]} | {first[1]} |")
    text = "\n".join(lines) + "\n"
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    print("\n".join(lines[:12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
