"""Per-sample random streams: keyed by (seed, step, sample number), independent of the batch."""

import pytest
import torch

from vla.utils import sample_rng
from vla.utils.sample_rng import keyed_generators


def test_keys_give_reproducible_distinct_streams():
    def first(seed, step, index):
        return sample_rng.rand((1, 4), keyed_generators(seed, step, [index]))[0]

    assert torch.equal(first(0, 3, 7), first(0, 3, 7))
    keys = [(0, 3, 7), (1, 3, 7), (0, 4, 7), (0, 3, 8), (0, 7, 3)]
    draws = [first(*k) for k in keys]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1 :])
    with pytest.raises(ValueError, match="sample numbers must be >= 0"):
        keyed_generators(0, 0, [-1])


@pytest.mark.parametrize("draw", [sample_rng.rand, sample_rng.randn, lambda s, g: sample_rng.randint(10, s, g)])
def test_each_row_comes_from_its_own_generator(draw):
    rows = draw((3, 5, 2), keyed_generators(0, 1, [4, 9, 2]))
    alone = draw((1, 5, 2), keyed_generators(0, 1, [9]))
    assert rows.shape == (3, 5, 2) and torch.equal(rows[1], alone[0])
    shared = draw((3, 5, 2), torch.Generator().manual_seed(0))  # one generator for the batch
    assert torch.equal(shared, draw((3, 5, 2), torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="2 generators for a draw of shape"):
        draw((3, 5, 2), keyed_generators(0, 1, [4, 9]))


def test_randint_range():
    x = sample_rng.randint(7, (64, 8), keyed_generators(0, 0, range(64)))
    assert x.dtype == torch.int64 and x.min() >= 0 and x.max() <= 6 and len(x.unique()) == 7
