"""The seed README's quick start, run on a real (tiny) training run.

A character-bigram softmax model is trained with minibatch SGD in NumPy on the source
text of Python's own standard library (ships with every Python); its loss, gradient
norms, update norms and gradient-noise norms fill the lists the seed leaves as `[...]`.
Then the seed's ten lines run exactly as written. The reference is a known-good window
after warm-up (steps 50-150), as the seed's FAQ advises: the first steps, while the EMA
of the noise tap fills, are a transient, not the healthy fingerprint.

    python examples/quickstart.py
"""

from __future__ import annotations

import os

import numpy as np


def stdlib_text(n_chars: int = 200_000) -> str:
    root = os.path.dirname(os.__file__)
    parts = []
    for name in ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "shlex.py"):
        with open(os.path.join(root, name), encoding="utf-8") as f:
            parts.append(f.read())
    return "".join(parts)[:n_chars]


def train_bigram(steps: int = 300, batch: int = 256, lr: float = 2.0, seed: int = 0):
    """Softmax regression next-char <- current char; returns the four logged series."""
    text = stdlib_text()
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text])
    v = len(vocab)
    rng = np.random.default_rng(seed)
    w = np.zeros((v, v))
    m = np.zeros_like(w)  # EMA of gradients: the seed's gradient-noise tap, in NumPy
    logs = {"loss": [], "g": [], "s": [], "noise": []}
    for _ in range(steps):
        i = rng.integers(0, len(ids) - 1, size=batch)
        x, y = ids[i], ids[i + 1]
        logits = w[x]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(batch), y]).mean()
        p[np.arange(batch), y] -= 1.0
        grad = np.zeros_like(w)
        np.add.at(grad, x, p / batch)
        m = 0.9 * m + 0.1 * grad
        update = -lr * grad
        w += update
        logs["loss"].append(float(loss))
        logs["g"].append(float(np.linalg.norm(grad)))
        logs["s"].append(float(np.linalg.norm(update)))
        logs["noise"].append(float(np.linalg.norm(grad - m)))
    return logs


logs = train_bigram()

# ---- the seed README's quick start, as written ---------------------------------------------
from anet_lite import theta_consistency, entropy_rate, processivity, f_total, two_second_precursor

loss_hist = logs["loss"]  # JA: 損失/温度の履歴 | EN: loss/temperature history
grad_norms = logs["g"]  # JA: 勾配ノルム     | EN: gradient norms
step_norms = logs["s"]  # JA: 更新ノルム     | EN: parameter update norms
noise_series = logs["noise"][-64:]  # JA: 勾配ノイズ列   | EN: gradient noise series
ref_series = logs["noise"][50:150]  # JA: 正常参照列     | EN: reference (healthy) series

phi = theta_consistency(noise_series, ref_series)  # 0..1 (1=healthy)
F = f_total(entropy_rate(loss_hist), processivity(grad_norms, step_norms), w_s=0.7, w_p=0.3)
alert, z = two_second_precursor(loss_hist, rate_hz=5)  # True if z>2.5
print(phi, F, alert, z)
