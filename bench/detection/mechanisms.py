"""The failure mechanisms and healthy variants of the ``mech`` set (``generate.py --set mech``).

Every fault here is a real bug applied to the real training loop of ``generate.run_one``
(same models, data, optimizers and recording); :class:`Injector` holds the hooks the loop
calls. The original nine kinds stay in ``generate.py`` untouched, so the committed
``cache/`` keeps its seeds and bytes. This module's runs get seeds from 20000 on.

Fault kinds (``MECH_FAULTS``; onset = the first step the bug acts on):

=======================  ===============================================================
kind                     the bug
=======================  ===============================================================
wd_sign                  decoupled weight decay applied with the wrong sign from the onset:
                         ``theta += lr * wd * theta`` instead of ``-=`` (theta grows
                         1-3 %/step)
wd_scale                 decoupled weight decay 100-1000x too large from the onset (a
                         decay given per epoch read as per step): theta shrinks 8-30 %/step
opt_state_reset          optimizer state lost at the onset: every moment buffer, or the
                         second moments only (a partial restore), zeroed with the step
                         count kept (so no bias correction restarts), in a run at a
                         high-but-stable lr (2-4x the base)
beta_change              momentum / beta misconfigured at the onset: SGD momentum
                         0.9 -> 0.999, Adam beta2 -> 0.05-0.5, RMSprop alpha -> 0.05-0.5
grad_accum_sum           gradient accumulation over k = 8-64 micro-batches summed instead
                         of averaged from the onset (exactly k x the batch-mean gradient)
partial_grad_sign        the gradients of 1-2 weight tensors negated from the onset
stuck_loader             the loader returns the same batch for 150-300 steps from the
                         onset, then resumes (the logged loss is that batch's loss)
label_noise_ramp         a growing share of corrupted labels from the onset: +0.3-1 %
                         of the batch per step, up to 100 %
loss_sum_varbs           loss reduction ``sum`` over a batch size that varies per step
                         (bs/2 .. 2 bs) from the onset; the logged loss is the per-example
                         mean (the loss a user compares across runs)
unfreeze_high_lr         the body is frozen (a head-only phase at a head lr 5-30x the
                         base) and unfrozen by mistake at the onset with that same lr
fp16_no_scaler           from the onset gradients go through float16 without a loss
                         scaler: the logits' gradient and every parameter gradient cast to
                         float16 and back (small ones underflow to 0, large ones overflow)
output_logit_divergence  the output layer's learning rate 100-1000x the body's from the
                         onset, no z-loss: the output logits grow (Wortsman et al. 2023)
bn_stats_corrupt         frozen-BatchNorm training (running statistics used); at the onset
                         the running statistics are overwritten by one train-mode pass
                         (momentum 1) over a corrupted batch (inputs x 20-200, or zeros)
attn_entropy_collapse    the attention's qkv projections put in a parameter group with
                         a 10-30x lr from the onset (no qk-norm): attention entropy
                         collapses (Zhai et al. 2023)
warmup_units             the warm-up length given in the wrong units: 100x too short
                         (1 step) before a peak lr 5-20x the base, then cosine decay
=======================  ===============================================================

Healthy variants (``MECH_BENIGN``): ``none`` (new optimizers, the BN CNN and the 1.1M-
parameter MLP), ``sgdr`` (warm restarts, period doubling, 5-step re-warm-up),
``bs_ramp`` (batch size doubled twice), ``finetune`` (trained on one half of the data,
then continued at 0.3x the lr on the other half), ``high_stable_lr`` (2-3x the base lr),
``early_overshoot`` (lr 20-60x at steps 1-3, then the base lr: the loss jumps and
recovers), ``warmup_cosine`` (the correct long warm-up to the high peak of
``warmup_units``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

MECH_FAULTS = [
    "wd_sign",
    "wd_scale",
    "opt_state_reset",
    "beta_change",
    "grad_accum_sum",
    "partial_grad_sign",
    "stuck_loader",
    "label_noise_ramp",
    "loss_sum_varbs",
    "unfreeze_high_lr",
    "fp16_no_scaler",
    "output_logit_divergence",
    "bn_stats_corrupt",
    "warmup_units",
    "attn_entropy_collapse",
]
MECH_ONSET_ZERO = {"warmup_units"}
MECH_BENIGN = [
    "none",
    "sgdr",
    "bs_ramp",
    "finetune",
    "high_stable_lr",
    "early_overshoot",
    "warmup_cosine",
]
# (setup, optimizer) of each run; the replicate index is the position in the list
MECH_RUNS: Dict[str, List[Tuple[str, str]]] = {
    "wd_sign": [
        ("mlp_digits", "adamw"),
        ("cnn_digits", "sgd"),
        ("tfm_stdlib", "adamw"),
        ("mlp_bcancer", "rmsprop"),
    ],
    "wd_scale": [("mlp_digits", "sgd"), ("cnn_digits", "adamw"), ("mlp_wide_digits", "adamw")],
    "opt_state_reset": [
        ("mlp_digits", "adamw"),
        ("cnn_digits", "rmsprop"),
        ("tfm_stdlib", "adamw"),
        ("mlp_bcancer", "adafactor"),
    ],
    "beta_change": [
        ("mlp_digits", "sgd"),
        ("cnn_digits", "adamw"),
        ("mlp_bcancer", "rmsprop"),
        ("gru_stdlib", "sgd"),
    ],
    "grad_accum_sum": [
        ("mlp_digits", "sgd"),
        ("cnn_digits", "sgd_plain"),
        ("tfm_stdlib", "sgd"),
        ("mlp_bcancer", "adamw"),
    ],
    "partial_grad_sign": [
        ("mlp_digits", "adamw"),
        ("cnn_digits", "sgd"),
        ("tfm_stdlib", "adamw"),
        ("mlp_wide_digits", "sgd"),
    ],
    "stuck_loader": [("mlp_digits", "adamw"), ("cnn_digits", "sgd"), ("tfm_stdlib", "adamw")],
    "label_noise_ramp": [
        ("mlp_digits", "sgd"),
        ("cnn_digits", "adamw"),
        ("tfm_stdlib", "adamw"),
        ("mlp_bcancer", "rmsprop"),
    ],
    "loss_sum_varbs": [
        ("mlp_digits", "sgd"),
        ("cnn_digits", "adamw"),
        ("mlp_bcancer", "sgd_plain"),
    ],
    "unfreeze_high_lr": [
        ("mlp_digits", "adamw"),
        ("cnn_digits", "sgd"),
        ("mlp_wide_digits", "adamw"),
    ],
    "fp16_no_scaler": [("mlp_digits", "adamw"), ("cnn_digits", "sgd"), ("tfm_stdlib", "adamw")],
    "output_logit_divergence": [
        ("mlp_digits", "adamw"),
        ("tfm_stdlib", "adamw"),
        ("cnn_digits", "rmsprop"),
    ],
    "bn_stats_corrupt": [
        ("cnnbn_digits", "adamw"),
        ("cnnbn_digits", "sgd"),
        ("cnnbn_digits", "sgd_plain"),
    ],
    "warmup_units": [
        ("mlp_digits", "sgd"),
        ("cnn_digits", "adamw"),
        ("tfm_stdlib", "adamw"),
        ("mlp_bcancer", "adafactor"),
    ],
}
MECH_HEALTHY: Dict[str, List[Tuple[str, str]]] = {
    "none": [
        ("mlp_digits", "sgd_plain"),
        ("mlp_digits", "rmsprop"),
        ("mlp_digits", "adafactor"),
        ("cnn_digits", "sgd_plain"),
        ("cnn_digits", "rmsprop"),
        ("cnn_digits", "adafactor"),
        ("mlp_bcancer", "rmsprop"),
        ("mlp_bcancer", "sgd_plain"),
        ("cnnbn_digits", "adamw"),
        ("cnnbn_digits", "sgd"),
        ("cnnbn_digits", "sgd_plain"),
        ("mlp_wide_digits", "adamw"),
        ("mlp_wide_digits", "sgd"),
    ],
    "sgdr": [("mlp_digits", "adamw"), ("cnn_digits", "sgd"), ("tfm_stdlib", "adamw")],
    "bs_ramp": [("mlp_digits", "sgd"), ("cnn_digits", "adamw"), ("tfm_stdlib", "adamw")],
    "finetune": [("mlp_digits", "adamw"), ("cnn_digits", "sgd"), ("tfm_stdlib", "adamw")],
    "high_stable_lr": [
        ("mlp_digits", "adamw"),
        ("cnn_digits", "sgd"),
        ("mlp_bcancer", "rmsprop"),
        ("tfm_stdlib", "adamw"),
    ],
    "early_overshoot": [
        ("mlp_digits", "adamw"),
        ("cnn_digits", "sgd"),
        ("mlp_bcancer", "adamw"),
        ("tfm_stdlib", "adamw"),
    ],
    "warmup_cosine": [("mlp_digits", "sgd"), ("cnn_digits", "adamw"), ("mlp_bcancer", "adafactor")],
}
# planned after the healthy variants (own seed groups, so that the earlier seeds stay)
MECH_LATE: Dict[str, List[Tuple[str, str]]] = {
    "attn_entropy_collapse": [
        ("tfm_stdlib", "adamw"),
        ("tfm_stdlib", "sgd"),
        ("tfm_stdlib", "rmsprop"),
    ],
}
ADAPTIVE = {"adamw", "rmsprop", "adafactor"}
# the second-moment buffers of torch's AdamW, RMSprop and Adafactor
SECOND_MOMENTS = {"exp_avg_sq", "square_avg", "row_var", "col_var", "variance"}


def _logu(rng: np.random.Generator, a: float, b: float) -> float:
    return float(math.exp(rng.uniform(math.log(a), math.log(b))))


def fault_magnitude(kind: str, opt: str, n: int, rng: np.random.Generator) -> Dict[str, Any]:
    """The magnitude of one fault run (drawn from the run's own seeded generator)."""
    if kind == "wd_sign":
        return {"rate_per_step": _logu(rng, 0.01, 0.03)}
    if kind == "wd_scale":
        return {"rate_per_step": _logu(rng, 0.08, 0.3)}
    if kind == "opt_state_reset":
        which = "second" if rng.uniform() < 0.5 else "all"
        return {"lr_mult": _logu(rng, 2.0, 4.0), "which": which}
    if kind == "beta_change":
        if opt in ("sgd", "sgd_plain"):
            return {"momentum": 0.999}
        return {"beta2": _logu(rng, 0.05, 0.5)}
    if kind == "grad_accum_sum":
        return {"k": int(rng.choice([8, 16, 32, 64]))}
    if kind == "partial_grad_sign":
        return {"n_tensors": int(rng.integers(1, 3)), "pick_seed": int(rng.integers(1 << 30))}
    if kind == "stuck_loader":
        return {"length": int(rng.integers(150, 301))}
    if kind == "label_noise_ramp":
        return {"noise_per_step": _logu(rng, 0.003, 0.01)}
    if kind == "loss_sum_varbs":
        return {"bs_lo_frac": 0.5, "bs_hi_frac": 2.0}
    if kind == "unfreeze_high_lr":
        return {"head_lr_mult": _logu(rng, 5.0, 30.0)}
    if kind == "fp16_no_scaler":
        return {"dtype": "float16"}
    if kind == "output_logit_divergence":
        return {"head_lr_mult": _logu(rng, 100.0, 1000.0), "z_loss": 0.0}
    if kind == "bn_stats_corrupt":
        mode = "scale" if rng.uniform() < 0.5 else "zeros"
        return {"mode": mode, "scale": _logu(rng, 20.0, 200.0)}
    if kind == "attn_entropy_collapse":
        return {"qkv_lr_mult": _logu(rng, 10.0, 30.0)}
    if kind == "warmup_units":
        return {"peak_mult": _logu(rng, 5.0, 20.0), "warmup": max(1, int(0.3 * n) // 100)}
    raise ValueError(f"unknown mechanism {kind!r}")


def benign_magnitude(
    event: str, opt: str, n: int, rng: np.random.Generator
) -> Tuple[Dict[str, Any], Dict[str, List[int]]]:
    """(magnitude, event steps) of one healthy variant."""
    if event == "sgdr":
        p0 = n // 7  # periods p0, 2 p0, 4 p0 fill the run
        return {"period0": p0, "rewarm": 5}, {"sgdr_restart": [p0, 3 * p0]}
    if event == "bs_ramp":
        return {"bs_mult": 2.0}, {"batch_size_change": [n // 3, 2 * n // 3]}
    if event == "finetune":
        e = int(rng.uniform(0.3, 0.5) * n)
        return {"lr_factor": 0.3}, {"finetune_start": [e]}
    if event == "high_stable_lr":
        return {"lr_mult": float(rng.uniform(2.0, 3.0))}, {}
    if event == "early_overshoot":
        mult = _logu(rng, 20.0, 60.0)
        return {"lr_mult": mult, "steps": [1, 2, 3]}, {"lr_overshoot": [1]}
    if event == "warmup_cosine":
        w = int(0.3 * n)
        return {"peak_mult": _logu(rng, 5.0, 20.0), "warmup": w}, {"warmup_end": [w]}
    return {}, {}


def mech_spec(
    setups: Dict[str, Dict[str, Any]],
    base_lr: Dict[Tuple[str, str], float],
    setup: str,
    kind: str,
    event: Optional[str],
    seed: int,
    opt: str,
    split: str,
) -> Dict[str, Any]:
    """The spec of one run of the ``mech`` set (same fields as ``generate._make_spec``)."""
    S = setups[setup]
    fam, n = S["family"], S["n_steps"]
    rng = np.random.default_rng(seed)
    onset: Optional[int] = None
    if kind == "healthy":
        mag, ev_steps = benign_magnitude(event or "none", opt, n, rng)
    else:
        onset = 0 if kind in MECH_ONSET_ZERO else int(rng.uniform(0.3, 0.6) * n)
        mag = fault_magnitude(kind, opt, n, rng)
        ev_steps = {kind: [onset]}
    rid = f"{setup}-{kind}" + (f"-{event}" if event else "") + f"-{opt}-s{seed}"
    return dict(
        run_id=rid,
        setup=setup,
        family=fam,
        dataset=S["dataset"],
        optimizer=opt,
        kind=kind,
        benign=event,
        seed=seed,
        onset=onset,
        magnitude=mag,
        base_lr=base_lr[(fam, opt)],
        n_steps=n,
        events=ev_steps,
        split=split,
    )


# ----------------------------------------------------------------------------- run time
class Injector:
    """The hooks ``generate.run_one`` calls for a run of the ``mech`` set.

    Hooks, in loop order: ``prepare`` (after the model is built), ``param_groups`` (when
    the optimizer is built), ``batch_size`` / ``batch`` (the batch), ``before_step``
    (changes at the onset, before the forward pass), ``lr`` / ``group_mult`` (the
    learning rate of each parameter group), ``sum_loss`` (the
    objective), ``after_backward`` (the gradients), ``after_step`` (after
    ``optimizer.step``, before the update is measured).
    """

    def __init__(self, spec: Dict[str, Any], lr0: float):
        self.kind = spec["kind"]
        self.event = spec["benign"]
        self.mag = spec["magnitude"]
        self.onset = spec["onset"]
        self.n = spec["n_steps"]
        self.opt_name = spec["optimizer"]
        self.lr0 = lr0
        self.events = spec["events"]
        self.stuck: Optional[Tuple[Any, Any]] = None
        self.negated: List[str] = []
        self.calib_x = None

    def active(self, t: int) -> bool:
        return self.kind != "healthy" and t >= self.onset

    # ---- model and optimizer
    def prepare(self, model, xs=None) -> None:
        """Freeze the body (unfreeze_high_lr); estimate frozen BN statistics; pick the
        tensors whose gradients a partial sign bug negates."""
        import models
        import torch

        if self.kind == "unfreeze_high_lr":
            head = {id(p) for p in models.head_of(model).parameters()}
            for p in model.parameters():
                p.requires_grad_(id(p) in head)
        if isinstance(model, models.BNCNN):
            assert xs is not None
            for b in model.bn_layers():
                b.momentum = None  # cumulative average over the calibration batches
            model.train()
            with torch.no_grad():
                for i in range(0, 512, 64):
                    model(xs[i : i + 64])
            for b in model.bn_layers():
                b.momentum = 0.1
            model.frozen_bn()
        if self.kind == "partial_grad_sign":
            names = [n for n, p in model.named_parameters() if p.dim() >= 2]
            pick = np.random.default_rng(self.mag["pick_seed"])
            k = min(self.mag["n_tensors"], len(names))
            self.negated = sorted(pick.choice(names, size=k, replace=False).tolist())
            self.mag["tensors"] = self.negated

    def param_groups(self, model, params) -> List[Dict[str, Any]]:
        """One group, or a second group (the output layer; the attention's qkv) whose lr
        ``group_mult`` sets."""
        import models

        if self.kind == "attn_entropy_collapse":
            head = [p for b in model.blocks for p in b.qkv.parameters()]
        elif self.kind in ("output_logit_divergence", "unfreeze_high_lr"):
            head = list(models.head_of(model).parameters())
        else:
            return [{"params": params}]
        ids = {id(p) for p in head}
        body = [p for p in params if id(p) not in ids]
        return [{"params": body}, {"params": head}]

    def lr(self, t: int, lr: float) -> float:
        """The learning rate of step ``t`` (before per-group multipliers)."""
        m, ev = self.mag, self.event
        if ev == "sgdr":
            p, start = m["period0"], 0
            while t >= start + p:
                start, p = start + p, 2 * p
            ph = (t - start) / p
            lr = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * ph)))
            if start > 0:
                lr *= min(1.0, (t - start + 1) / m["rewarm"])
        elif ev == "high_stable_lr" or (ev == "early_overshoot" and t in m["steps"]):
            lr *= m["lr_mult"]
        elif ev == "finetune" and t >= self.events["finetune_start"][0]:
            lr *= m["lr_factor"]
        elif ev == "warmup_cosine" or self.kind == "warmup_units":
            w = m["warmup"]
            peak = lr * m["peak_mult"]
            if t < w:
                return peak * (t + 1) / w
            return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (t - w) / (self.n - w))))
        elif self.kind == "opt_state_reset":
            lr *= m["lr_mult"]
        return lr

    def group_mult(self, t: int, group_index: int) -> float:
        if self.kind == "unfreeze_high_lr":  # the body is frozen until the onset
            return self.mag["head_lr_mult"]
        if self.kind == "output_logit_divergence" and group_index == 1 and t >= self.onset:
            return self.mag["head_lr_mult"]
        if self.kind == "attn_entropy_collapse" and group_index == 1 and t >= self.onset:
            return self.mag["qkv_lr_mult"]
        return 1.0

    # ---- per step
    def before_step(self, t: int, model, opt, xb_like) -> None:
        """Changes made at the onset step, before its forward pass."""
        import torch

        if self.kind == "healthy" or t != self.onset:
            return
        if self.kind == "unfreeze_high_lr":
            for p in model.parameters():
                p.requires_grad_(True)
        elif self.kind == "opt_state_reset":  # e.g. a resharded checkpoint: moments zero
            zero = SECOND_MOMENTS if self.mag.get("which") == "second" else None
            for st in opt.state.values():
                for key, v in st.items():
                    if key == "step" or (zero is not None and key not in zero):
                        continue
                    if torch.is_tensor(v) and v.is_floating_point():
                        v.zero_()
        elif self.kind == "beta_change":
            for g in opt.param_groups:
                if "momentum" in g and "momentum" in self.mag:
                    g["momentum"] = self.mag["momentum"]
                if "betas" in g:
                    g["betas"] = (g["betas"][0], self.mag["beta2"])
                if "alpha" in g:
                    g["alpha"] = self.mag["beta2"]
        elif self.kind == "bn_stats_corrupt":
            x = xb_like * self.mag["scale"] if self.mag["mode"] == "scale" else 0 * xb_like
            for b in model.bn_layers():
                b.momentum = 1.0
                b.train()
            with torch.no_grad():
                model(x)
            for b in model.bn_layers():
                b.momentum = 0.1
            model.frozen_bn()

    def batch_size(self, t: int, bs: int, rng: np.random.Generator) -> int:
        m = self.mag
        if self.event == "bs_ramp":
            for e in self.events["batch_size_change"]:
                if t >= e:
                    bs = int(bs * m["bs_mult"])
        if self.kind == "loss_sum_varbs" and t >= self.onset:
            bs = int(rng.integers(max(2, int(bs * m["bs_lo_frac"])), int(bs * m["bs_hi_frac"]) + 1))
        return bs

    def batch(self, t: int, xb, yb, rng: np.random.Generator, n_classes: int):
        """The batch the loop trains on: the stuck loader's one batch, or noisy labels."""
        if self.kind == "stuck_loader" and self.active(t):
            if t == self.onset:
                self.stuck = (xb.clone(), yb.clone())
            elif t < self.onset + self.mag["length"]:
                return self.stuck[0].clone(), self.stuck[1].clone()
        return xb, self.labels(t, yb, rng, n_classes)

    def labels(self, t: int, yb, rng: np.random.Generator, n_classes: int):
        """Corrupt a growing share of the labels (label_noise_ramp)."""
        import torch

        if self.kind != "label_noise_ramp" or t < self.onset:
            return yb
        frac = min(1.0, (t - self.onset + 1) * self.mag["noise_per_step"])
        flat_y = yb.reshape(-1).clone()
        k = round(frac * flat_y.numel())
        if k:
            pos = torch.from_numpy(rng.choice(flat_y.numel(), size=k, replace=False))
            flat_y[pos] = torch.from_numpy(rng.integers(0, n_classes, size=k))
        return flat_y.view_as(yb)

    def output_hook(self, t: int, out) -> None:
        """fp16_no_scaler: the gradient reaching the logits is float16 too."""
        import torch

        if self.kind == "fp16_no_scaler" and self.active(t) and out.requires_grad:
            out.register_hook(lambda g: g.to(torch.float16).to(torch.float32))

    def sum_loss(self, t: int) -> bool:
        return self.kind == "loss_sum_varbs" and t >= self.onset

    def after_backward(self, t: int, model) -> None:
        """Gradient bugs: k x (accumulation summed), negated tensors, float16 casts."""
        import torch

        if not self.active(t):
            return
        if self.kind == "grad_accum_sum":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.mag["k"])
        elif self.kind == "partial_grad_sign":
            for name, p in model.named_parameters():
                if name in self.negated and p.grad is not None:
                    p.grad.neg_()
        elif self.kind == "fp16_no_scaler":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.copy_(p.grad.to(torch.float16).to(torch.float32))

    def after_step(self, t: int, params, lr: float) -> None:
        """Decoupled weight-decay bugs, applied after the optimizer's own update."""
        import torch

        if not self.active(t) or self.kind not in ("wd_sign", "wd_scale"):
            return
        rate = self.mag["rate_per_step"]
        factor = 1.0 + rate if self.kind == "wd_sign" else 1.0 - rate
        with torch.no_grad():
            for p in params:
                p.mul_(factor)
