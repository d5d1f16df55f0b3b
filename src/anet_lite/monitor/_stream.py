"""Small O(1)-amortised streaming statistics used by the Monitor (plain Python floats)."""

from __future__ import annotations

import math
from collections import deque
from itertools import islice, repeat
from operator import sub as _sub
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

_MAD_TO_SIGMA = 1.4826
_SQRT2 = math.sqrt(2.0)
_NONE: List[float] = []  # shared empty result, never mutated
_NEG_INF = -math.inf
_sqrt = math.sqrt


class RobustLevel:
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
        values = self.values
        values.append(x)
        count = self.count = self.count + 1
        since = self._since = self._since + 1
        if since >= self.every or count <= 4:
            self.refresh()  # (sets ready)
        elif not self.ready:
            self.ready = len(values) >= 3

    def refresh(self) -> None:
        self._since = 0
        values = self.values
        n = len(values)
        if n == 0:
            return
        v = sorted(values)  # (a copy: the unsorted order is needed below)
        h = n // 2
        self.center = v[h] if n % 2 else 0.5 * (v[h - 1] + v[h])
        if n < 3:
            self.scale = 0.0
            return
        self.ready = True
        d = list(map(_sub, islice(values, 1, None), values))  # b - a for consecutive a, b
        d.sort()
        m = len(d)
        h = m // 2
        dm = d[h] if m % 2 else 0.5 * (d[h - 1] + d[h])
        s = sum(d)  # NaN: a NaN in d (sorted in no order) or +-inf in it
        if s == s and dm - dm == 0.0:
            mad = _median_abs_dev(d, dm)
        else:  # (the sort's own order of NaNs decides, as it always did)
            dev = list(map(abs, map(_sub, d, repeat(dm, m))))
            dev.sort()
            mad = dev[h] if m % 2 else 0.5 * (dev[h - 1] + dev[h])
        self.scale = _MAD_TO_SIGMA * mad / _SQRT2

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


def _median_abs_dev(d: List[float], dm: float) -> float:
    """The median of |x - dm| over a sorted list ``d`` (no NaN) whose median is ``dm``
    (finite), without building and sorting those deviations: they are two sorted runs,
    |d[h-1-i] - dm| for the values below the middle and |d[h+j] - dm| from it on (h =
    len(d) // 2), and the middle of their merge is found by bisecting on how many of its
    lower half the first run gives. The same floats as sorting all of them (each is the
    same subtraction; rounding is monotonic, so both runs are sorted)."""
    m = len(d)
    h = m // 2
    k = h if m % 2 else h - 1  # the (lower) middle position in the merge
    nb = m - h
    lo = k + 1 - nb if k + 1 > nb else 0
    hi = k + 1 if k + 1 < h else h
    while lo < hi:  # i of the k + 1 smallest from the first run, k + 1 - i from the second
        i = (lo + hi) // 2
        if abs(d[h - 1 - i] - dm) < abs(d[h + k - i] - dm):
            lo = i + 1
        else:
            hi = i
    i, j = lo, k + 1 - lo
    a = abs(d[h - i] - dm) if i else _NEG_INF  # the largest taken from each run
    b = abs(d[h + j - 1] - dm) if j else _NEG_INF
    kth = a if a > b else b
    if m % 2:
        return kth
    a = abs(d[h - 1 - i] - dm) if i < h else math.inf  # the smallest left in each run
    b = abs(d[h + j] - dm) if j < nb else math.inf
    return 0.5 * (kth + (a if a < b else b))


class RecentWindow:
    """The values of the last ``n`` samples, or of the last ``seconds`` (but never fewer than
    ``n`` samples) when times are given.

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

    def push(self, x: float, t: Optional[float]) -> Sequence[float]:
        seq = self.seq = self.seq + 1
        items = self.items
        items.append((seq, 0.0 if t is None else t, x))
        self.total += x
        maxq = self.maxq
        while maxq and maxq[-1][1] <= x:
            maxq.pop()
        maxq.append((seq, x))
        if t is not None and self.seconds is not None:
            n = self.n
            if len(items) <= n:
                return _NONE  # (nothing can leave: the loop below would not start)
            out: List[float] = []
            horizon = self.seconds * (1.0 - 1e-9)  # the last `seconds`, rounding-tolerant
            # at least n samples stay, whatever the step time (slow steps: the window in
            # seconds would otherwise hold one step and the precursor go dead)
            cap = self.cap
            while len(items) > n and (t - items[0][1] >= horizon or len(items) > cap):
                out.append(self._pop())
            return out if out else _NONE
        if len(items) > self.n:  # count mode: at most one sample leaves per push
            first, _, old = items.popleft()  # (= self._pop(), inlined: the hot path)
            self.total -= old
            if maxq[0][0] == first:  # maxq holds at least the value just pushed
                maxq.popleft()
            return (old,)  # (a tuple: cheaper than a list; callers only iterate)
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


class EWCorrelation:
    """Exponentially weighted Pearson correlation of two streams (weight ``alpha`` per update)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.n = 0
        self.mx = self.my = self.vx = self.vy = self.cxy = 0.0

    def update(self, x: float, y: float) -> None:
        n = self.n = self.n + 1
        if n == 1:
            self.mx, self.my = x, y
            return
        alpha = self.alpha
        a = alpha if n * alpha > 1.0 else 1.0 / n
        mx, my = self.mx, self.my
        dx, dy = x - mx, y - my
        adx, ady = a * dx, a * dy  # (each product once: a * dx * dy is (a * dx) * dy)
        self.mx = mx + adx
        self.my = my + ady
        b = 1.0 - a
        self.vx = b * (self.vx + adx * dx)
        self.vy = b * (self.vy + ady * dy)
        self.cxy = b * (self.cxy + adx * dy)

    def value(self) -> float:
        den = self.vx * self.vy
        if self.n < 3 or not den > 1e-300:
            return 0.0
        r = self.cxy / _sqrt(den)
        return -1.0 if r < -1.0 else (1.0 if r > 1.0 else r)

    def state_dict(self) -> Dict[str, Any]:
        return {"n": self.n, "m": [self.mx, self.my, self.vx, self.vy, self.cxy]}

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        self.n = int(st["n"])
        self.mx, self.my, self.vx, self.vy, self.cxy = (float(v) for v in st["m"])
