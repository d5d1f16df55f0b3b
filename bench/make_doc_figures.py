"""Regenerate the README's use-case figures in docs/img/ (CPU, ~15 s).

    python bench/make_doc_figures.py

merge_scan.svg: the merge scan of the two embedded digits-MLP pairs (loss along α).
sig_check.svg: θ per upscaler on scikit-learn's sample photos (2x).
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from anet_lite.image import compare_upscalers
from anet_lite.merge import scan
from anet_lite.torch.digits import digits_batches, digits_pairs

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img")


def save(fig, name: str) -> None:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        f.write(buf.getvalue())
    plt.close(fig)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    batches = digits_batches()
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, (a, b) in digits_pairs().items():
        res = scan(a, b, batches)
        ax.plot(res.alphas, res.losses, marker="o", label=f"{name} (safe: {res.all_safe})")
    ax.set_xlabel("α  (merged = (1 − α)·A + α·B)")
    ax.set_ylabel("held-out loss")
    ax.set_title("anet-lite merge-scan: digits MLP pairs")
    ax.legend(fontsize=8)
    save(fig, "merge_scan.svg")

    rows = compare_upscalers()
    fig, ax = plt.subplots(figsize=(6, 3))
    names = sorted({r["image"] for r in rows})
    methods = [
        m
        for m in ("nearest", "bilinear", "bicubic", "lanczos")
        if any(r["method"] == m for r in rows)
    ]
    width = 0.8 / max(1, len(names))
    for i, img in enumerate(names):
        vals = [
            next(r["theta"] for r in rows if r["image"] == img and r["method"] == m)
            for m in methods
        ]
        ax.bar([j + i * width for j in range(len(methods))], vals, width, label=img)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(methods))], methods)
    ax.set_ylim(0.8, 1.01)
    ax.set_ylabel("θ (signature consistency)")
    ax.set_title("anet-lite sig-check: 2x upscalers")
    ax.legend(fontsize=8)
    save(fig, "sig_check.svg")


if __name__ == "__main__":
    main()
