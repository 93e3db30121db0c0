"""Shared fixtures for the serving tests: one tiny random-init policy, a loopback server per module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_policies import random_tiny_policy

import vla.models.heads.flow_matching  # noqa: F401  (registers "flow" even before heads/__init__ imports it)
from vla.models.policy import Policy
from vla.serve.obs_mapping import ObsMapping
from vla.serve.server import PolicyServer, ServeConfig, ServerThread

CAMERAS = ["image", "wrist"]
STATE_DIM, ACTION_DIM, CHUNK = 8, 7, 8
API_KEY = "test-key"
# openpi's LIBERO client keys -> canonical (the canonical keys stay accepted too)
LIBERO_MAP = {
    "observation/image": "observation.images.image",
    "observation/wrist_image": "observation.images.wrist",
    "observation/state": "observation.state",
}


@pytest.fixture(scope="session")
def policy() -> Policy:
    """Flow head (stochastic), so seeded equality means something; stats far from identity."""
    stats = {
        "state": {"mean": [0.5] * STATE_DIM, "std": [2.0] * STATE_DIM},
        "actions": {"mean": [float(i) for i in range(ACTION_DIM)], "std": [0.1] * ACTION_DIM},
    }
    return random_tiny_policy(
        "flow", CAMERAS, STATE_DIM, ACTION_DIM, stats, chunk_size=CHUNK, n_action_steps=4, fps=10.0
    )


@pytest.fixture(scope="session")
def checkpoint(policy, tmp_path_factory):
    path = policy.save(tmp_path_factory.mktemp("ckpt") / "policy")
    ObsMapping(dict(LIBERO_MAP)).save(path)
    return path


@pytest.fixture(scope="module")
def server(policy, checkpoint):
    """Loopback server on a free port: API key, 4 MiB cap (16 MiB hard limit), batches up to 8 within 50 ms."""
    cfg = ServeConfig(
        checkpoint=str(checkpoint),
        host="127.0.0.1",
        port=0,
        api_key=API_KEY,
        max_batch=8,
        max_wait_ms=50.0,
        max_message_mb=4.0,
    )
    with ServerThread(PolicyServer(policy, cfg)) as thread:
        yield thread


def _make_obs(seed: int = 0, size: tuple[int, int] = (64, 64), canonical: bool = True) -> dict:
    """One observation as a robot would send it (HWC uint8 images, float32 state, a prompt)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    state = rng.normal(size=STATE_DIM).astype(np.float32)
    if canonical:
        return {
            "observation.images.image": img,
            "observation.images.wrist": wrist,
            "observation.state": state,
            "prompt": "put the bowl on the plate",
        }
    return {
        "observation/image": img,
        "observation/wrist_image": wrist,
        "observation/state": state,
        "prompt": "put the bowl on the plate",
    }


def _in_process(policy: Policy, obs: dict, seed: int | None) -> np.ndarray:
    """What predict_chunk gives for the same observation: (H, D)."""
    images = torch.stack([torch.from_numpy(obs[f"observation.images.{c}"]).permute(2, 0, 1) for c in CAMERAS])
    batch = {
        "images": images[None],
        "state": torch.from_numpy(obs["observation.state"])[None],
        "instruction": [obs["prompt"]],
    }
    return policy.predict_chunk(batch, seed=seed)[0].numpy()


@pytest.fixture
def make_obs():
    """``make_obs(seed, size=(64, 64), canonical=True)`` -> one observation dict (openpi LIBERO keys if not canonical)."""
    return _make_obs


@pytest.fixture
def in_process():
    """``in_process(policy, obs, seed)`` -> (H, D) from ``policy.predict_chunk`` on the same observation."""
    return _in_process
