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

  Everything is computed on the device and packed into one small tensor per step (layout
  below), which is copied to the host with one ``non_blocking`` copy into pinned memory.

Stats tensor layout (``pending_tensor()``; length ``N_SLOTS``, float64, or float32 on
devices without float64). Each rank holds its local sums; summing over ranks is
meaningful for every slot except the last:

====  ===================  ======  ====================================================
slot  name                 reduce  value
====  ===================  ======  ====================================================
0     ``GRAD_SQ``          sum     sum of g**2
1     ``NOISE_SQ``         sum     sum of (g - m)**2, m the EMA after this step's update
2     ``UPDATE_SQ``        sum     sum of (theta_after - theta_before)**2 (sketched or
                                   exact; the sketched value is an unbiased estimate)
3     ``PARAM_SQ``         sum     sum of theta_after**2
4     ``GRAD_DOT_UPDATE``  sum     <g, theta_after - theta_before>
5     ``NONFINITE``        sum     number of gradient chunks holding a NaN/inf (> 0 means
                                   the step's gradient is not finite)
6     ``RANKS``            sum     1.0 per rank: sums to the number of ranks
7     ``MAX_ABS_GRAD``     max     max |g|: needs a MAX reduce, not a sum
====  ===================  ======  ====================================================

For FSDP-style sharded parameters (each element on one rank) the sums over ranks are the
global values. For DDP-style replicated parameters every rank holds the same values, so
divide the sum slots by the ``RANKS`` slot (processivity is a ratio and needs no
division). ``combine_rank_stats`` does this for a tensor gathered from all ranks with ONE
``all_gather_into_tensor``; the alternative is two collectives on the views
``t[SUM_SLOTS]`` (SUM) and ``t[MAX_SLOTS]`` (MAX). The reduced tensor is then handed to
``publish()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "GRAD_DOT_UPDATE",
    "GRAD_SQ",
    "MAX_ABS_GRAD",
    "MAX_SLOTS",
    "NOISE_SQ",
    "NONFINITE",
    "N_SLOTS",
    "PARAM_SQ",
    "RANKS",
    "SLOT_NAMES",
    "SUM_SLOTS",
    "UPDATE_SQ",
    "GradNoiseTap",
    "StepStats",
    "combine_rank_stats",
    "stats_from_values",
]

GRAD_SQ = 0
NOISE_SQ = 1
UPDATE_SQ = 2
PARAM_SQ = 3
GRAD_DOT_UPDATE = 4
NONFINITE = 5
RANKS = 6
MAX_ABS_GRAD = 7
N_SLOTS = 8
SUM_SLOTS = slice(0, 7)
"""Slots that add across ranks (squared norms, dot products, counts)."""
MAX_SLOTS = slice(7, 8)
"""Slots that need a MAX across ranks."""
SLOT_NAMES = (
    "grad_sq",
    "noise_sq",
    "update_sq",
    "param_sq",
    "grad_dot_update",
    "nonfinite",
    "ranks",
    "max_abs_grad",
)

_SIGN_BITS = 32  # one random int32 gives the sign flips of 32 elements
_INT32_MIN = -(2**31)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class StepStats:
    """One optimizer step, as Python numbers.

    Norms are L2 norms over all measured parameters (those with ``requires_grad`` and a
    gradient), in the units of the parameters (``update_norm``, ``param_norm``) or of the
    gradients (``grad_norm``, ``noise_norm``, ``max_abs_grad``).

    * ``grad_norm``: ||g||, the gradient the optimizer was given (after any clipping the
      caller did before ``optimizer.step()``).
    * ``noise_norm``: ||g - m||, m the EMA of g updated with this step's g; NaN when the
      tap was built with ``ema=None``.
    * ``update_norm``: ||theta_after - theta_before||, the size of the step actually taken
      (sketched unless ``exact_update=True``); 0.0 when only ``measure_grads`` ran.
    * ``param_norm``: ||theta_after||.
    * ``processivity``: cos(-g, delta_theta) = -<g, delta_theta> / (||g|| ||delta_theta||)
      in [-1, 1]: 1 for plain SGD, lower when the optimizer turns the step away from the
      gradient (momentum, Adam's per-coordinate scaling, weight decay). 0.0 when either
      norm is 0, NaN when the step is not finite. This is the per-step cosine; the core's
      ``anet_lite.processivity`` is a different statistic over a window of norms.
    * ``finite``: no gradient held a NaN/inf and every value above is finite.
    * ``step``: 1-based count of ``measure_grads`` calls on this tap.
    """

    grad_norm: float
    noise_norm: float
    update_norm: float
    param_norm: float
    processivity: float
    max_abs_grad: float
    finite: bool
    step: int


