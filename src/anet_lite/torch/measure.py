"""The tap's per-chunk measurements (a mixin of ``GradNoiseTap``; see tap.py for the API).

One chunk's gradient (``_grad_chunk``: its row of gradient slots, the sketch of g, the
noise EMA, <g, theta_before>) and update (``_update_chunk``: the dots and sketch products
of the update slots), the layout check, and the EMA / theta_before buffers. A model in
one chunk per group takes the exact ``_flat`` variants (theta_before kept in the
scratch); several chunks are sketched. Every device op counts (``stepstats`` says why),
so these stay terse. ``GradNoiseTap.__init__`` creates the attributes used here.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .ema import store_dtype
from .sample import fill_sampled_grads
from .sketch import (
    SIGN_BITS,
    Chunk,
    Seg,
    acc_dtype,
    dot,
    fill,
    fill_params,
    flip_,
    fold,
    fold_noise,
    local,
    plan,
    sign_masks,
)
from .stepstats import MAX_ABS_GRAD, N_SLOTS, RANKS

__all__ = [
    "RESCAN",
    "Buffers",
    "ChunkMeasure",
    "Parts",
    "Row",
    "as_row",
    "row_device",
    "row_scales",
    "row_values",
    "scale_vector",
    "scaled",
    "sum_rows",
]


Row = Union[Tensor, Tuple[Tensor, ...]]
"""A run of stats slots: a 1-d tensor, or its 0-d parts not stacked yet (one chunk: a CPU
caller reads them with ``row_values`` and skips the stack, the costliest small op here)."""


class Parts(tuple):
    """A row's 0-d parts with a host factor per part (``scales``; a sample's x R), applied
    where the row is read (``as_row``, ``row_values``) rather than by ops on the device
    each step. Make with ``scaled``. ``row_values`` keeps what it read in ``values``
    (the parts are not changed in place later: a row read again, as the previous step's,
    costs no read)."""

    scales: Tuple[float, ...] = ()
    values: Optional[List[float]] = None


def scaled(parts: Sequence[Tensor], scales: Sequence[float]) -> Parts:
    """``parts`` to be read x ``scales`` (one factor per part)."""
    out = Parts(parts)
    out.scales = tuple(scales)
    return out


def row_scales(row: Row) -> Tuple[float, ...]:
    """The host factors of a row of parts (all 1.0 for a plain tuple)."""
    sc = getattr(row, "scales", ())
    return sc if sc else (1.0,) * len(row)


_VECTORS: Dict[Tuple[Any, ...], Tensor] = {}


def scale_vector(scales: Tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``scales`` as a 1-d tensor on ``device``, made once (by fills: a host tensor copied
    over would sync on CUDA)."""
    key = (scales, device, dtype)
    t = _VECTORS.get(key)
    if t is None:
        t = torch.ones(len(scales), dtype=dtype, device=device)
        for i, v in enumerate(scales):
            if v != 1.0:
                t.select(0, i).fill_(v)
        if len(_VECTORS) > 64:  # (a few layouts per process)
            _VECTORS.clear()
        _VECTORS[key] = t
    return t


def as_row(row: Row) -> Tensor:
    """The row as one tensor (a stack of the parts promotes them to the stats dtype;
    ``Parts``: then x its scales)."""
    if isinstance(row, Tensor):
        return row
    t = torch.stack(row)
    sc = getattr(row, "scales", ())
    return t * scale_vector(sc, t.device, t.dtype) if sc else t


_KNOWN: Dict[int, Tuple[Any, float]] = {}
"""The taps' cached 0-d constants (``ChunkMeasure._consts``) by id: (a weak reference,
the value). ``row_values`` does not read them back (each read is an op); an entry goes
with its tensor. (Not a WeakKeyDictionary: its lookups compare tensors with ``==``.)"""


def row_values(row: Row) -> List[float]:
    """The row as Python floats (the same numbers as ``as_row(row).tolist()``). Syncs off
    the CPU. A part that appears twice, or is one of the tap's constants, is read once /
    not at all."""
    if isinstance(row, Tensor):
        return row.tolist()
    memo = getattr(row, "values", None)
    if memo is not None:
        return list(memo)
    seen: Dict[int, float] = {}
    out = []
    for t in row:
        k = id(t)
        v = seen.get(k)
        if v is None:
            known = _KNOWN.get(k)
            v = seen[k] = known[1] if known is not None and known[0]() is t else t.item()
        out.append(v)
    sc = getattr(row, "scales", ())
    if sc:
        out = [v * f for v, f in zip(out, sc)]
    if isinstance(row, Parts):
        row.values = list(out)
    return out


