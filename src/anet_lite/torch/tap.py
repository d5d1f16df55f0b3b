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
  pinned memory. The flat chunk layout and the sketch live in ``anet_lite.torch.sketch``, the
  per-chunk measurements in ``anet_lite.torch.measure``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .ema import BLOCK, Compact, check_ema_dtype
from .hostcopy import HostRing
from .measure import Buffers, ChunkMeasure, Parts, Row, as_row, row_device, scaled, sum_rows
from .sample import SAMPLE_BLOCKS
from .sketch import Chunk, Scratch, acc_dtype, local, next_prime
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

_set_grad_enabled = torch._C._set_grad_enabled

AUTO_EXACT = 2**24  # sample="auto": models up to this many elements are measured whole
AUTO_SAMPLE = 2**23  # ... larger ones on a sample of at most this many elements

# the stats vector and its slots: see stepstats.py
__all__ = ["GradGate", "GradNoiseTap", "TapOptions"]


class TapOptions(NamedTuple):
    """``GradNoiseTap``'s settings, checked and resolved once (``TapOptions.resolve``): what
    ``memory="low"`` and ``sample="auto"`` imply is filled in here. ``sample_auto``: the
    sample size is chosen from the model's size when the parameters are first laid out."""

    ema: Optional[float]
    noise: str
    sketch_dim: int
    exact_update: bool
    seed: int
    chunk_numel: int
    max_abs: bool
    ema_dtype: Optional[torch.dtype]
    memory: str
    sample: int
    sample_auto: bool

    @classmethod
    def resolve(
        cls,
        *,
        ema: Optional[float],
        noise: str,
        sketch_dim: int,
        exact_update: bool,
        seed: int,
        chunk_numel: Optional[int],
        max_abs: Optional[bool],
        ema_dtype: Optional[torch.dtype],
        memory: str,
        sample: Union[int, str],
    ) -> TapOptions:
        """Check every setting (TypeError / ValueError naming the argument) and resolve
        the defaults that depend on others."""
        if ema is not None:
            if isinstance(ema, bool) or not isinstance(ema, (int, float)):
                raise TypeError(f"ema must be a float in [0, 1) or None, got {type(ema).__name__}")
            if not 0.0 <= float(ema) < 1.0:
                raise ValueError(f"ema must be in [0, 1) or None, got {ema!r}")
            ema = float(ema)
        if noise not in ("exact", "sketch"):
            raise ValueError(f"noise must be 'exact' or 'sketch', got {noise!r}")
        if not isinstance(memory, str):
            raise TypeError(f"memory must be 'default' or 'low', got {type(memory).__name__}")
        if memory not in ("default", "low"):
            raise ValueError(f"memory must be 'default' or 'low', got {memory!r}")
        check_ema_dtype(ema_dtype)
        exact_ema = ema is not None and noise == "exact"
        if ema_dtype is not None and not exact_ema:
            raise ValueError("ema_dtype needs the exact gradient EMA (noise='exact', an ema)")
        if memory == "low":  # see the class docstring
            chunk_numel = 2**20 if chunk_numel is None else chunk_numel
            if ema_dtype is None and exact_ema:
                ema_dtype = torch.int8
        chunk_numel = 2**24 if chunk_numel is None else chunk_numel
        auto = sample == "auto"
        if auto:  # resolved when the parameters are first laid out (see ``auto_sample``)
            sample = 1
            if exact_update or ema_dtype is not None or max_abs:
                auto = False  # those need every element
        for name, val in (
            ("sketch_dim", sketch_dim),
            ("chunk_numel", chunk_numel),
            ("seed", seed),
            ("sample", sample),
        ):
            if isinstance(val, bool) or not isinstance(val, int):
                extra = " or 'auto'" if name == "sample" else ""
                raise TypeError(f"{name} must be an int{extra}, got {type(val).__name__}")
        if sample < 1:
            raise ValueError(f"sample must be >= 1 (1: measure every element), got {sample}")
        if max_abs is None:
            max_abs = sample == 1 and not auto
        if sample > 1 and max_abs:
            raise ValueError("max_abs needs sample=1 (a sample does not see every element)")
        if sample > 1 and (exact_update or ema_dtype is not None or memory == "low"):
            raise ValueError(
                "sample > 1 does not combine with exact_update, ema_dtype or memory='low' "
                "(a sample small enough for one chunk is measured exactly, in float32, anyway)"
            )
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
        if chunk_numel < 1:
            raise ValueError(f"chunk_numel must be >= 1, got {chunk_numel}")
        if ema_dtype == torch.int8 and chunk_numel % BLOCK:
            raise ValueError(
                f"chunk_numel must be a multiple of {BLOCK} with ema_dtype=torch.int8 "
                f"(whole quantization blocks per chunk), got {chunk_numel}"
            )
        return cls(
            ema, noise, sketch_dim, bool(exact_update), seed, chunk_numel, bool(max_abs),
            ema_dtype, memory, sample, auto,
        )


