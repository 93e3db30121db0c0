"""The one training sampler: exact resume, rank sharding, weighted mixtures, and 100 M frames (indices only)."""

from __future__ import annotations

import itertools

import pytest
import torch

from vla.train.sampler import SampleWeights, ShardedStepSampler

N = 37  # frames: not a multiple of any batch below, so global batches straddle epochs


def weights_for(kind: str) -> SampleWeights | torch.Tensor | None:
    if kind == "per_dataset":
        return SampleWeights(sizes=[20, 17], weights=[1.0, 3.0])
    if kind == "per_sample":
        return torch.arange(N, dtype=torch.float32) % 5  # every fifth frame has weight 0
    return None


def indices(draws) -> list[int]:
    """The dataset indices of a sampler's draws (their stream numbers are tested in test_training_data)."""
    return [d.index for d in draws]


def per_step(order: list[int], batch: int) -> list[list[int]]:
    return [order[i : i + batch] for i in range(0, len(order), batch)]


@pytest.mark.parametrize("kind", ["uniform", "per_dataset", "per_sample"])
def test_resume_at_step_k_draws_what_the_uninterrupted_run_draws(kind):
    full = indices(ShardedStepSampler(N, 4, 30, seed=5, weights=weights_for(kind)))
    resumed = indices(ShardedStepSampler(N, 4, 30, seed=5, start_micro_step=12, weights=weights_for(kind)))
    assert len(full) == 30 * 4 and resumed == full[12 * 4 :]
    assert full != indices(ShardedStepSampler(N, 4, 30, seed=6, weights=weights_for(kind)))


@pytest.mark.parametrize("kind", ["uniform", "per_dataset", "per_sample"])
def test_n_ranks_at_batch_b_see_what_one_rank_at_batch_nb_sees(kind):
    one = per_step(indices(ShardedStepSampler(N, 6, 20, seed=3, weights=weights_for(kind))), 6)
    ranks = [
        per_step(indices(ShardedStepSampler(N, 2, 20, seed=3, rank=r, world_size=3, weights=weights_for(kind))), 2)
        for r in range(3)
    ]
    assert [sum((ranks[r][s] for r in range(3)), []) for s in range(20)] == one
    sampler = ShardedStepSampler(N, 2, 20, seed=3, rank=1, world_size=3, weights=weights_for(kind))
    assert sampler.global_batch(7).tolist() == one[7]  # every rank can name the whole micro-step


@pytest.mark.parametrize("kind", ["uniform", "per_dataset", "per_sample"])
def test_accumulated_micro_steps_see_what_one_large_batch_sees(kind):
    """Batch 2 over 3 accumulated micro-steps draws the stream batch 6 draws, for weighted sampling too."""
    large = indices(ShardedStepSampler(N, 6, 20, seed=4, weights=weights_for(kind)))
    assert indices(ShardedStepSampler(N, 2, 60, seed=4, weights=weights_for(kind))) == large


def test_without_weights_every_epoch_is_a_permutation():
    order = indices(ShardedStepSampler(N, 4, 28, seed=1))  # 112 draws: three whole epochs and a part
    epochs = [order[i : i + N] for i in range(0, 3 * N, N)]
    assert all(sorted(e) == list(range(N)) for e in epochs)
    assert epochs[0] != epochs[1]


def test_dataset_weights_set_each_dataset_share_and_draw_uniformly_inside():
    weights = SampleWeights(sizes=[10, 90], weights=[3.0, 1.0])
    order = indices(ShardedStepSampler(100, 50, 80, seed=7, weights=weights))
    first = sum(i < 10 for i in order) / len(order)
    assert abs(first - 0.75) < 0.03
    assert set(order) == set(range(100))  # 1000 draws of the second dataset reach all its 90 frames


def test_per_sample_weights_are_followed_and_zero_weights_never_drawn():
    weights = torch.tensor([0.0, 1.0, 0.0, 3.0, 0.0])
    order = indices(ShardedStepSampler(5, 40, 50, seed=2, weights=weights))
    assert set(order) == {1, 3}
    assert abs(order.count(3) / len(order) - 0.75) < 0.03


def test_bad_weights_are_named():
    with pytest.raises(ValueError, match=r"weights cover 30 samples but the dataset has 37"):
        ShardedStepSampler(N, 4, 2, weights=SampleWeights(sizes=[20, 10], weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match=r"dataset weights must be finite and >= 0.*\[1.0, -2.0\]"):
        SampleWeights(sizes=[20, 17], weights=[1.0, -2.0])
    with pytest.raises(ValueError, match=r"dataset 1 is empty but has weight 2.0"):
        SampleWeights(sizes=[20, 0], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"per-sample weights of dataset 0: 1 negative or non-finite"):
        SampleWeights.per_sample(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match=r"per-sample weights of dataset 0 sum to 0"):
        SampleWeights.per_sample(torch.zeros(4))
    with pytest.raises(ValueError, match=r"rank 2 not in \[0, world_size=2\)"):
        ShardedStepSampler(N, 4, 2, rank=2, world_size=2)


def test_100m_frames_weighted_uniform_and_resumed():
    """DROID alone has 27 M frames; one multinomial over all frames stops at 2**24."""
    n, droid = 100_000_000, 27_000_000
    mixture = SampleWeights(sizes=[droid, n - droid], weights=[1.0, 1.0])
    drawn = indices(
        itertools.islice(ShardedStepSampler(n, 256, 10**6, start_micro_step=500_000, weights=mixture), 1024)
    )
    assert all(0 <= i < n for i in drawn) and max(drawn) > 2**24
    assert abs(sum(i < droid for i in drawn) / len(drawn) - 0.5) < 0.1

    per_frame = torch.zeros(n)  # a per-sample vector over all frames: the old sampler's input
    per_frame[:8], per_frame[-8:] = 1.0, 3.0
    drawn = indices(itertools.islice(ShardedStepSampler(n, 64, 100, weights=per_frame), 1024))
    assert all(i < 8 or i >= n - 8 for i in drawn)
    assert abs(sum(i >= n - 8 for i in drawn) / len(drawn) - 0.75) < 0.06
    del per_frame

    step = n // 256 - 3  # the last three global batches of epoch 0
    uniform = ShardedStepSampler(n, 128, 10**6, rank=1, world_size=2, start_micro_step=step)
    drawn = indices(itertools.islice(uniform, 3 * 128))
    assert len(set(drawn)) == len(drawn) and all(0 <= i < n for i in drawn)
