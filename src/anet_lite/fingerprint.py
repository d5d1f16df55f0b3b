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
from typing import Optional

import numpy as np

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
    ta, tb = sum(a[:nb]), sum(b[:nb])
    flat_a = not (ta > 1e-20 * SEGMENT * max(a[nb], 0.0) and ta > 0.0 and math.isfinite(ta))
    flat_b = not (tb > 1e-20 * SEGMENT * max(b[nb], 0.0) and tb > 0.0 and math.isfinite(tb))
    if flat_a or flat_b:
        return 1.0 if (flat_a and flat_b) else 0.0
    bc = sum(math.sqrt(x * y) for x, y in zip(a[:nb], b[:nb])) / math.sqrt(ta * tb)
    if not bc > 0.0:
        return 0.0
    if bc >= 1.0 - 1e-12:
        return 1.0
    return min(1.0, max(0.0, bc ** (3.0 * beta)))


def _segment_powers(seg: np.ndarray) -> tuple[np.ndarray, float]:
    """(band powers, mean square) of one (1, 16) segment: ``segment_band_powers``' steps."""
    spec = seg @ _OPERATOR_T
    powers = (spec.real**2 + spec.imag**2) @ _BANDS_T
    return powers[0], float(seg[0] @ seg[0]) / SEGMENT


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
        seg = np.asarray(buf)[None, :]  # (1, 16), as segment_band_powers sees it
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
        row = self.ring[self.pos]
        row[:N_BANDS] = powers
        row[N_BANDS] = energy
        self.pos = (self.pos + 1) % self.n_segments
        self.filled = min(self.filled + 1, self.n_segments)
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


# ---- images: signature-preserving super-resolution -------------------------------------------
#
# An image's noise fingerprint is the shape of its noise residual's spectrum, measured the same
# way for every image so that two images of the same size compare:
#
# 1. grayscale: 2-D arrays are taken as they are; (H, W, 3|4) arrays become luma
#    Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601; alpha dropped), in float64. PIL images are
#    read with ``np.asarray`` (other modes than L/F/I/RGB/RGBA converted to RGB first).
# 2. noise residual: R = Y - median3x3(Y), the median over each pixel's 3x3 neighbourhood with
#    edges mirrored (numpy only). A median removes edges and texture better than a blur of the
#    same size and keeps the sensor/compression grain, which is the signature.
# 3. spectrum: |FFT2(w * (R - mean R))|^2 with a separable Hann window w (no edge leakage).
# 4. bands: the radial frequency sqrt(fy^2 + fx^2) in cycles per pixel is cut into ``bands``
#    log-spaced bands between IMAGE_F_MIN = 1/64 and IMAGE_F_MAX = 0.5 (DC, the coarsest
#    structure and the corners beyond Nyquist on both axes are left out); the power is averaged
#    over the frequency bins in each band (a band with no bin, possible below 64 pixels, is 0)
#    and the band averages are divided by their sum.
#
# Multiplying an image by a constant multiplies every power by its square, so the fingerprint
# (and theta) is invariant to global brightness/contrast scaling (exactly, for float images;
# uint8 images are also rounded and clipped). A residual with no power is "flat" (None).

IMAGE_BANDS = 8
IMAGE_F_MIN = 1.0 / 64.0
IMAGE_F_MAX = 0.5
IMAGE_MIN_SIDE = 32
_IMAGE_EXTRA = "pip install 'anet-lite[image]' (Pillow)"


