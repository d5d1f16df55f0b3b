"""The tap's flat chunk layout and its sign-randomised CountSketch.

Parameters (and their gradients) are read in chunks: runs of at most ``chunk_numel``
elements of one (device, work dtype) group, copied into one flat padded scratch buffer
per role so that every statistic is a handful of single-kernel ops over the whole chunk
instead of a Python loop over tensors.

The sketch S maps a chunk's flat vector x to ``k`` buckets (k = ``sketch_buckets``, a
prime): element i goes to bucket ``i mod k`` with a random sign s_i, so
(S x)_b = sum over i = b (mod k) of s_i x_i and E ||S x||^2 = ||x||^2 over the signs.
The signs are one random bit per element, fixed for the life of the layout (drawn from
``(seed, chunk index)``), so that

* S theta_after of one step IS S theta_before of the next while the parameters are not
  touched in between (the tap checks the parameters' version counters): one sketch of
  the parameters per step instead of two;
* S is one fixed linear map, so an EMA of S g is S of the EMA of g: the noise
  ||g - EMA(g)|| can be sketched in O(k) memory (``GradNoiseTap(noise="sketch")``).

A sign is applied by XOR-ing the float's sign bit (exact: (-a)(-b) == ab bit for bit, so
dot products of two flipped buffers equal those of the unflipped ones). The 32 signs of
32 consecutive elements come from the bits of one random int32, expanded once into a
mask buffer that is kept (like the other scratch buffers) while it still matches the
chunk; a model that fits in one chunk per group never regenerates it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .sample import SAMPLE_BLOCKS, fill_sampled, mix, prescale, sample_block, sample_ranges

__all__ = [
    "SIGN_BITS",
    "Chunk",
    "Scratch",
    "Seg",
    "acc_dtype",
    "dot",
    "fill",
    "fill_params",
    "flip_",
    "fold",
    "fold_noise",
    "local",
    "next_prime",
    "plan",
    "sign_masks",
    "work_dtype",
]


SIGN_BITS = 32  # one random int32 gives the sign flips of 32 elements
_INT32_MIN = -(2**31)


def next_prime(n: int) -> int:
    n = max(2, n)
    while True:
        if n < 4 or all(n % d for d in range(2, math.isqrt(n) + 1)):
            return n
        n += 1


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2, tensor parallel); plain tensors unchanged."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class Seg:
    """Elements [start, end) of one parameter, flattened."""

    __slots__ = ("dist", "end", "name", "param", "start", "whole")

    def __init__(self, name: str, param: Tensor, start: int, end: int, numel: int) -> None:
        self.name, self.param, self.start, self.end = name, param, start, end
        self.whole = start == 0 and end == numel
        self.dist = callable(getattr(param, "to_local", None))  # a DTensor: use its shard

    def local(self) -> Tensor:
        return local(self.param) if self.dist else self.param

    def grad(self) -> Optional[Tensor]:
        g = self.param.grad
        return local(g) if self.dist and g is not None else g


class Chunk:
    """Segments on one device, of one work dtype, at most ``chunk_numel`` elements;
    ``offset`` is where the chunk starts in its group's flat order (the EMA buffer)."""

    def __init__(self, index: int, group: Tuple[torch.device, torch.dtype], offset: int, gran: int):
        self.index, self.group, self.offset, self.gran = index, group, offset, gran
        self.device, self.wdtype = group
        self.segs: List[Seg] = []
        self.n = 0
        self._plain: Optional[bool] = None  # (segments are only added while planning)
        self._views_stay: Optional[bool] = None
        self.sole = False  # the only chunk of its group (set by the tap's layout)
        self._params: Optional[List[Tensor]] = None
        self._uniq: Optional[List[Tensor]] = None  # each parameter once (sampled: many segs)
        self.cache: Dict[str, Any] = {}  # views reused while the layout is unchanged
        # sampled layouts: the first ``prescale`` elements (parameters kept whole) are
        # stored x ``weight`` (1/sqrt(rate)), so that rate x any sum of products over the
        # chunk weighs them 1 and the sampled blocks rate (see ``sample_ranges``)
        self.prescale = 0
        self.weight = 1.0
        self.block = self.period = 0  # sampled: block length and sampling period, elements

    @property
    def n_pad(self) -> int:
        return -(-self.n // self.gran) * self.gran

    @property
    def sizes(self) -> List[int]:
        return [s.end - s.start for s in self.segs]

    @property
    def plain(self) -> bool:
        """Every segment a whole, plain (not DTensor) parameter: ``params`` lines up with
        the segments and their gradients can be copied as they are."""
        if self._plain is None:
            self._plain = all(s.whole and not s.dist for s in self.segs)
        return self._plain

    @property
    def views_stay(self) -> bool:
        """Every segment of a plain (not DTensor), contiguous parameter: views of the
        parameters made once stay views of them while the layout (data_ptr) holds."""
        if self._views_stay is None:
            self._views_stay = all(not s.dist and s.param.is_contiguous() for s in self.segs)
        return self._views_stay

    @property
    def params(self) -> List[Tensor]:
        if self._params is None or len(self._params) != len(self.segs):
            self._params = [s.param for s in self.segs]
        return self._params

    def param_versions(self) -> Optional[Tuple[int, ...]]:
        """In-place ops (optimizer steps, ``copy_``, ``load_state_dict``) bump these."""
        if self._uniq is None:
            self._uniq = list({id(p): p for p in self.params}.values())
        try:
            return tuple([p._version for p in self._uniq])
        except RuntimeError:  # e.g. inference tensors have no version counter
            return None


def plan(
    items: Sequence[Tuple[str, Tensor, Tensor]],
    chunk_numel: int,
    gran: int,
    sample: int = 1,
    seed: int = 0,
    blocks: int = SAMPLE_BLOCKS,
) -> Tuple[List[Chunk], Dict[Tuple[torch.device, torch.dtype], List[Tuple[str, int, int]]]]:
    """Chunks for ``(name, param, local param)`` items, and per group the flat order
    ``(name, offset, count)`` that the chunks slice (a parameter split across chunks is
    still one contiguous run of its group). ``sample > 1``: the parameters that
    ``sample_ranges`` keeps whole come first (``Chunk.prescale`` counts them), then the
    kept blocks of the others; ``count`` is how many of a parameter's elements are kept."""
    groups: Dict[Tuple[torch.device, torch.dtype], List[Tuple[str, Tensor, Tensor]]] = {}
    for it in items:
        groups.setdefault((it[2].device, work_dtype(it[2].dtype)), []).append(it)
    chunks: List[Chunk] = []
    order: Dict[Tuple[torch.device, torch.dtype], List[Tuple[str, int, int]]] = {}
    for key, group in groups.items():
        cur = Chunk(len(chunks), key, 0, gran)
        pos = 0
        runs = order.setdefault(key, [])
        sizes = [lp.numel() for _, _, lp in group]
        kept = sample_ranges(sizes, sample, seed, blocks) if sample > 1 else [None] * len(group)
        whole = [i for i, r in enumerate(kept) if r is None]
        parts = [i for i, r in enumerate(kept) if r is not None]
        for i in whole + parts:
            name, p, _ = group[i]
            n = sizes[i]
            ranges = kept[i] or [(0, n)]
            runs.append((name, pos, sum(b - a for a, b in ranges)))
            for start, end in ranges:
                while start < end:
                    take = min(end - start, chunk_numel - cur.n)
                    cur.segs.append(Seg(name, p, start, start + take, n))
                    if sample > 1 and kept[i] is None:
                        cur.prescale = cur.n + take
                    cur.n += take
                    start += take
                    pos += take
                    if cur.n == chunk_numel:
                        chunks.append(cur)
                        cur = Chunk(len(chunks), key, pos, gran)
        if cur.n:
            chunks.append(cur)
        if sample > 1:
            blk = sample_block(sum(sizes), sample, blocks)
            for c in chunks:
                if c.group == key:
                    c.weight = 1.0 / math.sqrt(sample)
                    c.block, c.period = blk, sample * blk
    return chunks, order


class Scratch:
    """Flat work buffers, one per role and dtype, kept between calls (on CPU fresh large
    allocations page-fault on every call; elsewhere the caching allocator would keep them
    anyway) and grown to the largest chunk. ``tags`` says what a buffer holds now."""

    def __init__(self) -> None:
        self.bufs: Dict[Tuple[str, torch.dtype, torch.device], Tensor] = {}
        self.tags: Dict[Tuple[str, torch.dtype, torch.device], Any] = {}
        self.pads: Dict[int, Tuple[int, int]] = {}  # buffer data_ptr -> (n, n_pad) zeroed
        # Views of the buffers (slices, bit views, fold shapes), made once: a view is an op
        # too (see ``stepstats`` on why ops count).
        self.views: Dict[Tuple[Any, ...], Tensor] = {}

    @staticmethod
    def key(role: str, chunk: Chunk, dtype: Optional[torch.dtype] = None) -> Tuple[Any, ...]:
        return (role, dtype or chunk.wdtype, chunk.device)

    def get(self, role: str, chunk: Chunk, dtype: Optional[torch.dtype] = None) -> Tensor:
        n_pad = chunk.n_pad
        key = (role, dtype or chunk.wdtype, chunk.device)
        vkey = (key, n_pad)
        view = self.views.get(vkey)  # (cleared whenever a buffer is replaced)
        if view is None:
            buf = self.bufs.get(key)
            if buf is None or buf.numel() < n_pad:
                buf = torch.empty(n_pad, dtype=key[1], device=chunk.device)
                self.bufs[key] = buf
                self.tags.pop(key, None)
                self.pads.pop(buf.data_ptr(), None)
                self.views.clear()
            view = self.views[vkey] = buf[:n_pad]
        if n_pad > chunk.n and role != "signs":
            # Zero the padding unless it is known to be zero already: the tap's ops keep
            # zeros zero (a sign flip makes them -0.0), only a longer chunk writes there.
            want = (chunk.n, n_pad)
            ptr = view.data_ptr()
            if self.pads.get(ptr) != want:
                view[chunk.n :].zero_()
                self.pads[ptr] = want
        return view

    def clear(self) -> None:
        self.bufs.clear()
        self.tags.clear()
        self.pads.clear()
        self.views.clear()

    def swap(self, a: str, b: str, chunk: Chunk) -> None:
        """Exchange the buffers (and their tags and views) of roles ``a`` and ``b``."""
        ka, kb = self.key(a, chunk), self.key(b, chunk)
        self.bufs[ka], self.bufs[kb] = self.bufs[kb], self.bufs[ka]
        ta, tb = self.tags.pop(ka, None), self.tags.pop(kb, None)
        if tb is not None:
            self.tags[ka] = tb
        if ta is not None:
            self.tags[kb] = ta
        va, vb = self.views.pop((ka, chunk.n_pad), None), self.views.pop((kb, chunk.n_pad), None)
        if vb is not None:
            self.views[(ka, chunk.n_pad)] = vb
        if va is not None:
            self.views[(kb, chunk.n_pad)] = va

    def view(self, buf: Tensor, how: Any) -> Tensor:
        """``buf.view(how)`` (a dtype or a shape), cached for the life of the buffers."""
        vkey = (buf.data_ptr(), buf.numel(), buf.dtype, how)
        v = self.views.get(vkey)
        if v is None:
            v = self.views[vkey] = buf.view(how)
        return v


def fill_params(chunk: Chunk, buf: Tensor) -> Tensor:
    """Copy the chunk's parameters into ``buf`` (padding: see ``Scratch.get``).
    Under no_grad only."""
    if chunk.weight != 1.0:
        return fill_sampled(chunk, buf, Seg.local, params=True)
    parts = chunk.cache.get("p")
    if parts is None:
        parts, contiguous = [], True
        for seg in chunk.segs:
            t = seg.local()
            contiguous = contiguous and t.is_contiguous()
            flat = t.reshape(-1)
            parts.append(flat if seg.whole else flat[seg.start : seg.end])
        if contiguous:  # views stay valid while the layout key (data_ptr included) holds
            chunk.cache["p"] = parts
    out = buf if buf.numel() == chunk.n else chunk.cache.get(("out", buf.data_ptr(), buf.numel()))
    if out is None:
        out = chunk.cache[("out", buf.data_ptr(), buf.numel())] = buf[: chunk.n]
    torch.cat(parts, out=out)
    if chunk.prescale:
        prescale(chunk, buf)
    return buf


def fill(chunk: Chunk, buf: Tensor, get: Callable[[Seg], Optional[Tensor]]) -> Tensor:
    """Copy ``get(seg)`` (param-shaped tensors, e.g. gradients) into ``buf`` with one
    ``_foreach_copy_`` into cached param-shaped views of it; missing ones read as 0."""
    if chunk.weight != 1.0:  # a sampled chunk (sample.py)
        return fill_sampled(chunk, buf, get)
    cached = chunk.cache.get("views")
    if cached is None or cached[0] != (buf.data_ptr(), buf.dtype, buf.numel()):
        views, off = [], 0
        for seg in chunk.segs:
            n = seg.end - seg.start
            v = buf[off : off + n]
            views.append(v.view(seg.local().shape) if seg.whole else v)
            off += n
        cached = ((buf.data_ptr(), buf.dtype, buf.numel()), views)
        chunk.cache["views"] = cached
    views = cached[1]
    if get is Seg.grad and chunk.plain:  # the usual case, without a Python call per tensor
        grads = [p.grad for p in chunk.params]
        if all(g is not None for g in grads):  # (not `None in grads`: that calls t == None)
            torch._foreach_copy_(views, grads)
            return buf
    dst, src = [], []
    for seg, v in zip(chunk.segs, views):
        t = get(seg)
        if t is None:
            v.zero_()
            continue
        dst.append(v)
        src.append(t if seg.whole else t.reshape(-1)[seg.start : seg.end])
    if dst:
        torch._foreach_copy_(dst, src)
    return buf


def sign_masks(
    chunk: Chunk, seed: int, scratch: Scratch, gens: Dict[torch.device, torch.Generator]
) -> Tensor:
    """The chunk's sign-bit masks (one random bit per element), kept in scratch while
    valid. Bit j of random int32 number r becomes the sign bit of element 32 r + j."""
    idt = torch.int64 if chunk.wdtype == torch.float64 else torch.int32
    masks = scratch.get("signs", chunk, idt)
    key = ("signs", idt, chunk.device)
    tag = (seed, chunk.index, chunk.n_pad, chunk.gran)  # the signs depend on these only
    if scratch.tags.get(key) == tag:
        return masks
    gen = gens.get(chunk.device)
    if gen is None:
        gen = torch.Generator(device=chunk.device)
        gens[chunk.device] = gen
    gen.manual_seed(mix(seed, chunk.index))
    rows = chunk.n_pad // SIGN_BITS
    words = torch.randint(
        _INT32_MIN, 2**31 - 1, (rows, 1), generator=gen, dtype=torch.int32, device=chunk.device
    )
    skey = ("shifts", torch.int32, chunk.device)  # made once per device (an op each time)
    shifts = scratch.bufs.get(skey)
    if shifts is None:
        shifts = torch.arange(SIGN_BITS - 1, -1, -1, dtype=torch.int32, device=chunk.device)
        scratch.bufs[skey] = shifts
    if idt == torch.int64:
        bits = torch.bitwise_left_shift(words, shifts).bitwise_and_(_INT32_MIN)
        masks.view(rows, SIGN_BITS).copy_(bits).bitwise_left_shift_(32)
    else:
        torch.bitwise_left_shift(words, shifts, out=masks.view(rows, SIGN_BITS))
        masks.bitwise_and_(_INT32_MIN)
    scratch.tags[key] = tag
    return masks


def flip_(buf: Tensor, masks: Tensor, scratch: Optional[Scratch] = None) -> Tensor:
    """Apply the random signs in place (an XOR of the sign bits). ``buf`` a scratch
    buffer: pass the ``Scratch`` to reuse its views."""
    (buf.view(masks.dtype) if scratch is None else scratch.view(buf, masks.dtype)).bitwise_xor_(
        masks
    )
    return buf


def fold(buf: Tensor, k: int, scratch: Optional[Scratch] = None) -> Tensor:
    """Sum a sign-flipped padded buffer into its ``k`` buckets: float32 over groups of 32
    rows of ``k``, then float64 (see ``acc_dtype``) over the groups, because sketches are
    differenced across the step (S theta_after - S theta_before)."""
    shape = (buf.numel() // k // SIGN_BITS, SIGN_BITS, k)  # rows: a multiple of 32
    part = (buf.view(shape) if scratch is None else scratch.view(buf, shape)).sum(1)
    return part.sum(0, dtype=acc_dtype(buf.device))


def fold_noise(buf: Tensor, k: int, scratch: Scratch, scale: float = 1.0) -> Tensor:
    """``fold`` for a sketch that is never differenced (the gradient's, for the noise
    EMA): the column sums of ``buf`` viewed as (rows, k), as ONE BLAS matrix-vector product
    in the buffer's dtype. Measured on CPU (one thread): 0.52 ms against 0.92 ms for
    ``fold`` at 4.7M elements, relative error 1e-6 (``fold``: 1e-8), far below the
    sketch's own ~2 %. ``scale``: the sums x ``scale``, at no extra cost."""
    rows = buf.numel() // k
    vkey = (buf.data_ptr(), buf.numel(), buf.dtype, "cols", k)
    mat = scratch.views.get(vkey)
    if mat is None:
        mat = scratch.views[vkey] = buf.view(rows, k).t()
    okey = ("ones", buf.dtype, buf.device)
    ones = scratch.bufs.get(okey)
    if ones is None or ones.numel() != rows or scratch.tags.get(okey) != scale:
        ones = scratch.bufs[okey] = torch.full((rows,), scale, dtype=buf.dtype, device=buf.device)
        scratch.tags[okey] = scale
    return torch.mv(mat, ones)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> of two flat buffers: one BLAS dot, 0-d, in the buffers' dtype (MKL's float32
    dot is ~5x more accurate than ``vector_norm(x) ** 2`` for squared norms: measured
    relative error 8e-6 at 0.46M elements and 4e-4 at 16.8M, against 4e-5 and 2e-3).
    <g, theta> is differenced across the step (<g, theta_after> - <g, theta_before>);
    the rounding error of that difference is ~1e-7 ||g|| ||theta|| (measured), i.e.
    ~1e-7 ||theta|| / ||delta theta|| on the cosine: 1e-4 at a relative update of 1e-6
    per step (the sketch's error is ~1e-2)."""
    return torch.dot(a, b)
