"""Noise fingerprints: the spectral shape of a stream, at one fixed resolution.

A fingerprint is the share of a series' power in three octave bands, estimated the
Welch way (Welch 1967): the series is cut into segments of ``SEGMENT`` = 16 samples
with a hop of ``HOP`` = 8 (50 % overlap); each segment has its least-squares line
removed (training streams trend), is Hann-windowed and Fourier-transformed; the power
of frequency bins 1..8 (DC dropped) is summed into the bands

    low  = bin 1        (periods of ~16 samples)
    mid  = bins 2-3     (periods of 5-8 samples)
    high = bins 4-8     (periods of 2-4 samples)

and averaged over segments. The three band powers are divided by their sum, so the
fingerprint is a probability vector that describes the *shape* of the noise (white,
red, oscillating), not its level: the level is what the precursor z-score watches.

Because the resolution is fixed, two series of any lengths >= ``MIN_LENGTH`` compare.
Averaging segments and pooling bins into bands is what makes the estimate stable:
the raw periodogram of 64 samples has one degree of freedom pair per bin and two
draws of the same white noise look ~50 % different.

Similarity of two fingerprints p, q (``similarity``):

    theta = BC(p, q) ** (3 * beta) = exp(-3 * beta * D_B),   BC = sum_i sqrt(p_i q_i)

where D_B = -ln BC is the Bhattacharyya distance. theta is 1 for identical shapes,
symmetric, and in [0, 1]. beta is the sensitivity: with the default beta = 3, theta
falls below the seed's 0.6 threshold when D_B > 0.057, which fewer than 5 % of pairs
of independent 64-sample draws of the same process reach, while most white-noise vs
AR(1, phi=0.9) pairs do (tests/test_metrics.py and bench/theta_calibration.py report
the rates).
"""

from __future__ import annotations

import math
from operator import mul as _mul
from typing import Optional

import numpy as np

__all__ = [
    "BAND_EDGES",
    "HOP",
    "MIN_LENGTH",
    "N_BANDS",
    "SEGMENT",
    "StreamingFingerprint",
    "band_powers",
    "normalise",
    "segment_band_powers",
    "series_fingerprint",
    "similarity",
    "similarity_of_powers",
]

SEGMENT = 16
HOP = 8
MIN_LENGTH = SEGMENT
BAND_EDGES = (0, 1, 3, 8)  # over bins 1..8 (index 0 = bin 1)
N_BANDS = len(BAND_EDGES) - 1


def _segment_operator() -> np.ndarray:
    """Linear map from a raw 16-sample segment to its complex spectrum at bins 1..8."""
    t = np.arange(SEGMENT, dtype=np.float64)
    design = np.stack([np.ones(SEGMENT), t - t.mean()], axis=1)
    detrend = np.eye(SEGMENT) - design @ np.linalg.pinv(design)
    window = np.hanning(SEGMENT + 2)[1:-1]
    dft = np.fft.rfft(np.eye(SEGMENT), axis=0)  # (9, 16): column j = spectrum of e_j
    return ((dft * window[None, :]) @ detrend)[1:]  # drop DC -> (8, 16)