def stats_from_values(values: Any, step: int, *, has_noise: bool = True) -> StepStats:
    """Turn a (reduced) stats tensor or sequence of ``N_SLOTS`` numbers into ``StepStats``.

    Reading a device tensor here syncs; ``GradNoiseTap.stats()`` only calls it on host
    copies that have landed.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().tolist()
    v = [float(x) for x in values]
    if len(v) != N_SLOTS:
        raise ValueError(f"values must have {N_SLOTS} entries, got {len(v)}")
    grad = _sqrt(v[GRAD_SQ])
    noise = _sqrt(v[NOISE_SQ]) if has_noise else math.nan
    upd = _sqrt(max(v[UPDATE_SQ], 0.0)) if not math.isnan(v[UPDATE_SQ]) else math.nan
    param = _sqrt(v[PARAM_SQ])
    dot = v[GRAD_DOT_UPDATE]
    gmax = v[MAX_ABS_GRAD]
    finite = v[NONFINITE] == 0.0 and all(math.isfinite(x) for x in (grad, upd, param, dot, gmax))
    if has_noise:
        finite = finite and math.isfinite(noise)
    if not finite:
        proc = math.nan
    elif grad > 0.0 and upd > 0.0:
        proc = min(1.0, max(-1.0, -dot / (grad * upd)))
    else:
        proc = 0.0
    return StepStats(
        grad_norm=grad,
        noise_norm=noise,
        update_norm=upd,
        param_norm=param,
        processivity=proc,
        max_abs_grad=gmax,
        finite=finite,
        step=int(step),
    )


def combine_rank_stats(gathered: Tensor, *, replicated: bool = False) -> Tensor:
    """Reduce stats tensors gathered from all ranks (shape ``[world, N_SLOTS]``) to one.

    Sum slots are added and the max slot is maxed. ``replicated=True`` (DDP: every rank
    measured the same full parameters) divides the sum slots by the number of ranks, so
    the result reads like a single rank's. Stays on the device: no sync.
    """
    if gathered.dim() == 1:
        gathered = gathered.view(-1, N_SLOTS)
    if gathered.dim() != 2 or gathered.shape[1] != N_SLOTS:
        raise ValueError(
            f"gathered must have shape [world, {N_SLOTS}], got {tuple(gathered.shape)}"
        )
    out = torch.empty_like(gathered[0])
    sums = gathered[:, SUM_SLOTS].sum(0)
    if replicated:
        sums = sums / gathered.shape[0]
    out[SUM_SLOTS] = sums
    out[MAX_SLOTS] = gathered[:, MAX_SLOTS].amax(0)
    return out


def _sqrt(x: float) -> float:
    if math.isnan(x):
        return math.nan
    return math.sqrt(x) if x > 0.0 else 0.0


def _next_prime(n: int) -> int:
    n = max(2, n)
    while True:
        if n < 4 or all(n % d for d in range(2, math.isqrt(n) + 1)):
            return n
        n += 1


def _mix(*parts: int) -> int:
    """splitmix64 over the parts: a well-spread 64-bit generator seed."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


def _reduce(
    vals: Sequence[Optional[Tensor]], device: torch.device, acc: torch.dtype, op: str
) -> Tensor:
    """Sum (or max) per-chunk partials, moved to ``device``; stays on the device."""
    present = [v.to(device, acc) for v in vals if v is not None]
    if not present:
        return torch.zeros((), device=device, dtype=acc)
    if len(present) == 1:
        return present[0]
    stacked = torch.stack(present)
    return stacked.amax(0) if op == "max" else stacked.sum(0)


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2, tensor parallel); plain tensors unchanged."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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


class _Seg:
    """Elements [start, end) of one parameter, flattened."""

    __slots__ = ("dist", "end", "name", "param", "start", "whole")

    def __init__(self, name: str, param: Tensor, start: int, end: int, numel: int) -> None:
        self.name, self.param, self.start, self.end = name, param, start, end
        self.whole = start == 0 and end == numel
        self.dist = callable(getattr(param, "to_local", None))  # a DTensor: use its shard


