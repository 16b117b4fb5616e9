"""A worker's share of a data-parallel distillation (the loop's side of Ray Train; no Ray here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel distillation (``cmidd.ray.train`` builds one per Ray worker).

    Every worker holds the full synthetic set and draws the same random numbers; worker ``rank`` computes the
    DD term on classes ``rank, rank + world, ...`` and the CMI term on the proxies it holds, weighted so that
    the SUM over workers of the image gradients is the single-process gradient of ``L_DD + lam * CMI``.
    ``all_reduce`` sums a tensor in place over the workers; all then take the identical SGD step.
    """

    rank: int
    world: int
    all_reduce: Callable[[torch.Tensor], None]

    @property
    def main(self) -> bool:
        """Rank 0 evaluates and reports; the others only compute."""
        return self.rank == 0

    def classes(self, num_classes: int) -> list[int] | None:
        """The classes of this worker's DD term (None = all, the single-process case)."""
        return None if self.world == 1 else list(range(self.rank, num_classes, self.world))

    def reduce(self, syn: torch.Tensor, *scalars: torch.Tensor) -> list[torch.Tensor]:
        """Sum ``syn.grad`` and the metric scalars over the workers in one collective; returns the sums."""
        if self.world == 1:
            return list(scalars)
        n = syn.numel()
        flat = torch.cat([syn.grad.reshape(-1), torch.stack([s.detach().to(syn.grad.dtype) for s in scalars])])
        self.all_reduce(flat)
        syn.grad.copy_(flat[:n].view_as(syn))
        return list(flat[n:].unbind())