_OPERATOR = _segment_operator()
_BANDS = np.zeros((N_BANDS, SEGMENT // 2))
for _b, (_lo, _hi) in enumerate(zip(BAND_EDGES[:-1], BAND_EDGES[1:])):
    _BANDS[_b, _lo:_hi] = 1.0


_OPERATOR_T = _OPERATOR.T
_BANDS_T = _BANDS.T
_isfinite = np.isfinite
_add_reduce = np.add.reduce
_true_divide = np.true_divide
_square = np.square
_sqrt, _finite = math.sqrt, math.isfinite


def segment_band_powers(segments: np.ndarray) -> np.ndarray:
    """Band powers of each row of ``segments`` (shape (n, 16)) -> shape (n, 3), un-normalised."""
    spec = segments @ _OPERATOR.T
    power = spec.real**2 + spec.imag**2
    return power @ _BANDS.T


def band_powers(x: np.ndarray) -> Optional[np.ndarray]:
    """Mean band powers over the Welch segments of finite-only ``x``; None if shorter than 16."""
    n_seg = (len(x) - SEGMENT) // HOP + 1
    if n_seg < 1:
        return None
    # Align the segments on the most recent sample, so the newest data always counts.
    start = len(x) - ((n_seg - 1) * HOP + SEGMENT)
    idx = start + np.arange(n_seg)[:, None] * HOP + np.arange(SEGMENT)[None, :]
    return segment_band_powers(x[idx]).mean(axis=0)


def normalise(powers: np.ndarray, energy: float) -> Optional[np.ndarray]:
    """Band powers -> fingerprint (sums to 1); None for a series with no variation.

    ``energy`` is the mean square of the raw samples: power below 1e-20 of it is
    rounding error (a flat or perfectly linear series), not noise.
    """
    total = float(powers.sum())
    if not np.isfinite(total) or total <= 1e-20 * SEGMENT * energy or total <= 0.0:
        return None
    return powers / total


def series_fingerprint(x: np.ndarray) -> Optional[np.ndarray]:
    """Fingerprint of a finite 1-D float array (see module doc); None if < 16 samples or flat."""
    p = band_powers(x)
    return None if p is None else normalise(p, float(np.mean(x * x)))


def similarity(p: Optional[np.ndarray], q: Optional[np.ndarray], beta: float = 3.0) -> float:
    """theta in [0, 1] between two fingerprints; None means 'flat series' (no noise at all).

    Two flat series are the same (1.0); a flat series against a noisy one is not (0.0).
    """
    if p is None or q is None:
        return 1.0 if (p is None and q is None) else 0.0
    bc = float(np.sum(np.sqrt(p * q)))
    if not np.isfinite(bc) or bc <= 0.0:
        return 0.0
    if bc >= 1.0 - 1e-12:  # identical up to rounding
        return 1.0
    return float(min(1.0, max(0.0, bc ** (3.0 * beta))))


def similarity_of_powers(a: list, b: list, beta: float) -> float:
    """``similarity`` for two (band powers..., mean energy) lists, in plain Python floats.

    The streaming monitor's path (3 bands: cheaper than NumPy); same rules as
    ``normalise`` + ``similarity``.
    """
    nb = N_BANDS
    pa, pb = a[:nb], b[:nb]
    ta, tb = sum(pa), sum(pb)
    ea, eb = a[nb], b[nb]  # (0.0 if e < 0.0 else e: max(e, 0.0), NaN included)
    flat_a = not (ta > 1e-20 * SEGMENT * (0.0 if ea < 0.0 else ea) and ta > 0.0 and _finite(ta))
    flat_b = not (tb > 1e-20 * SEGMENT * (0.0 if eb < 0.0 else eb) and tb > 0.0 and _finite(tb))
    if flat_a or flat_b:
        return 1.0 if (flat_a and flat_b) else 0.0
    bc = sum(map(_sqrt, map(_mul, pa, pb))) / _sqrt(ta * tb)
    if not bc > 0.0:
        return 0.0
    if bc >= 1.0 - 1e-12:
        return 1.0
    v = bc ** (3.0 * beta)  # (min(1.0, max(0.0, v)) written out)
    v = v if v > 0.0 else 0.0
    return v if v < 1.0 else 1.0


def _segment_powers(seg: np.ndarray) -> tuple[np.ndarray, float]:
    """(band powers, mean square) of one segment of 16 samples (1-D): ``segment_band_powers``'
    steps (a 1-D operand is matmul's one-row matrix: the same products)."""
    spec = seg @ _OPERATOR_T
    powers = (_square(spec.real) + _square(spec.imag)) @ _BANDS_T  # (x**2 is square(x))
    return powers, float(seg @ seg) / SEGMENT


class StreamingFingerprint:
    """The fingerprint of the last ``window`` samples of a stream, updated every HOP samples.

    Each completed 16-sample segment (every 8 pushes) costs one tiny matrix product and
    lands in a fixed ring of segment band powers, so a push is O(1) amortised; sums are
    taken over the ring (no running-sum drift after a huge segment leaves). The same
    estimator as ``series_fingerprint``.
    """

    def __init__(self, window: int) -> None:
        if window < SEGMENT:
            raise ValueError(f"window must be >= {SEGMENT} samples, got {window}")
        self.n_segments = (int(window) - SEGMENT) // HOP + 1
        self.buf: list = []  # the last SEGMENT samples
        self.since = 0
        self.ring = np.zeros((self.n_segments, N_BANDS + 1))  # band powers + energy
        self.filled = 0
        self.pos = 0

    def push(self, x: float) -> Optional[np.ndarray]:
        """Add a sample; returns the new segment's band powers when one completes, else None."""
        buf = self.buf
        buf.append(x)
        if len(buf) > SEGMENT:
            del buf[0]
        since = self.since = self.since + 1
        if since < HOP or len(buf) < SEGMENT:
            return None
        self.since = 0
        seg = np.array(buf)
        if sum(map(abs, buf)) < 1e150:
            # Every sample finite and small (a nan/inf fails the test). |_OPERATOR| <= 1, so
            # band powers stay below 5e300 and energy below 1e300: nothing overflows (no
            # errstate needed) and both are finite (no check needed).
            powers, energy = _segment_powers(seg)
        else:
            with np.errstate(all="ignore"):  # huge samples overflow to inf, rejected below
                powers, energy = _segment_powers(seg)
            if not (_isfinite(powers).all() and _isfinite(energy)):
                return None  # overflowing samples are the precursor's business, not the shape's
        ring, pos = self.ring, self.pos
        ring[pos, :N_BANDS] = powers
        ring[pos, N_BANDS] = energy
        self.pos = (pos + 1) % self.n_segments
        filled, n = self.filled + 1, self.n_segments
        self.filled = n if n < filled else filled  # (min(filled, n))
        return powers

    @property
    def ready(self) -> bool:
        return self.filled >= self.n_segments

    def mean_powers(self) -> Optional[np.ndarray]:
        """Mean (band powers..., energy) over the segments in the window; None if none yet."""
        filled = self.filled
        if not filled:
            return None
        # = ring[:filled].mean(axis=0): the same two ufunc calls as numpy's mean, minus its
        # Python wrapper (this runs every HOP samples)
        ret = _add_reduce(self.ring[:filled] if filled < self.n_segments else self.ring, 0)
        return _true_divide(ret, filled, out=ret, casting="unsafe")

    def fingerprint(self) -> Optional[np.ndarray]:
        m = self.mean_powers()
        return None if m is None else normalise(m[:N_BANDS], max(float(m[N_BANDS]), 0.0))

    def state_dict(self) -> dict:
        return {
            "buf": list(self.buf),
            "since": self.since,
            "ring": self.ring.tolist(),
            "filled": self.filled,
            "pos": self.pos,
        }

    def load_state_dict(self, st: dict) -> None:
        self.buf = [float(v) for v in st["buf"]]
        self.since = int(st["since"])
        self.ring = np.asarray(st["ring"], dtype=np.float64).reshape(self.n_segments, N_BANDS + 1)
        self.filled, self.pos = int(st["filled"]), int(st["pos"])


_IMAGE_NAMES = (
    "IMAGE_BANDS",
    "image_fingerprint",
    "image_to_gray",
    "noise_residual",
    "signature_consistency",
)


def __getattr__(name: str) -> object:
    """The image fingerprints live in ``anet_lite.image``; their names stay importable here."""
    if name in _IMAGE_NAMES:
        from . import image

        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
