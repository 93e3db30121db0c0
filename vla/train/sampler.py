"""A deterministic, resumable, rank-sharded sample order.

The stream of sample indices is a concatenation of permutations (epoch e shuffled with
seed + e). Micro-step s of the run consumes global positions [s*G, (s+1)*G) with
G = per-rank batch x world size; rank r takes its slice. Hence:
- 1 process at batch 2B sees exactly the samples 2 processes at batch B see together;
- resuming at micro-step s regenerates the same order from s: no data is repeated or skipped.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ShardedStepSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        total_micro_steps: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_micro_step: int = 0,
        weights: torch.Tensor | None = None,
    ):
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.b, self.total = num_samples, batch_size, total_micro_steps
        self.seed, self.rank, self.world = seed, rank, world_size
        self.start = start_micro_step
        self.weights = weights  # per-sample weights (dataset mixtures): sample with replacement instead

    def _epoch(self, e: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        global_batch = self.b * self.world
        pos = self.start * global_batch
        epoch, offset = divmod(pos, self.n)
        perm = self._epoch(epoch)
        for _ in range(self.start, self.total):
            chunk = []
            while len(chunk) < global_batch:
                take = perm[offset : offset + global_batch - len(chunk)]
                chunk.extend(take.tolist())
                offset += len(take)
                if offset >= self.n:
                    epoch, offset = epoch + 1, 0
                    perm = self._epoch(epoch)
            yield from chunk[self.rank * self.b : (self.rank + 1) * self.b]

    def __len__(self) -> int:
        return (self.total - self.start) * self.b
