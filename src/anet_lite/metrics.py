"""The seed's metric API as pure functions over sequences (NumPy only).

Signatures are the seed README's contract; the definitions are fixed where the seed's
naive formulas were wrong (README.md, "How each metric is defined", says how and why).
Every function raises TypeError/ValueError naming the argument for bad input and never
returns a non-finite number.
"""

from __future__ import annotations

import functools
import math
from typing import List, Sequence, Tuple

import numpy as np

from . import fingerprint as _fp
from ._validate import as_series, finite, positive
from .verdict import Snapshot

Z_CAP = 1000.0
"""|z| is clipped here so that z is always finite; a non-finite loss reports +Z_CAP."""

_MAD_TO_SIGMA = 1.4826


def theta_consistency(
    noise_seq: Sequence[float], ref_seq: Sequence[float], beta: float = 3.0
) -> float:
    """Similarity (0..1, 1 = same) of the noise fingerprints of two series.

    Both series need >= 16 finite values (non-finite values are dropped first); their
    lengths may differ. The fingerprint is the octave-band shape of a Welch spectrum at a
    fixed 16-sample resolution (see ``anet_lite.fingerprint``); theta = BC ** (3 * beta)
    with BC the Bhattacharyya coefficient of the two fingerprints. Amplitude-invariant:
    it compares how the noise is shaped in time, not how big it is. A series with no
    variation has no fingerprint: two flat series give 1.0, flat vs. noisy 0.0.
    """
    a = as_series(noise_seq, "noise_seq")
    b = as_series(ref_seq, "ref_seq")
    beta_v = positive(beta, "beta")
    a = a[np.isfinite(a)]
    b = b[np.isfinite(b)]
    for name, arr in (("noise_seq", a), ("ref_seq", b)):
        if len(arr) < _fp.MIN_LENGTH:
            raise ValueError(
                f"{name} needs at least {_fp.MIN_LENGTH} finite values for a fingerprint, "
                f"got {len(arr)}"
            )
    with np.errstate(all="ignore"):
        return _fp.similarity(_fp.series_fingerprint(a), _fp.series_fingerprint(b), beta_v)


def _entropy_bins(window: int) -> int:
    return int(min(16, max(2, round(math.sqrt(window)))))


def entropy_rate(values: Sequence[float], window: int = 32) -> float:
    """Ṡ: change of the loss's disorder between the last two windows, in [-1, 1].

    Non-finite values are dropped; until 2 * window finite values exist the result is
    0.0. Each window has its own least-squares line removed (a trend is not disorder);
    the residuals of both windows are binned on *shared* edges (so a wider spread fills
    more bins) into round(sqrt(window)) bins (2..16), and Ṡ = (H_last - H_previous) /
    ln(bins), the Shannon-entropy difference as a fraction of the maximum. > 0 means
    the loss got more erratic, < 0 calmer.
    """
    x = as_series(values, "values")
    w = int(positive(window, "window", integer=True))
    if w < 2:
        raise ValueError(f"window must be >= 2, got {window!r}")
    x = x[np.isfinite(x)]
    if len(x) < 2 * w:
        return 0.0
    return _entropy_rate_core(x[-2 * w : -w], x[-w:], _entropy_bins(w))


def entropy_rate_of_windows(prev: np.ndarray, last: np.ndarray) -> float:
    """Ṡ of two equal-length windows of finite float64 values, in [-1, 1]: what
    ``entropy_rate`` computes after its checks (the Monitor's per-step path, which holds
    its windows already checked)."""
    return _entropy_rate_core(prev, last, _entropy_bins(len(prev)))


@functools.lru_cache(maxsize=32)
def _centred_time(n: int) -> Tuple[np.ndarray, float]:
    """Centred sample index 0..n-1 and its squared norm (cached: the Monitor asks for the
    same length every time)."""
    t = np.arange(n, dtype=np.float64)
    t -= t.mean()
    t.setflags(write=False)
    return t, float(t @ t)


_add_reduce, _min_reduce, _max_reduce = np.add.reduce, np.minimum.reduce, np.maximum.reduce