def row_device(row: Row) -> torch.device:
    return (row if isinstance(row, Tensor) else row[0]).device


def sum_rows(rows: Sequence[Row], grad: bool) -> Row:
    """Per-chunk stats rows summed (on the first one's device); for gradient rows
    ``RANKS`` stays 1 and ``MAX_ABS_GRAD`` is the max. No sync."""
    if len(rows) == 1:
        return rows[0]
    dev = row_device(rows[0])
    t = torch.stack([as_row(r).to(dev) for r in rows])
    out = t.sum(0)
    if grad:  # (select + fill_/copy_: an item assignment of a Python float syncs on CUDA)
        out.select(0, RANKS).fill_(1.0)
        out.select(0, MAX_ABS_GRAD).copy_(t[:, MAX_ABS_GRAD].amax())
    return out


RESCAN = 100  # measure calls between walks of the module tree (see ``_layout``)
CPU_SAMPLE_FROM = 2**21  # sample="auto" on a CPU: above this many elements, ...
CPU_SAMPLE = 16  # ... the update statistics on 1 in this many, the noise on every element
CPU_KEEP = 0.25  # ... unless the sample keeps more than this share (parameters kept whole)


class Buffers(dict):
    """Name -> buffer dict that counts replacements, so cached views notice them (e.g. a
    checkpoint restore assigning ``tap.m[name] = tensor`` instead of ``copy_``)."""

    version = 0

    def _bump(self) -> None:
        self.version += 1

    def __setitem__(self, key: str, value: Tensor) -> None:
        self._bump()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._bump()
        super().__delitem__(key)

    def clear(self) -> None:
        self._bump()
        super().clear()

    def pop(self, *args: Any) -> Any:
        self._bump()
        return super().pop(*args)

    def popitem(self) -> Any:
        self._bump()
        return super().popitem()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._bump()
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._bump()
        return super().setdefault(key, default)


