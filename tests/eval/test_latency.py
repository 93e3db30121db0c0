"""Evaluation under inference latency (eval/latency.py, ``vla eval --latency-steps``) and real-time chunking."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_policies import random_tiny_policy

import vla.models.heads.flow_matching  # noqa: F401  (registers "flow")
from eval.latency import DelayedPlay, smoothness_summary
from eval.runner import EvalConfig, evaluate
from vla.action_queue import ActionQueue

H, N = 8, 4


def stamped(t_request: int) -> np.ndarray:
    """(H, 1) chunk whose action k is 100 * t_request + k: each action names its chunk and index."""
    return (100.0 * t_request + np.arange(H, dtype=np.float32))[:, None]


def test_chunks_land_latency_steps_late_and_the_previous_one_plays_meanwhile():
    play = DelayedPlay(ActionQueue(replan_every=N), latency=2)
    first = play.play(stamped(0), 0)[:, 0]
    np.testing.assert_array_equal(first, [0, 1, 2, 3])  # the episode's first chunk: the robot waits for it
    assert play.stalls == 1
    np.testing.assert_array_equal(play.remainder()[:, 0], [4, 5, 6, 7])  # what RTC sends with the next request
    second = play.play(stamped(4), 4)[:, 0]
    np.testing.assert_array_equal(second, [4, 5, 402, 403])  # c0 for 2 more steps, then c4 from its action 2
    third = play.play(stamped(8), 8)[:, 0]
    np.testing.assert_array_equal(third, [404, 405, 802, 803])
    s = play.smoothness()
    assert (s["seams"], s["within_steps"]) == (2, 9)  # steps 6 and 10 switch chunks
    assert s["seam_change_sum"] == pytest.approx((402 - 5) / 1 + (802 - 405))
    summary = smoothness_summary([{"smoothness": s}, {}])
    assert summary["seam_mean_abs_change"] == pytest.approx((397 + 397) / 2) and summary["episodes"] == 1
    assert summary["within_mean_abs_change"] == pytest.approx(1.0)


def test_without_latency_it_plays_what_the_queue_plays():
    """d = 0 is the runner's former loop: merge the chunk, pop until the queue needs the next one."""
    play, queue = DelayedPlay(ActionQueue(ensemble_coeff=0.5, replan_every=1)), ActionQueue(0.5, replan_every=1)
    for t in range(6):
        chunk = stamped(t) * (1 + 0.1 * t)
        queue.add_chunk(chunk, t)
        expected = [queue.pop()]
        while not queue.needs_chunk:
            expected.append(queue.pop())
        np.testing.assert_array_equal(play.play(chunk, t), np.stack(expected))
    assert play.stalls == 0


@pytest.fixture(scope="module")
def flow_checkpoint(tmp_path_factory):
    stats = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [0.0] * 4, "std": [0.5] * 4}}
    policy = random_tiny_policy("flow", ["image", "wrist"], 4, 4, stats, chunk_size=8, n_action_steps=4, image_size=48)
    return policy.save(tmp_path_factory.mktemp("ckpt") / "flow")


@pytest.mark.sim
def test_eval_with_latency_and_rtc_records_the_seam_figure(flow_checkpoint, tmp_path):
    """``vla eval --latency-steps 2 [--rtc guided]`` on mw-easy with a tiny flow checkpoint: the protocol says the
    latency and RTC settings, results.json the smoothness at seams; RTC changes the actions played."""
    kw = dict(suite="mw-easy", tasks="reach-v3", episodes_per_task=1, max_steps=12, image_size=48, progress=False)
    naive = evaluate(EvalConfig(checkpoint=str(flow_checkpoint), latency_steps=2, out=str(tmp_path / "a"), **kw))
    guided = evaluate(
        EvalConfig(checkpoint=str(flow_checkpoint), latency_steps=2, rtc="guided", out=str(tmp_path / "b"), **kw)
    )
    assert naive["protocol"]["policy"]["latency_steps"] == 2 and "rtc" not in naive["protocol"]["policy"]
    assert guided["protocol"]["policy"]["rtc"]["mode"] == "guided"
    for res in (naive, guided):
        sm = res["smoothness"]
        assert sm["episodes"] == 1 and sm["seams"] == 2 and sm["seams"] + sm["within_steps"] == 11
    assert naive["smoothness"] != guided["smoothness"]
    with pytest.raises(ValueError, match="n_action_steps \\+ latency_steps <= 8"):
        evaluate(EvalConfig(checkpoint=str(flow_checkpoint), latency_steps=5, out=str(tmp_path / "c"), **kw))
    with pytest.raises(ValueError, match="d <= s"):
        evaluate(
            EvalConfig(
                checkpoint=str(flow_checkpoint),
                latency_steps=4,
                n_action_steps=3,
                rtc="guided",
                out=str(tmp_path / "d"),
                **kw,
            )
        )
