"""torch.distributed helpers for the Guard: who we are, one SUM collective, sharding, GNS.

Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training", appendix A): with per-rank batch B_small and global batch B_big = world *
B_small, the squared norms of the local (pre-all-reduce) and global gradients give

    |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and B_simple = tr(S) / |G|^2, with numerator and denominator averaged (EMA) separately
before dividing. |G_small|^2 is read by a DDP communication hook from each bucket before
it is all-reduced: one extra scalar in the Guard's one collective per step.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch

__all__ = [
    "LocalGradNorm",
    "NoiseScale",
    "all_reduce_sum",
    "is_sharded",
    "world",
]


def world(group: Any = None) -> Tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_sharded(model: torch.nn.Module) -> bool:
    """True for FSDP / DTensor-sharded parameters (each element lives on one rank)."""
    name = type(model).__name__
    if name in ("FullyShardedDataParallel", "FSDPModule") or name.startswith("FSDP"):
        return True
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def all_reduce_sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place SUM across ranks (no-op on one process). The Guard's one collective per step."""
    if world(group)[1] > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=group)
    return t


class LocalGradNorm:
    """DDP comm hook that adds each bucket's local squared norm before the all-reduce."""

    def __init__(self, ddp_model: Any, group: Any = None) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self._allreduce = allreduce_hook
        self.group = group
        self.sq: Optional[torch.Tensor] = None
        ddp_model.register_comm_hook(state=group, hook=self._hook)

    def _hook(self, state, bucket):  # no annotations: DDP checks them against its own types
        buf = bucket.buffer()
        sq = buf.detach().float().square().sum().to(torch.float64)
        self.sq = sq if self.sq is None else self.sq + sq
        return self._allreduce(state, bucket)

    def take(self, device: torch.device) -> torch.Tensor:
        """This step's local squared norm (0 if no bucket ran), reset for the next step."""
        sq = self.sq if self.sq is not None else torch.zeros((), dtype=torch.float64, device=device)
        self.sq = None
        return sq.to(device)


class NoiseScale:
    """EMA estimate of B_simple from (|G_small|^2, |G_big|^2) pairs; units of ``b_small``."""

    def __init__(self, b_small: float, world_size: int, beta: float = 0.95) -> None:
        self.b_small, self.b_big, self.beta = float(b_small), float(b_small) * world_size, beta
        self.g2 = self.trace = 0.0
        self.n = 0

    def update(self, small_sq: float, big_sq: float) -> float:
        if not (math.isfinite(small_sq) and math.isfinite(big_sq)) or self.b_big <= self.b_small:
            return self.value()
        bs, bb = self.b_small, self.b_big
        g2 = (bb * big_sq - bs * small_sq) / (bb - bs)
        tr = (small_sq - big_sq) / (1.0 / bs - 1.0 / bb)
        self.n += 1
        a = self.beta if self.n > 1 else 0.0
        self.g2 = a * self.g2 + (1 - a) * g2
        self.trace = a * self.trace + (1 - a) * tr
        return self.value()

    def value(self) -> float:
        """B_simple (in samples if ``b_small`` is the per-rank batch size); nan before data."""
        return self.trace / self.g2 if self.n and self.g2 > 0 else math.nan
