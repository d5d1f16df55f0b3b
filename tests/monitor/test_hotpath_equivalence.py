"""The Monitor's O(1) pieces, optimised, against their previous code: bit-identical outputs.

``Old*`` below are the implementations as they were before the speed work (kept verbatim
except for their names); each test feeds the old and the new one the same random stream,
NaN / inf / huge values and ties included, and compares every output and the state.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
import pytest

from anet_lite import Monitor
from anet_lite import fingerprint as new_fp
from anet_lite.fingerprint import HOP, N_BANDS, SEGMENT, normalise, segment_band_powers
from anet_lite.monitor import _stream as new_stream

_MAD_TO_SIGMA = 1.4826
_NONE: List[float] = []


class OldRobustLevel:
    """Median and robust jitter scale of the last ``size`` values, refreshed every ``every``.

    scale = 1.4826 * MAD(one-step differences) / sqrt(2): the noise of the stream, which a
    trend does not inflate (the same estimator as ``metrics.two_second_precursor``).
    Between refreshes the cached level is used, so a push costs O(1) and a refresh
    O(size log size) once per ``every`` pushes.
    """

    def __init__(self, size: int, every: int) -> None:
        self.size = int(size)
        self.every = max(1, int(every))
        self.values: Deque[float] = deque(maxlen=self.size)
        self.center = 0.0
        self.scale = 0.0
        self.count = 0  # values pushed since the last reset
        self._since = 0
        self.ready = False  # >= 3 values: a center and a scale exist

    def push(self, x: float) -> None:
        self.values.append(x)
        self.count += 1
        if not self.ready:
            self.ready = len(self.values) >= 3
        self._since += 1
        if self._since >= self.every or self.count <= 4:
            self.refresh()

    def refresh(self) -> None:
        self._since = 0
        v = list(self.values)
        n = len(v)
        if n == 0:
            return
        s = sorted(v)
        self.center = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        if n < 3:
            self.scale = 0.0
            return
        d = sorted([b - a for a, b in zip(v, v[1:])])
        m = len(d)
        dm = d[m // 2] if m % 2 else 0.5 * (d[m // 2 - 1] + d[m // 2])
        dev = sorted([abs(x - dm) for x in d])
        mad = dev[m // 2] if m % 2 else 0.5 * (dev[m // 2 - 1] + dev[m // 2])
        self.scale = _MAD_TO_SIGMA * mad / math.sqrt(2.0)

    def reset(self) -> None:
        self.values.clear()
        self.center = self.scale = 0.0
        self.count = self._since = 0
        self.ready = False

    def state_dict(self) -> Dict[str, Any]:
        return {
            "values": list(self.values),
            "center": self.center,
            "scale": self.scale,
            "count": self.count,
            "since": self._since,
        }

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        self.values = deque((float(x) for x in st["values"]), maxlen=self.size)
        self.center, self.scale = float(st["center"]), float(st["scale"])
        self.count, self._since = int(st["count"]), int(st["since"])
        self.ready = len(self.values) >= 3


class OldRecentWindow:
    """The values of the last ``n`` samples, or of the last ``seconds`` when times are given.

    Keeps the running sum and a monotonic deque for the running max (O(1) amortised), so
    the trimmed mean (mean without the single largest value) is O(1). Values that leave
    the window are returned by ``push`` so the caller can feed its baseline with them.
    """

    def __init__(self, n: int, seconds: Optional[float] = None, cap: int = 100_000) -> None:
        self.n = max(1, int(n))
        self.seconds = seconds
        self.cap = cap
        self.items: Deque[Tuple[int, float, float]] = deque()  # (seq, time, value)
        self.maxq: Deque[Tuple[int, float]] = deque()  # (seq, value), values decreasing
        self.total = 0.0
        self.seq = 0

    def push(self, x: float, t: Optional[float]) -> List[float]:
        self.seq += 1
        self.items.append((self.seq, 0.0 if t is None else t, x))
        self.total += x
        while self.maxq and self.maxq[-1][1] <= x:
            self.maxq.pop()
        self.maxq.append((self.seq, x))
        if self.seconds is not None and t is not None:
            out: List[float] = []
            horizon = self.seconds * (1.0 - 1e-9)  # the last `seconds`, rounding-tolerant
            # (the floor of n samples in a timed window is a later behaviour change, made
            # in both: this reference keeps the pre-optimisation code otherwise verbatim)
            while len(self.items) > self.n and (
                t - self.items[0][1] >= horizon or len(self.items) > self.cap
            ):
                out.append(self._pop())
            return out
        if len(self.items) > self.n:  # count mode: at most one sample leaves per push
            return [self._pop()]
        return _NONE

    def _pop(self) -> float:
        seq, _, x = self.items.popleft()
        self.total -= x
        if self.maxq and self.maxq[0][0] == seq:
            self.maxq.popleft()
        return x

    def __len__(self) -> int:
        return len(self.items)

    def trimmed_mean(self) -> float:
        """Mean without the largest value (a lone spike does not move it); plain mean if < 3."""
        k = len(self.items)
        if k < 3:
            return self.total / k if k else 0.0
        return (self.total - self.maxq[0][1]) / (k - 1)

    def clear(self) -> None:
        self.items.clear()
        self.maxq.clear()
        self.total = 0.0

    def state_dict(self) -> Dict[str, Any]:
        return {"items": [list(i) for i in self.items], "seq": self.seq, "total": self.total}

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        self.clear()
        self.seq = 0
        for seq, t, x in st["items"]:
            self.seq = int(seq) - 1
            self.push(float(x), float(t) if self.seconds is not None else None)
        self.seq = int(st["seq"])
        self.total = float(st["total"])  # the running sum as it was, bit for bit


class OldStreamingFingerprint:
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
        self.since += 1
        if len(buf) < SEGMENT or self.since < HOP:
            return None
        self.since = 0
        seg = np.asarray(buf)
        with np.errstate(all="ignore"):  # huge samples overflow to inf, rejected below
            powers = segment_band_powers(seg[None, :])[0]
            energy = float(seg @ seg) / SEGMENT
        if not (np.all(np.isfinite(powers)) and np.isfinite(energy)):
            return None  # overflowing samples are the precursor's business, not the shape's
        self.ring[self.pos, :N_BANDS] = powers
        self.ring[self.pos, N_BANDS] = energy
        self.pos = (self.pos + 1) % self.n_segments
        self.filled = min(self.filled + 1, self.n_segments)
        return powers

    @property
    def ready(self) -> bool:
        return self.filled >= self.n_segments

    def mean_powers(self) -> Optional[np.ndarray]:
        """Mean (band powers..., energy) over the segments in the window; None if none yet."""
        if not self.filled:
            return None
        return (
            self.ring[: self.filled].mean(axis=0)
            if self.filled < self.n_segments
            else self.ring.mean(axis=0)
        )

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


# ---- helpers ------------------------------------------------------------------------------


def _bits(v: Any) -> Any:
    """Exact identity of a value: floats by their bit pattern (NaN payloads included)."""
    if isinstance(v, float):
        return ("f", struct.pack("<d", v))
    if isinstance(v, np.ndarray):
        return ("a", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return [_bits(x) for x in v]
    if isinstance(v, dict):
        return {k: _bits(x) for k, x in v.items()}
    if isinstance(v, (np.floating, np.bool_)):
        return ("n", type(v).__name__, v.tobytes())
    return (type(v).__name__, v)


def _seed(*args: Any) -> int:
    return zlib.crc32(repr(args).encode())  # deterministic (str hashes are salted)


def _stream(rng: np.random.Generator, n: int, kind: str) -> List[float]:
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "walk":
        x = np.cumsum(rng.standard_normal(n))
    elif kind == "ties":
        x = rng.integers(-3, 4, n).astype(float)  # many equal values and equal differences
    else:  # "wild": scales from 1e-300 to 1e300, NaN, +-inf
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
        pick = rng.random(n)
        x[pick < 0.01] = np.nan
        x[(pick >= 0.01) & (pick < 0.02)] = np.inf
        x[(pick >= 0.02) & (pick < 0.03)] = -np.inf
    return [float(v) for v in x]


KINDS = ("normal", "walk", "ties", "wild")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("size", "every"), [(40, 20), (64, 16), (7, 1), (16, 3), (2, 5)])
def test_robust_level_matches_old(kind, size, every):
    rng = np.random.default_rng(_seed(kind, size, every))
    old, new = OldRobustLevel(size, every), new_stream.RobustLevel(size, every)
    for i, x in enumerate(_stream(rng, 3000, kind)):
        old.push(x)
        new.push(x)
        assert _bits((old.center, old.scale, old.ready, old.count)) == _bits(
            (new.center, new.scale, new.ready, new.count)
        ), i
        if i % 500 == 499:
            old.reset()
            new.reset()
    assert _bits(old.state_dict()) == _bits(new.state_dict())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_recent_window_matches_old(kind, timed, n):
    rng = np.random.default_rng(_seed(kind, timed, n))
    sec = 2.0 if timed else None
    old, new = (
        OldRecentWindow(n, seconds=sec, cap=50),
        new_stream.RecentWindow(n, seconds=sec, cap=50),
    )
    t = 0.0
    for i, x in enumerate(_stream(rng, 3000, kind)):
        t += float(rng.exponential(0.2))
        tt = t if (timed and i % 7) else None  # a timed window also gets untimed pushes
        a, b = old.push(x, tt), new.push(x, tt)
        assert _bits(a) == _bits(b), i
        assert _bits((old.trimmed_mean(), len(old), old.total, old.seq)) == _bits(
            (new.trimmed_mean(), len(new), new.total, new.seq)
        ), i
        assert _bits(list(old.maxq)) == _bits(list(new.maxq)), i
        if i % 1000 == 999:
            old.clear()
            new.clear()
    assert _bits(old.state_dict()) == _bits(new.state_dict())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window", [16, 24, 64, 100, 256])
@pytest.mark.filterwarnings("error")  # overflow warnings stay suppressed
def test_streaming_fingerprint_matches_old(kind, window):
    rng = np.random.default_rng(_seed(kind, window))
    old, new = OldStreamingFingerprint(window), new_fp.StreamingFingerprint(window)
    for i, x in enumerate(_stream(rng, 4000, kind)):
        a, b = old.push(x), new.push(x)
        assert _bits(a) == _bits(b), i
        assert old.ready == new.ready
        assert _bits(old.mean_powers()) == _bits(new.mean_powers()), i
        if i % 64 == 0:
            assert _bits(old.fingerprint()) == _bits(new.fingerprint()), i
    assert _bits(old.state_dict()) == _bits(new.state_dict())


def _feed(m: Monitor, rng: np.random.Generator, n: int) -> List[Dict[str, Any]]:
    out = []
    lr = 1e-3
    for i in range(n):
        loss = 2.0 + 8.0 * (1.0 + i / 300.0) ** -0.6 * math.exp(0.05 * rng.standard_normal())
        g = math.exp(0.3 * rng.standard_normal())
        if i in (700, 701, 702):
            loss *= 50.0
        if i == 900:
            lr *= 10.0
        if i == 1000:
            lr *= 0.1
        if 1500 < i < 1560:
            g *= 1e3
        if i == 1800:
            loss = math.nan
        if i == 1810:
            g = math.inf
        sn = g * lr * (1.0 + 0.1 * rng.standard_normal())
        out.append(m.update(loss, step=i, grad_norm=g, step_norm=sn, lr=lr, time=0.2 * i).to_dict())
    return out


def test_monitor_with_new_parts_matches_old_parts(monkeypatch):
    """The whole Monitor, old pieces vs new, on a run with spikes, lr events, NaN and inf."""
    rng = np.random.default_rng(11)
    m_new = Monitor()
    new_snaps = _feed(m_new, rng, 2500)
    monkeypatch.setattr(new_stream, "RobustLevel", OldRobustLevel)
    monkeypatch.setattr(new_stream, "RecentWindow", OldRecentWindow)
    monkeypatch.setattr(new_fp, "StreamingFingerprint", OldStreamingFingerprint)
    from anet_lite.monitor import _monitor as mon

    monkeypatch.setattr(mon, "RobustLevel", OldRobustLevel)
    monkeypatch.setattr(mon, "RecentWindow", OldRecentWindow)
    m_old = Monitor()
    assert isinstance(m_old.fp, OldStreamingFingerprint)
    old_snaps = _feed(m_old, np.random.default_rng(11), 2500)
    assert len(old_snaps) == len(new_snaps)
    for i, (a, b) in enumerate(zip(old_snaps, new_snaps)):
        assert _bits(a) == _bits(b), (i, a, b)
    assert _bits(m_old.state_dict()) == _bits(m_new.state_dict())
    assert any(s["alert"] for s in new_snaps) and any(s["status"] == "healthy" for s in new_snaps)


def test_make_snapshot_is_the_dataclass():
    """verdict.make_snapshot (the Monitor's fast constructor) == Snapshot(...), field order
    included; read_inputs gives the same Signals as before (all seven fields)."""
    from anet_lite.monitor._signals import read_inputs
    from anet_lite.verdict import Snapshot, make_snapshot

    args = (0.5, -0.1, 0.2, 0.3, True, 2.5, 7, "precursor", True, {"loss": 1.0})
    a, b = make_snapshot(*args), Snapshot(*args)
    assert a == b and list(a.__dict__.items()) == list(b.__dict__.items())
    assert a.to_dict() == b.to_dict() and repr(a) == repr(b)
    s = read_inputs(1, 3, np.float64(0.5), None, 2, None, 1.5, strict=False)
    got = (s.loss, s.step, s.grad_norm, s.step_norm, s.noise, s.lr, s.time)
    assert _bits(got) == _bits((1.0, 3, 0.5, None, 2.0, None, 1.5))


def test_monitor_snapshots_are_the_dataclass_and_read_their_parts():
    """Monitor.update builds its Snapshot inline and reads the processivity correlation
    inline: every snapshot equals Snapshot(...) made from its fields (field order
    included), and its proc is EWCorrelation.value() of that step; later calls read
    their inputs on the inlined fast path exactly as read_inputs does (ints, NumPy
    scalars, garbage)."""
    from anet_lite.monitor._signals import read_inputs
    from anet_lite.verdict import Snapshot

    rng = np.random.default_rng(3)
    m = Monitor()
    for i in range(400):
        g = float(np.exp(rng.normal()))
        snap = m.update(
            np.float32(2.0 + rng.normal(0, 0.1)) if i % 3 else 2.0,
            step=i,
            grad_norm=g,
            step_norm=np.float64(0.01 * g * np.exp(rng.normal(0, 0.3))),
            lr=0.01 if i % 7 else 1,
            processivity=0.3 + 0.1 * rng.normal(),
            param_norm=10.0,
        )
        twin = Snapshot(*[getattr(snap, f) for f in Snapshot.__dataclass_fields__])
        assert snap == twin and list(vars(snap).items()) == list(vars(twin).items())
        assert _bits(snap.proc) == _bits(m.proc.value()) == _bits(snap.evidence["proc"])
    assert m.proc.n > 3 and snap.proc != 0.0
    # garbage after the first call: the lenient path, as read_inputs(strict=False) reads it
    junk = object()
    s = read_inputs("x", 5, None, np.float64(0.5), junk, None, 1.5, None, "0.3", strict=False)
    assert math.isnan(s.loss) and math.isnan(s.noise) and s.processivity == 0.3
    m2 = Monitor()
    m2.update(1.0)
    snap = m2.update("x", step=5, step_norm=np.float64(0.5), noise=junk, time=1.5)
    assert snap.step == 5 and snap.evidence["step_norm"] == 0.5
    assert math.isnan(snap.evidence["loss"]) and snap.status == "collapsed"


def _old_detrended(y: np.ndarray) -> np.ndarray:
    t = np.arange(len(y), dtype=np.float64)
    t -= t.mean()
    yc = y - y.mean()
    denom = float(t @ t)
    slope = float(t @ yc) / denom if denom > 0 else 0.0
    return yc - slope * t


@np.errstate(all="ignore")
def _old_entropy_rate_core(prev: np.ndarray, last: np.ndarray, bins: int) -> float:
    r_prev, r_last = _old_detrended(prev), _old_detrended(last)
    lo = min(r_prev.min(), r_last.min())
    hi = max(r_prev.max(), r_last.max())
    scale = max(float(np.abs(prev).max()), float(np.abs(last).max()))
    if not (hi - lo > 1e-10 * scale and hi - lo > 1e-300):
        return 0.0
    edges = np.linspace(lo, hi, bins + 1)

    def entropy(r: np.ndarray) -> float:
        counts = np.bincount(
            np.clip(np.searchsorted(edges, r, side="right") - 1, 0, bins - 1), minlength=bins
        )
        p = counts[counts > 0] / len(r)
        return float(-(p * np.log(p)).sum())

    return float(np.clip((entropy(r_last) - entropy(r_prev)) / math.log(bins), -1.0, 1.0))


@pytest.mark.parametrize("kind", range(5))
def test_entropy_rate_core_matches_old(kind):
    from anet_lite.metrics import _entropy_bins, _entropy_rate_core

    rng = np.random.default_rng(kind)
    for _ in range(400):
        h = int(rng.integers(2, 70))
        a = rng.standard_normal(2 * h) * 10 ** rng.uniform(-8, 8)
        if kind == 1:
            a = np.round(a, 1)  # ties on the bin edges
        elif kind == 2:
            a[:] = 3.0  # flat
        elif kind == 3:
            a = np.cumsum(a)  # a trend
        elif kind == 4:
            a[rng.integers(0, 2 * h)] = 1e300  # a huge value
        b = _entropy_bins(h)
        old, new = _old_entropy_rate_core(a[:h], a[h:], b), _entropy_rate_core(a[:h], a[h:], b)
        assert old == new or (old != old and new != new)


def test_pairwise_sum_is_numpy_add_reduce():
    """Ṡ's entropy sums (``metrics._pairwise_sum``) are NumPy's, bit for bit, at every
    length a histogram can have (up to 16 bins, both sides of the 8-accumulator block)."""
    from anet_lite.metrics import _entropy_of_counts, _pairwise_sum

    rng = np.random.default_rng(7)
    for n in range(1, 41):
        for _ in range(200):
            v = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n)
            assert _pairwise_sum(v.tolist()) == np.add.reduce(v)
    for _ in range(300):
        k = int(rng.integers(2, 120))
        counts = np.bincount(rng.integers(0, 16, k), minlength=16)
        p = counts[counts > 0] / k
        assert _entropy_of_counts(counts.tolist(), k) == float(-(p * np.log(p)).sum())


def test_median_abs_dev_is_the_sorted_deviations_median():
    """RobustLevel's MAD by bisection over the two sorted runs of |d - median| equals the
    median of the sorted deviations, at every length (odd and even), with ties and
    infinite differences."""
    from anet_lite.monitor._stream import _median_abs_dev

    rng = np.random.default_rng(5)
    for _ in range(20000):
        m = int(rng.integers(1, 80))
        pick = rng.random()
        if pick < 0.3:
            d = rng.integers(-3, 4, m).astype(float)  # ties everywhere
        elif pick < 0.4:
            d = rng.choice([0.0, 1.0, -1.0, 2.0, 1e300, -1e300, math.inf, -math.inf], m)
        else:
            d = rng.standard_normal(m) * 10.0 ** rng.integers(-6, 6)
        d = sorted(d.tolist())
        h = m // 2
        dm = d[h] if m % 2 else 0.5 * (d[h - 1] + d[h])
        if not math.isfinite(dm):
            continue
        dev = sorted(abs(x - dm) for x in d)
        want = dev[h] if m % 2 else 0.5 * (dev[h - 1] + dev[h])
        assert _bits(_median_abs_dev(d, dm)) == _bits(want), (d, dm)
