"""The one training sampler: a deterministic, resumable, rank-sharded order of dataset indices.

Micro-step s of a run consumes a *global batch* of G = per-rank batch x world size dataset
indices, and rank r takes positions [r*B, (r+1)*B) of it. The sampler yields ``Draw(index,
number)``: the dataset index and the draw's place in the run's stream (``s * G + r * B + i``),
the same for a sample whether one process at batch N*B, N processes at batch B or accumulated
micro-steps drew it, and different for a frame drawn twice; it keys the sample's random draws
(augmentation, noise, time; see ``vla.utils.sample_rng``). Every rank computes the same global
batch from (seed, s) alone, so:

- N processes at batch B see exactly the samples 1 process at batch N*B sees, split by rank;
- a run resumed at micro-step k draws exactly what the uninterrupted run drew from k on
  (nothing repeated, nothing skipped), with no sampler state to checkpoint beyond the step.

Either way the index stream is a function of the seed alone, cut into global batches: so also
batch B accumulated over k micro-steps sees what batch k*B sees. Without weights it is a
concatenation of permutations (epoch e shuffled by a generator seeded from seed and e): every
frame once per epoch. With weights (``SampleWeights``: a mixture's per-dataset weights, or
per-frame weights) it is a concatenation of blocks of ``DRAW_BLOCK`` draws with replacement
(block b from a generator keyed by (seed, b)), each in two stages: a dataset by its weight, then
one of its frames (uniformly, or by its per-frame weights through their running sum). That
scales to any number of frames, where one ``torch.multinomial`` over all frames stops at 2**24
(DROID alone has 27 M), and a mixture of uniformly drawn datasets needs no per-frame vector.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

DRAW_BLOCK = 1 << 16  # weighted draws per block of the stream (0.5 MB of indices; a 100 M-frame search is ms)


class Draw(NamedTuple):
    """One drawn sample: its dataset index, and its number in the run's stream of draws."""

    index: int
    number: int


class SampleWeights:
    """Sampling probabilities over a concatenation of datasets (frames numbered in dataset order).

    Dataset k is drawn with probability ``weights[k] / sum(weights)``; a frame of it uniformly, or,
    where ``within[k]`` is given, in proportion to those per-frame weights. A uniformly drawn
    dataset costs nothing per frame; per-frame weights are kept as their float64 running sum
    (8 bytes a frame: 0.8 GB at 100 M frames), which inverse-CDF draws search.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        within: Sequence[torch.Tensor | None] | None = None,
    ):
        sizes = [int(n) for n in sizes]
        within = list(within) if within is not None else [None] * len(sizes)
        if not sizes or len(weights) != len(sizes) or len(within) != len(sizes):
            raise ValueError(
                f"sample weights: {len(sizes)} dataset sizes, {len(weights)} dataset weights and "
                f"{len(within)} per-sample weight vectors; need one of each per dataset (at least one)"
            )
        if any(n < 0 for n in sizes):
            raise ValueError(f"dataset sizes must be >= 0, got {sizes}")
        share = torch.tensor([float(w) for w in weights], dtype=torch.float64)
        if not torch.isfinite(share).all() or (share < 0).any() or share.sum() <= 0:
            raise ValueError(f"dataset weights must be finite and >= 0 with a positive sum, got {list(weights)}")
        for k, (n, w) in enumerate(zip(sizes, share.tolist(), strict=True)):
            if n == 0 and w > 0:
                raise ValueError(f"dataset {k} is empty but has weight {w}")
        self.sizes = sizes
        self.shares = share / share.sum()  # (K,)
        self.offsets = torch.tensor([0, *accumulate(sizes)][:-1], dtype=torch.long)  # (K,) first frame of each
        self.cumulative = [None if x is None else _running_sum(k, x, sizes[k]) for k, x in enumerate(within)]
        # The last frame with a positive weight: where a draw at the very top of the range must land.
        self.last_positive = [None if c is None else int(torch.searchsorted(c, c[-1])) for c in self.cumulative]

    @classmethod
    def per_sample(cls, weights: torch.Tensor) -> SampleWeights:
        """One dataset whose frames are drawn in proportion to ``weights`` (N,)."""
        return cls(sizes=[len(weights)], weights=[1.0], within=[weights])

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` frame indices (n,) int64, drawn with replacement."""
        dataset = torch.multinomial(self.shares, n, replacement=True, generator=generator)  # (n,)
        local = torch.empty(n, dtype=torch.long)
        for k in torch.unique(dataset).tolist():  # sorted: the generator is consumed in a fixed order
            rows = dataset == k
            count = int(rows.sum())
            cum = self.cumulative[k]
            if cum is None:
                local[rows] = torch.randint(self.sizes[k], (count,), generator=generator)
            else:
                u = torch.rand(count, dtype=torch.float64, generator=generator) * cum[-1]
                local[rows] = torch.searchsorted(cum, u, right=True).clamp_(max=self.last_positive[k])
        return self.offsets[dataset] + local


