"""Local-only data for the detection benchmark (no downloads).

* Tabular / image classification: scikit-learn's bundled datasets (``load_digits``,
  ``load_breast_cancer``, ``load_wine``), standardised, as float32 numpy arrays.
* Character language modelling: the Python standard library's own source text. The
  file choice is deterministic (sorted top-level ``*.py`` files of
  ``os.path.dirname(os.__file__)``), bytes are clipped to 7-bit ASCII (vocab 128).

Nothing here imports torch.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Tuple

import numpy as np

VOCAB = 128


@cache
def classification(name: str) -> Tuple[np.ndarray, np.ndarray, int]:
    """Return ``(X, y, n_classes)`` for a bundled scikit-learn dataset."""
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }[name]
    d = loader()
    X = np.asarray(d.data, dtype=np.float64)
    # digits: pixel range 0..16 -> 0..1 (keeps the 8x8 image meaning); others standardised
    X = X / 16.0 if name == "digits" else (X - X.mean(0)) / (X.std(0) + 1e-8)
    y = np.asarray(d.target, dtype=np.int64)
    return X.astype(np.float32), y, int(y.max() + 1)


@cache
def stdlib_text(max_bytes: int = 600_000, min_file_bytes: int = 8_000) -> np.ndarray:
    """Token ids (uint8, < 128) from the standard library's own .py sources.

    Files: sorted top-level ``*.py`` files in ``os.path.dirname(os.__file__)`` whose size
    is at least ``min_file_bytes``, concatenated in sorted order until ``max_bytes``.
    """
    root = os.path.dirname(os.__file__)
    names = sorted(
        n
        for n in os.listdir(root)
        if n.endswith(".py") and os.path.getsize(os.path.join(root, n)) >= min_file_bytes
    )
    chunks = []
    total = 0
    for n in names:
        with open(os.path.join(root, n), "rb") as fh:
            b = fh.read()
        chunks.append(b)
        total += len(b)
        if total >= max_bytes:
            break
    arr = np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8).copy()
    arr[arr >= VOCAB] = ord("?")
    return arr
