"""The seed README's naive metric formulas, as a new user would write them from its text.

Kept only so that tests can show each defect exists in the naive version and is gone
in anet_lite's. Not part of the package.
"""

from __future__ import annotations

import numpy as np


def theta_consistency(noise_seq, ref_seq, beta=3.0):
    a = np.asarray(noise_seq, float)
    b = np.asarray(ref_seq, float)
    pa = np.abs(np.fft.rfft(a - a.mean())) ** 2
    pb = np.abs(np.fft.rfft(b - b.mean())) ** 2
    pa, pb = pa / pa.sum(), pb / pb.sum()
    return float(np.exp(-beta * 0.5 * np.abs(pa - pb).sum()))  # shapes must match


def entropy_rate(values, window=32):
    x = np.asarray(values, float)

    def h(w):
        counts, _ = np.histogram(w, bins=8)  # each window binned on its own range
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    return h(x[-window:]) - h(x[-2 * window : -window])


def processivity(grad_norms, step_norms):
    g = np.asarray(grad_norms, float)
    s = np.asarray(step_norms, float)
    return float(g @ s / (np.linalg.norm(g) * np.linalg.norm(s)))


def two_second_precursor(series, rate_hz=10, window_sec=2.0, z=2.5):
    x = np.asarray(series, float)
    n = int(rate_hz * window_sec)
    zval = (x[-n:].mean() - x.mean()) / (x.std() + 1e-12)
    return bool(zval > z), float(zval)
