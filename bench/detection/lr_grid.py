"""Peak-lr grids on three models: the default Monitor on the runs made to find the largest lr.

    python bench/detection/lr_grid.py [--seeds 3] [--out bench/detection/results/lr_grid.md]

The commonest real divergence is a learning rate set too high. A sweep trains the same
model at a grid of peak learning rates -- here 1, 3, 10, 30 and 100x a good one -- with the
schedule people use (a linear warm-up over 20 steps, then cosine decay to a tenth), and
keeps the largest that trains. The runs that diverge do so at every pace: at once, after
the warm-up, or slowly, hundreds of steps in. Nothing here injects a fault at a known step
and nothing here was used to choose a threshold; the training loop is written apart from
the benchmark's generator (``generate.py``) and shares only its models, data and base lrs.
(``bench/lr_sweep.py`` sweeps the character transformer alone, for 1,500 steps, as logs.)

Models: an MLP and a CNN on digits (AdamW, SGD with momentum), a character transformer on
the standard library's source text (AdamW, SGD), 300 steps. Each run is labelled with the
benchmark's collapse rule (``collapse.collapse_step`` from step 0, the chance loss ln C)
and replayed through a fresh default ``Monitor`` three ways: every signal a loop measures
without the Guard (loss, gradient norm, update norm, lr, weight norm); the loss alone;
the loss alone, one line every 10 steps (what a public log often is).

Scored: a collapsed run is caught when its first alarm comes before its collapse step,
late when at or after it, never when there is none. A run that did not collapse is counted
as alarmed if any alarm comes; it trained well when its final loss (mean of the last 20
steps) is within 1.5x of the best final loss of its model and optimizer, else poorly (an
alarm on a run that trains poorly is not a false alarm, nor a caught collapse).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import collapse  # noqa: E402
import data  # noqa: E402
import generate  # noqa: E402
import other_tasks  # noqa: E402
import score as bench_score  # noqa: E402

STEPS, WARMUP, SPARSE = 300, 20, 10
MULTS = (1, 3, 10, 30, 100)
_FAMILY = {"mlp": "mlp", "cnn": "cnn", "tfm": "transformer"}
# a good peak lr per (model, optimizer): the benchmark's base lrs
BASE = {
    (m, opt): generate.BASE_LR[(fam, opt)] for m, fam in _FAMILY.items() for opt in ("adamw", "sgd")
}
BATCH = {"mlp": 64, "cnn": 64, "tfm": 16}
CTX = 64


def lr_at(t: int, peak: float) -> float:
    """Linear warm-up over WARMUP steps, then cosine decay to peak / 10 at STEPS."""
    if t < WARMUP:
        return peak * (t + 1) / WARMUP
    q = (t - WARMUP) / max(1, STEPS - WARMUP)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * q)))


def _model_and_batches(model: str, seed: int):
    """The model, a batch function of step t, and the chance loss."""
    import torch
    from models import MLP, CharTransformer, SmallCNN

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model == "tfm":
        text = torch.tensor(data.stdlib_text().astype(np.int64))
        net = CharTransformer(vocab=data.VOCAB, ctx=CTX)

        def batch(t: int):
            i = torch.tensor(rng.integers(0, len(text) - CTX - 1, BATCH[model]))
            w = torch.stack([text[j : j + CTX + 1] for j in i.tolist()])
            return w[:, :CTX], w[:, 1:]

        return net, batch, math.log(data.VOCAB)
    X, y, c = data.classification("digits")
    X, y = torch.tensor(X), torch.tensor(y)
    net = MLP(X.shape[1], c) if model == "mlp" else SmallCNN(c)

    def batch(t: int):
        i = torch.tensor(rng.integers(0, len(X), BATCH[model]))
        return X[i], y[i]

    return net, batch, math.log(c)


def train(model: str, opt: str, mult: float, seed: int) -> Dict[str, Any]:
    """One run of the sweep; returns its rows (loss, grad_norm, update_norm, lr,
    param_norm) and its chance loss."""
    import torch

    net, batch, chance = _model_and_batches(model, seed)
    params = list(net.parameters())
    peak = BASE[(model, opt)] * mult
    if opt == "adamw":
        o = torch.optim.AdamW(params, peak, weight_decay=0.01)
    else:
        o = torch.optim.SGD(params, peak, momentum=0.9)
    rows = []
    for t in range(STEPS):
        lr = lr_at(t, peak)
        for g in o.param_groups:
            g["lr"] = lr
        xb, yb = batch(t)
        out = net(xb)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
        o.zero_grad()
        loss.backward()
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
            gn = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
            o.step()
            un = math.sqrt(sum(float((p - b).pow(2).sum()) for p, b in zip(params, before)))
            pn = math.sqrt(sum(float(p.pow(2).sum()) for p in params))
        rows.append(
            {
                "loss": float(loss.detach()),
                "grad_norm": gn,
                "update_norm": un,
                "lr": lr,
                "param_norm": pn,
            }
        )
    return {"rows": rows, "chance": chance}


def alarms(rows: List[Dict[str, float]], view: str) -> List[int]:
    """The steps on which a fresh default Monitor alerts: view "all" (every signal),
    "loss" (the loss alone) or "sparse" (the loss alone, one line every SPARSE steps)."""
    every = SPARSE if view == "sparse" else 1
    return other_tasks.alarms(rows, loss_only=view != "all", every=every)


def _final(loss: List[float]) -> float:
    tail = [x for x in loss[-20:] if math.isfinite(x)]
    return float(np.mean(tail)) if len(tail) == 20 else math.inf


def score(runs: List[Dict[str, Any]], view: str) -> Dict[str, int]:
    """caught / late / never of the collapsed runs (by the benchmark's ``score_run``, onset
    0), of them the slow ones (collapse >= ``score.SLOW_MIN`` steps in); alarmed / count of
    the runs that did not collapse, trained well or poorly."""
    res = dict.fromkeys(
        (
            "collapsed",
            "caught",
            "late",
            "never",
            "slow",
            "slow_caught",
            "well",
            "well_alarm",
            "poor",
            "poor_alarm",
        ),
        0,
    )
    for r in runs:
        first = r["alarms"][view][0] if r["alarms"][view] else None
        if r["collapse"] is not None:
            meta = {
                "label": "collapsed",
                "onset": 0,
                "collapse_step": r["collapse"],
                "n_steps": STEPS,
            }
            out = bench_score.score_run(r["alarms"][view], meta)["outcome"]
            res["collapsed"] += 1
            res[{"missed": "never"}.get(out, out)] += 1
            if r["collapse"] >= bench_score.SLOW_MIN:
                res["slow"] += 1
                res["slow_caught"] += out == "caught"
        else:
            kind = "well" if r["well"] else "poor"
            res[kind] += 1
            res[kind + "_alarm"] += first is not None
    return res


def run_all(seeds: int) -> List[Dict[str, Any]]:
    """Train every run of the grid; each with its rows and labels (not yet judged)."""
    runs = []
    for (model, opt), _ in BASE.items():
        group = []
        for mult in MULTS:
            for seed in range(seeds):
                r = train(model, opt, mult, seed)
                loss = [row["loss"] for row in r["rows"]]
                group.append(
                    {
                        "model": model,
                        "opt": opt,
                        "mult": mult,
                        "seed": seed,
                        "collapse": collapse.collapse_step(loss, 0, chance_loss=r["chance"]),
                        "final": _final(loss),
                        "rows": r["rows"],
                    }
                )
        best = min(g["final"] for g in group)
        for g in group:
            g["well"] = g["collapse"] is None and g["final"] <= 1.5 * best
        runs += group
    return runs


def judge(runs: List[Dict[str, Any]]) -> None:
    """Replay every run through the Monitor of this checkout, in each view."""
    for r in runs:
        r["alarms"] = {v: alarms(r["rows"], v) for v in ("all", "loss", "sparse")}


def report(runs: List[Dict[str, Any]]) -> str:
    seeds = 1 + max(r["seed"] for r in runs)
    lines = [
        "# Peak-lr grids (`python bench/detection/lr_grid.py`)",
        "",
        f"{len(runs)} runs: 3 models x 2 optimizers x peak lr {', '.join(map(str, MULTS))}x a "
        f"good one x {seeds} seeds (see the script's docstring). Never used to choose a "
        "threshold.",
        "",
        "| signals | collapsed: caught / late / never | slow (collapse >= "
        f"{bench_score.SLOW_MIN} steps in): caught | did not collapse, trained well: "
        "alarmed | trained poorly: alarmed |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "all": "every signal",
        "loss": "loss only",
        "sparse": f"loss only, every {SPARSE}th step",
    }
    for v in ("all", "loss", "sparse"):
        s = score(runs, v)
        lines.append(
            f"| {names[v]} | {s['caught']} / {s['late']} / {s['never']} of {s['collapsed']} | "
            f"{s['slow_caught']} / {s['slow']} | {s['well_alarm']} / {s['well']} | "
            f"{s['poor_alarm']} / {s['poor']} |"
        )
    lines += [
        "",
        "Every run (collapse: the benchmark's step, or - ; first alarm per view; final: "
        "mean loss of the last 20 steps):",
        "",
        "| model | optimizer | peak lr x | seed | collapse | every signal | loss only | "
        "every 10th step | final loss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        first = [r["alarms"][v][0] if r["alarms"][v] else "-" for v in ("all", "loss", "sparse")]
        c = "-" if r["collapse"] is None else r["collapse"]
        tag = "" if r["collapse"] is not None else (" (well)" if r["well"] else " (poorly)")
        lines.append(
            f"| {r['model']} | {r['opt']} | {r['mult']} | {r['seed']} | {c} | {first[0]} | "
            f"{first[1]} | {first[2]} | {r['final']:.3g}{tag} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "lr_grid.md"))
    ap.add_argument("--runs-json", help="also write every run (rows and labels) here")
    ap.add_argument(
        "--from-json", metavar="JSON", help="judge the runs of --runs-json instead of training"
    )
    a = ap.parse_args(argv)
    if a.from_json:
        with open(a.from_json, encoding="utf-8") as f:
            runs = json.load(f)
    else:
        runs = run_all(a.seeds)
        if a.runs_json:
            with open(a.runs_json, "w", encoding="utf-8") as f:
                json.dump(runs, f)
    judge(runs)
    text = report(runs)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
