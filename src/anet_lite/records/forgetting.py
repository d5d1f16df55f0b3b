"""Explainable forgetting: tombstones for removed data, and a readable view of a tombstone log.

``forget_dataset`` records that datasets were removed (by which policy, why, on what evidence)
as one ``"forget"`` record in a hash-chained :class:`~anet_lite.records.tombstone.TombstoneLog`. It
removes nothing itself: deleting the data is the caller's job, the record is the receipt.
Layer forgetting (which needs PyTorch) is :func:`anet_lite.torch.forget.forget_layers`; both
write records with exactly the seed's fields (``event``, ``time``, ``policy``, ``scope``,
``evidence``, ``operator``) plus the chain's ``prev`` and ``hash``.

``format_table`` renders records as the ``anet-lite tombstones`` table (EN or JA headers).
This module uses the standard library only (``tombstone`` itself needs NumPy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .._text import pad, width
from .tombstone import PathLike, TombstoneLog

__all__ = ["evidence_summary", "forget_dataset", "format_table", "open_log", "scope_summary"]

LogLike = Union[PathLike, TombstoneLog]

_HEADERS = {
    "en": ("time", "event", "policy", "scope", "evidence", "hash"),
    "ja": ("時刻", "イベント", "ポリシー", "範囲", "証拠", "ハッシュ"),
}
_MAX_CELL = 48


def open_log(log: LogLike) -> TombstoneLog:
    """``log`` itself if it is a TombstoneLog, else ``TombstoneLog(log)`` (key from the env)."""
    if isinstance(log, TombstoneLog):
        return log
    if isinstance(log, (str, Path)) or hasattr(log, "__fspath__"):
        return TombstoneLog(log)
    raise TypeError(f"log must be a path or a TombstoneLog, got {type(log).__name__}")


def check_text(value: Any, name: str) -> str:
    """``value`` if it is a non-empty str; TypeError/ValueError naming ``name`` otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def merge_extra(base: Dict[str, Any], extra: Optional[Mapping[str, Any]], name: str) -> None:
    """Add ``extra``'s entries to ``base``; ValueError if one would overwrite a computed key."""
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(extra).__name__}")
    clash = sorted(k for k in extra if k in base)
    if clash:
        raise ValueError(f"{name} must not set {', '.join(map(repr, clash))} (filled in for you)")
    base.update(extra)


def forget_dataset(
    log: LogLike,
    *,
    datasets: Union[str, Sequence[str]],
    policy: str,
    reason: str,
    evidence: Optional[Mapping[str, Any]] = None,
    scope: Optional[Mapping[str, Any]] = None,
    operator: str = "auto",
) -> Dict[str, Any]:
    """Record that ``datasets`` were removed under ``policy`` ("ttl", "compliance", "drift"...).

    Writes one record: event ``"forget"``, scope ``{"datasets": [...], **scope}``, evidence
    ``{**evidence, "reason": reason}`` (e.g. row counts, ticket ids, θ at the time), and
    returns it as written. ``datasets`` is one name or a list of names (non-empty strs,
    duplicates dropped, order kept). ``log`` is a path or a :class:`TombstoneLog`.
    """
    names = [datasets] if isinstance(datasets, str) else datasets
    try:
        names = list(names)
    except TypeError:
        raise TypeError(
            f"datasets must be a str or a list of str, got {type(datasets).__name__}"
        ) from None
    if not names:
        raise ValueError("datasets must name at least one dataset")
    for i, n in enumerate(names):
        check_text(n, f"datasets[{i}]")
    names = list(dict.fromkeys(names))
    check_text(policy, "policy")
    check_text(reason, "reason")
    check_text(operator, "operator")
    sc: Dict[str, Any] = {"datasets": names}
    merge_extra(sc, scope, "scope")
    ev: Dict[str, Any] = {}
    if evidence is not None:
        if not isinstance(evidence, Mapping):
            raise TypeError(f"evidence must be a dict, got {type(evidence).__name__}")
        ev.update(evidence)
    if "reason" in ev:
        raise ValueError("evidence must not hold 'reason': pass reason= instead")
    ev["reason"] = reason
    return open_log(log).append("forget", policy=policy, scope=sc, evidence=ev, operator=operator)


# ---- the table -------------------------------------------------------------------------------


def _short(text: str, limit: int = _MAX_CELL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}={_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def scope_summary(scope: Any) -> str:
    """``layers=fc1,fc2 mode=reinit``: every scope entry, shortened to one cell."""
    if not isinstance(scope, dict):
        return _short(_value(scope))
    return _short(" ".join(f"{k}={_value(v)}" for k, v in scope.items()))


_KEY_EVIDENCE = (("theta", "θ"), ("f_total", "F"), ("precursor_z", "z"))


def evidence_summary(evidence: Any) -> str:
    """``θ=0.42 F=-0.8 z=3.1 step=120: reason``: the key numbers, then the reason."""
    if not isinstance(evidence, dict):
        return _short(_value(evidence))
    parts = []
    for key, label in _KEY_EVIDENCE:
        v = evidence.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{label}={v:.2f}")
        elif v is not None:
            parts.append(f"{label}={v}")
    if evidence.get("step") is not None:
        parts.append(f"step={evidence['step']}")
    text = " ".join(parts)
    if evidence.get("reason"):
        text = f"{text}: {evidence['reason']}" if text else str(evidence["reason"])
    return _short(text or "-", 60)


def short_hash(h: Any) -> str:
    """``sha256:3f2a9c1d04b7`` (scheme + the first 12 hex digits)."""
    if not isinstance(h, str) or ":" not in h:
        return "-" if h is None else _short(str(h), 20)
    scheme, hexd = h.split(":", 1)
    return f"{scheme}:{hexd[:12]}"


def row(rec: Mapping[str, Any]) -> List[str]:
    """The table cells of one record."""
    return [
        str(rec.get("time", "-")),
        str(rec.get("event", "-")),
        str(rec.get("policy", "-")),
        scope_summary(rec.get("scope", {})),
        evidence_summary(rec.get("evidence", {})),
        short_hash(rec.get("hash")),
    ]


def format_table(records: Iterable[Mapping[str, Any]], lang: str = "en") -> str:
    """Records as an aligned text table with EN or JA headers (no trailing newline)."""
    if lang not in _HEADERS:
        raise ValueError(f"lang must be 'en' or 'ja', got {lang!r}")
    rows = [list(_HEADERS[lang])] + [row(r) for r in records]
    widths = [max(width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(pad(c, w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
