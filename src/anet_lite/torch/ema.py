"""Compact storage of the tap's gradient EMA (``GradNoiseTap(ema_dtype=..., memory="low")``).

The exact noise EMA m (``noise="exact"``) is 1x the measured parameters in the float32
work dtype: 1x the bytes of float32 parameters, 2x those of bf16/fp16 ones. Two compact
stores keep the same EMA in fewer bytes; the arithmetic stays float32 (float64 for float64
parameters), per chunk, in one work buffer of one chunk (``Compact.work``):

* a float dtype (``ema_dtype=torch.bfloat16`` or ``torch.float16``): m is stored rounded
  to it (``tap.m`` holds views of it, in that dtype). 2 bytes per element.
* ``ema_dtype=torch.int8``: blockwise absmax quantization, as 8-bit optimizers store
  Adam's first moment (itself an EMA of the gradient): per block of ``BLOCK`` elements one
  float32 scale s = max |m| / 127 and one int8 q = round(m / s) per element. 1 + 4 / BLOCK
  bytes per element. ``tap.m`` stays empty (the int8 codes mean nothing alone);
  ``ema_state()["m"]`` holds the decoded EMA by parameter name, as for the other stores.

Each step decodes the chunk's m into the work buffer, measures ||g - m|| there, advances
m and rounds it back. The rounding error per step is at most half a unit of the store (bf16:
2**-9 |m_i|; int8: s / 2 = max|m| / 254 over the block) and decays with the EMA, so the
stored m stays within ~1 / (1 - ema) such units of the float32 EMA (10 at ema=0.9; ~1-2
typically, the errors being of random sign). The noise norm ||g - m|| is much less
sensitive than m itself: the gradient noise, not m, dominates it. Measured
(tests/pytorch/test_torch_tap_memory.py, 300 AdamW steps of a 19k-parameter MLP): relative error
of the noise norm against the float32 EMA, median / max over the steps: bf16 5e-5 / 5e-4,
int8 2e-4 / 1.7e-3; of the EMA m itself at the end (relative L2): bf16 0.5%, int8 3.3%
(per tensor up to ~10% for a small bias that shares its block with larger weights).
float16 is more precise than bf16 (11 significant bits) but overflows above 65504.

The int8 codes follow the chunk layout (blocks never straddle chunks: ``chunk_numel`` must
be a multiple of ``BLOCK``); when the layout changes (a parameter gains or loses its
gradient) the EMA is carried over by name, and that of a parameter that left is kept
decoded (``parked``) until it returns, as the float store keeps its ``tap.m`` entry.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .sketch import Chunk

__all__ = [
    "BLOCK",
    "EMA_DTYPES",
    "Compact",
    "check_ema_dtype",
    "store_dtype",
]


BLOCK = 256  # int8 quantization block (elements per float32 scale)
EMA_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
_TINY = 1e-37  # lower bound of an int8 block scale (an all-zero block stays 0)

Group = Tuple[torch.device, torch.dtype]
Order = Dict[Group, List[Tuple[str, int, int, torch.Size]]]


class Compact:
    """Work buffers (one chunk per group) and, for int8, the codes and scales."""

    def __init__(self, int8: bool) -> None:
        self.int8 = int8
        self.work: Dict[Group, Tensor] = {}
        self.q: Dict[Group, Tensor] = {}  # int8 codes, the group's flat order, padded
        self.s: Dict[Group, Tensor] = {}  # one scale per BLOCK of q
        self.order: Order = {}
        self.key: object = None  # the layout the codes follow
        # decoded EMA of parameters that left the layout (no gradient lately), by name: it
        # resumes if they return (as the float ``tap.m`` keeps such entries)
        self.parked: Dict[str, Tensor] = {}

    def tensors(self) -> List[Tensor]:
        return [*self.work.values(), *self.q.values(), *self.s.values(), *self.parked.values()]

    def clear(self) -> None:
        self.q.clear()
        self.s.clear()
        self.order = {}
        self.key = None
        self.parked = {}

    def buf(self, chunk: Chunk) -> Tensor:
        """The group's work buffer, at least this chunk long (whole int8 blocks)."""
        n = -(-chunk.n // BLOCK) * BLOCK if self.int8 else chunk.n
        w = self.work.get(chunk.group)
        if w is None or w.numel() < n:
            w = self.work[chunk.group] = torch.zeros(n, dtype=chunk.wdtype, device=chunk.device)
        return w[:n]

    # ------------------------------------------------------------ cast store (bf16/fp16)

    def step_cast(self, chunk: Chunk, m: Tensor, g: Tensor, w: Tensor) -> Tensor:
        """||m - g||^2 and m <- w (m - g) + g, in the work dtype; ``m`` a compact slice."""
        t = self.buf(chunk)
        t.copy_(m)
        t.sub_(g)
        nsq = torch.dot(t, t)
        t.mul_(w).add_(g)
        m.copy_(t)
        return nsq

    def undo_cast(self, m: Tensor, g: Tensor, w: Tensor, chunk: Chunk) -> None:
        t = self.buf(chunk)
        t.copy_(m)
        t.addcmul_(g, -w).div_(1.0 - w)
        m.copy_(t)

    # ------------------------------------------------------------ int8 store

    def sync(self, order: Order, key: object) -> None:
        """Codes for the layout ``key`` (flat ``order`` per group); on a change of layout the
        EMA is carried over by parameter name (decoded per parameter, re-coded)."""
        if key == self.key and self.q:
            return
        old = (self.q, self.s, self.order) if self.q else None
        self.q, self.s, self.order = {}, {}, order
        for group, runs in order.items():
            device = group[0]
            n = -(-sum(r[2] for r in runs) // BLOCK) * BLOCK
            self.q[group] = torch.zeros(n, dtype=torch.int8, device=device)
            self.s[group] = torch.full((n // BLOCK,), _TINY, dtype=torch.float32, device=device)
        self.key = key
        if old is not None:
            prev = Compact(True)
            prev.q, prev.s, prev.order = old
            carried = {**self.parked, **prev.read_all()}
            names = {r[0] for runs in order.values() for r in runs}
            self.parked = {k: v for k, v in carried.items() if k not in names}
            self.write({k: v for k, v in carried.items() if k in names})

    def _blocks(self, chunk: Chunk) -> Tuple[Tensor, Tensor, Tensor]:
        b0, nb = chunk.offset // BLOCK, -(-chunk.n // BLOCK)
        q = self.q[chunk.group][b0 * BLOCK : (b0 + nb) * BLOCK].view(nb, BLOCK)
        return q, self.s[chunk.group][b0 : b0 + nb], self.buf(chunk).view(nb, BLOCK)

    def _decode(self, chunk: Chunk) -> Tuple[Tensor, Tensor, Tensor]:
        q, s, t = self._blocks(chunk)
        t.copy_(q).mul_(s.unsqueeze(1))  # (the padding of the last block decodes to 0)
        return q, s, t

    @staticmethod
    def _encode(q: Tensor, s: Tensor, t: Tensor) -> None:
        # (amax and amin: on CPU ~20x faster than aminmax along a dim; t * (1 / s) is within
        # a few ulp of t / s, so |t / s| <= 127 still rounds into int8)
        torch.maximum(t.amax(1), t.amin(1).neg_(), out=s)
        s.div_(127.0).clamp_(min=_TINY)
        t.mul_(s.reciprocal().unsqueeze(1)).round_()
        q.copy_(t)

    def step_int8(self, chunk: Chunk, g: Tensor, w: Tensor) -> Tensor:
        q, s, t = self._decode(chunk)
        tv = t.view(-1)[: chunk.n]
        tv.sub_(g)
        nsq = torch.dot(tv, tv)
        tv.mul_(w).add_(g)
        self._encode(q, s, t)
        return nsq

    def undo_int8(self, chunk: Chunk, g: Tensor, w: Tensor) -> None:
        q, s, t = self._decode(chunk)
        t.view(-1)[: chunk.n].addcmul_(g, -w).div_(1.0 - w)
        self._encode(q, s, t)

    def _range(self, group: Group, off: int, n: int) -> Tensor:
        b0, b1 = off // BLOCK, -(-(off + n) // BLOCK)
        q = self.q[group][b0 * BLOCK : b1 * BLOCK].view(-1, BLOCK)
        t = (q.to(torch.float32) * self.s[group][b0:b1].unsqueeze(1)).view(-1)
        return t[off - b0 * BLOCK : off - b0 * BLOCK + n]

    def read_all(self) -> Dict[str, Tensor]:
        """The decoded EMA by parameter name (float32, parameter-shaped)."""
        out = dict(self.parked)
        for group, runs in self.order.items():
            for name, off, n, shape in runs:
                out[name] = self._range(group, off, n).view(shape)
        return out

    def write(self, src: Dict[str, Tensor]) -> None:
        """Set the EMA of the named parameters (others keep theirs): block by block, a
        window of blocks at a time (no full-size float temporaries)."""
        for name, v in self.parked.items():
            if name in src:
                v.copy_(src[name])
        for group, runs in self.order.items():
            todo = [(off, n, src[name]) for name, off, n, _ in runs if name in src]
            for _, n, v in todo:
                if v.numel() != n:
                    raise ValueError(f"EMA state of {n} elements expected, got {v.numel()}")
            if todo:
                self._rewrite(group, todo)

    def _rewrite(self, group: Group, todo: List[Tuple[int, int, Tensor]]) -> None:
        win = 2**20  # elements (a multiple of BLOCK)
        q_all, s_all = self.q[group], self.s[group]
        for a in range(0, q_all.numel(), win):
            b = min(a + win, q_all.numel())
            hit = [(off, n, v) for off, n, v in todo if off < b and off + n > a]
            if not hit:
                continue
            q = q_all[a:b].view(-1, BLOCK)
            s = s_all[a // BLOCK : b // BLOCK]
            t = q.to(group[1]) * s.unsqueeze(1).to(group[1])
            flat = t.view(-1)
            for off, n, v in hit:
                lo, hi = max(off, a), min(off + n, b)
                flat[lo - a : hi - a].copy_(v.detach().reshape(-1)[lo - off : hi - off])
            self._encode(q, s, t)


def check_ema_dtype(ema_dtype: Optional[torch.dtype]) -> None:
    if ema_dtype is None:
        return
    if not isinstance(ema_dtype, torch.dtype):
        raise TypeError(f"ema_dtype must be a torch.dtype or None, got {type(ema_dtype).__name__}")
    if ema_dtype not in EMA_DTYPES:
        names = ", ".join(str(d) for d in EMA_DTYPES)
        raise ValueError(f"ema_dtype must be one of {names} or None, got {ema_dtype}")


def store_dtype(ema_dtype: Optional[torch.dtype], wdtype: torch.dtype) -> torch.dtype:
    """The dtype a float (non-int8) EMA is stored in for a group of work dtype ``wdtype``."""
    return wdtype if ema_dtype is None or ema_dtype == torch.int8 else ema_dtype
