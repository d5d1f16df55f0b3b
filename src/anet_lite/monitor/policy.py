"""``Policy``: from a ``Snapshot`` to an ``Action`` — a bounded ladder with cool-downs.

The ladder per incident is: slow down → skip the step → roll back → stop, entered at the
rung the cause calls for (a non-finite or single-step blow-up starts by skipping the
update; a precursor or an lr bug starts by slowing down; a fingerprint drift only ever
slows down, gently, as the seed's FAQ advises). Each rung has a retry cap. After a
slow-down or a roll-back the policy waits ``cooldown`` steps before acting on the same
incident again (an lr change takes steps to show; a restored state needs steps to be
judged); a skipped update has shown its effect at once, so while the incident goes on
every alert step is skipped, then rolled back. A cause measured over many steps (a trend,
a CUSUM, a level far above the best, runaway weights: ``SLOW_CAUSES``) skips no update: no
single one caused it; it slows down, then rolls back, then stops. ``recover_after`` healthy
steps close the incident and reset the ladder.

With ``clip`` (the ``Guard`` turns it on: it can carry it out), a gradient out of scale
that the loss does not account for (``grad_explosion``, ``scale_jump``) and that skipping
``max_skips`` updates did not end is clipped instead of rolled back: the skipped updates
left the weights as they were, so a roll-back would restore the same model, and a
persistent scale bug (a loss scale, summed gradient accumulation, a summed loss) would
come back on the next step. From then on the gradients are clipped to
``clip_level_x`` x their level before the incident (an Action "clip"; the Guard keeps
that clip for the rest of the run), and further alarms of those causes are answered by
the clip. A loss that still climbs (another cause) goes on up the ladder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .causes import CAUSES

__all__ = ["ACTIONS", "Action", "Policy"]

# (codes 0-4 as before; "clip" came later: 5)
ACTIONS = ("none", "slow_down", "skip_step", "rollback", "stop", "clip")
_LADDER = ("slow_down", "skip_step", "clip", "rollback", "stop")
# a gradient out of scale that the loss does not account for: clipping answers it
CLIP_CAUSES = ("grad_explosion", "scale_jump")
# statistics over many steps (a trend, a CUSUM, a level far above the best): no single
# update caused them, so none is skipped: slow down, then roll back, then stop
SLOW_CAUSES = ("slow_rise", "rising_trend", "regression", "runaway_weights", "shrinking_weights")
# causes whose incident starts by skipping the update act at once, without a cool-down
_ONE_STEP = tuple(c.name for c in CAUSES.values() if c.first_action == "skip_step")


@dataclass(frozen=True)
class Action:
    """What to do now. ``factor`` is the lr multiplier for ``slow_down`` (0 < factor <= 1);
    for ``clip``, the multiple of the gradient's level before the incident to clip to."""

    kind: str
    factor: float = 1.0
    reason: str = ""
    evidence: Dict[str, Any] = field(default_factory=dict)
    policy: str = "drift"
    step: Optional[int] = None


