"""``Snapshot``: one step's verdict — the seed's numbers plus status, alert and evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

__all__ = ["STATUSES", "Snapshot", "make_snapshot"]

STATUSES = ("warming_up", "healthy", "recovering", "drifting", "precursor", "collapsed")


@dataclass(frozen=True)
class Snapshot:
    """What the monitor saw at one step.

    theta     0..1   noise-fingerprint similarity to the healthy reference (1 = same)
    sdot      -1..1  entropy rate Ṡ of the loss (> 0: more erratic)
    proc      -1..1  processivity P (do updates follow gradients?)
    f_total          w_s * Ṡ + w_p * P
    precursor bool   the two-second z-score alert fired
    zscore           precursor z (finite, clipped to +-1000)
    step             training step, if known
    status           one of STATUSES
    alert            True when someone should look (and a policy may act)
    evidence         the numbers behind the verdict (name -> float/str/bool)
    """

    theta: float
    sdot: float
    proc: float
    f_total: float
    precursor: bool
    zscore: float
    step: Optional[int] = None
    status: str = "healthy"
    alert: bool = False
    evidence: Dict[str, Any] = field(default_factory=dict)

    def explain(self, lang: str = "en") -> str:
        """One or two sentences: likely cause, the numbers, the advice ("en" or "ja")."""
        from .monitor.explain import explain

        return explain(self, lang=lang)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of all fields (evidence copied)."""
        return {
            "theta": self.theta,
            "sdot": self.sdot,
            "proc": self.proc,
            "f_total": self.f_total,
            "precursor": self.precursor,
            "zscore": self.zscore,
            "step": self.step,
            "status": self.status,
            "alert": self.alert,
            "evidence": dict(self.evidence),
        }


_new = object.__new__


def make_snapshot(
    theta: float,
    sdot: float,
    proc: float,
    f_total: float,
    precursor: bool,
    zscore: float,
    step: Optional[int],
    status: str,
    alert: bool,
    evidence: Dict[str, Any],
) -> Snapshot:
    """Build a Snapshot without the frozen dataclass's per-field ``object.__setattr__``.

    The Monitor's hot path: same object, ~3x cheaper to make. Arguments are trusted.
    """
    snap = _new(Snapshot)
    d = snap.__dict__  # the fields in the dataclass's order, as __init__ would store them
    d["theta"] = theta
    d["sdot"] = sdot
    d["proc"] = proc
    d["f_total"] = f_total
    d["precursor"] = precursor
    d["zscore"] = zscore
    d["step"] = step
    d["status"] = status
    d["alert"] = alert
    d["evidence"] = evidence
    return snap