def _detrended(y: np.ndarray) -> np.ndarray:
    t, denom = _centred_time(len(y))
    # (y.mean() is this sum / count, minus its wrapper; Python floats: the same IEEE
    # operations as NumPy's scalars, without their overhead)
    yc = y - float(_add_reduce(y)) / len(y)
    slope = float(t @ yc) / denom if denom > 0 else 0.0
    return yc - slope * t


@functools.lru_cache(maxsize=32)
def _plogp(n: int) -> Tuple[float, ...]:
    """p * log(p) for p = c / n, c = 0..n (0.0 at c = 0), as NumPy computes each term of
    an entropy over n samples (cached: the Monitor's windows have one length)."""
    p = np.arange(1, n + 1) / n
    return (0.0, *(p * np.log(p)).tolist())


def _pairwise_sum(v: Sequence[float]) -> float:
    """``np.add.reduce`` of a short float64 array, in NumPy's order (pairwise: 8
    accumulators from 8 values on), bit for bit, without building the array."""
    n = len(v)
    if n < 8:
        s = -0.0
        for x in v:
            s += x
        return s
    r = list(v[:8])
    i = 8
    while i + 8 <= n:
        for j in range(8):
            r[j] += v[i + j]
        i += 8
    s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for x in v[i:]:
        s += x
    return s


def _bin_counts(c: List[int]) -> List[int]:
    """Counts per searchsorted(edges, side="right") index 0..bins + 1 -> counts per bin
    0..bins - 1 (the index - 1, clipped: below the first edge joins the first bin, at the
    last edge the last bin)."""
    out = c[1:-1]
    out[0] += c[0]
    out[-1] += c[-1]
    return out


def _entropy_of_counts(counts: Sequence[int], n: int) -> float:
    """Shannon entropy (nats) of ``n`` samples binned as ``counts``: the same float as
    ``-(p * np.log(p)).sum()`` over the non-empty bins, p = counts / n."""
    t = _plogp(n)
    return -_pairwise_sum([t[c] for c in counts if c])


@np.errstate(all="ignore")
def _entropy_rate_core(prev: np.ndarray, last: np.ndarray, bins: int) -> float:
    r_prev, r_last = _detrended(prev), _detrended(last)
    r = np.concatenate((r_prev, r_last))
    lo, hi = float(_min_reduce(r)), float(_max_reduce(r))  # (r.min(), r.max(), no wrappers)
    x = np.concatenate((prev, last))
    xlo, xhi = _min_reduce(x), _max_reduce(x)
    if lo - hi == lo - hi and xlo - xhi == xlo - xhi:  # (all finite: no NaN, no inf)
        scale = float(xhi if xhi >= -xlo else -xlo)  # (= max |value|: exact)
    else:  # as Python's min / max over the halves read NaNs (the order matters then)
        lo = float(min(r_prev.min(), r_last.min()))
        hi = float(max(r_prev.max(), r_last.max()))
        scale = max(float(np.abs(prev).max()), float(np.abs(last).max()))
    if not (hi - lo > 1e-10 * scale and hi - lo > 1e-300):  # flat up to rounding
        return 0.0
    # = np.linspace(lo, hi, bins + 1): i * step + lo, the last edge hi (step > 0 here)
    step = (hi - lo) / bins
    edges = [i * step + lo for i in range(bins)]
    edges.append(hi)
    # one searchsorted over both windows (the same bins as two separate calls); the
    # last window's indices shifted past the first's bins, so one bincount counts both
    idx = np.array(edges).searchsorted(r, "right")  # 0..bins + 1
    n_prev, k = len(r_prev), bins + 2
    idx[n_prev:] += k
    c = np.bincount(idx, minlength=2 * k).tolist()
    h_prev = _entropy_of_counts(_bin_counts(c[:k]), n_prev)
    h_last = _entropy_of_counts(_bin_counts(c[k:]), len(r_last))
    v = (h_last - h_prev) / math.log(bins)  # (a Python float: clipped without NumPy)
    return 1.0 if v > 1.0 else (-1.0 if v < -1.0 else v)


