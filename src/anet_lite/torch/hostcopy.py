"""The tap's one device->host copy per step, without waiting for it.

On CUDA each step's stats tensor is copied ``non_blocking`` into one of two pinned host
slots and an event is recorded behind it; ``latest()`` reads every copy whose event has
completed (``Event.query`` never blocks) and returns the newest step's stats, normally
the previous step's. A slot is reused two steps later, when its copy has long landed
(waiting only in pathological cases). Elsewhere the copy is immediate.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .stepstats import N_SLOTS, StepStats

__all__ = [
    "HostRing",
]


class HostRing:
    """Two pinned host slots for the stats tensors of the last two steps."""

    def __init__(self, to_stats: Callable[[Sequence[float], int], StepStats]) -> None:
        self.to_stats = to_stats
        self.host: Optional[Tensor] = None
        self.ring: List[Optional[Tuple[int, Any]]] = [None, None]
        self.next = 0
        self.latest_stats: Optional[StepStats] = None

    def push(self, t: Tensor, step: int) -> None:
        """Start the copy of ``t`` (``N_SLOTS`` values) for ``step``."""
        if t.device.type != "cuda":
            self._store(t.tolist(), step)  # CPU: immediate
            return
        if self.host is None or self.host.dtype != t.dtype:
            self.host = torch.empty((2, N_SLOTS), dtype=t.dtype, pin_memory=True)
            self.ring = [None, None]
        slot = self.next
        if self.ring[slot] is not None:
            self.ring[slot][1].synchronize()  # two steps old: landed long ago
            self._harvest(slot)
        self.host[slot].copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(t.device))
        self.ring[slot] = (step, event)
        self.next = slot ^ 1

    def latest(self, sync: bool = False) -> Optional[StepStats]:
        """The newest step whose copy has landed (``sync=True``: wait for the last one)."""
        live = sorted(
            ((entry[0], i) for i, entry in enumerate(self.ring) if entry is not None),
            reverse=True,
        )
        for idx, (_, slot) in enumerate(live):
            event = self.ring[slot][1]
            if sync and idx == 0:
                event.synchronize()
            if event.query():
                # Stream order: if this copy landed, every older one did.
                for _, s in live[idx:]:
                    self._harvest(s)
                break
        return self.latest_stats

    def clear(self) -> None:
        self.ring = [None, None]
        self.latest_stats = None

    def _store(self, values: Sequence[float], step: int) -> None:
        s = self.to_stats(values, step)
        if self.latest_stats is None or s.step >= self.latest_stats.step:
            self.latest_stats = s

    def _harvest(self, slot: int) -> None:
        entry = self.ring[slot]
        if entry is None or self.host is None:
            return
        self.ring[slot] = None
        self._store(self.host[slot].tolist(), entry[0])
