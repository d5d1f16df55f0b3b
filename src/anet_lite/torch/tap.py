"""Per-step gradient / update measurements for PyTorch training, with no host syncs.

``GradNoiseTap`` replaces the seed README's naive tap. The seed's tap did one
``.cpu().item()`` per parameter tensor (a host-device sync each: hundreds per step for a
transformer on GPU), summed per-tensor norms instead of taking a global norm, and its
"step norm" was the gradient norm again rather than the size of the parameter update.

Two ways to use it:

* ``tap.norm() -> float``: the seed's call, kept. Updates the gradient EMA and returns
  the gradient-noise norm. Returning a Python float costs exactly one sync.
* The no-sync path, meant for optimizer step hooks (``tap.attach(optimizer)`` registers
  them; a ``Guard`` can call the methods from its own hooks instead)::

      tap.measure_grads()    # step pre-hook: after backward (and any clipping)
      optimizer.step()
      tap.measure_update()   # step post-hook
      s = tap.stats()        # StepStats of the latest step whose copy has landed

  Everything is computed on the device and packed into one small tensor per step (layout:
  ``anet_lite.torch.stepstats``), copied to the host with one ``non_blocking`` copy into
  pinned memory. The flat chunk layout and the sketch live in ``anet_lite.torch.sketch``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .hostcopy import HostRing
from .sketch import (
    SIGN_BITS,
    Chunk,
    Scratch,
    Seg,
    acc_dtype,
    dot,
    fill,
    fill_params,
    flip_,
    fold,
    local,
    next_prime,
    plan,
    sign_masks,
)
from .stepstats import (
    GRAD_SQ,
    MAX_ABS_GRAD,
    N_GRAD_SLOTS,
    N_SLOTS,
    NOISE_SQ,
    RANKS,
    StepStats,
    stats_from_values,
)

__all__ = ["GradNoiseTap"]  # the stats vector and its slots: see stepstats.py


def _sum_rows(rows: Sequence[Tensor], grad: bool) -> Tensor:
    """Per-chunk stats rows summed (on the first one's device); for gradient rows
    ``RANKS`` stays 1 and ``MAX_ABS_GRAD`` is the max. No sync."""
    if len(rows) == 1:
        return rows[0]
    t = torch.stack([r.to(rows[0].device) for r in rows])
    out = t.sum(0)
    if grad:  # (select + fill_/copy_: an item assignment of a Python float syncs on CUDA)
        out.select(0, RANKS).fill_(1.0)
        out.select(0, MAX_ABS_GRAD).copy_(t[:, MAX_ABS_GRAD].amax())
    return out


_RESCAN = 100  # measure calls between walks of the module tree (see ``_layout``)


class _Buffers(dict):
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


class GradNoiseTap:
    """Gradient noise, update size and processivity per optimizer step, without syncs.

    ``GradNoiseTap(model, ema=0.9, *, noise="exact", sketch_dim=1024, exact_update=False,
    seed=0, chunk_numel=2**24, max_abs=True)``

    Parameters with ``requires_grad=False`` are ignored and parameters whose ``.grad`` is
    None are skipped for that step (frozen layers, unused branches). Gradients and
    parameters are read in chunks of at most ``chunk_numel`` elements per (device, dtype)
    into flat float32 scratch buffers (float64 for float64 parameters) and measured with a
    few single-kernel ops per chunk; all accumulation is in float32 or wider, so bf16/fp16
    parameters are measured at full precision.

    ``norm()`` is the true global L2 norm sqrt(sum over tensors of ||g_t - m_t||^2). The
    seed summed per-tensor norms, sum_t ||g_t - m_t||, which is not a norm of anything:
    it grows with the number of tensors the model is split into and it is not comparable
    with ``grad_norm`` or clipping thresholds. Values therefore differ from the seed's by
    up to a factor of sqrt(number of tensors).

    Update size without copying the parameters. <g, delta_theta> is exact up to float32
    rounding: <g, theta_after> - <g, theta_before>, two BLAS dots (error ~1e-7 ||g||
    ||theta||, i.e. ~1e-4 on the cosine at a relative update of 1e-6 per step; see
    ``sketch.dot``). ||delta_theta|| is estimated with the
    CountSketch of ``anet_lite.torch.sketch`` (p = ``sketch_buckets``, the smallest prime
    >= ``sketch_dim``; one random sign per element, fixed for the run): S delta_theta =
    S theta_after - S theta_before, where S theta_before is the previous step's
    S theta_after whenever the parameters' version counters show nothing touched them in
    between (in-place changes through ``.data`` bypass the counters: call
    ``params_changed()`` after those). The gradient is sketched too and used as a control
    variate: writing delta_theta = a g + r with a = <g, delta_theta> / ||g||^2 (exact),
    the estimate is a^2 ||g||^2 + ||S r||^2, unbiased, and only the part of the update
    orthogonal to g carries sketch error: a relative std of ~ (1 - cos^2) sqrt(1 / (2 p))
    <= 2.2% for ``update_norm`` (0 for plain SGD) and an absolute std of
    ~ |cos| (1 - cos^2) sqrt(1 / (2 p)) <= 0.009 for ``processivity``. Measured
    (tests/test_torch_tap.py, bench/overhead.py and docs/benchmarks.md section 3): median
    |relative error| of ``update_norm`` ~1%, max ~4-7% over 50-100 AdamW steps.
    ``exact_update=True`` keeps a copy of theta_before (+1x parameter memory, in the
    parameters' dtype) and measures exactly.

    Noise. ``noise="exact"`` (default) keeps the EMA m of the gradient in ``tap.m`` (one
    buffer per parameter name: views of one flat float32/float64 buffer per group, 1x the
    measured parameters; replace entries in place or by assignment, both are picked up).
    ``noise="sketch"`` keeps the EMA of S g instead (O(sketch_dim) memory, ``tap.m`` stays
    empty): since S is fixed and linear, ||S g - EMA(S g)|| = ||S (g - m)|| estimates the
    noise norm with a relative std of ~ sqrt(1 / (2 p)) (2.2%), at no extra pass over the
    gradient. ``ema=None`` measures no noise at all.

    Memory beyond the model: the EMA (above); O(p) per chunk for the sketches; scratch
    buffers of ``min(model, chunk_numel)`` elements each (gradient and parameters in the
    work dtype, int32 sign masks; +1 for ``exact_update``), kept between calls, so at most
    3 x 64 MiB at the default ``chunk_numel`` however large the model. With one chunk per
    (device, dtype) the scratch buffers also carry work across calls: the sign masks are
    made once, the flipped theta_after of one step is the next step's theta_before (no
    second copy of the parameters per step), and the gradient buffer of
    ``measure_grads`` serves ``measure_update`` (so a gradient clipped in between is seen
    consistently). Several chunks re-make the masks and re-read both per chunk and call
    (measured on an H100 at 100M parameters: Guard +10.5% of the step with 7 chunks,
    +4.6% with ``chunk_numel=2**27``, one chunk); re-read gradients are corrected for a
    clip factor passed to ``note_grad_scale`` (the ``Guard`` does).

    ``max_abs=False`` skips max |g| (one pass over the gradient less; ``max_abs_grad``
    is then NaN) and tells a non-finite gradient by <g, g> instead, which also flags a
    finite gradient whose squared norm overflows (|g| above ~1e19 in float32). The
    ``Guard`` builds its tap so.

    GPU lag: ``stats()`` never waits for the current step. It returns the newest step
    whose device->host copy has landed, normally the previous one (one step behind);
    ``stats(sync=True)`` waits for the current one. On CPU the copy is immediate, so
    ``stats()`` returns the current step. ``transfers`` counts device->host copies: one
    per published step.

    Assumes the optimizer does not modify ``.grad`` in place during ``step()`` (torch's
    optimizers do not).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ema: Optional[float] = 0.9,
        *,
        noise: str = "exact",
        sketch_dim: int = 1024,
        exact_update: bool = False,
        seed: int = 0,
        chunk_numel: int = 2**24,
        max_abs: bool = True,
    ) -> None:
        if not hasattr(model, "named_parameters"):
            raise TypeError(
                "model must be a torch.nn.Module (has named_parameters), "
                f"got {type(model).__name__}"
            )
        if ema is not None:
            if isinstance(ema, bool) or not isinstance(ema, (int, float)):
                raise TypeError(f"ema must be a float in [0, 1) or None, got {type(ema).__name__}")
            if not 0.0 <= float(ema) < 1.0:
                raise ValueError(f"ema must be in [0, 1) or None, got {ema!r}")
            ema = float(ema)
        if noise not in ("exact", "sketch"):
            raise ValueError(f"noise must be 'exact' or 'sketch', got {noise!r}")
        for name, val in (("sketch_dim", sketch_dim), ("chunk_numel", chunk_numel), ("seed", seed)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise TypeError(f"{name} must be an int, got {type(val).__name__}")
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
        if chunk_numel < 1:
            raise ValueError(f"chunk_numel must be >= 1, got {chunk_numel}")
        self.model = model
        self.ema = ema
        self.noise = noise
        self.exact_update = bool(exact_update)
        self.seed = seed
        self.sketch_dim = sketch_dim
        self.sketch_buckets = next_prime(sketch_dim)
        self.chunk_numel = chunk_numel
        self.max_abs = bool(max_abs)
        self.step = 0
        self.transfers = 0
        # EMA of the gradient per parameter name (the seed's ``m``), created on first use.
        self.m: Dict[str, Tensor] = _Buffers()
        self._before: Dict[str, Tensor] = _Buffers()
        self._layout_key: Optional[Tuple[Any, ...]] = None
        self._named: Optional[List[Tuple[str, Tensor, bool]]] = None
        self._params: List[Tensor] = []
        self._plain = True
        self._calls = 0
        self._chunks: List[Chunk] = []
        self._order: Dict[Tuple[torch.device, torch.dtype], List[Tuple[str, int, int]]] = {}
        self._m_flat: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}
        self._m_sync: Any = None
        self._sk_m: Dict[int, Tensor] = {}  # chunk index -> EMA of S g (noise="sketch")
        self._sk_theta: Dict[int, Tuple[Tensor, Any]] = {}  # chunk -> (S theta_after, versions)
        self._gens: Dict[torch.device, torch.Generator] = {}
        self._scratch = Scratch()
        self._constants: Dict[torch.device, Tuple[Tensor, ...]] = {}
        self._grad_state: Optional[Dict[str, Any]] = None
        self._grad_scale: Optional[Tensor] = None
        self._pending: Optional[Tensor] = None  # the rows concatenated, on demand
        self._rows: Optional[Tuple[Tensor, Optional[Tensor]]] = None
        self._pending_step = 0
        self._copies = HostRing(
            lambda values, step: stats_from_values(values, step, ema=self.ema, has_max=self.max_abs)
        )

    # ------------------------------------------------------------------ public API

    def norm(self) -> float:
        """Seed-compatible: update the EMA, return ||g - m|| as a float (one sync).

        The global L2 norm over all tensors (see the class docstring for why it differs
        from the seed's sum of per-tensor norms). NaN if a gradient is not finite; the
        EMA is then left unchanged (with ``noise="sketch"``: the buckets the NaN/inf
        reached). 0.0 when no parameter has a gradient. Do not also
        call ``measure_grads`` in the same step: each call advances the EMA.
        """
        if self.ema is None:
            raise RuntimeError("norm() needs the gradient EMA; this tap was built with ema=None")
        with torch.no_grad():
            chunks = self._layout()
            if not chunks:
                return 0.0
            rows = [self._grad_chunk(c, full=False)["row"] for c in chunks]
            grad_sq, noise_sq = _sum_rows(rows, True)[[GRAD_SQ, NOISE_SQ]].tolist()
            if not math.isfinite(grad_sq):
                return math.nan
            return self.ema * math.sqrt(max(noise_sq, 0.0))

    def measure_grads(self) -> None:
        """Measure the gradients on the device; call after backward, before ``step()``.

        Fills the gradient slots (grad_sq, noise_sq, ranks, max_abs_grad) of
        ``pending_tensor()``, advances the EMA (not where a NaN/inf is: in the chunk holding
        it, or with ``noise="sketch"`` in the buckets it reached), and
        records <g, theta_before> and the sketches (or the copy of theta_before) for
        ``measure_update``. No host sync.
        """
        with torch.no_grad():
            self.step += 1
            self._grad_scale = None
            chunks = self._layout()
            keep = len(chunks) == 1
            parts = [self._grad_chunk(c, full=True, keep=keep) for c in chunks]
            if parts:
                self._rows = (_sum_rows([p["row"] for p in parts], True), None)
            else:
                self._rows = (self._empty_row(self._primary_device(chunks))[:N_GRAD_SLOTS], None)
            self._pending = None
            self._pending_step = self.step
            self._grad_state = {"step": self.step, "chunks": chunks, "parts": parts}

    def measure_update(self, *, publish: bool = True) -> None:
        """Measure the step just taken; call after ``optimizer.step()``.

        Fills the update slots (``N_GRAD_SLOTS`` on). With ``publish=True`` (default)
        starts the one device->host copy; with ``publish=False`` the caller reduces
        ``pending_tensor()`` across ranks and calls ``publish(reduced)``. No host sync.
        """
        st = self._grad_state
        if st is None:
            raise RuntimeError("measure_update() needs measure_grads() first in the same step")
        self._grad_state = None
        with torch.no_grad():
            grad_row = self._rows[0]
            outs = [self._update_chunk(c, part) for c, part in zip(st["chunks"], st["parts"])]
            if outs:
                upd = _sum_rows(outs, False)
            else:
                upd = self._empty_row(grad_row.device)[N_GRAD_SLOTS:]
            self._rows = (grad_row, upd)
            self._pending = None
        if publish:
            self.publish()

    def pending_tensor(self) -> Optional[Tensor]:
        """The current step's stats tensor on the device (layout: ``stepstats``).

        After ``measure_grads`` the gradient slots are filled and the update slots are 0;
        after ``measure_update`` all are. Reduce it across ranks (one collective) before
        ``publish``. None before the first ``measure_grads``.
        """
        if self._pending is None and self._rows is not None:
            grad_row, upd = self._rows
            if upd is None:
                upd = self._empty_row(grad_row.device)[N_GRAD_SLOTS:]
            self._pending = torch.cat((grad_row, upd.to(grad_row.dtype)))
        return self._pending

    def pending_rows(self) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """``pending_tensor()`` in its two parts, the gradient slots (``measure_grads``)
        and the update slots (``measure_update``; None before it), for a caller that
        concatenates them with more (the ``Guard``'s one collective) in one op."""
        return self._rows

    def note_grad_scale(self, scale: Tensor) -> None:
        """The gradients were multiplied by ``scale`` (a positive 0-d tensor, e.g. a clip
        factor) after ``measure_grads``: this step's statistics stay those of the
        gradient that was measured. No sync."""
        self._grad_scale = scale

    def params_changed(self) -> None:
        """The parameters were changed in place in a way their version counters do not
        see (through ``.data``) since the last ``measure_update``: re-sketch them."""
        self._sk_theta.clear()

    def undo_ema(self) -> None:
        """Take the gradient of the latest ``measure_grads`` back out of the EMA (for a
        dropped step). Call before the gradients are cleared; no sync."""
        st = self._grad_state
        if st is None or self.ema is None or st.get("undone"):
            return
        st["undone"] = True
        ema = self.ema
        with torch.no_grad():
            for c, part in zip(st["chunks"], st["parts"]):
                if self.noise == "sketch":
                    skm = self._sk_m.get(c.index)
                    if skm is not None and "sk_diff" in part:
                        skm.sub_(part["sk_diff"], alpha=1.0 - ema)
                    continue
                g = self._measured_grad(c, part)
                w = torch.where(part["ok"], 1.0 - ema, 0.0).to(c.wdtype)
                m = self._ema_slice(c)  # m_new = m_old + w (g - m_old)
                m.addcmul_(g[: c.n], -w).div_(1.0 - w)
                part["G"] = None  # the scratch buffer may have been reused

    def ema_state(self) -> Dict[str, Any]:
        """Host copies of the EMA (``m`` by name, and the sketched EMA), for checkpoints."""
        return {
            "m": {k: v.detach().to("cpu", copy=True) for k, v in self.m.items()},
            "sketch": {k: v.detach().to("cpu", copy=True) for k, v in self._sk_m.items()},
        }

    def load_ema_state(self, state: Dict[str, Any]) -> None:
        """Restore an ``ema_state()`` in place (entries the tap does not hold are ignored).
        A plain ``{name: tensor}`` (the older checkpoint format) is read as ``m``."""
        if not ({"m", "sketch"} & set(state)):
            state = {"m": state}
        with torch.no_grad():
            for k, v in state.get("m", {}).items():
                if k in self.m:
                    self.m[k].copy_(v)
            for k, v in state.get("sketch", {}).items():
                if k in self._sk_m:
                    self._sk_m[k].copy_(v)

    def publish(self, tensor: Optional[Tensor] = None) -> None:
        """Start the ONE device->host copy of this step's stats (``tensor`` if given, e.g.
        the rank-reduced one; else ``pending_tensor()``). Non-blocking into pinned memory
        on CUDA; increments ``transfers``."""
        t = self.pending_tensor() if tensor is None else tensor
        if t is None:
            raise RuntimeError("nothing to publish: call measure_grads() first")
        t = t.detach().reshape(-1)
        if t.numel() != N_SLOTS:
            raise ValueError(f"stats tensor must have {N_SLOTS} elements, got {t.numel()}")
        self._copies.push(t, self._pending_step)
        self.transfers += 1

    def stats(self, sync: bool = False) -> Optional[StepStats]:
        """Latest completed step's stats as Python floats, or None if none completed yet.

        On GPU this does not wait for the current step and so normally returns the
        previous step's values; ``sync=True`` waits for the current step's copy. On CPU
        it returns the current step.
        """
        return self._copies.latest(sync)

    def attach(self, optimizer: torch.optim.Optimizer) -> Tuple[Any, Any]:
        """Register ``measure_grads``/``measure_update`` as the optimizer's step pre/post
        hooks; returns the two removable handles."""
        pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.measure_grads())
        post = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.measure_update())
        return pre, post

    def reset(self) -> None:
        """Forget the EMA, the step count and any pending stats."""
        self.m.clear()
        self._named = None
        self._m_flat.clear()
        self._m_sync = None
        self._sk_m.clear()
        self._sk_theta.clear()
        self._before.clear()
        self._grad_state = None
        self._pending = None
        self._rows = None
        self._copies.clear()
        self.step = 0

    # ------------------------------------------------------------------ internals

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

        The module tree is re-walked every ``_RESCAN`` calls (walking it costs more than
        the rest of this check): parameters added to the model later join within that."""
        self._calls += 1
        if self._named is None or self._calls % _RESCAN == 0:
            named = [
                (n, p, callable(getattr(p, "to_local", None)))
                for n, p in self.model.named_parameters()
            ]
            if self._named is None or [id(t[1]) for t in named] != [id(t[1]) for t in self._named]:
                self._layout_key = None  # another set of parameters: plan anew
            self._named = named
            self._params = [p for _, p, _ in named]
            self._plain = not any(dist for _, _, dist in named)
        if self._plain:  # one cheap pass (each step): which have a gradient, and where
            key_t: Any = [
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
        if key_t == self._layout_key:
            return self._chunks
        chunks, order = plan(items, self.chunk_numel, SIGN_BITS * self.sketch_buckets)
        shapes = {name: lp.shape for name, _, lp in items}
        self._order = {g: [(n, o, c, shapes[n]) for n, o, c in runs] for g, runs in order.items()}
        self._layout_key, self._chunks = key_t, chunks
        self._m_sync = None  # EMA views are rebuilt for the new layout
        self._sk_m.clear()  # sketches of another layout are not comparable
        self._sk_theta.clear()
        return chunks

    def _ema_slice(self, chunk: Chunk) -> Tensor:
        """The chunk's run of its group's flat EMA buffer; ``tap.m`` holds views of it."""
        m = self.m
        sync = (id(m), getattr(m, "version", None), self._layout_key)
        if sync[1] is None or sync != self._m_sync:
            flats = {}
            for (device, wdtype), runs in self._order.items():
                flat = torch.zeros(sum(r[2] for r in runs), dtype=wdtype, device=device)
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
        ``stepstats``). Each op counts (see ``stepstats``), hence the terse code."""
        k, ema = self.sketch_buckets, self.ema
        consts = self._consts(chunk.device)
        g = fill(chunk, self._scratch.get("g", chunk), Seg.grad)
        gsq = dot(g, g)  # NaN/inf iff g holds a NaN/inf (or |g| > ~1e19 in float32)
        if self.max_abs:
            lo, hi = torch.aminmax(g)
            mx = torch.maximum(hi, lo.neg())  # NaN propagates
        else:
            mx = consts[2]
        out: Dict[str, Any] = {}
        nsq = consts[0]
        if ema is not None and self.noise == "exact":
            # In place, no temporaries: m <- m - g; ||m - g||; m <- decay (m - g) + g, with
            # ||g - m_new|| = ema ||g - m_old||. A non-finite chunk leaves its EMA alone.
            out["ok"] = ok = torch.isfinite(gsq)
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
            m, gv = self._ema_slice(chunk), g[: chunk.n]
            m.sub_(gv)
            nsq = dot(m, m)
            m.mul_(torch.where(ok, ema, 1.0)).add_(gv)
        if full and self.exact_update:
            dst, src = self._before_views(chunk)
            torch._foreach_copy_(dst, src)
        sketch = full and not self.exact_update
        if sketch or (ema is not None and self.noise == "sketch"):
            masks = self._masks(chunk)
            out["sk_g"] = sk_g = fold(flip_(g, masks, self._scratch), k, self._scratch)
            out["flipped"] = True
            if ema is not None and self.noise == "sketch":
                skm = self._sk_m.get(chunk.index)
                if skm is None:
                    skm = self._sk_m[chunk.index] = torch.zeros_like(sk_g)
                diff = sk_g - skm  # the EMA of S g lags S g by ema * diff
                nsq = torch.dot(diff, diff)
                # Buckets a NaN/inf reached keep their EMA; the rest of a non-finite step
                # is taken in unless the step is undone (the Guard drops such steps). A
                # whole-chunk test would cost two more device ops every step.
                out["sk_diff"] = diff.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                skm.add_(diff, alpha=1.0 - ema)
        if sketch:
            # theta_before = the last measure_update's theta_after unless something moved the
            # parameters since (version counters): reuse its sketch, and its flipped flat copy
            # if the scratch buffer still holds it (one chunk per group).
            p = self._scratch.get("p", chunk)
            versions = chunk.param_versions()
            cached = self._sk_theta.get(chunk.index)
            same = cached is not None and versions is not None and cached[1] == versions
            pkey = self._scratch.key("p", chunk)
            if not (same and self._scratch.tags.get(pkey) == ("theta", chunk.index, versions)):
                flip_(fill_params(chunk, p), masks, self._scratch)
            out["sk_before"] = cached[0] if same else fold(p, k, self._scratch)
            out["dot"] = dot(p, g)  # both flipped: the same products
            self._scratch.tags[pkey] = None
        if full and keep:
            out["G"] = g
        out["row"] = torch.stack([gsq, nsq, consts[1], mx])  # (promotes to the stats dtype)
        return out

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
        return c

    def _update_chunk(self, chunk: Chunk, part: Dict[str, Any]) -> Tensor:
        """One chunk's update row (slots ``N_GRAD_SLOTS`` on, see ``stepstats``)."""
        p = fill_params(chunk, self._scratch.get("p", chunk))
        pkey = self._scratch.key("p", chunk)
        self._scratch.tags[pkey] = None
        zero = self._consts(chunk.device)[0]
        if self.exact_update:
            g = self._measured_grad(chunk, part)
            b = fill(chunk, self._scratch.get("b", chunk), lambda s: self._before.get(s.name))
            psq = dot(p, p)
            torch.sub(p, b, out=b)
            return torch.stack([dot(b, b), zero, zero, psq, zero, dot(b, g)])
        masks = self._masks(chunk)
        g = part.get("G")
        scale = None
        if g is None or not part.get("flipped"):
            # Re-read: the gradient may have been scaled since (see note_grad_scale).
            g = flip_(fill(chunk, self._scratch.get("g", chunk), Seg.grad), masks, self._scratch)
            scale = self._grad_scale
        part["G"] = None
        sk_after = fold(flip_(p, masks, self._scratch), self.sketch_buckets, self._scratch)
        dot_after = dot(g, p)
        if scale is not None:
            dot_after = dot_after / scale.to(dot_after.dtype)
        versions = chunk.param_versions()
        self._sk_theta[chunk.index] = (sk_after, versions)
        self._scratch.tags[pkey] = ("theta", chunk.index, versions)  # p: flipped theta_after
        sk_g, sk_delta = part["sk_g"], sk_after - part["sk_before"]
        return torch.stack(
            [
                dot(sk_delta, sk_delta),
                dot(sk_delta, sk_g),
                dot(sk_g, sk_g),
                dot(p, p),
                part["dot"],
                dot_after,
            ]
        )
