"""Data-parallel training under torchrun: what the ranks of a job share and agree on.

Every rank draws the same global batch of window indices (`schedule.EpochOrder`, seeded) and
takes its own slice of it, so a world of N with global batch B sees exactly the batches of one
process with batch B; `DistributedDataParallel` averages the gradients. Decisions that must not
differ between ranks (stop now, the time budget's step total, dead-code restarts) are taken by
rank 0, or by all together, through the collectives below. Rank 0 alone writes and prints.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; a world of 1 makes every method a no-op."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of indices."""
        return idx[self.rank::self.world] if self.active else idx

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def lead_int(self, value: int) -> int:
        """Rank 0's value, on every rank."""
        if not self.active:
            return value
        t = torch.tensor([int(value)], dtype=torch.int64)
        dist.broadcast(t, src=0)
        return int(t.item())

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t)
        return t

    def from_lead_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.broadcast(t, src=0)
        return t

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module under DistributedDataParallel (parameters broadcast from rank 0)."""
        if not self.active:
            return module
        dev = next(module.parameters()).device
        ddp = nn.parallel.DistributedDataParallel
        # buffers stay per rank: the codebook usage counts are summed only when restarts need them
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                   inspect.signature(ddp.__init__).parameters else "broadcast_buffers")
        return ddp(module, device_ids=[dev] if dev.type == "cuda" else None, **{no_sync: False})

    def check_same(self, module: nn.Module, what: str) -> None:
        """Raise unless every rank holds bit-identical parameters of module."""
        if not self.active:
            return
        mine = torch.stack([_fingerprint(p) for p in module.parameters()])
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        bad = [r for r, other in enumerate(every) if not torch.equal(other, every[0])]
        if bad:
            raise RuntimeError(f"{what}: ranks {bad} hold different weights than rank 0")


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A float64 digest of a tensor that changes with any element's value or position."""
    flat = t.detach().double().flatten().cpu()
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64).remainder_(97).add_(1)
    return torch.stack([flat.sum(), (flat * weights).sum()])