def processivity(grad_norms: Sequence[float], step_norms: Sequence[float]) -> float:
    """P in [-1, 1]: do update sizes follow gradient sizes?

    P is the Pearson correlation of log(grad_norm) and log(step_norm) over the pairs
    where both are finite and > 0 — the seed's cosine taken after centering the logs,
    which is what lets it go negative. +1: updates grow and shrink with the gradient
    (plain SGD); ~0: update size ignores gradient size (Adam-style normalisation, or a
    schedule dominating); < 0: updates grow while gradients shrink or the reverse. Fewer
    than 3 usable pairs, or a constant series, give 0.0 (no information).
    """
    g = as_series(grad_norms, "grad_norms")
    s = as_series(step_norms, "step_norms")
    if len(g) != len(s):
        raise ValueError(
            f"grad_norms and step_norms must have the same length, got {len(g)} and {len(s)}"
        )
    for name, arr in (("grad_norms", g), ("step_norms", s)):
        bad = np.flatnonzero(arr < 0)
        if bad.size:
            raise ValueError(
                f"{name} are norms and must be >= 0, got {arr[bad[0]]!r} at index {bad[0]}"
            )
    return _processivity_core(g, s)


@np.errstate(all="ignore")
def _processivity_core(g: np.ndarray, s: np.ndarray) -> float:
    ok = np.isfinite(g) & np.isfinite(s) & (g > 0) & (s > 0)
    if ok.sum() < 3:
        return 0.0
    lg, ls = np.log(g[ok]), np.log(s[ok])
    lg -= lg.mean()
    ls -= ls.mean()
    den = math.sqrt(float(lg @ lg) * float(ls @ ls))
    if not den > 1e-300:
        return 0.0
    return float(np.clip(float(lg @ ls) / den, -1.0, 1.0))


def f_total(s_dot: float, p: float, w_s: float = 1.0, w_p: float = 1.0) -> float:
    """F_Total = w_s * Ṡ + w_p * P (the seed's operational score; units of its inputs)."""
    return finite(w_s, "w_s") * finite(s_dot, "s_dot") + finite(w_p, "w_p") * finite(p, "p")


def two_second_precursor(
    series: Sequence[float], rate_hz: float = 10, window_sec: float = 2.0, z: float = 2.5
) -> Tuple[bool, float]:
    """Online z-score alert on the last ``window_sec`` seconds sampled at ``rate_hz``.

    n = max(1, round(rate_hz * window_sec)) most recent values form the window; the
    baseline is the max(4n, 16) values just before it (older history is ignored, so old
    transients do not count). Values are taken in log space when all are > 0 (loss
    spikes are multiplicative). z = (mean(window) - median(baseline)) / sigma, with sigma
    the robust noise scale 1.4826 * MAD(diff(baseline)) / sqrt(2) — the step-to-step
    jitter, which a trend does not inflate — floored at 1e-3 (relative). Returns
    (z > threshold, z) with z clipped to [-1000, 1000]. A non-finite value inside the
    window is an alert with z = +1000. Fewer than 3 finite baseline values: (False, 0.0).
    """
    x = as_series(series, "series")
    rate = positive(rate_hz, "rate_hz")
    wsec = positive(window_sec, "window_sec")
    thr = finite(z, "z")
    n = max(1, round(rate * wsec))
    return _precursor_core(x, n, thr)


@np.errstate(all="ignore")
def _precursor_core(x: np.ndarray, n: int, thr: float) -> Tuple[bool, float]:
    recent = x[-n:]
    if not np.all(np.isfinite(recent)):
        return True, Z_CAP
    base = x[:-n][-max(4 * n, 16) :]
    base = base[np.isfinite(base)]
    if len(base) < 3:
        return False, 0.0
    log_space = bool(np.all(base > 0) and np.all(recent > 0))
    if log_space:
        base, recent = np.log(base), np.log(recent)
    center = float(np.median(base))
    d = np.diff(base)
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    floor = 1e-3 if log_space else 1e-3 * abs(center) + 1e-12
    zval = (float(np.mean(recent)) - center) / max(sigma, floor)
    if not math.isfinite(zval):
        zval = Z_CAP if zval > 0 else -Z_CAP
    zval = float(min(Z_CAP, max(-Z_CAP, zval)))
    return zval > thr, zval