class GradNoiseTap(ChunkMeasure):
    """Gradient noise, update size and processivity per optimizer step, without syncs.

    ``GradNoiseTap(model, ema=0.9, *, noise="exact", sketch_dim=1024, exact_update=False,
    seed=0, chunk_numel=2**24, max_abs=None, ema_dtype=None, memory="default", sample=1)``

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

    Update size. A model whose measured parameters fit one chunk per (device, dtype) group
    (``chunk_numel`` elements, 2**24 by default: most models trained on a CPU) is measured
    exactly: the flat copy of theta_after that the scratch keeps anyway is the next step's
    theta_before, and delta_theta = theta_after - theta_before is formed in one more
    scratch buffer (``_grad_chunk_flat``), at about the cost of the sketch.

    Larger models are measured without copying the parameters. <g, delta_theta> is exact up
    to float32
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
    (tests/pytorch/test_torch_tap.py, bench/overhead.py and docs/benchmarks.md section 3): median
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

    Memory beyond the model (``extra_memory_bytes()``; numbers: bench/tap_memory.py):
    the EMA (above); O(p) per chunk for the sketches; scratch
    buffers of ``min(model, chunk_numel)`` elements each (gradient and parameters in the
    work dtype, int32 sign masks; +1 for one chunk, measured exactly, and +1 for
    ``exact_update``), kept between calls, so at most 3 x 64 MiB at the default
    ``chunk_numel`` for a model that needs several chunks, and 4x a model that fits one
    (its scratch: up to 256 MiB). With one chunk per (device, dtype) the scratch buffers
    also carry work across calls: the sign masks are made once, theta_after of one step is
    the next step's theta_before (no second copy of the parameters per step), and the
    gradient buffer of ``measure_grads`` serves ``measure_update`` (so a gradient clipped
    in between is seen consistently). Several chunks re-make the masks and re-read both
    per chunk and call (measured on an H100 at 100M parameters with an earlier version of this code:
    Guard +10.5% of the step with 7 chunks, +4.6% with ``chunk_numel=2**27``, one chunk);
    re-read gradients are corrected for a clip factor passed to ``note_grad_scale`` (the
    ``Guard`` does).

    Low memory. ``ema_dtype`` stores the EMA compactly (``anet_lite.torch.ema``; the
    arithmetic stays float32): ``torch.bfloat16``/``torch.float16`` (2 bytes per element,
    ``tap.m`` in that dtype) or ``torch.int8`` (blockwise absmax-scaled, ~1 byte per
    element; ``tap.m`` stays empty, ``ema_state()["m"]`` decodes it), one chunk-sized work
    buffer more. ``memory="low"`` means ``ema_dtype=torch.int8`` (with the exact EMA) and
    ``chunk_numel=2**20`` unless given: extra memory ~0.25x float32 / 0.5x bf16 parameters
    plus ~16 MiB of scratch (bench/tap_memory.py: 0.42x / 0.84x at 25M parameters), noise
    norm within 0.02% (median; max 0.2%) of the float32 EMA's. Not the default: more
    chunks mean more ops per step and the update is sketched instead of measured exactly.
    Without the exact EMA (``noise="sketch"`` or ``ema=None``: the ``Guard``'s default)
    and with ``sample="auto"``, ``memory="low"`` is served from a sample instead: every
    element up to ``chunk_numel``, else the smallest power of two R whose sample fits one
    chunk, in blocks of ``SAMPLE_UNIT`` (128) elements so that small parameters are
    sampled too; where the parameters kept whole still overflow the chunk, every element
    is measured in chunks as above.

    ``max_abs=False`` (default: True unless sampling) skips max |g| (one pass over the
    gradient less; ``max_abs_grad`` is then NaN) and tells a non-finite gradient by
    <g, g> instead, which also flags a finite gradient whose squared norm overflows (|g|
    above ~1e19 in float32). The ``Guard`` builds its tap so.

    Sampling. ``sample=R`` measures the noise and the update statistics on one element in R:
    blocks of a few thousand contiguous elements, one in every R of each large parameter
    from a seeded phase, small parameters (biases, norms) whole and weighted to match
    (``sample.sample_ranges``); every sum is scaled by R on the device, an unbiased
    estimate of the sum over all elements. ``grad_norm`` stays exact (one multi-tensor
    norm over every gradient, so a NaN/inf anywhere is seen); ``processivity`` is the
    cosine over the sampled elements. The work per step is one pass over the gradients
    plus the passes above over 1/R of the parameters. Where the sample fits one chunk
    (always with ``"auto"``), the ops per step do not grow with the number of tensors:
    whole gradients are copied in batches of ``chunk_numel`` elements into one more
    work buffer (one ``_foreach_copy_``, one float32 dot for the exact norm, one
    ``_foreach_copy_`` of the sample out, per batch; the buffer holds min(model,
    ``chunk_numel``) elements: +64 MiB at the default, measured with bench/tap_memory.py
    at 25M float32 parameters: 98.7 -> 162.7 MiB with ``"auto"`` (1 in 2), 25.2 -> 89.2
    MiB with ``sample=16``), the parameters' sample with one
    ``_foreach_copy_`` from views made once per layout (tests/pytorch/test_guard_ops.py:
    26 ops per Guard step at 10 to 1,000 tensors). Measured against the full tap
    (H100, 101.6M-parameter LM, 20 AdamW steps, ``sample=16``): update norm 0.7% median /
    1.6% max, noise norm 1.4% / 6.8%, processivity 0.002 / 0.007 absolute, param norm
    0.03%; on a 0.48M-parameter model with ``sample=4``, worst of 12 seeds: 4% / 5%,
    8% / 15%, 0.011 / 0.03, 3% (tests/pytorch/test_torch_tap_sample.py). ``sample="auto"``: 1 up
    to 2**24 elements, else the power of two that keeps the sample <= 2**23 elements
    (``auto_sample``; with ``memory="low"`` see above). On a CPU, with the sketched noise
    (or none), from 2**21 to 2**24 elements in one chunk: the update statistics on
    1 in 16 (``measure.CPU_SAMPLE``) and the noise sketched from EVERY element, folded
    from the buffer the whole gradients pass through (``full_noise``): ~4 passes over the
    gradient and 1/16 of the update's instead of ~16 (2.8M, AdamW, 3 seeds: update norm
    within 2.4 %, processivity 0.07, noise as the full tap's; tests/pytorch/test_tap_auto_cpu.py).
    Needs ``max_abs`` off (the default with a sample), and does not combine with
    ``exact_update`` or ``ema_dtype`` (``"auto"`` then measures every element), nor a
    given R with ``memory="low"``.

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
        chunk_numel: Optional[int] = None,
        max_abs: Optional[bool] = None,
        ema_dtype: Optional[torch.dtype] = None,
        memory: str = "default",
        sample: Union[int, str] = 1,
    ) -> None:
        if not hasattr(model, "named_parameters"):
            raise TypeError(
                "model must be a torch.nn.Module (has named_parameters), "
                f"got {type(model).__name__}"
            )
        o = TapOptions.resolve(
            ema=ema,
            noise=noise,
            sketch_dim=sketch_dim,
            exact_update=exact_update,
            seed=seed,
            chunk_numel=chunk_numel,
            max_abs=max_abs,
            ema_dtype=ema_dtype,
            memory=memory,
            sample=sample,
        )
        ema, chunk_numel, ema_dtype, memory = o.ema, o.chunk_numel, o.ema_dtype, o.memory
        self.model = model
        self.ema = ema
        self.noise = o.noise
        self.exact_update = o.exact_update
        self.seed = o.seed
        self.sketch_dim = o.sketch_dim
        self.sketch_buckets = next_prime(o.sketch_dim)
        self.chunk_numel = chunk_numel
        self.max_abs = o.max_abs
        self.memory = memory
        self.sample = o.sample  # with "auto": set by ``_layout`` from the model's size
        self.sample_auto = o.sample_auto
        # "auto" on a CPU (``_auto_layout``): the update on a sample, the noise on every element
        self.full_noise = False
        self._numel = 0  # measured elements of the current layout (set with "auto")
        # "auto" with memory="low": every element up to one chunk, else a sample of at most
        # one chunk (served from the sample, not from chunks of the whole model)
        self._auto_limits = (chunk_numel, chunk_numel) if memory == "low" else None
        self.sample_blocks = SAMPLE_BLOCKS  # about this many blocks per group (sketch.py)
        if memory == "low":  # the smallest blocks, so that small parameters are sampled too
            self.sample_blocks = 2**40  # (views of them are made once per layout)
        # per device, (param, is a DTensor) of the measured parameters; set by _layout
        self._all_grads: List[Tuple[torch.device, List[Tuple[Tensor, bool]]]] = []
        self._scales: Dict[Tuple[torch.device, torch.dtype], Tuple[Tensor, Tensor]] = {}
        self.ema_dtype = ema_dtype  # None: the work dtype (float32; float64 for float64)
        self._compact = None if ema_dtype is None else Compact(ema_dtype == torch.int8)
        self.step = 0
        self.transfers = 0
        # EMA of the gradient per parameter name (the seed's ``m``), created on first use.
        self.m: Dict[str, Tensor] = Buffers()
        self._before: Dict[str, Tensor] = Buffers()
        self._layout_key: Optional[Tuple[Any, ...]] = None
        self.measured_numel = 0  # elements with a gradient in the current layout
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
        self._rows: Optional[Tuple[Row, Optional[Row]]] = None
        self._pending_step = 0
        self._copies = HostRing(
            lambda values, step: stats_from_values(values, step, ema=self.ema, has_max=self.max_abs)
        )
        self.grad_gate: Optional[GradGate] = None

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
            parts = [self._grad_chunk(c, full=False) for c in chunks]
            row = self._full_grad_row(sum_rows([p["row"] for p in parts], True), parts)
            grad_sq, noise_sq = as_row(row)[[GRAD_SQ, NOISE_SQ]].tolist()
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
        grad_was = torch.is_grad_enabled()
        _set_grad_enabled(False)  # (as no_grad(), at a tenth of its ~3 us)
        try:
            self.step += 1
            self._grad_scale = None
            chunks = self._layout()
            keep = len(chunks) == 1
            parts = [self._grad_chunk(c, full=True, keep=keep) for c in chunks]
            if parts:
                row = self._full_grad_row(sum_rows([p["row"] for p in parts], True), parts)
                self._rows = (Parts(row) if type(row) is tuple else row, None)
            else:
                self._rows = (self._empty_row(self._primary_device(chunks))[:N_GRAD_SLOTS], None)
            self._pending = None
            self._pending_step = self.step
            self._grad_state = {"step": self.step, "chunks": chunks, "parts": parts}
        finally:
            _set_grad_enabled(grad_was)

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
        if self.grad_gate is not None:
            self.grad_gate.release()
        grad_was = torch.is_grad_enabled()
        _set_grad_enabled(False)
        try:
            grad_row = self._rows[0]
            # last chunk first: its sign masks are still in the scratch from measure_grads
            chunks, parts = st["chunks"], st["parts"]
            outs = [self._update_chunk(chunks[i], parts[i]) for i in range(len(chunks) - 1, -1, -1)]
            if outs:
                upd = sum_rows(outs, False)
                if self.sample > 1 and isinstance(upd, Tensor):
                    upd = upd * self._sample_scales(upd.device, upd.dtype)[1]
                elif self.sample > 1:  # one chunk: read x sample (no op)
                    upd = scaled(upd, (float(self.sample),) * len(upd))
                elif type(upd) is tuple:
                    upd = Parts(upd)
            else:
                upd = self._empty_row(row_device(grad_row))[N_GRAD_SLOTS:]
            self._rows = (grad_row, upd)
            self._pending = None
        finally:
            _set_grad_enabled(grad_was)
        if publish:
            self.publish()

    def pending_tensor(self) -> Optional[Tensor]:
        """The current step's stats tensor on the device (layout: ``stepstats``).

        After ``measure_grads`` the gradient slots are filled and the update slots are 0;
        after ``measure_update`` all are. Reduce it across ranks (one collective) before
        ``publish``. None before the first ``measure_grads``.
        """
        if self._pending is None and self._rows is not None:
            grad_row, upd = self.pending_rows()  # type: ignore[misc]
            if upd is None:
                upd = self._empty_row(grad_row.device)[N_GRAD_SLOTS:]
            self._pending = torch.cat((grad_row, upd.to(grad_row.dtype)))
        return self._pending

    def pending_rows(self) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """``pending_tensor()`` in its two parts, the gradient slots (``measure_grads``)
        and the update slots (``measure_update``; None before it), for a caller that
        concatenates them with more (the ``Guard``'s one collective) in one op."""
        rows = self._rows
        if rows is not None:
            grad_row, upd = rows
            if not isinstance(grad_row, Tensor) or not (upd is None or isinstance(upd, Tensor)):
                self._rows = rows = (as_row(grad_row), None if upd is None else as_row(upd))
        return rows  # type: ignore[return-value]

    def pending_parts(self) -> Optional[Tuple[Row, Optional[Row]]]:
        """``pending_rows()`` before stacking: each row a 1-d tensor or a tuple of its 0-d
        parts (``measure.as_row`` stacks one, ``measure.row_values`` reads one as floats,
        which on CPU is cheaper than stacking). The parts are not changed in place later."""
        return self._rows

    @staticmethod
    def auto_sample(numel: int, exact: int = AUTO_EXACT, most: int = AUTO_SAMPLE) -> int:
        """``sample="auto"``: 1 (every element) up to ``exact`` elements, else the
        smallest power of two that brings the sample to at most ``most`` elements, so the
        work per step stays about constant as models grow (16 at 100M). With
        ``memory="low"`` both are ``chunk_numel`` (2**20)."""
        if numel <= exact:
            return 1
        r = 2
        while numel > r * most:
            r *= 2
        return r

    def _sample_scales(self, dev: torch.device, dt: torch.dtype) -> Tuple[Tensor, Tensor]:
        """(grad row factors, update row factor): x ``sample`` on the sampled slots; the
        grad row's ``GRAD_SQ`` factor is 1 (the exact sum is put there)."""
        sc = self._scales.get((dev, dt))
        if sc is None:
            r = float(self.sample)  # (made by fills: a host tensor copied over would sync)
            g = torch.full((N_GRAD_SLOTS,), r, dtype=dt, device=dev)
            g.select(0, GRAD_SQ).fill_(1.0)
            g.select(0, RANKS).fill_(1.0)
            g.select(0, MAX_ABS_GRAD).fill_(1.0)
            sc = self._scales[(dev, dt)] = (g, torch.full((), r, dtype=dt, device=dev))
        return sc

    def _full_grad_row(self, row: Row, parts: Optional[List[Dict[str, Any]]] = None) -> Row:
        """With ``sample > 1``: the sampled gradient row scaled to estimate the whole, and
        ``GRAD_SQ`` the exact sum of g**2 over every measured parameter: the sums the
        batched gradient copies took on the way (``parts``' ``exact_sq``), else one
        reduction over every gradient per device. A NaN/inf anywhere, sampled or not,
        makes it non-finite."""
        if self.sample == 1:
            return row
        dev = row_device(row)
        acc = row.dtype if isinstance(row, Tensor) else acc_dtype(dev)  # (what a stack gives)
        sums = [p.get("exact_sq") for p in parts or ()]
        if sums and all(x is not None for x in sums):
            exact: Optional[Tensor] = sums[0] if len(sums) == 1 else torch.stack(
                [x.to(acc) for x in sums]
            ).sum()
        else:
            exact = self._exact_grad_sq(dev, acc)
        if exact is not None and not isinstance(row, Tensor):  # one chunk: no op at all
            r = float(self.sample)
            return scaled((exact, *row[1:]), (1.0, r, 1.0, 1.0, r))
        out = as_row(row) * self._sample_scales(dev, acc)[0]
        if exact is not None:
            out.select(0, GRAD_SQ).copy_(exact)  # (copy_: an item assignment would sync)
        return out

    def _exact_grad_sq(self, dev: torch.device, acc: torch.dtype) -> Optional[Tensor]:
        """Sum of g**2 over every measured gradient, per device then summed on ``dev``."""
        exact = None
        for gdev, params in self._all_grads:
            grads = [p.grad if not dist else local(p.grad) for p, dist in params]
            f32 = all(g.dtype in (torch.float32, torch.float64) for g in grads)
            if gdev.type == "cpu" and f32:  # BLAS dots (2e-4 at 16.8M elements): the
                # float32 multi-tensor norm was off by 1.2e-3, a float64 one took 2.6 ms per 1M
                flat = [g.reshape(-1) for g in grads]
                part = torch.stack([torch.dot(f, f) for f in flat]).to(acc).sum().to(dev)
            else:  # one multi-tensor kernel, accumulating in float32 (not a bf16 dot)
                norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).to(acc)
                part = torch.dot(norms, norms).to(dev)
            exact = part if exact is None else exact + part
        return exact

    def note_grad_scale(self, scale: Tensor) -> None:
        """The gradients were multiplied by ``scale`` (a positive 0-d tensor, e.g. a clip
        factor) after ``measure_grads``: this step's statistics stay those of the
        gradient that was measured. No sync."""
        self._grad_scale = scale

    def extra_memory_bytes(self) -> int:
        """Bytes the tap holds beyond the model (EMA, scratch buffers, sketches, the copy
        of theta_before with ``exact_update``), counted once per storage. Read it after a
        step: buffers are made on first use."""
        seen: Dict[int, int] = {}

        def add(t: Optional[Tensor]) -> None:
            if t is not None:
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()

        for t in self._scratch.bufs.values():
            add(t)
        for group in (self._m_flat, self._sk_m, self.m, self._before):
            for t in group.values():
                add(t)
        for t, _ in self._sk_theta.values():
            add(t)
        for t in self._compact.tensors() if self._compact is not None else ():
            add(t)
        return sum(seen.values())

    def params_changed(self) -> None:
        """The parameters were changed in place in a way their version counters do not
        see (through ``.data``) since the last ``measure_update``: re-read them."""
        self._sk_theta.clear()
        self._scratch.tags.clear()

    def undo_ema(self, where: Optional[Tensor] = None) -> None:
        """Take the gradient of the latest ``measure_grads`` back out of the EMA (for a
        dropped step). Call before the gradients are cleared; no sync.

        ``where``: a 0-d device flag (1.0: undo, 0.0: keep), for a step dropped on the
        device (``GradGate``); only the sketched EMA (``noise="sketch"``) is undone so,
        and a later call with ``1 - where`` completes it."""
        st = self._grad_state
        if st is None or self.ema is None or st.get("undone"):
            return
        if where is not None and self.noise != "sketch":
            return  # the exact EMA keeps a step dropped on the device (one more pass)
        if where is None:
            st["undone"] = True
        ema = self.ema
        with torch.no_grad():
            for c, part in zip(st["chunks"], st["parts"]):
                if self.noise == "sketch":
                    skm = self._sk_m.get(c.index)
                    if skm is not None and "sk_diff" in part:
                        d = part["sk_diff"]
                        if where is None:
                            skm.sub_(d, alpha=1.0 - ema)
                        else:
                            skm.addcmul_(d, where, value=ema - 1.0)
                    continue
                g = self._measured_grad(c, part)
                w = torch.where(part["ok"], 1.0 - ema, 0.0).to(c.wdtype)
                cp = self._compact
                if cp is not None and cp.int8:
                    self._int8_sync()
                    cp.undo_int8(c, g[: c.n], w)
                else:
                    m = self._ema_slice(c)  # m_new = m_old + w (g - m_old)
                    if m.dtype != g.dtype:
                        cp.undo_cast(m, g[: c.n], w, c)  # type: ignore[union-attr]
                    else:
                        m.addcmul_(g[: c.n], -w).div_(1.0 - w)
                part["G"] = None  # the scratch buffer may have been reused

    def ema_state(self, host: bool = True) -> Dict[str, Any]:
        """Host copies of the EMA (``m`` by name, and the sketched EMA), for checkpoints.
        With ``ema_dtype=torch.int8`` ``m`` holds the decoded EMA (float32). ``host=False``:
        copies on the EMA's device (no sync; for a caller that moves them itself)."""
        cp = self._compact
        m = cp.read_all() if cp is not None and cp.int8 else self.m

        def copy(v: Tensor) -> Tensor:
            return v.detach().to("cpu", copy=True) if host else v.detach().clone()

        return {
            "m": {k: copy(v) for k, v in m.items()},
            "sketch": {k: copy(v) for k, v in self._sk_m.items()},
        }

    def load_ema_state(self, state: Dict[str, Any]) -> None:
        """Restore an ``ema_state()`` in place (entries the tap does not hold are ignored).
        A plain ``{name: tensor}`` (the older checkpoint format) is read as ``m``."""
        if not ({"m", "sketch"} & set(state)):
            state = {"m": state}
        with torch.no_grad():
            cp = self._compact
            if cp is not None and cp.int8:
                cp.write(state.get("m", {}))
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

    def gate(self, optimizer: torch.optim.Optimizer) -> Tensor:
        """Same-step protection on the device, without a host sync: call after
        ``measure_grads`` and before ``optimizer.step()``. Returns the 0-d flag (1.0: this
        step was gated). See ``GradGate``; the gate is made on first use (``tap.grad_gate``,
        replace it to change its settings)."""
        if self._rows is None:
            raise RuntimeError("gate() needs measure_grads() first in the same step")
        if self.grad_gate is None:
            self.grad_gate = GradGate()
        return self.grad_gate(optimizer, self._rows[0][GRAD_SQ])

    def reset(self) -> None:
        """Forget the EMA, the step count and any pending stats."""
        self.m.clear()
        self._named = None
        self._m_flat.clear()
        self._m_sync = None
        self._sk_m.clear()
        self._sk_theta.clear()
        self._before.clear()
        if self._compact is not None:
            self._compact.clear()
        self._grad_state = None
        self._pending = None
        self._rows = None
        self._copies.clear()
        self.step = 0


