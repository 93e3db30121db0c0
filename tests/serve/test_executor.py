"""ChunkExecutor: every step plays the action planned for that step, chunks are fetched ahead of time,
overtaken actions are dropped, overlapping chunks can be ensembled."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from vla.serve import ChunkExecutor, ExecutorConfig, PolicyClient, protocol

H = 8


def timestamped_chunks(latency_s: float = 0.0):
    """obs {"t": t} -> (H, 1) chunk whose action k is t + k: each action names the step it was planned for."""

    def infer(obs):
        time.sleep(latency_s)
        return {"actions": (obs["t"] + np.arange(H, dtype=np.float32))[:, None]}

    return infer


def test_real_time_loop_plays_each_steps_own_action_without_waiting():
    cfg = ExecutorConfig(fps=20, request_threshold=4)
    played, clock = [], {"t": 0}

    def get_obs():
        return {"t": clock["t"]}

    def send(action):
        played.append(float(action[0]))
        clock["t"] += 1

    with ChunkExecutor(timestamped_chunks(latency_s=0.05), cfg) as ex:
        stats = ex.run(get_obs, send, num_steps=40)
    np.testing.assert_array_equal(played, np.arange(40))  # never an action meant for another step
    assert stats.stalls == 0  # the next chunk always arrived before the queue ran dry
    assert stats.requests >= 40 // (H - 1) and stats.dropped >= stats.chunks - 1  # action 0 is always overtaken
    assert all(lat >= 1 for lat in stats.latency_steps[1:])


def test_late_chunk_drops_overtaken_actions():
    ex = ChunkExecutor(timestamped_chunks(), ExecutorConfig(request_threshold=0))
    for t in range(4):
        assert ex.step({"t": t})[0] == t
    assert ex.t == 4 and ex.queued == 4 and ex.stats.requests == 1
    ex.add_chunk((100 + np.arange(H, dtype=np.float32))[:, None], t_request=2)  # observed 2 steps ago
    np.testing.assert_array_equal(ex.planned()[:, 0], 102 + np.arange(H - 2))  # fresher chunk wins
    assert ex.stats.dropped == 2
    with pytest.raises(ValueError, match="from the future"):
        ex.add_chunk(np.zeros((H, 1)), t_request=9)
    with pytest.raises(ValueError, match=r"expected a chunk \(H, D\)"):
        ex.add_chunk(np.zeros(H), t_request=4)
    ex.close()


@pytest.mark.parametrize("coeff", [0.0, 1.0])
def test_temporal_ensembling_weights(coeff):
    ex = ChunkExecutor(timestamped_chunks(), ExecutorConfig(ensemble_coeff=coeff, actions_per_chunk=4))
    ex.add_chunk(np.zeros((H, 2)), t_request=0)
    ex.add_chunk(np.ones((H, 2)), t_request=0)
    ex.add_chunk(np.full((6, 2), 2.0), t_request=0)
    w = [math.exp(-coeff * i) for i in range(3)]
    expected = (0 * w[0] + 1 * w[1] + 2 * w[2]) / sum(w)
    assert ex.planned().shape == (4, 2)  # actions_per_chunk keeps the first 4 of each chunk
    np.testing.assert_allclose(ex.planned(), expected, rtol=1e-6)
    ex.close()


def test_adaptive_ensembling_weights():
    """ExecutorConfig.adaptive_alpha: predictions of a step weigh exp(alpha * cos(newest, p)); the newest is (1, 1)."""
    ex = ChunkExecutor(timestamped_chunks(), ExecutorConfig(adaptive_alpha=2.0))
    ex.add_chunk(np.tile([1.0, 0.0], (H, 1)), t_request=0)  # cos 1/sqrt(2) with the newest
    ex.add_chunk(np.tile([-1.0, -1.0], (H, 1)), t_request=0)  # cos -1
    ex.add_chunk(np.ones((H, 2)), t_request=0)  # cos 1
    preds = np.array([[1.0, 0.0], [-1.0, -1.0], [1.0, 1.0]])
    w = np.exp(2.0 * np.array([1 / math.sqrt(2), -1.0, 1.0]))
    np.testing.assert_allclose(ex.planned(), np.tile(w @ preds / w.sum(), (H, 1)), rtol=1e-6)
    ex.close()


def test_config_is_checked():
    with pytest.raises(ValueError, match="fps"):
        ExecutorConfig(fps=0)
    with pytest.raises(ValueError, match="actions_per_chunk"):
        ExecutorConfig(actions_per_chunk=0)


def test_executor_over_the_served_policy(server, make_obs):
    obs = make_obs(30)
    with (
        PolicyClient(server.url, api_key="test-key") as client,
        ChunkExecutor(client.infer, ExecutorConfig(fps=20, request_threshold=4, actions_per_chunk=8)) as ex,
    ):
        actions = [ex.step(obs) for _ in range(12)]
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in actions)
    assert ex.stats.chunks >= 2 and ex.stats.steps == 12


def test_rtc_requests_carry_the_aligned_remainder_and_the_measured_delay():
    """ExecutorConfig.rtc: each request after the first sends the previous chunk's remainder, aligned with the chunk
    requested (its row 0 is the action just played, for the request's own step), and the last measured delay."""
    sent = []

    def infer(obs):
        sent.append(obs)
        return {"actions": (obs["t"] + np.arange(H, dtype=np.float32))[:, None]}

    ex = ChunkExecutor(infer, ExecutorConfig(request_threshold=4, rtc=True))
    for t in range(10):
        assert ex.step({"t": t})[0] == t
        ex._collect(block=True)  # the chunk lands within the step: a delay of 1 (its action 0 was played)
    ex.close()
    assert protocol.PREV_CHUNK not in sent[0] and protocol.INFERENCE_DELAY not in sent[0]  # nothing played yet
    for obs in sent[1:]:
        prev = obs[protocol.PREV_CHUNK]
        assert prev.shape == (5, 1) and obs[protocol.INFERENCE_DELAY] == 1
        np.testing.assert_array_equal(prev[:, 0], obs["t"] + np.arange(5))  # row k: the action for step t + k
    plain = ChunkExecutor(infer, ExecutorConfig(request_threshold=4))
    sent.clear()
    for t in range(6):
        plain.step({"t": t})
        plain._collect(block=True)
    plain.close()
    assert all(protocol.PREV_CHUNK not in obs for obs in sent)
