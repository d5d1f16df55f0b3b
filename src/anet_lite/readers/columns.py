"""Field names, the column aliases and how a column name maps to a field."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import LogFormatError

__all__ = ["ALIASES", "FIELDS", "parse_mapping", "resolve_columns"]

# (param_norm, then processivity, last: a Record's first positions keep their places)
FIELDS = (
    "step",
    "loss",
    "grad_norm",
    "step_norm",
    "noise",
    "lr",
    "time",
    "param_norm",
    "processivity",
)

# Known names per field, in priority order (compared lower-cased, after the W&B "run - "
# prefix and MLflow's "metrics." prefix are removed).
ALIASES: Dict[str, Tuple[str, ...]] = {
    "step": (
        "step",
        "_step",
        "global_step",
        "trainer/global_step",
        "steps",
        "iteration",
        "iter",
        "it",
        "train/global_step",
    ),
    "loss": (
        "loss",
        "train_loss",
        "train/loss",
        "loss/train",
        "training_loss",
        "train/train_loss",
        "train_loss_step",
        "loss_step",
        "train/loss_step",
        "training/loss",
    ),
    "grad_norm": (
        "grad_norm",
        "gradient_norm",
        "train/grad_norm",
        "train/gradient_norm",
        "grad-norm",
        "gradnorm",
        "grad_norm/total",
        "grad_norm_2.0_norm_total",
        "total_grad_norm",
        "optimizer/grad_norm",
    ),
    "step_norm": (
        "step_norm",
        "update_norm",
        "train/step_norm",
        "train/update_norm",
        "param_update_norm",
        "delta_norm",
        "update-norm",
    ),
    "noise": ("noise", "grad_noise", "noise_norm", "gradient_noise", "train/noise"),
    "lr": (
        "lr",
        "learning_rate",
        "train/learning_rate",
        "train/lr",
        "lr-adamw",
        "lr-adam",
        "lr-sgd",
        "optimizer/lr",
        "lr/group0",
        "lr_0",
    ),
    "time": (
        "time",
        "train_time",
        "_runtime",
        "runtime",
        "elapsed",
        "elapsed_time",
        "wall_time",
        "time_s",
        "train_time_s",
        "seconds",
        "time_ms",
        "train_time_ms",
        "elapsed_ms",
        "_timestamp",
        "timestamp",
    ),
    "param_norm": (
        "param_norm",
        "params_norm",
        "parameter_norm",
        "weight_norm",
        "weights_norm",
        "train/param_norm",
        "train/params_norm",
        "train/weight_norm",
        "parameters_norm",
        "model/param_norm",
    ),
    "processivity": (
        "processivity",
        "step_processivity",
        "update_processivity",
        "train/processivity",
        "train/step_processivity",
        "update_cos",
        "cos_update_grad",
        "grad_update_cos",
        "update_grad_cos",
        "optimizer/processivity",
    ),
}
# Fields that TensorBoard scalars / MLflow metrics can be (step and time are not).
_SCALAR_FIELDS = tuple(f for f in FIELDS if f not in ("step", "time"))
_MS_NAMES = {"time_ms", "train_time_ms", "elapsed_ms"}
_GAP = {"", "null", "none", "na", "n/a", "-", "nil"}
_BINARY_MARKERS = (b"\x00",)


def parse_mapping(items: Optional[Iterable[str]]) -> Dict[str, str]:
    """``["loss=train/loss", ...]`` -> ``{"loss": "train/loss"}``; ValueError if malformed."""
    out: Dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--map needs FIELD=COLUMN, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k == "update_norm":
            k = "step_norm"
        if k == "learning_rate":
            k = "lr"
        if k not in FIELDS:
            raise ValueError(f"--map: unknown field {k!r} (one of {', '.join(FIELDS)})")
        if not v.strip():
            raise ValueError(f"--map {k}=: the column name is empty")
        out[k] = v.strip()
    return out


def _norm(name: str) -> str:
    n = name.strip()
    if " - " in n:  # W&B panel export: "<run name> - train/loss"
        n = n.rsplit(" - ", 1)[1]
    n = n.lower()
    if n.startswith("metrics."):  # MLflow search_runs / runs-table exports
        n = n[len("metrics.") :]
    return n


def _ignored(name: str) -> bool:
    s = name.strip()
    return s.endswith(("__MIN", "__MAX", "__min", "__max", "_MIN", "_MAX"))


def resolve_columns(
    names: List[str], mapping: Dict[str, str], *, file: Any, line: int = 1
) -> Dict[str, int]:
    """Field -> index into ``names`` (explicit mapping first, then the aliases)."""
    out: Dict[str, int] = {}
    for field, col in mapping.items():
        if col in names:
            out[field] = names.index(col)
            continue
        lowered = [n.strip().lower() for n in names]
        if col.strip().lower() in lowered:
            out[field] = lowered.index(col.strip().lower())
            continue
        raise LogFormatError(
            f"--map {field}={col}: no such column (columns: {', '.join(names[:20])})",
            file=file,
            line=line,
            column_name=col,
        )
    normed = [None if _ignored(n) else _norm(n) for n in names]
    used = set(out.values())
    for field in FIELDS:
        if field in out:
            continue
        for alias in ALIASES[field]:
            hit = [i for i, n in enumerate(normed) if n == alias and i not in used]
            if hit:
                out[field] = hit[0]
                used.add(hit[0])
                break
        else:
            # "train/xyz" or "train_xyz" when xyz is a known name of this field
            for i, n in enumerate(normed):
                if n is None or i in used:
                    continue
                for pre in ("train/", "train_", "training/"):
                    if n.startswith(pre) and n[len(pre) :] in ALIASES[field][:3]:
                        out[field] = i
                        used.add(i)
                        break
                if field in out:
                    break
    return out


def _time_scale(name: str, fmt: str) -> float:
    n = _norm(name)
    if n in _MS_NAMES or n.endswith("_ms"):
        return 1e-3
    if fmt == "mlflow" and n == "timestamp":
        return 1e-3
    if n == "timestamp":  # a bare "timestamp": epoch ms if it looks like one (decided later)
        return 0.0
    return 1.0


def _tag_field(tag: str, mapping: Dict[str, str]) -> Optional[str]:
    if tag in mapping.values():
        return next(k for k, v in mapping.items() if v == tag)
    n = _norm(tag)
    for field in _SCALAR_FIELDS:
        if field in mapping:
            continue
        if n in ALIASES[field]:
            return field
        for pre in ("train/", "train_", "training/"):
            if n.startswith(pre) and n[len(pre) :] in ALIASES[field][:3]:
                return field
    return None


def _flatten(obj: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
