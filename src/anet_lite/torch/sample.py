"""The tap's block sample (``GradNoiseTap(sample=R)``): which elements, and how they are
copied into a chunk's flat buffer.

``sample_ranges`` picks the blocks (a stratified systematic sample: every element kept
with probability exactly 1/R, small parameters kept whole and down-weighted), ``plan`` in
``sketch.py`` lays them out in chunks, and ``fill_sampled`` copies them with one strided
copy per run of blocks. ``mix`` (splitmix64) seeds both the phases here and the sketch's
signs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # (sketch.py imports this module)
    from .sketch import Chunk, Seg

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


def fill_sampled(chunk: Chunk, buf: Tensor, get: Callable[[Seg], Optional[Tensor]]) -> Tensor:
    """``fill`` / ``fill_params`` for a sampled chunk (``sampled_runs``): one strided copy
    per run of blocks, one ``_foreach_copy_`` for the rest, then the prescale of the
    parameters kept whole."""
    runs = sampled_runs(chunk)
    blk, period, segs = chunk.block, chunk.period, chunk.segs
    key = (buf.data_ptr(), buf.dtype, buf.numel())
    cached = chunk.cache.get("dst")
    if cached is None or cached[0] != key:
        views = [
            (
                [buf[o : o + n * blk].view(n, blk) for n, _, o in rows],
                [buf[o : o + segs[k].end - segs[k].start] for k, o in singles],
            )
            for _, rows, singles in runs
        ]
        cached = chunk.cache["dst"] = (key, views)
    dst: List[Tensor] = []
    src: List[Tensor] = []
    for (i, rows, singles), (rd, sd) in zip(runs, cached[1]):
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