def _finite_tail(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def snapshot(
    loss_hist: Sequence[float],
    grad_norms: Sequence[float],
    step_norms: Sequence[float],
    noise_seq: Sequence[float],
    ref_seq: Sequence[float],
    w_s: float = 0.7,
    w_p: float = 0.3,
    rate_hz: float = 5,
) -> Snapshot:
    """All seed metrics at once over the given windows -> ``Snapshot``.

    Never raises on numeric input (finite or not); short input gives the warm-up values
    (theta 1.0, Ṡ 0.0, P 0.0, precursor False, z 0.0, status "warming_up"). grad_norms
    and step_norms of different lengths are aligned on their most recent values.
    status: "collapsed" (non-finite loss in the precursor window), "precursor" (z above
    2.5), "drifting" (theta < 0.6), "warming_up", else "healthy"; alert is True for the
    first three — the seed loop's ``precursor or theta < 0.6``.
    """
    loss = as_series(loss_hist, "loss_hist", allow_empty=True)
    g = as_series(grad_norms, "grad_norms", allow_empty=True)
    s = as_series(step_norms, "step_norms", allow_empty=True)
    noise = as_series(noise_seq, "noise_seq", allow_empty=True)
    ref = as_series(ref_seq, "ref_seq", allow_empty=True)
    ws, wp = finite(w_s, "w_s"), finite(w_p, "w_p")
    n = max(1, round(positive(rate_hz, "rate_hz") * 2.0))

    with np.errstate(all="ignore"):
        return _snapshot(loss, g, s, noise, ref, ws, wp, n)


def _snapshot(
    loss: np.ndarray,
    g: np.ndarray,
    s: np.ndarray,
    noise: np.ndarray,
    ref: np.ndarray,
    ws: float,
    wp: float,
    n: int,
) -> Snapshot:
    noise_f, ref_f = _finite_tail(noise), _finite_tail(ref)
    theta_ready = len(noise_f) >= _fp.MIN_LENGTH and len(ref_f) >= _fp.MIN_LENGTH
    theta = (
        _fp.similarity(_fp.series_fingerprint(noise_f), _fp.series_fingerprint(ref_f), 3.0)
        if theta_ready
        else 1.0
    )
    loss_f = _finite_tail(loss)
    sdot = (
        _entropy_rate_core(loss_f[-64:-32], loss_f[-32:], _entropy_bins(32))
        if len(loss_f) >= 64
        else 0.0
    )
    m = min(len(g), len(s))
    proc = _processivity_core(g[len(g) - m :], s[len(s) - m :]) if m else 0.0
    if len(loss):
        pre, zval = _precursor_core(loss, n, 2.5)
    else:
        pre, zval = False, 0.0
    precursor_ready = len(loss_f) >= n + 3
    collapsed = bool(len(loss) and not np.all(np.isfinite(loss[-n:])))
    if collapsed:
        status = "collapsed"
    elif pre:
        status = "precursor"
    elif theta_ready and theta < 0.6:
        status = "drifting"
    elif not (precursor_ready and theta_ready):
        status = "warming_up"
    else:
        status = "healthy"
    alert = status in ("collapsed", "precursor", "drifting")
    ft = ws * sdot + wp * proc
    return Snapshot(
        theta=theta,
        sdot=sdot,
        proc=proc,
        f_total=ft,
        precursor=bool(pre),
        zscore=zval,
        status=status,
        alert=alert,
        evidence={"theta": theta, "sdot": sdot, "proc": proc, "f_total": ft, "precursor_z": zval},
    )


__all__ = [
    "Z_CAP",
    "entropy_rate",
    "entropy_rate_of_windows",
    "f_total",
    "processivity",
    "snapshot",
    "theta_consistency",
    "two_second_precursor",
]
