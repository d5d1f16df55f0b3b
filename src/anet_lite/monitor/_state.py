"""Monitor.state_dict / load_state_dict: plain JSON-serialisable data, exact round trip."""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

VERSION = 7
_SCALARS = (
    "t",
    "ref_pinned",
    "theta",
    "theta_low",
    "drift_loss0",
    "drift_stalled",
    "shift_x",
    "shift_g",
    "shift_bad",
    "early_ref",
    "early_big",
    "step_last",
    "span",
    "sdot",
    "log_space",
    "loss_eps",
    "loss0",
    "loss_prev",
    "loss_step",
    "pz_hot",
    "rise",
    "grad_hot",
    "co_hot",
    "ur_prev",
    "gr_prev",
    "loss_x_prev",
    "grow",
    "rel_prev",
    "rel_calm",
    "dead",
    "lr_prev",
    "lr_max",
    "lr_peak",
    "lr_rising",
    "grace_until",
    "loss_grace_until",
    "pending_mark",
    "grad_ref",
    "last_status",
    "checked",
    "coherent",
    "climb",
    "climb_devs",
    "climb_ur",
    "recover_t",
    "recover_ref",
    "recover_level",
)
_PARTS = ("recent", "loss_base", "grad_recent", "grad_base", "upd_base", "cos_base", "proc", "fp")


_TAG = "__nonfinite__"


def _enc(v: Any) -> Any:
    """Strict JSON: a non-finite float becomes {"__nonfinite__": "nan" | "inf" | "-inf"}."""
    if isinstance(v, float) and not math.isfinite(v):
        return {_TAG: repr(v)}
    if isinstance(v, dict):
        return {k: _enc(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        if len(v) == 1 and _TAG in v:
            return float(v[_TAG])
        return {k: _dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def dump(m: Any) -> Dict[str, Any]:
    """The Monitor's state as strict JSON (no NaN / Infinity tokens)."""
    return _enc(_dump(m))


def _dump(m: Any) -> Dict[str, Any]:
    st: Dict[str, Any] = {"version": VERSION, "config": {"n": m.n, "window": m.window}}
    for k in _SCALARS:
        st[k] = getattr(m, k)
    for k in _PARTS:
        st[k] = getattr(m, k).state_dict()
    st["ref"] = None if m.ref is None else m.ref.tolist()
    st["losses"] = list(m.losses)
    st["cos_recent"] = list(m.cos_recent)
    st["surge_hist"] = [list(v) for v in m.surge_hist]
    st["policy"] = m.policy.state_dict() if hasattr(m.policy, "state_dict") else None
    # each detector owns its state: adding one does not change VERSION
    st["detectors"] = {d.name: d.state_dict() for d in m.detectors}
    return st


# Older versions load with the state they lack empty (as after reset): version 3 had no
# processivity state, version 4 no surge history, version 5 no shift_bad, version 6 no
# gradient-and-update growth streak.
_NEW_IN_4 = ("coherent", "climb", "climb_devs", "climb_ur", "cos_base", "cos_recent")
_NEW_IN_6 = ("shift_bad",)
_NEW_IN_7 = ("gr_prev", "grow", "rel_prev", "rel_calm")


def load(m: Any, st: Dict[str, Any]) -> None:
    st = _dec(st) if isinstance(st, dict) else st
    version = st.get("version") if isinstance(st, dict) else None
    if version not in (3, 4, 5, 6, VERSION):
        raise ValueError(f"state must be a Monitor.state_dict() of version 3 to {VERSION}")
    cfg = st["config"]
    if cfg != {"n": m.n, "window": m.window}:
        raise ValueError(
            f"state was saved by a Monitor with {cfg}; this one has "
            f"{{'n': {m.n}, 'window': {m.window}}}"
        )
    m.reset()
    skip = (
        (_NEW_IN_4 if version == 3 else ())
        + (_NEW_IN_6 if version < 6 else ())
        + (_NEW_IN_7 if version < 7 else ())
    )
    for k in _SCALARS:
        if k not in skip and k in st:  # (a scalar added within a version starts fresh)
            setattr(m, k, st[k])
    if "span" not in st:  # (saved before steps were counted: one step per update)
        m.span = m.t
    if "loss_grace_until" not in st:  # (saved when every event muted the loss rules too)
        m.loss_grace_until = m.grace_until
    for k in _PARTS:
        if k not in skip:
            getattr(m, k).load_state_dict(st[k])
    m.ref = None if st["ref"] is None else np.asarray(st["ref"], dtype=np.float64)
    m.losses.extend(float(v) for v in st["losses"])  # reset() left an empty deque
    m.cos_recent.extend(float(v) for v in st.get("cos_recent", ()))
    m.climb_devs = [float(v) for v in st.get("climb_devs", ())]
    m.surge_hist.extend(tuple(float(x) for x in v) for v in st.get("surge_hist", ()))
    if st.get("policy") is not None and hasattr(m.policy, "load_state_dict"):
        m.policy.load_state_dict(st["policy"])
    saved = st.get("detectors") or {}  # (absent before the detectors: they start fresh)
    for d in m.detectors:
        if d.name in saved:
            d.load_state_dict(saved[d.name])
