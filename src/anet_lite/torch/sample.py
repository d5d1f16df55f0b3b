"""The tap's block sample (``GradNoiseTap(sample=R)``): which elements, and how they are
copied into a chunk's flat buffer.

``sample_ranges`` picks the blocks (a stratified systematic sample: every element kept
with probability exactly 1/R, small parameters kept whole and down-weighted), ``plan`` in
``sketch.py`` lays them out in chunks, ``fill_sampled`` copies the parameters' sample with
one ``_foreach_copy_`` from views made once per layout, and ``fill_sampled_grads`` the
gradients' (new tensors every step, so no view of them is kept) through batches of whole
gradients: a few ops per step whatever the number of tensors. ``mix`` (splitmix64)
seeds both the phases here and the sketch's signs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # (sketch.py imports this module)
    from .sketch import Chunk, Seg

__all__ = [
    "SAMPLE_BLOCKS",
    "SAMPLE_MIN_BLOCKS",
    "SAMPLE_UNIT",
    "fill_sampled",
    "fill_sampled_grads",
    "mix",
    "prescale",
    "sample_block",
    "sample_ranges",
    "sampled_runs",
]


_MASK64 = (1 << 64) - 1


def mix(*parts: int) -> int:
    """splitmix64 over the parts: a well-spread 64-bit generator seed."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


SAMPLE_UNIT = 128  # sampled blocks start and end on multiples of this many elements
SAMPLE_BLOCKS = 1024  # about this many sampled blocks per group (segments per fill)
SAMPLE_MIN_BLOCKS = 4  # a parameter that would keep fewer blocks is kept whole


