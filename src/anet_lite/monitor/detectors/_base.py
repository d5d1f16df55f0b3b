"""The detector interface: a frozen per-step view in, a finding (or None) out."""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional


class View(NamedTuple):
    """One step's signals as the detectors read them (made once per step by the Monitor).

    x          the loss in its reading scale: log(loss + loss_floor * first loss), or the
               raw loss for a loss that can be <= 0 (``log_space`` False); NaN when the
               loss is not finite
    log_space  whether ``x`` is a log
    log_param  log ||θ|| (NaN when not given)
    restart    a declared change (``mark``) or an lr restart happened at this step:
               detectors re-reference
    lr_up      the lr was raised at this step by whoever acts on the verdicts (the Guard's
               return towards the schedule after a slow-down: ``Monitor.own_lr_change``)
    steps      the training steps this row stands for: its step minus the previous row's
               (1 for a log of every step, or without step numbers; at most 1,000).
               Durations ("for 20 steps") add these up, so a log written every 10th step
               is judged over the same span of training as one written every step

    A detector that needs another signal adds its field here and the Monitor computes it
    once per step (nothing is computed that no detector reads).
    """

    x: float
    log_space: bool
    log_param: float
    restart: bool
    lr_up: bool = False
    steps: int = 1


class Finding(NamedTuple):
    """What a detector found: ``cause`` (a key of ``anet_lite.monitor.causes.CAUSES``), the
    ``status`` it implies ("precursor" = an alert, "drifting" = reported, not an
    alert) and the numbers behind it (merged into the snapshot's evidence)."""

    detector: str
    cause: str
    status: str
    evidence: Dict[str, Any]


class Detector:
    """Base class: ``update(view) -> Finding | None``, ``reset()``, ``state_dict()``.

    Subclasses list their state attribute names in ``STATE`` (plain floats, ints,
    bools or lists of floats) and set them in ``reset``; ``state_dict`` and
    ``load_state_dict`` then round-trip exactly.
    """

    name = "detector"
    STATE: tuple = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def update(self, view: View) -> Optional[Finding]:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """JSON-safe: non-finite floats are stored as strings ("nan", "inf", "-inf")."""
        return {k: _dump(getattr(self, k)) for k in self.STATE}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.reset()
        for k in self.STATE:
            if k in state:
                setattr(self, k, _load(state[k]))


def _dump(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, list):
        return [_dump(x) for x in v]
    return v


def _load(v: Any) -> Any:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, list):
        return [_load(x) for x in v]
    return v


finite = math.isfinite  # (a builtin: cheaper than a Python function on the hot path)
