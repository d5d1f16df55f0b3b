"""Baseline detectors for the anet-lite detection benchmark, and the Detector interface.

Detector interface
------------------
A detector is any object with a ``name`` and an ``update`` method::

    class Detector(Protocol):
        name: str
        def update(self, rec: dict) -> bool: ...

``update`` is called once per training step, in step order, with one row of a run::

    rec = {
        "step": int,            # 0, 1, 2, ... (contiguous within a run)
        "time": float,          # wall seconds since the start of the run
        "lr": float,            # learning rate used at this step
        "loss": float,          # training (batch) loss, may be nan/inf
        "grad_norm": float,     # global L2 norm of the gradient, before clipping
        "update_norm": float,   # ||theta_after - theta_before||
        "param_norm": float,    # ||theta_after||
        "processivity": float,  # cos(-g, delta theta) of this step
        "noise": float,         # ||g - m||, m = EMA(0.9) of the gradients
        "max_abs_grad": float,  # max |g_i|
        "event": str,           # "" or the name of a benign event / fault at this step
    }

and returns ``True`` when the detector raises an alarm at this step. Numbers may be
``nan``/``inf`` (a diverged run); a column that the log does not have at all is ``None``
(the real public logs only have step, time and loss). A detector must not read
``event`` to decide (it is there for bookkeeping and is blanked by the scorer).
Detectors hold their own state; the scorer builds a fresh instance per run from a
factory (a zero-argument callable), see ``BASELINES``. Extra detectors (e.g. the product's
``Monitor`` adapted in ``bench/detection/anet_detector.py``) are plugged in the same way:
a module attribute that is either one factory or a ``dict[str, factory]``.

Baselines (formulas from shared/anchors.md; written for this benchmark)
------------------------------------------------------------------------------
===================  ========================================================  =========
name                 rule                                                      non-finite
===================  ========================================================  =========
seed_loop            seed README loop from step 100: precursor (z of the mean    no
                     of the last 10 of the last 64 losses vs mean/std of the
                     other 54, z > 2.5) OR theta < 0.6 (naive raw periodogram
                     of the last 64 noise values vs the first 64 noise values)
loss_threshold       loss > 2 x the best (lowest) 10-step running mean          yes
zclip                ZClip z-score on grad_norm, EMA alpha 0.97, 25 warm-up       no
                     steps, z > 2.5, EMA updated with the clipped value
page_hinkley_loss    river ``drift.PageHinkley()`` (defaults) on the loss         no
page_hinkley_up      the same with ``mode="up"``: river's default ``mode="both"``  no
                     also flags a loss that keeps falling, i.e. every healthy run
adwin_log_gradnorm   river ``drift.ADWIN()`` (defaults) on log(grad_norm)         no
olmo_spike_loss      |loss - mean| > 7 sigma of the previous <=1000 losses        no
olmo_spike_gradnorm  same on grad_norm                                           no
megatron_10x         loss >= 10 x max|loss| of the first 100 values; or a         yes
                     non-finite loss / grad_norm
lightning_spike      loss > 2 x mean of the previous 10 losses (warm-up 1),      yes
                     or non-finite loss (``finite_only=True``)
===================  ========================================================  =========

"non-finite = yes" means the baseline alarms on a NaN/inf loss because the original
raises on it (Megatron, Lightning) or because the natural comparison does
(``not loss <= threshold``). The others ignore non-finite values (a NaN comparison is
False; river detectors are not fed non-finite values, which would poison their state).
"""

from __future__ import annotations

import math
from collections import deque
from functools import partial
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

try:  # Python 3.8+: typing.Protocol
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]


