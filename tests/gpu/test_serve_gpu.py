"""`vla serve --compile=true` on CUDA: concurrent clients get the eager chunk, alone and batched.

The server compiles and records its CUDA graphs at start-up in the main thread, and its inference worker
thread replays them (vla.models.compile.share_cudagraphs_with_threads): only a GPU exercises that hand-over.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serve_clients import infer_concurrently
from tiny_policies import random_tiny_policy

from vla.models.policy import Policy
from vla.serve import PolicyClient
from vla.serve.server import PolicyServer, ServeConfig, ServerThread

CAMERAS, STATE_DIM, ACTION_DIM, CHUNK = ["image", "wrist"], 6, 5, 8
STATS = {
    "state": {"mean": [0.5] * STATE_DIM, "std": [2.0] * STATE_DIM},
    "actions": {"mean": [float(i) for i in range(ACTION_DIM)], "std": [0.1] * ACTION_DIM},
}
FP32_RELATIVE = 1e-3  # fp32 weights: inductor's fused kernels against eager's, no bf16 rounding


def observation(seed: int, size: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=STATE_DIM).astype(np.float32),
        "prompt": "put the bowl on the plate",
    }


def eager_chunk(policy: Policy, obs: dict, seed: int | None) -> np.ndarray:
    images = torch.stack([torch.from_numpy(obs[f"observation.images.{c}"]).permute(2, 0, 1) for c in CAMERAS])
    batch = {
        "images": images[None].cuda().float() / 255.0,
        "state": torch.from_numpy(obs["observation.state"])[None].cuda(),
        "instruction": [obs["prompt"]],
    }
    return policy.predict_chunk(batch, seed=seed)[0].float().cpu().numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-6))


@pytest.fixture(params=["flow", "regression"])
def served(request, tmp_path):
    """(eager policy on CUDA, compiled server on CUDA) for one head, from one checkpoint."""
    path = random_tiny_policy(
        request.param, CAMERAS, STATE_DIM, ACTION_DIM, STATS, chunk_size=CHUNK, n_action_steps=4, fps=10.0
    ).save(tmp_path / "ckpt")
    cfg = ServeConfig(checkpoint=str(path), port=0, device="cuda", compile=True, max_batch=8, max_wait_ms=50.0)
    torch._dynamo.reset()
    with ServerThread(PolicyServer.from_checkpoint(cfg)) as thread:
        yield request.param, Policy.load(path, device="cuda").eval(), thread
    torch._dynamo.reset()


def test_compiled_server_answers_alone_and_batched_with_the_eager_chunk(served):
    head, eager, server = served
    size = eager.backbone.image_size
    with PolicyClient(server.url) as client:  # batch size 1: a seeded request runs alone
        obs = observation(1, size)
        reply = client.infer({**obs, "seed": 7})
        assert reply["server_timing"]["batch_size"] == 1
        assert relative_error(reply["actions"], eager_chunk(eager, obs, seed=7)) < FP32_RELATIVE

    n, rounds = 8, 3
    replies = {}
    for r in range(rounds):
        for i, reply in enumerate(infer_concurrently(server.url, [observation(100 * r + i, size) for i in range(n)])):
            replies[i, r] = reply
    errors = [reply for reply in replies.values() if isinstance(reply, Exception)]
    assert not errors, errors
    assert len(replies) == n * rounds
    assert max(r["server_timing"]["batch_size"] for r in replies.values()) > 1, "no request was batched"
    for (i, r), reply in replies.items():
        assert reply["actions"].shape == (CHUNK, ACTION_DIM) and np.isfinite(reply["actions"]).all()
        if head == "regression":  # deterministic: each batched row is that client's own eager chunk
            want = eager_chunk(eager, observation(100 * r + i, size), seed=None)
            assert relative_error(reply["actions"], want) < FP32_RELATIVE, (i, r)
