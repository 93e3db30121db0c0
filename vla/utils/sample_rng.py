"""Per-sample random streams: a training sample's random draws depend on the sample, not on its batch.

Under DDP or ZeRO every rank runs the same code; if the draws came from a generator shared
by the batch (or from the global RNG, seeded alike on every rank), every rank would draw the
same augmentation, noise and times, and a run with N processes at batch B would neither see
the diversity of batch N*B nor match a one-process run at that batch. So each sample gets its
own ``torch.Generator`` seeded from (seed, step, sample number) (``keyed_generators``; the number
is the sample's place in the run's stream of draws, ``vla.train.sampler.Draw``), and
everything random about it (augmentation parameters, then the head's noise and time) is drawn
from that generator. One process at batch 2B, two processes at batch B, or two accumulated
micro-steps of B then draw exactly the same numbers for every sample.

The draw functions take ``generator`` as one of:

- ``None``: the global RNG, drawn directly on ``device`` (inference, tests);
- one ``torch.Generator``: shared by the whole batch;
- a sequence of B generators, one per row: row i is drawn from generator i alone (on the
  generator's device, then moved), so it does not depend on which rows share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def keyed_generators(seed: int, step: int, sample_numbers: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from (seed, step, sample number).

    numpy's ``SeedSequence`` hashes the three integers into a well-mixed 64-bit seed, so
    neighbouring steps or indices get unrelated streams (a linear mix such as
    ``seed * P + step`` lets different keys collide).
    """
    if seed < 0 or step < 0:
        raise ValueError(f"keyed_generators: seed and step must be >= 0, got seed={seed}, step={step}")
    gens = []
    for number in sample_numbers:
        if number < 0:
            raise ValueError(f"keyed_generators: sample numbers must be >= 0, got {number}")
        state = np.random.SeedSequence([seed, step, int(number)]).generate_state(1, np.uint64)[0]
        gens.append(torch.Generator().manual_seed(int(state)))
    return gens


def _draw(fn: Callable[..., torch.Tensor], shape: Sequence[int], generator: Generators, device, **kw) -> torch.Tensor:
    """``fn(shape, generator=..., device=...)`` under the three meanings of ``generator`` above."""
    shape = tuple(shape)
    if generator is None:
        return fn(shape, device=device, **kw)
    if isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, device=generator.device, **kw).to(device)
    if not shape or len(generator) != shape[0]:
        raise ValueError(f"per-sample generators: got {len(generator)} generators for a draw of shape {shape}")
    rows = [fn(shape[1:], generator=g, device=g.device, **kw) for g in generator]
    return torch.stack(rows).to(device)


def rand(shape: Sequence[int], generator: Generators = None, device=None) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``shape``."""
    return _draw(torch.rand, shape, generator, device)


def randn(shape: Sequence[int], generator: Generators = None, device=None) -> torch.Tensor:
    """Standard normal float32 of ``shape``."""
    return _draw(torch.randn, shape, generator, device)


def randint(high: int, shape: Sequence[int], generator: Generators = None, device=None) -> torch.Tensor:
    """Integers in [0, high) (int64) of ``shape``."""
    return _draw(lambda s, **kw: torch.randint(0, high, s, **kw), shape, generator, device)
