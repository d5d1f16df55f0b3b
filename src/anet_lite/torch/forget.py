"""Forget layers of a PyTorch model, and leave a tombstone that explains it.

``forget_layers(model, ["fc2"], policy="compliance", log="tombstones.jsonl", reason=...)``
re-initialises (or zeroes) the named submodules and appends one ``"forget"`` record to a
hash-chained tombstone log (:mod:`anet_lite.records.tombstone`)::

    scope    {"layers": ["fc2"], "mode": "reinit", **scope}
    evidence {"theta": .., "f_total": .., "precursor_z": .., "step": ..,   # from snapshot/monitor
              "reason": "...",
              "weights_before": {"fc2": "sha256:..."}, "weights_after": {"fc2": "sha256:..."},
              "weights_hash": "sha256 over name|dtype|shape|bytes, state_dict name order"}

Modes:

* ``"reinit"`` (default): every submodule of a named layer (the layer included) that has a
  callable ``reset_parameters()`` gets it called (Linear, Conv, Embedding, LayerNorm, BatchNorm:
  their own init; BatchNorm also resets its running statistics). A parameter whose owning
  module has no ``reset_parameters`` is set to zero instead, and its name is listed in
  ``evidence["zeroed"]``. Initialisation draws from torch's global RNG: seed it
  (``torch.manual_seed``) for a reproducible re-init.
* ``"zero"``: every parameter of the layer is set to zero, and modules with
  ``reset_running_stats()`` (BatchNorm) reset their running statistics; other buffers are kept.

Weight hashes (:func:`weights_hash`): SHA-256 over the layer's ``state_dict()`` (parameters and
persistent buffers, the layer's sub-modules included), entries sorted by name; for each entry
the bytes ``f"{name}|{dtype}|{tuple(shape)}|"`` (e.g. ``weight|torch.float32|(10, 64)|``, UTF-8)
followed by the raw bytes of ``tensor.detach().cpu().contiguous()`` in the machine's byte order
(little-endian on every platform torch supports). Anyone holding the weights can recompute it.

Evidence: ``snapshot`` (a :class:`~anet_lite.Snapshot`) gives ``theta``, ``f_total``,
``precursor_z`` (its ``zscore``), ``step`` and ``status``; otherwise ``monitor`` (a
:class:`~anet_lite.Monitor`, which does not keep its last snapshot) gives ``theta`` only.

The log is opened (and its key/scheme checked) and the arguments validated before any weight
changes, so a bad argument leaves the model untouched.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..records.forgetting import LogLike, check_text, merge_extra, open_log

__all__ = ["MODES", "WEIGHTS_HASH_SCHEME", "forget_layers", "weights_hash"]

MODES = ("reinit", "zero")
WEIGHTS_HASH_SCHEME = "sha256 over name|dtype|shape|bytes, state_dict name order"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def weights_hash(module: nn.Module) -> str:
    """``"sha256:<hex>"`` of ``module.state_dict()`` in the canonical order (module docstring)."""
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):  # extra_state objects: hash their repr
            h.update(f"{name}|object|{t!r}|".encode())
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return "sha256:" + h.hexdigest()


def _layer_names(model: nn.Module, layers: Union[str, Sequence[str]]) -> List[str]:
    names = [layers] if isinstance(layers, str) else layers
    try:
        names = list(names)
    except TypeError:
        raise TypeError(
            f"layers must be a str or a list of str, got {type(layers).__name__}"
        ) from None
    if not names:
        raise ValueError("layers must name at least one layer")
    known = dict(model.named_modules())
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"layers[{i}] must be a str, got {type(n).__name__}")
        if n not in known:
            hint = ", ".join(repr(k) for k in list(known)[1:9])
            raise ValueError(
                f"unknown layer {n!r}: not in model.named_modules() (some names: {hint})"
            )
    return list(dict.fromkeys(names))


@torch.no_grad()
def _reinit(prefix: str, layer: nn.Module) -> List[str]:
    """Call reset_parameters() where there is one; zero the rest. Returns the zeroed names."""
    covered = set()
    for m in layer.modules():
        fn = getattr(m, "reset_parameters", None)
        if callable(fn):
            fn()
            covered.update(id(p) for p in m.parameters(recurse=False))
    zeroed = []
    for name, p in layer.named_parameters():
        if id(p) not in covered:
            p.zero_()
            zeroed.append(f"{prefix}.{name}" if prefix else name)
    return zeroed


@torch.no_grad()
def _zero(layer: nn.Module) -> None:
    for p in layer.parameters():
        p.zero_()
    for m in layer.modules():
        fn = getattr(m, "reset_running_stats", None)
        if callable(fn):
            fn()


def _evidence_from(snapshot: Any, monitor: Any) -> Dict[str, Any]:
    ev: Dict[str, Any] = {}
    if snapshot is not None:
        for key, attr in (("theta", "theta"), ("f_total", "f_total"), ("precursor_z", "zscore")):
            if not hasattr(snapshot, attr):
                raise TypeError(
                    f"snapshot must be an anet_lite.Snapshot (no .{attr}), "
                    f"got {type(snapshot).__name__}"
                )
            ev[key] = float(getattr(snapshot, attr))
        if getattr(snapshot, "step", None) is not None:
            ev["step"] = int(snapshot.step)
        if getattr(snapshot, "status", None) is not None:
            ev["status"] = str(snapshot.status)
    elif monitor is not None:
        if not hasattr(monitor, "theta"):
            raise TypeError(
                f"monitor must be an anet_lite.Monitor (no .theta), got {type(monitor).__name__}"
            )
        ev["theta"] = float(monitor.theta)
    return ev


def forget_layers(
    model: nn.Module,
    layers: Union[str, Sequence[str]],
    *,
    policy: str,
    log: LogLike,
    reason: str,
    mode: str = "reinit",
    monitor: Any = None,
    snapshot: Any = None,
    operator: str = "auto",
    scope: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Re-initialise (``mode="reinit"``) or zero (``"zero"``) ``layers`` and tombstone it.

    ``layers``: names as in ``model.named_modules()`` (one str or a list); an unknown name
    raises ValueError naming it. ``policy``: why it was allowed ("ttl", "compliance",
    "drift", ...). ``log``: a path or a :class:`~anet_lite.TombstoneLog`. ``scope``: extra
    scope entries (e.g. ``{"datasets": ["user-123"]}``). Returns the record as written;
    see the module docstring for its scope/evidence and the weight-hash definition.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = _layer_names(model, layers)
    check_text(policy, "policy")
    check_text(reason, "reason")
    check_text(operator, "operator")
    sc: Dict[str, Any] = {"layers": names, "mode": mode}
    merge_extra(sc, scope, "scope")
    ev = _evidence_from(snapshot, monitor)
    tomb = open_log(log)  # before touching the weights: a bad log/key leaves them as they are

    modules = dict(model.named_modules())
    before = {n: weights_hash(modules[n]) for n in names}
    zeroed: List[str] = []
    for n in names:
        if mode == "reinit":
            zeroed.extend(z for z in _reinit(n, modules[n]) if z not in zeroed)
        else:
            _zero(modules[n])
    after = {n: weights_hash(modules[n]) for n in names}

    ev["reason"] = reason
    ev["weights_before"] = before
    ev["weights_after"] = after
    ev["weights_hash"] = WEIGHTS_HASH_SCHEME
    if zeroed:
        ev["zeroed"] = zeroed
    return tomb.append("forget", policy=policy, scope=sc, evidence=ev, operator=operator)