def _pillow():
    """The PIL.Image module, or ImportError naming the ``image`` extra."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - exercised only without Pillow
        raise ImportError(f"this needs Pillow: {_IMAGE_EXTRA}") from exc
    return Image


def image_to_gray(img, name: str = "img") -> np.ndarray:
    """``img`` (an (H, W) or (H, W, 3|4) array, or a PIL image) as float64 luma.

    Errors (TypeError/ValueError) name the argument as ``name``.
    """
    if hasattr(img, "mode") and hasattr(img, "convert") and hasattr(img, "size"):
        img = np.asarray(img if img.mode in ("L", "F", "I", "RGB", "RGBA") else img.convert("RGB"))
    try:
        a = np.asarray(img)
    except Exception as exc:
        raise TypeError(f"{name} must be an image array or a PIL image: {exc}") from None
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    elif a.ndim != 2:
        raise ValueError(
            f"{name} must be (H, W) grayscale or (H, W, 3|4) color, got shape {a.shape}"
        )
    a = np.asarray(a, dtype=np.float64)
    if min(a.shape) < IMAGE_MIN_SIDE:
        raise ValueError(
            f"{name} is too small: {a.shape[1]}x{a.shape[0]} pixels, "
            f"need at least {IMAGE_MIN_SIDE} on each side"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or infinite pixels")
    return a


def noise_residual(gray: np.ndarray) -> np.ndarray:
    """``gray - median3x3(gray)`` (edges mirrored): the image's noise, structure removed."""
    p = np.pad(gray, 1, mode="reflect")
    h, w = gray.shape
    stack = np.stack([p[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    return gray - np.median(stack, axis=0)


def _band_index(shape, bands: int) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    r = np.sqrt(fy * fy + fx * fx)
    edges = np.geomspace(IMAGE_F_MIN, IMAGE_F_MAX, bands + 1)
    idx = np.searchsorted(edges, r, side="right") - 1  # band b: edges[b] <= r < edges[b+1]
    idx[(r < IMAGE_F_MIN) | (r >= IMAGE_F_MAX)] = -1
    return idx


def image_fingerprint(img, bands: int = IMAGE_BANDS) -> Optional[np.ndarray]:
    """Radially averaged power spectrum of ``img``'s noise residual in ``bands`` log bands.

    A probability vector (sums to 1) of length ``bands``; None for an image with no noise at
    all (e.g. constant). See the comment block above for the exact recipe.
    """
    if isinstance(bands, bool) or not isinstance(bands, (int, np.integer)) or bands < 2:
        raise ValueError(f"bands must be an int >= 2, got {bands!r}")
    gray = image_to_gray(img, "img")
    res = noise_residual(gray)
    res = res - res.mean()
    energy = float(np.mean(res * res))
    h, w = res.shape
    win = np.hanning(h + 2)[1:-1][:, None] * np.hanning(w + 2)[1:-1][None, :]
    spec = np.fft.rfft2(res * win)
    power = (spec.real**2 + spec.imag**2).ravel()
    idx = _band_index(res.shape, int(bands)).ravel()
    keep = idx >= 0
    sums = np.bincount(idx[keep], weights=power[keep], minlength=bands)
    counts = np.bincount(idx[keep], minlength=bands)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    total = float(means.sum())
    if not np.isfinite(total) or total <= 0.0 or total <= 1e-20 * energy * h * w:
        return None
    return means / total


def signature_consistency(original, upscaled, beta: float = 3.0, bands: int = IMAGE_BANDS) -> float:
    """theta in [0, 1]: does ``upscaled`` keep ``original``'s noise signature?

    Both are converted to grayscale (luma, see above). If ``upscaled`` is larger, it is brought
    back to ``original``'s size with Pillow's BOX filter (area averaging, in float32 mode "F"):
    each original pixel is compared with the mean of the upscaled pixels covering it, which is
    what a sensor pixel integrates, adds no ringing or sharpening of its own (LANCZOS would, and
    would blur the comparison with its own kernel), and undoes pixel replication exactly. Then
    ``similarity`` (the Bhattacharyya form used for streams, same ``beta``) of the two
    ``image_fingerprint`` vectors. 1 = the same noise shape; below ~0.6 the signature is lost.

    ``upscaled`` must be at least as large as ``original`` on both sides, with the same aspect
    ratio within 2 %; otherwise ValueError naming ``upscaled``. Pillow is needed only when the
    sizes differ.
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    a = image_to_gray(original, "original")
    b = image_to_gray(upscaled, "upscaled")
    (h, w), (uh, uw) = a.shape, b.shape
    if uh < h or uw < w:
        raise ValueError(
            f"upscaled ({uw}x{uh}) must be at least as large as original ({w}x{h}) on both sides"
        )
    sy, sx = uh / h, uw / w
    if abs(sy / sx - 1.0) > 0.02:
        raise ValueError(
            f"upscaled ({uw}x{uh}) does not keep original's ({w}x{h}) aspect ratio "
            f"(scale {sx:.3f} wide vs {sy:.3f} high)"
        )
    if b.shape != a.shape:
        Image = _pillow()
        im = Image.fromarray(b.astype(np.float32))  # mode "F"
        b = np.asarray(im.resize((w, h), resample=Image.BOX), dtype=np.float64)
    return similarity(image_fingerprint(a, bands), image_fingerprint(b, bands), beta)
