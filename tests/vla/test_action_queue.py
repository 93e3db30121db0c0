"""ActionQueue, the one chunk-to-action rule of the policy, the serving executor and the evaluation runner:
replanning every n steps, ACT temporal ensembling, batches of streams, numpy and torch alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla.action_queue import ActionQueue


def play(queue: ActionQueue, chunks: list, steps: int) -> list:
    """What a policy plays: a new chunk whenever one is due, observed at the current step."""
    out = []
    for _ in range(steps):
        if queue.needs_chunk:
            queue.add_chunk(chunks[queue.t], queue.t)
        out.append(queue.pop())
    return out


def test_without_ensembling_each_chunk_plays_n_actions_then_the_next_replaces_it():
    chunks = [np.arange(6, dtype=np.float32)[:, None] + 100 * t for t in range(9)]  # (H=6, D=1)
    played = play(ActionQueue(replan_every=3), chunks, 7)
    np.testing.assert_array_equal(np.concatenate(played), [0, 1, 2, 300, 301, 302, 600])


@pytest.mark.parametrize("coeff", [0.0, 0.7])
def test_ensembling_averages_every_live_prediction_of_a_step_oldest_weighing_most(coeff):
    rng = np.random.default_rng(0)
    h, steps = 4, 7
    chunks = [rng.normal(size=(h, 2)).astype(np.float32) for _ in range(steps)]
    played = play(ActionQueue(ensemble_coeff=coeff, replan_every=1), chunks, steps)
    for t, action in enumerate(played):
        preds = [chunks[t0][t - t0] for t0 in range(max(0, t - h + 1), t + 1)]  # oldest first
        w = np.exp(-coeff * np.arange(len(preds)))
        np.testing.assert_allclose(action, np.average(preds, axis=0, weights=w), rtol=1e-5)


def test_a_batch_of_streams_in_torch_plays_as_each_stream_alone_in_numpy():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(3, 5, 2, generator=g) for _ in range(6)]  # (B=3, H=5, D=2)
    batched = play(ActionQueue(ensemble_coeff=0.3, replan_every=2), chunks, 6)
    assert all(isinstance(a, torch.Tensor) and a.shape == (3, 2) for a in batched)
    for b in range(3):
        alone = play(ActionQueue(ensemble_coeff=0.3, replan_every=2), [c[b].numpy() for c in chunks], 6)
        np.testing.assert_allclose(torch.stack(batched)[:, b].numpy(), np.stack(alone), rtol=1e-5)


def test_reset_starts_a_new_episode_and_bad_use_is_named():
    queue = ActionQueue(ensemble_coeff=0.1, replan_every=1)
    queue.add_chunk(np.ones((4, 1)), 0)
    queue.pop()
    queue.reset()
    assert queue.t == 0 and queue.queued == 0 and queue.needs_chunk
    queue.add_chunk(np.full((4, 1), 5.0), 0)
    np.testing.assert_array_equal(queue.pop(), [5.0])  # nothing of the last episode is averaged in
    with pytest.raises(ValueError, match="from the future"):
        queue.add_chunk(np.zeros((4, 1)), 3)
    with pytest.raises(ValueError, match=r"expected a chunk \(\.\.\., H, D\)"):
        queue.add_chunk(np.zeros(4), 1)
    with pytest.raises(ValueError, match="replan_every"):
        ActionQueue(replan_every=0)
    empty = ActionQueue()
    with pytest.raises(RuntimeError, match="no action planned for step 0"):
        empty.pop()


def adaptive_reference(preds: list[np.ndarray], alpha: float) -> np.ndarray:
    """CogACT's rule written out for one stream: weights exp(alpha * cos(newest, p_k)), normalized."""
    newest = preds[-1]
    cos = [float(p @ newest / (np.linalg.norm(p) * np.linalg.norm(newest))) for p in preds]
    return np.average(preds, axis=0, weights=np.exp(alpha * np.array(cos)))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 5.0])
def test_adaptive_ensembling_weighs_each_prediction_by_its_agreement_with_the_newest(alpha):
    rng = np.random.default_rng(1)
    h, steps = 4, 7
    chunks = [rng.normal(size=(h, 3)) for _ in range(steps)]
    played = play(ActionQueue(adaptive_alpha=alpha, replan_every=1), chunks, steps)
    for t, action in enumerate(played):
        preds = [chunks[t0][t - t0] for t0 in range(max(0, t - h + 1), t + 1)]  # oldest first
        np.testing.assert_allclose(action, adaptive_reference(preds, alpha), rtol=1e-6)
        if alpha == 0.0:  # alpha = 0 is the plain average of every live prediction
            np.testing.assert_allclose(action, np.mean(preds, axis=0), rtol=1e-6)


def test_adaptive_ensembling_fades_a_prediction_that_disagrees():
    """Two chunks agree on a step, one points the other way: the outlier counts less as alpha grows."""
    queue = ActionQueue(adaptive_alpha=3.0, replan_every=1)
    queue.add_chunk(np.array([[0.0, 0.0], [-1.0, 0.0]]), 0)  # its step-1 prediction disagrees
    queue.pop()
    queue.add_chunk(np.array([[1.0, 0.1], [1.0, 0.1]]), 1)
    plain = (np.array([-1.0, 0.0]) + np.array([1.0, 0.1])) / 2
    blended = queue.pop()
    assert blended[0] > plain[0] + 0.4, (blended, plain)  # pulled toward the newest chunk's (1, 0.1)


def test_adaptive_ensembling_on_a_torch_batch_equals_each_stream_in_numpy():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(3, 5, 2, generator=g, dtype=torch.float64) for _ in range(6)]  # (B=3, H=5, D=2)
    batched = play(ActionQueue(adaptive_alpha=0.5, replan_every=1), chunks, 6)
    for b in range(3):
        alone = play(ActionQueue(adaptive_alpha=0.5, replan_every=1), [c[b].numpy() for c in chunks], 6)
        np.testing.assert_allclose(torch.stack(batched)[:, b].numpy(), np.stack(alone), rtol=1e-9)
    with pytest.raises(ValueError, match="exclude each other"):
        ActionQueue(ensemble_coeff=0.1, adaptive_alpha=0.1)