class ChunkMeasure:
    """Per-chunk measurement methods; state lives on the ``GradNoiseTap``."""

    def _empty_row(self, device: torch.device) -> Tensor:
        """A full stats row of a step with nothing measured: zeros, ``RANKS`` 1."""
        t = torch.zeros(N_SLOTS, dtype=acc_dtype(device), device=device)
        t.select(0, RANKS).fill_(1.0)  # (an item assignment would sync on CUDA)
        return t

    def _primary_device(self, chunks: List[Chunk]) -> torch.device:
        if chunks:
            return chunks[0].device
        for p in self.model.parameters():
            if p.requires_grad:
                return local(p).device
        return torch.device("cpu")

    def _layout(self) -> List[Chunk]:
        """Chunks of the parameters that have a gradient now; cached while unchanged.

        The module tree is re-walked every ``RESCAN`` calls (walking it costs more than
        the rest of this check): parameters added to the model later join within that."""
        self._calls += 1
        if self._named is None or self._calls % RESCAN == 0:
            named = [
                (n, p, callable(getattr(p, "to_local", None)))
                for n, p in self.model.named_parameters()
            ]
            if self._named is None or [id(t[1]) for t in named] != [id(t[1]) for t in self._named]:
                self._layout_key = None  # another set of parameters: plan anew
            self._named = named
            self._params = [p for _, p, _ in named]
            self._plain = not any(dist for _, _, dist in named)
        # one cheap pass (each step): which have a gradient, and where
        if self._plain:
            key_t = [
                p.data_ptr() if p.grad is not None and p.requires_grad else 0 for p in self._params
            ]
        else:
            key_t = [
                local(p).data_ptr() if p.grad is not None and p.requires_grad else 0
                for p in self._params
            ]
        if key_t == self._layout_key:
            return self._chunks
        items = []
        for name, p, _ in self._named:
            lp = local(p)
            if p.requires_grad and p.grad is not None and lp.is_floating_point():
                items.append((name, p, lp))
        # (global sizes: a DTensor's numel is its whole tensor's, so every rank agrees)
        self.measured_numel = sum(p.numel() for _, p, _ in items)
        if self.sample_auto:
            self._auto_layout(items)
        chunks, order = self._plan(items)
        if self.full_noise and not (
            len(chunks) == 1 and chunks[0].views_stay and chunks[0].n <= CPU_KEEP * self._numel
        ):  # the whole gradient is not in one buffer, or most parameters are too small to
            self.sample, self.full_noise = 1, False  # be sampled: measure every element
            chunks, order = self._plan(items)
        if self._auto_limits and self.sample > 1 and not all(c.sole for c in chunks):
            # memory="low": a sample that does not fit one chunk (parameters too small to
            # be sampled are kept whole) saves nothing; measure every element in chunks
            self.sample = 1
            chunks, order = self._plan(items)
        if self.sample > 1:  # tap.m then holds the sampled elements of each parameter
            shapes = {n: (c,) for runs in order.values() for n, _, c in runs}
        else:
            shapes = {name: lp.shape for name, _, lp in items}
        by_dev: Dict[torch.device, List[Tuple[Tensor, bool]]] = {}
        for _, p, lp in items:  # (all have a gradient now: the layout key says so)
            by_dev.setdefault(lp.device, []).append((p, callable(getattr(p, "to_local", None))))
        self._all_grads = list(by_dev.items())
        self._order = {g: [(n, o, c, shapes[n]) for n, o, c in runs] for g, runs in order.items()}
        self._layout_key, self._chunks = key_t, chunks
        self._m_sync = None  # EMA views are rebuilt for the new layout
        self._sk_m.clear()  # sketches of another layout are not comparable
        self._sk_theta.clear()
        return chunks

    def _auto_layout(self, items: List[Tuple[str, Tensor, Tensor]]) -> None:
        """``sample="auto"``: the sample size for these parameters (``auto_sample``), and on
        a CPU from ``CPU_SAMPLE_FROM`` elements up (one process's flat buffers beyond the
        caches, each pass over them a pass over memory) ``CPU_SAMPLE`` for the update
        statistics with the noise sketched from every element (``full_noise``)."""
        numel = self._numel = sum(lp.numel() for _, _, lp in items)
        self.sample = self.auto_sample(numel, *(self._auto_limits or ()))
        self.full_noise = False
        if (
            self.sample == 1
            and self._auto_limits is None
            and (self.ema is None or self.noise == "sketch")
            and CPU_SAMPLE_FROM < numel <= self.chunk_numel
            and all(lp.device.type == "cpu" for _, _, lp in items)
        ):
            self.sample, self.full_noise = CPU_SAMPLE, True
        self._scales.clear()

    def _plan(self, items: List[Tuple[str, Tensor, Tensor]]) -> Tuple[List[Chunk], Any]:
        """``sketch.plan`` with the tap's settings; marks each group's only chunk. The CPU
        sample (``full_noise``) takes the smallest blocks, as ``memory="low"``, so that
        parameters of ~10k elements are sampled too."""
        chunks, order = plan(
            items,
            self.chunk_numel,
            SIGN_BITS * self.sketch_buckets,
            self.sample,
            self.seed,
            2**40 if self.full_noise else self.sample_blocks,
        )
        per_group: Dict[Any, int] = {}
        for c in chunks:
            per_group[c.group] = per_group.get(c.group, 0) + 1
        for c in chunks:
            c.sole = per_group[c.group] == 1
        return chunks, order

    def _ema_slice(self, chunk: Chunk) -> Tensor:
        """The chunk's run of its group's flat EMA buffer; ``tap.m`` holds views of it."""
        m = self.m
        sync = (id(m), getattr(m, "version", None), self._layout_key)
        if sync[1] is None or sync != self._m_sync:
            flats = {}
            for (device, wdtype), runs in self._order.items():
                dt = store_dtype(self.ema_dtype, wdtype)
                flat = torch.zeros(sum(r[2] for r in runs), dtype=dt, device=device)
                for name, off, n, _shape in runs:
                    old = m.get(name)
                    if old is not None and old.numel() == n:
                        flat[off : off + n].copy_(old.detach().reshape(-1))
                flats[(device, wdtype)] = flat
            for group, runs in self._order.items():
                for name, off, n, shape in runs:
                    m[name] = flats[group][off : off + n].view(shape)
            self._m_flat = flats
            self._m_sync = (id(m), getattr(m, "version", None), self._layout_key)
        return self._m_flat[chunk.group][chunk.offset : chunk.offset + chunk.n]

    def _int8_sync(self) -> None:
        """The int8 EMA store (ema.py) follows the current layout."""
        self._compact.sync(self._order, self._layout_key)

    def _ema_step(self, chunk: Chunk, g: Tensor, w: Tensor) -> Tensor:
        """||m - g||^2 and m <- w (m - g) + g; a compact EMA (ema.py) in a work buffer."""
        cp = self._compact
        if cp is not None and cp.int8:
            self._int8_sync()
            return cp.step_int8(chunk, g, w)
        m = self._ema_slice(chunk)
        if m.dtype != g.dtype:
            return cp.step_cast(chunk, m, g, w)  # type: ignore[union-attr]
        m.sub_(g)
        nsq = dot(m, m)
        m.mul_(w).add_(g)
        return nsq

    def _before_views(self, chunk: Chunk) -> Tuple[List[Tensor], List[Tensor]]:
        cached = chunk.cache.get("before")
        if cached is not None and cached[0] == self._before.version:  # type: ignore[attr-defined]
            return cached[1], cached[2]
        dst, src = [], []
        contiguous = True
        for seg in chunk.segs:
            lp = seg.local()
            buf = self._before.get(seg.name)
            if buf is None or (buf.device, buf.shape, buf.dtype) != (lp.device, lp.shape, lp.dtype):
                buf = torch.empty(lp.shape, dtype=lp.dtype, device=lp.device)
                self._before[seg.name] = buf
            contiguous = contiguous and lp.is_contiguous()
            dst.append(buf.view(-1)[seg.start : seg.end])
            src.append(lp.detach().reshape(-1)[seg.start : seg.end])
        if contiguous:
            chunk.cache["before"] = (self._before.version, dst, src)  # type: ignore[attr-defined]
        return dst, src

    def _masks(self, chunk: Chunk) -> Tensor:
        return sign_masks(chunk, self.seed, self._scratch, self._gens)

    def _measured_grad(self, chunk: Chunk, part: Dict[str, Any]) -> Tensor:
        """This step's measured gradient (NaN/inf zeroed), unflipped, as a flat buffer."""
        g = part.get("G")
        if g is not None:
            if part.get("flipped"):
                flip_(g, self._masks(chunk), self._scratch)
                part["flipped"] = False
            return g
        g = fill(chunk, self._scratch.get("g", chunk), Seg.grad)
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        if self._grad_scale is not None:
            g.div_(self._grad_scale.to(g.dtype))
        return g

    def _grad_chunk(self, chunk: Chunk, full: bool, keep: bool = False) -> Dict[str, Any]:
        """Measure one chunk's gradient; ``out["row"]`` is its gradient row (slots 0-3 of
        ``stepstats``, as a ``Row`` of 0-d parts). Each op counts (see ``stepstats``),
        hence the terse code."""
        k, ema = self.sketch_buckets, self.ema
        consts = self._consts(chunk.device)
        out: Dict[str, Any] = {}
        g = self._fill_grad(chunk, out)
        gsq = dot(g, g)  # NaN/inf iff g holds a NaN/inf (or |g| > ~1e19 in float32)
        if self.max_abs:
            lo, hi = torch.aminmax(g)
            mx = torch.maximum(hi, lo.neg())  # NaN propagates
        else:
            mx = consts[2]
        nsq = consts[0]
        if ema is not None and self.noise == "exact":
            # In place, no temporaries: m <- m - g; ||m - g||; m <- decay (m - g) + g, with
            # ||g - m_new|| = ema ||g - m_old||. A non-finite chunk leaves its EMA alone.
            out["ok"] = ok = torch.isfinite(gsq)
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
            nsq = self._ema_step(chunk, g[: chunk.n], torch.where(ok, ema, 1.0))
        if full and self.exact_update:
            dst, src = self._before_views(chunk)
            torch._foreach_copy_(dst, src)
        if full and keep and not self.exact_update:
            return self._grad_chunk_flat(chunk, g, out, gsq, nsq, mx)
        sketch = full and not self.exact_update  # (several chunks: one goes the flat way)
        if sketch:
            # <g, theta_before> unflipped, before g is flipped for its sketch; S theta_before
            # is the last measure_update's S theta_after unless something moved the
            # parameters since (version counters).
            p = fill_params(chunk, self._scratch.get("p", chunk))
            out["dot"] = dot(g, p)
            versions = chunk.param_versions()
            cached = self._sk_theta.get(chunk.index)
            same = cached is not None and versions is not None and cached[1] == versions
        noise_here = ema is not None and self.noise == "sketch" and "nsq" not in out
        if sketch or noise_here:
            masks = self._masks(chunk)
            if sketch:
                out["sk_before"] = (
                    cached[0] if same else fold(flip_(p, masks, self._scratch), k, self._scratch)
                )
            out["sk_g"] = sk_g = fold(flip_(g, masks, self._scratch), k, self._scratch)
            out["flipped"] = True
            if noise_here:
                nsq = self._sketch_noise(chunk, sk_g, out)
        if full and keep:
            out["G"] = g
        out["row"] = (gsq, out.get("nsq", nsq), consts[1], mx, gsq)
        return out

    def _fill_grad(self, chunk: Chunk, out: Dict[str, Any]) -> Tensor:
        """The chunk's gradient in the "g" scratch buffer. A sampled chunk holding all of
        its group's sample copies whole gradients in batches and its sample out of them
        (``sample.fill_sampled_grads``: a few ops whatever the number of tensors), and
        sets ``out["exact_sq"]``, the exact sum of g**2 over its parameters."""
        buf = self._scratch.get("g", chunk)
        if chunk.weight != 1.0 and chunk.sole and chunk.views_stay:
            sq = fill_sampled_grads(chunk, buf, self._full_buffer(chunk), self.chunk_numel)
            if sq is not None:
                out["exact_sq"] = sq
                if self.full_noise and self.ema is not None:
                    self._full_noise(chunk, out)
                return buf
        return fill(chunk, buf, Seg.grad)

    def _full_buffer(self, chunk: Chunk) -> Tensor:
        """The work buffer that whole gradients are copied into (``fill_sampled_grads``):
        up to ``chunk_numel`` elements, the most one batch of them takes."""
        n = chunk.cache.get("full_n")
        if n is None:  # (once per layout: a sampled chunk has a segment per block)
            sizes = {id(s.param): s.param.numel() for s in chunk.segs}
            n = min(self.chunk_numel, sum(v for v in sizes.values() if v <= self.chunk_numel))
            chunk.cache["full_n"] = n
        if self.full_noise:  # padded for the sketch (Scratch.get zeroes the padding)
            whole = chunk.cache.get("whole")
            if whole is None:
                whole = chunk.cache["whole"] = Chunk(chunk.index, chunk.group, 0, chunk.gran)
                whole.n = n
            return self._scratch.get("full", whole)
        key = ("full", chunk.wdtype, chunk.device)
        buf = self._scratch.bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._scratch.bufs[key] = torch.empty(
                max(n, 1), dtype=chunk.wdtype, device=chunk.device
            )
        return buf

    def _full_noise(self, chunk: Chunk, out: Dict[str, Any]) -> None:
        """``full_noise``: the noise from the sketch of the WHOLE gradient, which
        ``fill_sampled_grads`` left in the full buffer (one batch): its signs flipped in
        place and folded with one matrix-vector product, x 1/sqrt(``sample``) so that the
        grad row's x ``sample`` leaves it whole. Sets ``out["nsq"]``."""
        plan = chunk.cache.get("grads")
        if plan is None or len(plan[1]) != 1 or plan[2]:
            return  # (not every gradient went through the buffer: the sample's noise)
        full = self._full_buffer(chunk)
        masks = sign_masks(chunk.cache["whole"], self.seed, self._scratch, self._gens)
        flip_(full, masks, self._scratch)
        sk_g = fold_noise(full, self.sketch_buckets, self._scratch, chunk.weight)
        out["nsq"] = self._sketch_noise(chunk, sk_g, out)

    def _grad_chunk_flat(
        self, chunk: Chunk, g: Tensor, out: Dict[str, Any], gsq: Tensor, nsq: Tensor, mx: Tensor
    ) -> Dict[str, Any]:
        """One chunk per group: theta_before stays in the "p" scratch buffer from the last
        step (unflipped), so the update is measured exactly, with fewer passes than the
        sketch: g stays unflipped, the sketch of g (for the noise EMA only) is folded from
        a flipped copy in the "q" buffer, which the update then reuses for theta_after."""
        if "nsq" in out:
            nsq = out["nsq"]
        elif self.ema is not None and self.noise == "sketch":
            q = self._scratch.get("q", chunk)
            masks = self._masks(chunk)
            iv = self._scratch.view
            torch.bitwise_xor(iv(g, masks.dtype), masks, out=iv(q, masks.dtype))
            nsq = self._sketch_noise(chunk, fold_noise(q, self.sketch_buckets, self._scratch), out)
        p = self._scratch.get("p", chunk)
        pkey = self._scratch.key("p", chunk)
        versions = chunk.param_versions()
        if versions is None or self._scratch.tags.get(pkey) != ("flat", chunk.index, versions):
            fill_params(chunk, p)  # moved since (a rollback, a load): read theta_before again
        self._scratch.tags[pkey] = None
        out["G"], out["flat"] = g, True
        out["row"] = (gsq, nsq, self._consts(chunk.device)[1], mx, gsq)
        return out

    def _sketch_noise(self, chunk: Chunk, sk_g: Tensor, out: Dict[str, Any]) -> Tensor:
        """Advance the EMA of S g; return ||S g - EMA_old||^2 (x ema^2 on the host)."""
        skm = self._sk_m.get(chunk.index)
        if skm is None:
            skm = self._sk_m[chunk.index] = torch.zeros_like(sk_g)
        diff = sk_g - skm  # the EMA of S g lags S g by ema * diff
        nsq = torch.dot(diff, diff)
        # Buckets a NaN/inf reached keep their EMA; the rest of a non-finite step is taken in
        # unless the step is undone (undo_ema: the Guard drops such steps). A whole-chunk
        # test would cost two more device ops every step. On CPU reading nsq is free, and
        # a finite nsq means a finite diff: the op is skipped then.
        if not (diff.is_cpu and math.isfinite(nsq.item())):
            diff.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        out["sk_diff"] = diff
        skm.add_(diff, alpha=1.0 - self.ema)
        return nsq

    def _update_chunk_flat(self, chunk: Chunk, part: Dict[str, Any]) -> Row:
        """delta = theta_after - theta_before exactly (see ``_grad_chunk_flat``); then the
        two buffers swap roles, so theta_after is the next step's theta_before."""
        sc = self._scratch
        q = fill_params(chunk, sc.get("q", chunk))  # theta_after
        p = sc.get("p", chunk)  # theta_before, then delta
        torch.sub(q, p, out=p)
        g = part["G"]  # the measured gradient (a clip after measure_grads does not touch it)
        part["G"] = None
        zero = self._consts(chunk.device)[0]
        row = (dot(p, p), zero, zero, dot(q, q), zero, dot(g, p))
        sc.swap("p", "q", chunk)
        sc.tags[sc.key("p", chunk)] = ("flat", chunk.index, chunk.param_versions())
        return row

    def _consts(self, device: torch.device) -> Tuple[Tensor, ...]:
        """Cached 0-d constants on ``device`` in the stats dtype: 0, 1, NaN."""
        c = self._constants.get(device)
        if c is None:
            acc = acc_dtype(device)
            zero, one = (
                torch.zeros((), dtype=acc, device=device),
                torch.ones((), dtype=acc, device=device),
            )
            nan = torch.full((), math.nan, dtype=acc, device=device)
            c = self._constants[device] = (zero, one, nan)
            for t, v in zip(c, (0.0, 1.0, math.nan)):
                _KNOWN[id(t)] = (weakref.ref(t), v)
                weakref.finalize(t, _KNOWN.pop, id(t), None)
        return c

    def _update_chunk(self, chunk: Chunk, part: Dict[str, Any]) -> Row:
        """One chunk's update row (slots ``N_GRAD_SLOTS`` on, see ``stepstats``)."""
        if part.get("flat"):
            return self._update_chunk_flat(chunk, part)
        p = fill_params(chunk, self._scratch.get("p", chunk))
        zero = self._consts(chunk.device)[0]
        if self.exact_update:
            g = self._measured_grad(chunk, part)
            b = fill(chunk, self._scratch.get("b", chunk), lambda s: self._before.get(s.name))
            psq = dot(p, p)
            torch.sub(p, b, out=b)
            return (dot(b, b), zero, zero, psq, zero, dot(b, g))
        # Several chunks: the gradient buffer holds another chunk by now, so g is read again
        # (and corrected for a scale applied since: see note_grad_scale); both unflipped.
        g = fill(chunk, self._scratch.get("g", chunk), Seg.grad)
        dot_after = dot(g, p)
        if self._grad_scale is not None:
            dot_after = dot_after / self._grad_scale.to(dot_after.dtype)
        masks = self._masks(chunk)
        sk_after = fold(flip_(p, masks, self._scratch), self.sketch_buckets, self._scratch)
        self._sk_theta[chunk.index] = (sk_after, chunk.param_versions())
        sk_g, sk_delta = part["sk_g"], sk_after - part["sk_before"]
        return (
            dot(sk_delta, sk_delta),
            dot(sk_delta, sk_g),
            dot(sk_g, sk_g),
            dot(p, p),
            part["dot"],
            dot_after,
        )