class GradGate:
    """Act on a bad gradient at its own step on the device: no host sync, a few ops.

    ``GradGate(factor=10.0, decay=0.9, warmup=5)``. From the step's exact sum of g**2 (a
    0-d device tensor, ``GRAD_SQ`` of the tap's row) the gate forms, on the device, the
    flag *bad*: the gradient is not finite, or (after the first ``warmup`` calls) its norm
    is above ``factor`` x its running level (the root of an EMA, ``decay``, of ||g||**2
    over accepted steps; bad steps do not move it). Then:

    * an optimizer that takes a ``found_inf`` tensor (``_step_supports_amp_scaling``: the
      fused Adam/AdamW/SGD, on CPU and CUDA) skips the step in its kernel: parameters and
      state untouched (a ``GradScaler``'s own flag is kept: the two are or-ed); the
      attribute is put back by ``release`` (``tap.measure_update`` calls it);
    * any other optimizer gets its gradients multiplied by min(1, ``factor`` x level /
      ||g||) (one multi-tensor op): a finite spike is clipped to ``factor`` x its level,
      not skipped (Adam's moments still move), and a NaN/inf gradient is not cleaned
      (zeroing it would take an op per tensor): the host's verdict, one step later on a
      GPU, handles those.

    Everything stays on the device (after the warm-up, 6 ops per call with a fused
    optimizer and 10 otherwise, whatever the number of tensors); the host learns what
    happened with the step's stats.
    """

    def __init__(self, factor: float = 10.0, decay: float = 0.9, warmup: int = 5) -> None:
        if not factor > 1.0:
            raise ValueError(f"factor must be > 1, got {factor!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1, got {warmup!r}")
        self.factor, self.decay, self.warmup = float(factor), float(decay), warmup
        self.level_sq: Optional[Tensor] = None  # running level of ||g||**2, 0-d, on the device
        self.accepted: Optional[Tensor] = None  # accepted steps so far, 0-d
        self.gated: Optional[Tensor] = None  # the last step's flag
        self.calls = 0
        self._consts: Tuple[Tensor, ...] = ()  # 0.0 and 1.0, 0-d float32 (the flag's values)
        self._set: Optional[torch.optim.Optimizer] = None
        self._had: Any = None
        self._plist: Optional[Tuple[Any, List[Tensor]]] = None

    @property
    def level(self) -> Optional[Tensor]:
        """The running level of ||g|| (0-d, on the device; None before the first call)."""
        return None if self.level_sq is None else self.level_sq.sqrt()

    def __call__(
        self, optimizer: torch.optim.Optimizer, grad_sq: Tensor, applied: Optional[Tensor] = None
    ) -> Tensor:
        """Gate this step (see the class docstring); returns the 0-d flag (1.0: gated).

        ``grad_sq``: the step's sum of g**2 (0-d, on the device) as measured;
        ``applied``: a factor already applied to the gradients since (0-d, e.g. a clip's),
        so that a spike is scaled to ``factor`` x its level, not below."""
        level = self.level_sq
        if level is None or (level.device, level.dtype) != (grad_sq.device, grad_sq.dtype):
            level = self.level_sq = torch.zeros_like(grad_sq)
            self.accepted = torch.zeros_like(grad_sq)
            self._consts = tuple(
                torch.full((), v, dtype=torch.float32, device=grad_sq.device) for v in (0.0, 1.0)
            )
            self.calls = 0
        self.calls += 1
        zero, one = self._consts
        warm = self.calls > self.warmup
        limit = level * (self.factor * self.factor) if warm else None
        # good: finite, and within factor x level once warm (NaN compares False)
        big = torch.finfo(grad_sq.dtype).max  # (inf and NaN are not <= it)
        good = grad_sq.le(limit) if limit is not None else grad_sq.le(big)
        flag = self.gated = torch.where(good, zero, one)
        w = 1.0 if self.calls == 1 else 1.0 - self.decay  # level <- ||g||**2, then the EMA
        torch.where(good, torch.lerp(level, grad_sq, w), level, out=level)
        self.accepted.add_(good)  # type: ignore[union-attr]
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            self._skip_in_kernel(optimizer, flag)
        elif limit is not None:
            grads = [g for p in self._params(optimizer) if (g := p.grad) is not None]
            if grads:
                now = grad_sq if applied is None else grad_sq * applied.to(grad_sq.dtype).square()
                torch._foreach_mul_(grads, torch.where(good, one, limit.div(now).sqrt_()))
        return flag

    def _params(self, optimizer: torch.optim.Optimizer) -> List[Tensor]:
        """The optimizer's parameters, listed once while its param groups keep their
        sizes (one Python pass per step fewer)."""
        key = (id(optimizer), tuple(len(g["params"]) for g in optimizer.param_groups))
        if self._plist is None or self._plist[0] != key:
            self._plist = (key, [p for g in optimizer.param_groups for p in g["params"]])
        return self._plist[1]

    def _skip_in_kernel(self, optimizer: torch.optim.Optimizer, flag: Tensor) -> None:
        had = getattr(optimizer, "found_inf", None)
        self._set, self._had = optimizer, had
        if isinstance(had, Tensor):
            optimizer.found_inf = torch.maximum(had, flag.to(had.device, had.dtype))
        else:
            optimizer.found_inf = flag

    def release(self) -> None:
        """After ``optimizer.step()``: put back the optimizer's ``found_inf`` as it was."""
        opt, self._set = self._set, None
        if opt is None:
            return
        if self._had is None:
            if hasattr(opt, "found_inf"):
                del opt.found_inf
        else:
            opt.found_inf = self._had
        self._had = None