def _running_sum(k: int, weights: torch.Tensor, size: int) -> torch.Tensor:
    """Checked per-frame weights of dataset ``k`` -> their float64 running sum (size,).

    Summed in place in the float64 output: no second float64 copy of 100 M frames.
    """
    if weights.ndim != 1 or len(weights) != size:
        raise ValueError(f"per-sample weights of dataset {k}: shape {tuple(weights.shape)}, expected ({size},)")
    cum = torch.empty(size, dtype=torch.float64)
    cum.copy_(weights).cumsum_(0)
    if not (weights.min() >= 0 and torch.isfinite(cum[-1])):  # a NaN or an infinity reaches the total
        bad = int((~torch.isfinite(weights) | (weights < 0)).sum())
        raise ValueError(f"per-sample weights of dataset {k}: {bad} negative or non-finite values")
    if cum[-1] <= 0:
        raise ValueError(f"per-sample weights of dataset {k} sum to 0; nothing could be drawn")
    return cum


def _block_generator(seed: int, block: int) -> torch.Generator:
    """The generator of one block of weighted draws.

    numpy's ``SeedSequence`` hashes (seed, block) into a well-mixed seed, so neighbouring blocks get
    unrelated streams and no (seed, block) pair collides with another as a linear mix would.
    """
    state = np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class ShardedStepSampler(Sampler[Draw]):
    """This rank's draws (dataset index, stream number), micro-step after micro-step, from ``start_micro_step`` on.

    ``weights``: None (epochs of permutations), ``SampleWeights``, or a per-sample weight tensor
    of length ``num_samples`` (taken as ``SampleWeights.per_sample``).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        total_micro_steps: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_micro_step: int = 0,
        weights: SampleWeights | torch.Tensor | None = None,
    ):
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if seed < 0:
            raise ValueError(f"the sampler's seed must be >= 0, got {seed}")
        if isinstance(weights, torch.Tensor):
            weights = SampleWeights.per_sample(weights)
        if weights is not None and weights.num_samples != num_samples:
            raise ValueError(
                f"the sampling weights cover {weights.num_samples} samples but the dataset has {num_samples}"
            )
        self.n, self.b, self.total = num_samples, batch_size, total_micro_steps
        self.seed, self.rank, self.world = seed, rank, world_size
        self.start = start_micro_step
        self.weights = weights
        self._last_block: tuple[int, torch.Tensor] | None = None  # the last epoch's permutation, or draw block

    @property
    def global_batch_size(self) -> int:
        return self.b * self.world

    def global_batch(self, micro_step: int) -> torch.Tensor:
        """Dataset indices of one micro-step over all ranks, (G,) int64; rank r's are [r*B, (r+1)*B)."""
        period = self.n if self.weights is None else DRAW_BLOCK  # an epoch, or a block of weighted draws
        start = micro_step * self.global_batch_size
        end = start + self.global_batch_size
        parts, pos = [], start
        while pos < end:  # a global batch may straddle blocks (or span several epochs of a tiny dataset)
            block, offset = divmod(pos, period)
            take = min(period - offset, end - pos)
            parts.append(self._block(block)[offset : offset + take])
            pos += take
        return torch.cat(parts).long()

    def _block(self, block: int) -> torch.Tensor:
        """Epoch ``block``'s permutation of all frames, or weighted draw block ``block``; the last one is
        kept, consecutive steps share it."""
        if self._last_block is None or self._last_block[0] != block:
            if self.weights is None:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
                dtype = torch.int32 if self.n < 2**31 else torch.int64  # int32: 0.4 GB at 100 M frames
                order = torch.randperm(self.n, generator=g, dtype=dtype)
            else:
                order = self.weights.draw(DRAW_BLOCK, _block_generator(self.seed, block))
            self._last_block = (block, order)
        return self._last_block[1]

    def __iter__(self) -> Iterator[Draw]:
        lo, hi = self.rank * self.b, (self.rank + 1) * self.b
        for step in range(self.start, self.total):
            first = step * self.global_batch_size + lo
            for i, index in enumerate(self.global_batch(step)[lo:hi].tolist()):
                yield Draw(index, first + i)

    def __len__(self) -> int:
        return (self.total - self.start) * self.b