class Detector(Protocol):
    name: str

    def update(self, rec: dict) -> bool: ...


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- seed loop
def naive_theta(noise_seq, ref_seq, beta: float = 3.0) -> float:
    """Seed-naive theta: raw periodograms of the mean-removed series, total variation."""
    a = np.asarray(noise_seq, dtype=float)
    b = np.asarray(ref_seq, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    pa = np.abs(np.fft.rfft(a - a.mean())) ** 2
    pb = np.abs(np.fft.rfft(b - b.mean())) ** 2
    sa, sb = pa.sum(), pb.sum()
    if not (sa > 0 and sb > 0):  # constant or non-finite series: no opinion
        return math.nan
    return float(math.exp(-beta * 0.5 * float(np.abs(pa / sa - pb / sb).sum())))


def naive_precursor(series, rate_hz: float = 5.0, window_sec: float = 2.0) -> float:
    """z of the mean of the last rate_hz*window_sec values vs mean/std of the rest."""
    x = np.asarray(series, dtype=float)
    n = int(rate_hz * window_sec)
    if len(x) <= n + 1:
        return math.nan
    recent, rest = x[-n:], x[:-n]
    with np.errstate(all="ignore"):
        return float((recent.mean() - rest.mean()) / (rest.std() + 1e-12))


class SeedLoop:
    """The seed README's loop: warm-up 100 steps, then precursor OR theta < 0.6 each step."""

    name = "seed_loop"

    def __init__(self, warmup: int = 100, window: int = 64, z: float = 2.5, theta: float = 0.6):
        self.warmup, self.window, self.z, self.theta_thr = warmup, window, z, theta
        self.loss: Deque[float] = deque(maxlen=window)
        self.noise: Deque[float] = deque(maxlen=window)
        self.ref: List[float] = []
        self.t = 0

    def update(self, rec: dict) -> bool:
        self.t += 1
        self.loss.append(_f(rec.get("loss")))
        nz = _f(rec.get("noise"))
        self.noise.append(nz)
        if self.t < self.warmup:
            self.ref.append(nz)
            return False
        z = naive_precursor(self.loss)
        th = math.nan
        if len(self.noise) == self.window and len(self.ref) >= self.window:
            th = naive_theta(list(self.noise), self.ref[: self.window])
        return bool(z > self.z) or bool(th < self.theta_thr)


# ----------------------------------------------------------------------------- loss threshold
class LossThreshold:
    """Alarm when loss > 2 x the best (lowest) running mean over 10 steps; NaN alarms."""

    name = "loss_threshold"

    def __init__(self, window: int = 10, factor: float = 2.0):
        self.buf: Deque[float] = deque(maxlen=window)
        self.factor = factor
        self.best = math.inf

    def update(self, rec: dict) -> bool:
        x = _f(rec.get("loss"))
        if not math.isfinite(x):
            return True
        alarm = self.best < math.inf and not x <= self.factor * self.best
        self.buf.append(x)
        if len(self.buf) == self.buf.maxlen:
            self.best = min(self.best, sum(self.buf) / len(self.buf))
        return alarm


class LossThresholdCalibrated(LossThreshold):
    """``loss_threshold`` with its factor fit by ``calibrate`` (score.py's optional hook):
    the smallest factor of ``GRID`` that alarms on at most ``BUDGET`` of the healthy runs
    it is given. It uses healthy runs only (``calibrate_uses_faults = False``), so under
    ``--lomo`` its fault scores are those of a fit on every healthy run; its healthy
    scores come from a fit on the other fold.
    Uncalibrated (plain score) it is ``loss_threshold``."""

    name = "loss_threshold_cal"
    calibrate_uses_faults = False
    GRID = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    BUDGET = 0.03

    @classmethod
    def calibrate(cls, healthy, faults) -> Callable[[], LossThresholdCalibrated]:
        """``healthy`` / ``faults``: lists of (manifest entry, rows as a detector sees them)."""
        for factor in cls.GRID:
            alarmed = 0
            for _, recs in healthy:
                det = cls(factor=factor)
                alarmed += any(det.update(r) for r in recs)
            if alarmed <= cls.BUDGET * len(healthy):
                break
        return partial(cls, factor=factor)


# ----------------------------------------------------------------------------- ZClip
class ZClip:
    """ZClip's z-score spike rule on the global grad norm (arXiv 2504.02507)."""

    name = "zclip"

    def __init__(self, alpha: float = 0.97, z_thresh: float = 2.5, warmup: int = 25):
        self.alpha, self.z_thresh, self.warmup = alpha, z_thresh, warmup
        self.buf: List[float] = []
        self.mu: Optional[float] = None
        self.var = 0.0

    def update(self, rec: dict) -> bool:
        g = _f(rec.get("grad_norm"))
        if not math.isfinite(g):
            return False
        if self.mu is None:
            self.buf.append(g)
            if len(self.buf) >= self.warmup:
                self.mu = float(np.mean(self.buf))
                self.var = float(np.var(self.buf))
            return False
        sd = math.sqrt(max(self.var, 0.0))
        z = (g - self.mu) / (sd + 1e-6)
        spike = z > self.z_thresh
        clipped = g
        if spike:  # adaptive threshold mu + z_thresh * sd / (z / z_thresh)
            clipped = min(g, self.mu + self.z_thresh * sd / (z / self.z_thresh))
        a = self.alpha
        self.mu = a * self.mu + (1 - a) * clipped
        self.var = a * self.var + (1 - a) * (clipped - self.mu) ** 2
        return bool(spike)


# ----------------------------------------------------------------------------- river
class RiverDrift:
    """A river drift detector with default parameters, fed one column (finite values only)."""

    def __init__(self, name: str, ctor: Callable, column: str, log: bool = False):
        self.name = name
        self.det = ctor()
        self.column, self.log = column, log

    def update(self, rec: dict) -> bool:
        x = _f(rec.get(self.column))
        if self.log:
            x = math.log(x) if x > 0 else math.nan
        if not math.isfinite(x):
            return False
        self.det.update(x)
        return bool(self.det.drift_detected)


def _page_hinkley(name: str = "page_hinkley_loss", **kw):
    from river import drift

    return RiverDrift(name, partial(drift.PageHinkley, **kw), "loss")


def _adwin(**kw):
    from river import drift

    return RiverDrift("adwin_log_gradnorm", partial(drift.ADWIN, **kw), "grad_norm", log=True)


# ----------------------------------------------------------------------------- OLMo 2
class OlmoSpike:
    """OLMo 2 spike: value more than 7 sigma from the rolling mean of the previous 1000."""

    def __init__(self, column: str = "loss", window: int = 1000, k: float = 7.0, min_n: int = 20):
        self.name = f"olmo_spike_{'loss' if column == 'loss' else 'gradnorm'}"
        self.column, self.k, self.min_n = column, k, min_n
        self.buf: Deque[float] = deque(maxlen=window)
        self.s = 0.0
        self.s2 = 0.0

    def update(self, rec: dict) -> bool:
        x = _f(rec.get(self.column))
        if not math.isfinite(x):
            return False
        alarm = False
        n = len(self.buf)
        if n >= self.min_n:
            mean = self.s / n
            var = max(self.s2 / n - mean * mean, 0.0)
            alarm = abs(x - mean) > self.k * math.sqrt(var)
        if n == self.buf.maxlen:
            old = self.buf[0]
            self.s -= old
            self.s2 -= old * old
        self.buf.append(x)
        self.s += x
        self.s2 += x * x
        return bool(alarm)


# ----------------------------------------------------------------------------- Megatron
class Megatron10x:
    """Megatron-LM rerun machine: NaN/inf is fatal; spiky = loss >= 10 x max|first 100|."""

    name = "megatron_10x"

    def __init__(self, n_ref: int = 100, factor: float = 10.0):
        self.n_ref, self.factor = n_ref, factor
        self.n = 0
        self.ref_max = 0.0

    def update(self, rec: dict) -> bool:
        x = _f(rec.get("loss"))
        g = rec.get("grad_norm")
        if not math.isfinite(x) or (g is not None and not math.isfinite(_f(g))):
            return True
        if self.n < self.n_ref:
            self.n += 1
            self.ref_max = max(self.ref_max, abs(x))
            return False
        return x >= self.factor * self.ref_max


# ----------------------------------------------------------------------------- Lightning
class LightningSpike:
    """Lightning Fabric SpikeDetection-style: loss > 2 x mean of the previous 10 (warm-up 1),
    non-finite losses alarm (``finite_only=True``)."""

    name = "lightning_spike"

    def __init__(self, window: int = 10, warmup: int = 1, rtol: float = 2.0):
        self.buf: Deque[float] = deque(maxlen=window)
        self.warmup, self.rtol = warmup, rtol
        self.n = 0

    def update(self, rec: dict) -> bool:
        x = _f(rec.get("loss"))
        self.n += 1
        if not math.isfinite(x):
            return True
        alarm = False
        if self.n > self.warmup and self.buf:
            alarm = x > self.rtol * (sum(self.buf) / len(self.buf))
        self.buf.append(x)
        return bool(alarm)


BASELINES: Dict[str, Callable[[], Detector]] = {
    "seed_loop": SeedLoop,
    "loss_threshold": LossThreshold,
    "zclip": ZClip,
    "page_hinkley_loss": _page_hinkley,
    "page_hinkley_up": lambda: _page_hinkley("page_hinkley_up", mode="up"),
    "adwin_log_gradnorm": _adwin,
    "olmo_spike_loss": lambda: OlmoSpike("loss"),
    "olmo_spike_gradnorm": lambda: OlmoSpike("grad_norm"),
    "megatron_10x": Megatron10x,
    "lightning_spike": LightningSpike,
}
# detectors with a ``calibrate`` hook (``score.py --lomo --extra baselines:CALIBRATED``)
CALIBRATED: Dict[str, Callable[[], Detector]] = {"loss_threshold_cal": LossThresholdCalibrated}
