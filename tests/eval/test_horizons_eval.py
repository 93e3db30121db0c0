"""Evaluation of a mixture-of-horizons checkpoint with cross-horizon consensus: each env plays exactly the
prefix its chunk's horizons agree on, then observes again (not every n_action_steps)."""

from __future__ import annotations

import dataclasses

import pytest
from test_runner import InProcessEnvs
from tiny_policies import random_tiny_policy

from vla.models.heads.horizons import MixtureOfHorizonsConfig
from vla.models.policy import Policy


@pytest.mark.sim
def test_consensus_checkpoint_plays_each_chunks_agreed_prefix(monkeypatch, tmp_path):
    import eval.runner as runner
    from eval.vector_env import EnvWorker

    stats = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [0.0] * 4, "std": [0.5] * 4}}
    base = random_tiny_policy("regression", ["image", "wrist"], 4, 4, stats, chunk_size=8, n_action_steps=1)
    consensus = MixtureOfHorizonsConfig(
        horizons=[2, 4, 8], consensus=True, consensus_ratio=1.0, consensus_min_steps=2, consensus_min_horizons=2
    )
    cfg = dataclasses.replace(base.config, head=dataclasses.replace(base.config.head, moh=consensus))
    policy = Policy(cfg, stats).eval()
    returned, played, agreed = [], [], []
    real_call, real_act, real_plan = runner.ModelChunker.__call__, EnvWorker.act, policy.predict_plan

    def plan(observation, **kw):
        chunk, execute = real_plan(observation, **kw)
        agreed.extend(execute.tolist())
        return chunk, execute

    def chunker_call(self, items):
        chunks = real_call(self, items)
        returned.extend(len(c) for c in chunks)
        return chunks

    def act(self, actions):
        played.append(len(actions))
        return real_act(self, actions)

    monkeypatch.setattr(runner, "make_vector_env", InProcessEnvs)
    monkeypatch.setattr(runner.ModelChunker, "__call__", chunker_call)
    monkeypatch.setattr(EnvWorker, "act", act)
    monkeypatch.setattr(policy, "predict_plan", plan)
    res = runner.evaluate_policy(
        policy, "mw-easy", 2, tmp_path, tasks="reach-v3", max_steps=24, num_envs=2, image_size=48, progress=False
    )
    assert res["tasks"]["reach-v3"]["episodes"] == 2
    assert res["protocol"]["policy"]["executes_consensus_prefix"] is True
    # one message per chunk, its whole agreed prefix (not n_action_steps=1); the last may be cut by the episode end.
    # Steps 5-8 are reached by horizon 8 alone (< m = 2), so a prefix stops by step 4.
    assert played[:-1] == returned[:-1] == agreed[:-1] and all(2 <= k <= 4 for k in agreed)