class _Chunk:
    """Segments on one device, of one work dtype, at most ``chunk_numel`` elements."""

    def __init__(self, index: int, device: torch.device, wdtype: torch.dtype, gran: int):
        self.index, self.device, self.wdtype, self.gran = index, device, wdtype, gran
        self.segs: List[_Seg] = []
        self.n = 0
        self.cache: Dict[str, Any] = {}  # views reused while the layout is unchanged

    @property
    def n_pad(self) -> int:
        return -(-self.n // self.gran) * self.gran

    @property
    def sizes(self) -> List[int]:
        return [s.end - s.start for s in self.segs]


class GradNoiseTap:
    """Gradient noise, update size and processivity per optimizer step, without syncs.

    ``GradNoiseTap(model, ema=0.9, *, sketch_dim=1024, exact_update=False, seed=0,
    chunk_numel=2**24)``

    Parameters with ``requires_grad=False`` are ignored and parameters whose ``.grad`` is
    None are skipped for that step (frozen layers, unused branches). Gradients and
    parameters are read in chunks of at most ``chunk_numel`` elements per (device, dtype):
    each chunk is gathered into one flat float32 buffer (float64 for float64 parameters)
    and measured with a few single-kernel reductions; the EMA is updated with
    ``torch._foreach_*`` ops over the chunk's per-parameter buffers. All accumulation is
    in float32 or wider, so bf16/fp16 parameters are measured at full precision. Dot
    products and sketch buckets are summed in float32 over short runs (a row of
    ``sketch_buckets`` products, 32 sketch rows) and in float64 beyond, because they are
    differenced across the step (theta_after - theta_before).

    ``norm()`` is the true global L2 norm sqrt(sum over tensors of ||g_t - m_t||^2). The
    seed summed per-tensor norms, sum_t ||g_t - m_t||, which is not a norm of anything:
    it grows with the number of tensors the model is split into (a fused QKV weight
    reads smaller than three separate ones) and it is not comparable with ``grad_norm``
    or clipping thresholds. Values therefore differ from the seed's by up to a factor of
    sqrt(number of tensors).

    Update size without copying the parameters. <g, delta_theta> is exact:
    <g, theta_after> - <g, theta_before>, both accumulated in float64. ||delta_theta|| is
    estimated from a sign-randomised CountSketch: element i of the flat chunk goes to
    bucket i mod p (p = ``sketch_buckets``, the smallest prime >= ``sketch_dim``, so the
    buckets do not alias with power-of-two tensor shapes) with a random sign, S theta is
    taken before and after the step, and S delta_theta = S theta_after - S theta_before.
    Signs are fresh random bits every step (so errors are independent across steps) and
    are regenerated from a seeded generator instead of stored: extra memory is
    O(sketch_dim), time O(n) (a sign-bit XOR and one strided sum per element). The
    gradient is sketched too and used as a control variate: writing
    delta_theta = a g + r with a = <g, delta_theta> / ||g||^2 (exact), the estimate is
    a^2 ||g||^2 + ||S r||^2, unbiased, and only the part of the update orthogonal to g
    carries sketch error. ||S r|| / ||r|| has a relative std of ~ sqrt(1 / (2 p)) (2.2%
    for the default p = 1031; sqrt(2 / p) is that of the squared norm; a Gaussian JL
    sketch of the same size is no better and costs O(n p)), so ``update_norm`` has a
    relative std of ~ (1 - cos^2) sqrt(1 / (2 p)) <= 2.2% (0 for plain SGD, where
    delta_theta is parallel to g) and ``processivity`` an absolute std of
    ~ |cos| (1 - cos^2) sqrt(1 / (2 p)) <= 0.009. Measured over 50 AdamW / SGD-momentum
    steps on a 75k-parameter MLP: median |relative error| of ``update_norm`` ~1%, max
    ~7%; processivity error max ~0.02 (tests/test_torch_tap.py asserts median <= 5%,
    max <= 15%, processivity within 0.05). ``sketch_dim=256`` doubles these errors.
    ``exact_update=True`` keeps a copy of theta_before (+1x parameter memory, in the
    parameters' dtype, refreshed with ``torch._foreach_copy_``) and measures exactly.

    Memory: EMA buffers 1x the measured parameters, in float32 for bf16/fp16 parameters
    (2x their bytes); the sketch 3 * sketch_buckets float64; exact mode +1x parameters
    (in their own dtype); during a call, temporaries of about 4 chunks of
    ``chunk_numel`` elements (on CPU the 2-3 flat chunk buffers are kept between calls,
    since fresh large allocations page-fault there).
    ``ema=0.9`` (the seed's) is the default because the noise norm is the tap's reason to
    exist and the seed's ``.norm()`` needs it; ``ema=None`` disables the EMA (no
    noise_norm, ``norm()`` raises) for O(sketch_dim) extra memory.

    GPU lag: ``stats()`` never waits for the current step. It returns the newest step
    whose device->host copy has landed, normally the previous one (one step behind);
    ``stats(sync=True)`` waits for the current one. On CPU the copy is immediate, so
    ``stats()`` returns the current step. ``transfers`` counts device->host copies: one
    per published step.

    Assumes the optimizer does not modify ``.grad`` in place during ``step()`` (torch's
    optimizers do not), since <g, theta_after> is read after the step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ema: Optional[float] = 0.9,
        *,
        sketch_dim: int = 1024,
        exact_update: bool = False,
        seed: int = 0,
        chunk_numel: int = 2**24,
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
        for name, val in (("sketch_dim", sketch_dim), ("chunk_numel", chunk_numel), ("seed", seed)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise TypeError(f"{name} must be an int, got {type(val).__name__}")
        if sketch_dim < 1:
            raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
        if chunk_numel < 1:
            raise ValueError(f"chunk_numel must be >= 1, got {chunk_numel}")
        self.model = model
        self.ema = ema
        self.exact_update = bool(exact_update)
        self.seed = seed
        self.sketch_dim = sketch_dim
        self.sketch_buckets = _next_prime(sketch_dim)
        self.chunk_numel = chunk_numel
        self.step = 0
        self.transfers = 0
        # EMA of the gradient per parameter name (the seed's ``m``), created on first use.
        # Replace entries in place (``copy_``) or by assignment; both are picked up.
        self.m: Dict[str, Tensor] = _Buffers()
        self._before: Dict[str, Tensor] = _Buffers()
        self._layout_key: Optional[Tuple[Any, ...]] = None
        self._chunks: List[_Chunk] = []
        self._gens: Dict[torch.device, torch.Generator] = {}
        self._shifts: Dict[torch.device, Tensor] = {}
        self._workspace: Dict[Tuple[str, torch.dtype], Tensor] = {}
        self._grad_state: Optional[Dict[str, Any]] = None
        self._pending: Optional[Tensor] = None
        self._pending_step = 0
        self._host: Optional[Tensor] = None
        self._ring: List[Optional[Tuple[int, Any]]] = [None, None]
        self._ring_next = 0
        self._latest: Optional[StepStats] = None

    # ------------------------------------------------------------------ public API

    def norm(self) -> float:
        """Seed-compatible: update the EMA, return ||g - m|| as a float (one sync).

        The global L2 norm over all tensors (see the class docstring for why it differs
        from the seed's sum of per-tensor norms). NaN if a gradient is not finite; the
        EMA is then left unchanged. 0.0 when no parameter has a gradient. Do not also
        call ``measure_grads`` in the same step: each call advances the EMA.
        """
        if self.ema is None:
            raise RuntimeError("norm() needs the gradient EMA; this tap was built with ema=None")
        with torch.no_grad():
            chunks = self._layout()
            if not chunks:
                return 0.0
            primary = chunks[0].device
            acc = self._acc_dtype(primary)
            parts = [self._grad_chunk(c, full=False)["noise_sq"] for c in chunks]
            value = float(_reduce(parts, primary, acc, "sum"))
            return math.nan if math.isnan(value) else math.sqrt(max(value, 0.0))

    def measure_grads(self) -> None:
        """Measure the gradients on the device; call after backward, before ``step()``.

        Fills the gradient slots (grad_sq, noise_sq, nonfinite, max_abs_grad) of
        ``pending_tensor()``, advances the EMA (skipped for chunks holding a NaN/inf), and
        records <g, theta_before> and the sketches (or the copy of theta_before) for
        ``measure_update``. No host sync.
        """
        with torch.no_grad():
            self.step += 1
            chunks = self._layout()
            primary = self._primary_device(chunks)
            acc = self._acc_dtype(primary)
            parts = [self._grad_chunk(c, full=True) for c in chunks]

            def total(key: str, reduce: str = "sum") -> Tensor:
                return _reduce([p.get(key) for p in parts], primary, acc, reduce)

            state: Dict[str, Any] = {
                "step": self.step,
                "chunks": chunks,
                "primary": primary,
                "acc": acc,
                "grad_sq": total("grad_sq"),
                "noise_sq": total("noise_sq"),
                "nonfinite": total("nonfinite"),
                "max_abs": total("max_abs", "max"),
            }
            if not self.exact_update:
                state["dot_before"] = total("dot")
                state["sk_g"] = total("sk_g")
                state["sk_before"] = total("sk_theta")
            self._grad_state = state
            zero = torch.zeros((), device=primary, dtype=acc)
            self._set_pending(state, zero, zero, zero)

    def measure_update(self, *, publish: bool = True) -> None:
        """Measure the step just taken; call after ``optimizer.step()``.

        Fills update_sq, param_sq and grad_dot_update. With ``publish=True`` (default)
        starts the one device->host copy; with ``publish=False`` the caller reduces
        ``pending_tensor()`` across ranks and calls ``publish(reduced)``. No host sync.
        """
        st = self._grad_state
        if st is None:
            raise RuntimeError("measure_update() needs measure_grads() first in the same step")
        self._grad_state = None
        with torch.no_grad():
            primary, acc = st["primary"], st["acc"]
            parts = [self._update_chunk(c, st["step"]) for c in st["chunks"]]

            def total(key: str) -> Tensor:
                return _reduce([p.get(key) for p in parts], primary, acc, "sum")

            param_sq = total("param_sq")
            if self.exact_update:
                update_sq = total("update_sq")
                gdot = total("gdot")
            else:
                gdot = total("dot") - st["dot_before"]
                grad_sq = st["grad_sq"]
                sk_delta = total("sk_theta") - st["sk_before"]
                # Control variate: delta = a g + r with a = <g, delta> / ||g||^2 exactly known;
                # only r is sketched. ||delta||^2 = a^2 ||g||^2 + ||r||^2.
                safe = torch.where(grad_sq > 0, grad_sq, torch.ones_like(grad_sq))
                alpha = torch.where(grad_sq > 0, gdot / safe, torch.zeros_like(gdot))
                resid = sk_delta - alpha * st["sk_g"]
                update_sq = alpha * alpha * grad_sq + resid.square().sum()
            self._set_pending(st, update_sq, param_sq, gdot)
        if publish:
            self.publish()

    def pending_tensor(self) -> Optional[Tensor]:
        """The current step's stats tensor on the device (layout: module docstring).

        After ``measure_grads`` the gradient slots are filled and the update slots are 0;
        after ``measure_update`` all are. Reduce it across ranks (one collective) before
        ``publish``. None before the first ``measure_grads``.
        """
        return self._pending

    def publish(self, tensor: Optional[Tensor] = None) -> None:
        """Start the ONE device->host copy of this step's stats (``tensor`` if given, e.g.
        the rank-reduced one; else ``pending_tensor()``). Non-blocking into pinned memory
        on CUDA; increments ``transfers``."""
        t = self._pending if tensor is None else tensor
        if t is None:
            raise RuntimeError("nothing to publish: call measure_grads() first")
        t = t.detach().reshape(-1)
        if t.numel() != N_SLOTS:
            raise ValueError(f"stats tensor must have {N_SLOTS} elements, got {t.numel()}")
        step = self._pending_step
        if t.device.type == "cuda":
            if self._host is None or self._host.dtype != t.dtype:
                self._host = torch.empty((2, N_SLOTS), dtype=t.dtype, pin_memory=True)
                self._ring = [None, None]
            slot = self._ring_next
            if self._ring[slot] is not None:
                # Two steps old: its copy has landed long ago (waits only in pathological cases).
                self._ring[slot][1].synchronize()
                self._harvest(slot)
            self._host[slot].copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(t.device))
            self._ring[slot] = (step, event)
            self._ring_next = slot ^ 1
        else:
            host = torch.empty(N_SLOTS, dtype=t.dtype)
            host.copy_(t)  # CPU (or a device without pinned async copies): immediate
            self._store(host.tolist(), step)
        self.transfers += 1

    def stats(self, sync: bool = False) -> Optional[StepStats]:
        """Latest completed step's stats as Python floats, or None if none completed yet.

        On GPU this does not wait for the current step and so normally returns the
        previous step's values; ``sync=True`` waits for the current step's copy. On CPU
        it returns the current step.
        """
        live = sorted(
            ((entry[0], i) for i, entry in enumerate(self._ring) if entry is not None),
            reverse=True,
        )
        for idx, (_, slot) in enumerate(live):
            event = self._ring[slot][1]
            if sync and idx == 0:
                event.synchronize()
            if event.query():
                # Stream order: if this copy landed, every older one did.
                for _, s in live[idx:]:
                    self._harvest(s)
                break
        return self._latest

    def attach(self, optimizer: torch.optim.Optimizer) -> Tuple[Any, Any]:
        """Register ``measure_grads``/``measure_update`` as the optimizer's step pre/post
        hooks; returns the two removable handles."""
        pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.measure_grads())
        post = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.measure_update())
        return pre, post

    def reset(self) -> None:
        """Forget the EMA, the step count and any pending stats."""
        self.m.clear()
        self._before.clear()
        self._grad_state = None
        self._pending = None
        self._ring = [None, None]
        self._latest = None
        self.step = 0

    # ------------------------------------------------------------------ internals

    def _set_pending(self, st: Dict[str, Any], update_sq: Tensor, param_sq: Tensor, gdot: Tensor):
        primary, acc = st["primary"], st["acc"]
        one = torch.ones((), device=primary, dtype=acc)
        self._pending = torch.stack(
            [
                st["grad_sq"],
                st["noise_sq"],
                update_sq,
                param_sq,
                gdot,
                st["nonfinite"],
                one,
                st["max_abs"],
            ]
        )
        self._pending_step = st["step"]

    def _store(self, values: Sequence[float], step: int) -> None:
        s = stats_from_values(values, step, has_noise=self.ema is not None)
        if self._latest is None or s.step >= self._latest.step:
            self._latest = s

    def _harvest(self, slot: int) -> None:
        entry = self._ring[slot]
        if entry is None or self._host is None:
            return
        self._ring[slot] = None
        self._store(self._host[slot].tolist(), entry[0])

    @staticmethod
    def _version(d: Dict[str, Tensor]) -> Any:
        # A plain dict assigned to ``tap.m`` by a user has no version: never cache it.
        return getattr(d, "version", object())

    @staticmethod
    def _acc_dtype(device: torch.device) -> torch.dtype:
        return torch.float32 if device.type == "mps" else torch.float64

    def _primary_device(self, chunks: List[_Chunk]) -> torch.device:
        if chunks:
            return chunks[0].device
        for p in self.model.parameters():
            if p.requires_grad:
                return _local(p).device
        return torch.device("cpu")

    def _layout(self) -> List[_Chunk]:
        """Chunks of the parameters that have a gradient now; cached while unchanged."""
        items = []
        key = []
        for name, p in self.model.named_parameters():
            if not p.requires_grad or p.grad is None:
                continue
            lp = _local(p)
            if not lp.is_floating_point():
                continue
            items.append((name, p, lp))
            key.append((id(p), lp.data_ptr(), lp.numel(), lp.device, lp.dtype))
        key_t = tuple(key)
        if key_t == self._layout_key:
            return self._chunks
        gran = _SIGN_BITS * self.sketch_buckets
        groups: Dict[Tuple[torch.device, torch.dtype], List[Tuple[str, Tensor, Tensor]]] = {}
        for it in items:
            groups.setdefault((it[2].device, _work_dtype(it[2].dtype)), []).append(it)
        chunks: List[_Chunk] = []
        cap = self.chunk_numel
        for (device, wdtype), group in groups.items():
            cur = _Chunk(len(chunks), device, wdtype, gran)
            for name, p, lp in group:
                n, start = lp.numel(), 0
                while start < n:
                    take = min(n - start, cap - cur.n)
                    cur.segs.append(_Seg(name, p, start, start + take, n))
                    cur.n += take
                    start += take
                    if cur.n == cap:
                        chunks.append(cur)
                        cur = _Chunk(len(chunks), device, wdtype, gran)
            if cur.n:
                chunks.append(cur)
        self._layout_key, self._chunks = key_t, chunks
        return chunks

    def _buffer(self, chunk: _Chunk, role: str) -> Tensor:
        """A flat work buffer of ``chunk.n_pad`` elements. On CPU one per role is kept and
        reused (fresh large allocations page-fault on every call there); elsewhere the
        caching allocator already does this."""
        if chunk.device.type != "cpu":
            return torch.empty(chunk.n_pad, dtype=chunk.wdtype, device=chunk.device)
        key = (role, chunk.wdtype)
        buf = self._workspace.get(key)
        if buf is None or buf.numel() < chunk.n_pad:
            buf = torch.empty(chunk.n_pad, dtype=chunk.wdtype)
            self._workspace[key] = buf
        return buf[: chunk.n_pad]

    def _flat(self, chunk: _Chunk, get: Callable[[_Seg], Optional[Tensor]], role: str) -> Tensor:
        """The chunk's segments of ``get(seg)`` (a param-shaped tensor) as one padded flat
        buffer in the chunk's work dtype; missing tensors read as zeros. Called under
        ``torch.no_grad()`` only (so parameters need no ``detach``)."""
        buf = self._buffer(chunk, role)
        if chunk.n_pad > chunk.n:
            buf[chunk.n :].zero_()
        parts = chunk.cache.get(role) if role == "p" else None
        if parts is None:
            parts = []
            contiguous = True
            for seg in chunk.segs:
                t = get(seg)
                if t is None:
                    n = seg.end - seg.start
                    parts.append(torch.zeros(n, dtype=chunk.wdtype, device=chunk.device))
                else:
                    if seg.dist:
                        t = _local(t)
                    contiguous = contiguous and t.is_contiguous()
                    flat = t.reshape(-1)
                    parts.append(flat if seg.whole else flat[seg.start : seg.end])
            if role == "p" and contiguous:
                # Views of the parameters stay valid while the layout key (which includes
                # each parameter's data_ptr) is unchanged.
                chunk.cache[role] = parts
        torch.cat(parts, out=buf[: chunk.n])
        return buf

    def _ema_views(self, chunk: _Chunk) -> List[Tensor]:
        cached = chunk.cache.get("m")
        if cached is not None and cached[0] is self.m and cached[1] == self._version(self.m):
            return cached[2]
        views = []
        for seg in chunk.segs:
            buf = self.m.get(seg.name)
            lp = _local(seg.param)
            if buf is None or buf.shape != lp.shape:
                buf = torch.zeros(lp.shape, dtype=chunk.wdtype, device=lp.device)
                self.m[seg.name] = buf
            elif buf.dtype != chunk.wdtype or buf.device != lp.device:
                buf = buf.to(lp.device, chunk.wdtype)  # the model moved: keep the EMA
                self.m[seg.name] = buf
            views.append(buf.view(-1)[seg.start : seg.end])
        chunk.cache["m"] = (self.m, self._version(self.m), views)
        return views

    def _before_views(self, chunk: _Chunk) -> Tuple[List[Tensor], List[Tensor]]:
        cached = chunk.cache.get("before")
        if cached is not None and cached[0] == self._version(self._before):
            return cached[1], cached[2]
        dst, src = [], []
        contiguous = True
        for seg in chunk.segs:
            lp = _local(seg.param)
            buf = self._before.get(seg.name)
            stale = buf is None or (buf.device, buf.shape, buf.dtype) != (
                lp.device,
                lp.shape,
                lp.dtype,
            )
            if stale:
                buf = torch.empty(lp.shape, dtype=lp.dtype, device=lp.device)
                self._before[seg.name] = buf
            contiguous = contiguous and lp.is_contiguous()
            dst.append(buf.view(-1)[seg.start : seg.end])
            src.append(lp.detach().reshape(-1)[seg.start : seg.end])
        if contiguous:
            chunk.cache["before"] = (self._version(self._before), dst, src)
        return dst, src

    def _sign_masks(self, chunk: _Chunk, step: int) -> Tensor:
        """Random sign-bit masks for the chunk at this step, shaped ``[n_pad / 32, 32]``.

        One random int32 per 32 elements; bit j of it becomes the sign bit of element j.
        Regenerated from (seed, step, chunk) so measure_update reproduces measure_grads'.
        """
        gen = self._gens.get(chunk.device)
        if gen is None:
            gen = torch.Generator(device=chunk.device)
            self._gens[chunk.device] = gen
        gen.manual_seed(_mix(self.seed, step, chunk.index))
        rows = chunk.n_pad // _SIGN_BITS
        words = torch.randint(
            _INT32_MIN, 2**31 - 1, (rows, 1), generator=gen, dtype=torch.int32, device=chunk.device
        )
        shifts = self._shifts.get(chunk.device)
        if shifts is None:
            shifts = torch.arange(_SIGN_BITS - 1, -1, -1, dtype=torch.int32, device=chunk.device)
            self._shifts[chunk.device] = shifts
        masks = torch.bitwise_left_shift(words, shifts).bitwise_and_(_INT32_MIN)
        if chunk.wdtype == torch.float64:
            masks = masks.to(torch.int64).bitwise_left_shift_(32)
        return masks

    def _sketch(self, buf: Tensor, masks: Tensor) -> Tensor:
        """Fold ``buf`` (modified in place: signs flipped) into ``sketch_buckets`` sums."""
        ibuf = buf.view(torch.int64 if buf.dtype == torch.float64 else torch.int32)
        ibuf.view(masks.shape).bitwise_xor_(masks)
        k = self.sketch_buckets
        rows = buf.numel() // k  # a multiple of 32
        # Two-stage sum: float32 over groups of 32 rows, then float64 over the groups.
        part = buf.view(rows // _SIGN_BITS, _SIGN_BITS, k).sum(1)
        return part.sum(0, dtype=self._acc_dtype(buf.device))

    def _dot(self, a: Tensor, b: Tensor) -> Tensor:
        """<a, b> of two padded flat buffers: float32 products summed per row of
        ``sketch_buckets`` in float32, rows summed in float64 (see the class notes)."""
        prod = torch.mul(a, b).view(-1, self.sketch_buckets).sum(1)
        return prod.sum(dtype=self._acc_dtype(a.device))

    def _grad_chunk(self, chunk: _Chunk, full: bool) -> Dict[str, Tensor]:
        acc = self._acc_dtype(chunk.device)
        g = self._flat(chunk, lambda s: s.param.grad, "g")
        lo, hi = torch.aminmax(g)
        max_abs = torch.maximum(hi, -lo)  # NaN propagates
        ok = torch.isfinite(max_abs)
        out: Dict[str, Tensor] = {"max_abs": max_abs, "nonfinite": (~ok).to(acc)}
        p = None
        if full:
            out["grad_sq"] = torch.linalg.vector_norm(g).to(acc).square()
            if self.exact_update:
                dst, src = self._before_views(chunk)
                torch._foreach_copy_(dst, src)
            else:
                p = self._flat(chunk, lambda s: s.param, "p")
                out["dot"] = self._dot(g, p)
        if self.ema is not None:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
            m = self._ema_views(chunk)
            gv = list(g[: chunk.n].split(chunk.sizes))
            # In place, no temporaries: m <- m - g; ||m - g||; m <- ema (m - g) + g.
            # ||g - m_new|| = ema ||g - m_old||. A non-finite chunk keeps its EMA (decay 1).
            torch._foreach_sub_(m, gv)
            norms = torch._foreach_norm(m)
            nsq = torch.stack(norms).to(acc).square().sum() * (self.ema * self.ema)
            out["noise_sq"] = torch.where(ok, nsq, torch.full_like(nsq, math.nan))
            decay = torch.where(ok, self.ema, 1.0).to(chunk.wdtype)
            torch._foreach_mul_(m, decay)
            torch._foreach_add_(m, gv)
        if p is not None:
            masks = self._sign_masks(chunk, self.step)
            out["sk_g"] = self._sketch(g, masks)
            out["sk_theta"] = self._sketch(p, masks)
        return out

    def _update_chunk(self, chunk: _Chunk, step: int) -> Dict[str, Tensor]:
        acc = self._acc_dtype(chunk.device)
        p = self._flat(chunk, lambda s: s.param, "p")
        g = self._flat(chunk, lambda s: s.param.grad, "g")
        out: Dict[str, Tensor] = {"param_sq": torch.linalg.vector_norm(p).to(acc).square()}
        if self.exact_update:
            b = self._flat(chunk, lambda s: self._before.get(s.name), "b")
            torch.sub(p, b, out=b)
            out["update_sq"] = torch.linalg.vector_norm(b).to(acc).square()
            out["gdot"] = self._dot(g, b)
        else:
            out["dot"] = self._dot(g, p)
            out["sk_theta"] = self._sketch(p, self._sign_masks(chunk, step))
        return out
