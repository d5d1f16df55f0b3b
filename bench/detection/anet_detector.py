"""anet-lite's Monitor as a benchmark detector (the `Detector` interface of baselines.py).

    python bench/detection/score.py --extra anet_detector:DETECTORS

Default settings, no per-run tuning. Feeds the Monitor what a training loop has: loss,
grad_norm, update_norm (as step_norm), param_norm, processivity, noise, lr. An alarm is
``snapshot.alert``. When the scorer passes benign events the loop itself knows about
(``--pass-benign-events``), they are declared with ``Monitor.mark`` — the API a user
would call; by default the scorer blanks them and the Monitor sees the schedule only
through lr.

``DECLARED`` is the Monitor of a loop that declares every intended data change
(``Monitor(declared=True)``): score it with ``--pass-benign-events``, the only mode in
which the scorer hands those declarations over (without them it would take every
curriculum switch for a bad batch).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from anet_lite import Monitor


def _num(x: Any) -> Optional[float]:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


class AnetMonitor:
    name = "anet_monitor"

    def __init__(self, **kw: Any) -> None:
        self.m = Monitor(**kw)

    def update(self, rec: Dict[str, Any]) -> bool:
        ev = rec.get("event")
        if ev:
            self.m.mark(str(ev))
        loss = _num(rec.get("loss"))
        snap = self.m.update(
            math.nan if loss is None else loss,
            step=int(rec["step"]),
            grad_norm=_num(rec.get("grad_norm")),
            step_norm=_num(rec.get("update_norm")),
            noise=_num(rec.get("noise")),
            lr=_num(rec.get("lr")),
            param_norm=_num(rec.get("param_norm")),
            processivity=_num(rec.get("processivity")),
        )
        return bool(snap.alert)


class AnetMonitorDeclared(AnetMonitor):
    name = "anet_monitor_declared"

    def __init__(self, **kw: Any) -> None:
        super().__init__(declared=True, **kw)


DETECTORS = {"anet_monitor": AnetMonitor}
DECLARED = {"anet_monitor_declared": AnetMonitorDeclared}


class _Without(AnetMonitor):
    """The Monitor with some detectors removed and/or some columns withheld (ablation)."""

    drop_detectors: tuple = ()
    drop_columns: tuple = ()

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.m.detectors = [d for d in self.m.detectors if d.name not in self.drop_detectors]

    def update(self, rec: Dict[str, Any]) -> bool:
        if self.drop_columns:
            rec = {k: (None if k in self.drop_columns else v) for k, v in rec.items()}
        return super().update(rec)


def _ablation(name: str, detectors: tuple = (), columns: tuple = ()) -> type:
    return type(name, (_Without,), {"name": name, "drop_detectors": detectors,
                                     "drop_columns": columns})


# python bench/detection/score.py --cache ... --split all --extra anet_detector:ABLATION
ABLATION = {
    c.name: c
    for c in (
        _ablation(
            "no_detectors",
            ("loss_cusum", "loss_regression", "norm_growth", "loss_trend", "loss_trend_slow"),
        ),
        _ablation("no_loss_cusum", ("loss_cusum",)),
        _ablation("no_loss_trend", ("loss_trend", "loss_trend_slow")),
        _ablation("no_loss_regression", ("loss_regression",)),
        _ablation("no_norm_growth", ("norm_growth",)),
        _ablation("no_noise_theta", columns=("noise",)),
        _ablation("no_processivity", columns=("processivity",)),
        _ablation("no_param_norm", columns=("param_norm",)),
        _ablation("no_update_norm", columns=("update_norm",)),
        _ablation("no_lr", columns=("lr",)),
    )
}