def sample_block(total: int, rate: int, blocks: int = SAMPLE_BLOCKS) -> int:
    """The block length of ``sample_ranges`` for ``total`` elements (a multiple of
    ``SAMPLE_UNIT``)."""
    return max(SAMPLE_UNIT, -(-total // (rate * blocks * SAMPLE_UNIT)) * SAMPLE_UNIT)


def sample_ranges(
    sizes: Sequence[int], rate: int, seed: int, blocks: int = SAMPLE_BLOCKS
) -> List[Optional[List[Tuple[int, int]]]]:
    """A stratified systematic block sample of a group's parameters (sizes in elements).

    Blocks are B elements (a multiple of ``SAMPLE_UNIT``, about N / (rate x ``blocks``)
    for N elements in all; ``fill_sampled`` copies a parameter's blocks in one strided
    copy). A parameter of at least ``SAMPLE_MIN_BLOCKS``
    x ``rate`` x B elements keeps one block in every ``rate`` from its own phase drawn from
    ``seed``, wrapping around its start, so each of its elements is kept with probability
    exactly 1/``rate``: ``rate`` x a sum over the kept elements is unbiased. A smaller
    parameter (biases, norms: few elements, often large values) is kept whole (None) and
    weighted 1, by storing it x 1/sqrt(``rate``) (``Chunk.prescale``). Contiguous ranges
    keep the copies multi-tensor and read whole cache lines."""
    unit = SAMPLE_UNIT
    blk = sample_block(sum(sizes), rate, blocks)
    period = rate * blk
    gen = torch.Generator().manual_seed(mix(seed, rate, blk))
    out: List[Optional[List[Tuple[int, int]]]] = []
    for n in sizes:
        if n < SAMPLE_MIN_BLOCKS * period:
            out.append(None)
            continue
        phase = int(torch.randint(0, period // unit, (1,), generator=gen)) * unit
        ranges = [(0, phase + blk - period)] if phase + blk > period else []
        start = phase
        while start < n:
            ranges.append((start, min(start + blk, n)))
            start += period
        out.append(ranges)
    return out


def prescale(chunk: Chunk, buf: Tensor) -> None:
    """Weight the parameters kept whole (the chunk's first ``prescale`` elements)."""
    v = chunk.cache.get(("pre", buf.data_ptr()))
    if v is None:
        v = chunk.cache[("pre", buf.data_ptr())] = buf[: chunk.prescale]
    v.mul_(chunk.weight)


Runs = List[Tuple[int, List[Tuple[int, int, int]], List[Tuple[int, int]]]]


def sampled_runs(chunk: Chunk) -> Runs:
    """A sampled chunk's copy plan, per parameter: (its first segment, its runs of >= 2
    whole blocks at the sampling period as (count, first element, buffer offset), its
    other segments as (segment, buffer offset)). A run is ONE strided copy, so a fill
    costs a few ops per parameter rather than one per block (each op costs host time;
    with a fast step on a GPU the host is what the step waits for)."""
    plan = chunk.cache.get("runs")
    if plan is not None:
        return plan
    segs, plan, offs, off = chunk.segs, [], [], 0
    for seg in segs:
        offs.append(off)
        off += seg.end - seg.start
    blk, period = chunk.block, chunk.period
    i = 0
    while i < len(segs):
        j = i
        while j + 1 < len(segs) and segs[j + 1].param is segs[i].param:
            j += 1
        rows, singles, k = [], [], i
        while k <= j:
            m = k
            if segs[k].end - segs[k].start == blk:
                while (
                    m + 1 <= j
                    and segs[m + 1].end - segs[m + 1].start == blk
                    and segs[m + 1].start - segs[m].start == period
                ):
                    m += 1
            if m > k:
                rows.append((m - k + 1, segs[k].start, offs[k]))
            else:
                singles.append((k, offs[k]))
            k = m + 1
        plan.append((i, rows, singles))
        i = j + 1
    chunk.cache["runs"] = plan
    return plan


def _dst_views(chunk: Chunk, buf: Tensor, runs: Runs) -> List[Tuple[List[Tensor], List[Tensor]]]:
    """Views of ``buf`` per parameter of ``runs``: (one (count, block) view per run, one
    flat view per other segment). Cached per buffer: the tap alternates two buffers
    (theta_before / theta_after swap roles), so one cache entry would never hit."""
    key = (buf.data_ptr(), buf.dtype, buf.numel())
    cache = chunk.cache.setdefault("dst", {})
    views = cache.get(key)
    if views is None:
        blk, segs = chunk.block, chunk.segs
        views = cache[key] = [
            (
                [buf[o : o + n * blk].view(n, blk) for n, _, o in rows],
                [buf[o : o + segs[k].end - segs[k].start] for k, o in singles],
            )
            for _, rows, singles in runs
        ]
    return views


def _src_views(
    chunk: Chunk, i: int, rows: Any, singles: Any, flat: Tensor, at: int = 0
) -> List[Tensor]:
    """Views of ``flat`` (parameter ``i``'s elements, starting at element ``at`` of
    ``flat``) lined up with ``_dst_views``: one strided view per run of blocks, then the
    other segments."""
    blk, period, segs = chunk.block, chunk.period, chunk.segs
    base = flat.storage_offset() + at
    out = [flat.as_strided((n, blk), (period, 1), base + start) for n, start, _ in rows]
    out += [flat[at + segs[k].start : at + segs[k].end] for k, _ in singles]
    return out


def _flat_pairs(chunk: Chunk, buf: Tensor, runs: Runs, dst_views: Any) -> Tuple[List, List]:
    """(dst, src) for one ``_foreach_copy_`` of the parameters' sampled elements: views
    of parameters that keep their storage while the layout holds (its key has their
    data_ptr), so they are made once per layout and buffer."""
    cache = chunk.cache.setdefault("params", {})
    key = (buf.data_ptr(), buf.dtype, buf.numel())
    pair = cache.get(key)
    if pair is None:
        dst: List[Tensor] = []
        src: List[Tensor] = []
        for (i, rows, singles), (rd, sd) in zip(runs, dst_views):
            dst += rd + sd
            src += _src_views(chunk, i, rows, singles, chunk.segs[i].param.detach().reshape(-1))
        pair = cache[key] = (dst, src)
    return pair


def fill_sampled(
    chunk: Chunk, buf: Tensor, get: Callable[[Seg], Optional[Tensor]], params: bool = False
) -> Tensor:
    """``fill`` / ``fill_params`` (``params=True``: ``get`` reads the parameters) for a
    sampled chunk (``sampled_runs``), then the prescale of the parameters kept whole.
    Contiguous plain parameters: ONE ``_foreach_copy_`` from views made once per layout.
    Otherwise (gradients, DTensors): one strided copy per run of blocks and one
    ``_foreach_copy_`` for the rest (gradients: see ``fill_sampled_grads``)."""
    runs = sampled_runs(chunk)
    views = _dst_views(chunk, buf, runs)
    if params and chunk.views_stay:
        dst, src = _flat_pairs(chunk, buf, runs, views)
        torch._foreach_copy_(dst, src)
        if chunk.prescale:
            prescale(chunk, buf)
        return buf
    blk, period, segs = chunk.block, chunk.period, chunk.segs
    dst: List[Tensor] = []
    src: List[Tensor] = []
    for (i, rows, singles), (rd, sd) in zip(runs, views):
        t = get(segs[i])
        if t is None:
            for v in (*rd, *sd):
                v.zero_()
            continue
        flat = t.reshape(-1)
        base = flat.storage_offset()
        for (n, start, _), d in zip(rows, rd):
            d.copy_(flat.as_strided((n, blk), (period, 1), base + start))
        for (k, _), d in zip(singles, sd):
            dst.append(d)
            src.append(flat[segs[k].start : segs[k].end])
    if dst:
        torch._foreach_copy_(dst, src)
    if chunk.prescale:
        prescale(chunk, buf)
    return buf


class _GradBatch:
    """Whole gradients copied with one ``_foreach_copy_`` into a flat buffer (``views``:
    parameter-shaped views of it), and the copy of their sampled elements out of it
    (``dst`` <- ``src``, views made once)."""

    __slots__ = ("dst", "n", "params", "part", "src", "views")

    def __init__(self) -> None:
        self.part: Optional[Tensor] = None  # the buffer's first ``n`` elements (a view)
        self.params: List[Tensor] = []
        self.views: List[Tensor] = []
        self.dst: List[Tensor] = []
        self.src: List[Tensor] = []
        self.n = 0


def _grad_plan(
    chunk: Chunk, buf: Tensor, full: Tensor, limit: int
) -> Tuple[List[_GradBatch], List[int]]:
    """Batches of whole parameters of at most ``limit`` elements each (``full`` holds one
    at a time), and the indices into ``sampled_runs`` of the parameters above ``limit``
    (copied run by run from the gradient, as ``fill_sampled`` does)."""
    runs = sampled_runs(chunk)
    views = _dst_views(chunk, buf, runs)
    batches: List[_GradBatch] = []
    big: List[int] = []
    cur = _GradBatch()
    for idx, ((i, rows, singles), (rd, sd)) in enumerate(zip(runs, views)):
        p = chunk.segs[i].param
        n = p.numel()
        if n > limit:
            big.append(idx)
            continue
        if cur.n + n > limit:
            batches.append(cur)
            cur = _GradBatch()
        cur.params.append(p)
        cur.views.append(full[cur.n : cur.n + n].view(p.shape))
        cur.dst += rd + sd
        cur.src += _src_views(chunk, i, rows, singles, full, cur.n)
        cur.n += n
    if cur.n:
        batches.append(cur)
    return batches, big


def fill_sampled_grads(chunk: Chunk, buf: Tensor, full: Tensor, limit: int) -> Optional[Tensor]:
    """The sampled gradient of a chunk that holds every sampled element of its
    parameters, in a number of ops that does not grow with the number of parameters:
    per batch of whole gradients (``limit`` elements, in ``full``), one
    ``_foreach_copy_`` in, one BLAS dot (the exact sum of g**2: float32 accumulation
    whatever the gradients' dtype) and one ``_foreach_copy_`` of the sampled elements
    out. Returns the exact sum of g**2 over the chunk's parameters (0-d, the work dtype),
    or None (nothing copied) where a gradient is missing."""
    key = (buf.data_ptr(), buf.dtype, buf.numel(), full.data_ptr(), limit)
    plan = chunk.cache.get("grads")
    if plan is None or plan[0] != key:
        plan = chunk.cache["grads"] = (key, *_grad_plan(chunk, buf, full, limit))
    batches, big = plan[1], plan[2]
    total: Optional[Tensor] = None
    for b in batches:
        grads = [p.grad for p in b.params]
        if any(g is None for g in grads):
            return None
        torch._foreach_copy_(b.views, grads)
        part = b.part
        if part is None:
            part = b.part = full[: b.n] if b.n != full.numel() else full
        sq = torch.dot(part, part)
        torch._foreach_copy_(b.dst, b.src)
        total = sq if total is None else total + sq
    if big:
        sq = _fill_big(chunk, buf, big)
        if sq is None:
            return None
        total = sq if total is None else total + sq
    if chunk.prescale:
        prescale(chunk, buf)
    return total


def _fill_big(chunk: Chunk, buf: Tensor, big: List[int]) -> Optional[Tensor]:
    """The parameters above the batch limit: run-by-run copies from the gradient and
    their exact sum of g**2 (a float32 multi-tensor norm for low-precision gradients,
    not a dot in their dtype)."""
    runs = sampled_runs(chunk)
    views = _dst_views(chunk, buf, runs)
    grads = [chunk.segs[runs[idx][0]].param.grad for idx in big]
    if any(g is None for g in grads):
        return None
    dst: List[Tensor] = []
    src: List[Tensor] = []
    for idx, g in zip(big, grads):
        i, rows, singles = runs[idx]
        rd, sd = views[idx]
        dst += rd + sd
        src += _src_views(chunk, i, rows, singles, g.reshape(-1))
    torch._foreach_copy_(dst, src)
    if all(g.dtype == buf.dtype for g in grads):
        flats = [g.reshape(-1) for g in grads]
        return torch.stack([torch.dot(f, f) for f in flats]).sum()
    norms = torch.stack(torch._foreach_norm(grads, 2, dtype=buf.dtype))
    return torch.dot(norms, norms)