class Policy:
    """Decision ladder. All thresholds are counts of steps or retries.

    slow_factor   lr multiplier of a slow-down for a precursor (drift uses drift_factor)
    max_slowdowns, max_skips, max_rollbacks   retry caps per incident before escalating.
                  Skipping an update leaves the weights as they were, so a run of bad
                  batches (a corrupted shard: 3-9 in the benchmark) is skipped through,
                  up to max_skips (16), before a roll-back
    cooldown      steps after a slow-down or roll-back during which the same incident is
                  not acted on again (none after a skip)
    recover_after healthy steps that close an incident
    clip          True: a gradient out of scale (``CLIP_CAUSES``) that ``max_skips`` skips
                  did not end is clipped (Action "clip") before any roll-back. None
                  (default): off, unless a caller that can clip turns it on (the ``Guard``
                  does); False: off
    clip_level_x  the clip, as a multiple of the gradient's level before the incident
    """

    def __init__(
        self,
        *,
        slow_factor: float = 0.5,
        drift_factor: float = 0.8,
        max_slowdowns: int = 2,
        max_skips: int = 16,
        max_rollbacks: int = 2,
        cooldown: int = 10,
        recover_after: int = 50,
        clip: Optional[bool] = None,
        clip_level_x: float = 1.0,
    ) -> None:
        if not 0.0 < slow_factor < 1.0 or not 0.0 < drift_factor < 1.0:
            raise ValueError("slow_factor and drift_factor must be in (0, 1)")
        self.slow_factor, self.drift_factor = float(slow_factor), float(drift_factor)
        if not clip_level_x > 0.0:
            raise ValueError(f"clip_level_x must be > 0, got {clip_level_x!r}")
        self.clip = None if clip is None else bool(clip)
        self.clip_level_x = float(clip_level_x)
        self.caps = {
            "slow_down": int(max_slowdowns),
            "skip_step": int(max_skips),
            "clip": 1,
            "rollback": int(max_rollbacks),
            "stop": 1,
        }
        self.cooldown, self.recover_after = int(cooldown), int(recover_after)
        self.reset()

    def reset(self) -> None:
        self.used = {k: 0 for k in _LADDER}
        self.last_action_t = -(10**9)
        self.last_kind = "none"
        self.healthy_run = 0
        self.t = 0

    def decide(self, snap: Any) -> Action:
        self.t += 1
        ev = dict(snap.evidence)
        ev.setdefault("precursor_z", snap.zscore)
        if not snap.alert:
            self.healthy_run += 1
            if self.healthy_run >= self.recover_after and any(self.used.values()):
                self.used = {k: 0 for k in _LADDER}
            return Action(
                "none",
                reason="healthy" if snap.status == "healthy" else snap.status,
                evidence=ev,
                step=snap.step,
            )
        self.healthy_run = 0
        cause = str(ev.get("cause", snap.status))
        one_step = cause in _ONE_STEP
        waits = self.last_kind in ("slow_down", "rollback")
        if not one_step and waits and self.t - self.last_action_t <= self.cooldown:
            return Action(
                "none",
                reason=f"{cause}: cooling down after the last action",
                evidence=ev,
                step=snap.step,
            )
        if snap.status == "drifting":
            if self.used["slow_down"] < self.caps["slow_down"]:
                return self._take("slow_down", self.drift_factor, cause, ev, snap, "drift")
            return Action(
                "none", reason=f"{cause}: slow-downs used up; watching", evidence=ev, step=snap.step
            )
        entry = CAUSES.get(cause)
        start = entry.first_action if entry is not None else "slow_down"
        scaled = cause in CLIP_CAUSES
        if scaled and self.used["clip"]:
            return Action(
                "none",
                reason=f"{cause}: the gradients are clipped to their earlier level",
                evidence=ev,
                step=snap.step,
            )
        factor = self.slow_factor
        if cause == "lr_jump":
            factor = min(self.slow_factor, 1.0 / float(ev.get("lr_jump", 2.0)))
        if "rel_update_limit" in ev:  # whatever the cause: back under the limit, with room
            excess = float(ev.get("rel_update", 1.0)) / float(ev["rel_update_limit"])
            factor = min(factor, 0.5 / max(excess, 1.0))
        for kind in _LADDER[_LADDER.index(start) :]:
            if kind == "clip" and not (self.clip and scaled):
                continue
            if kind == "skip_step" and cause in SLOW_CAUSES:
                continue
            if self.used[kind] < self.caps[kind]:
                tag = "nonfinite" if cause == "non_finite" else "drift"
                how = {"slow_down": factor, "clip": self.clip_level_x}.get(kind, 1.0)
                return self._take(kind, how, cause, ev, snap, tag)
        return Action("none", reason=f"{cause}: ladder exhausted", evidence=ev, step=snap.step)

    def _take(
        self, kind: str, factor: float, cause: str, ev: Dict[str, Any], snap: Any, tag: str
    ) -> Action:
        self.used[kind] += 1
        self.last_action_t, self.last_kind = self.t, kind
        n = self.used[kind]
        what = {
            "slow_down": f"slow down (lr x{factor:.3g})",
            "skip_step": "skip this update",
            "clip": f"clip the gradients to {factor:.3g}x their earlier level from now on",
            "rollback": "roll back to the last healthy state",
            "stop": "stop the run",
        }[kind]
        reason = (
            f"{snap.status} ({cause}) at step {snap.step}: {what} [{kind} {n}/{self.caps[kind]}]"
        )
        return Action(kind, factor, reason, ev, tag, snap.step)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "used": dict(self.used),
            "last_action_t": self.last_action_t,
            "last_kind": self.last_kind,
            "healthy_run": self.healthy_run,
            "t": self.t,
        }

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        self.used = {k: int(st["used"].get(k, 0)) for k in _LADDER}  # (older: no "clip")
        self.last_action_t, self.healthy_run, self.t = (
            int(st["last_action_t"]),
            int(st["healthy_run"]),
            int(st["t"]),
        )
        self.last_kind = str(st.get("last_kind", "slow_down"))  # (older states: waited)
