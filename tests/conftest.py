"""Shared fixtures: small synthetic LeRobot v3 datasets written through our DatasetWriter.

Datasets are built once per session (video encoding is the slow part) and copied when
a test needs to corrupt one. Values are deterministic so statistics can be checked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched from the hub in tests
# Decoded-dataset caches and simulator configs of the tests (and of the CLIs they spawn) stay out of ~/.cache.
os.environ["VLA_CACHE_DIR"] = tempfile.mkdtemp(prefix="vla-test-cache-")

from data_pipelines.writer import DatasetWriter, make_features  # noqa: E402

THREE_CAMS = {"left_wrist_cam": (32, 32), "overhead": (32, 32), "zed_right": (32, 32)}
MW_CAMS = {"image": (32, 32), "wrist": (32, 32)}  # the MetaWorld suite's camera names


def synthetic_episode(
    rng: np.random.Generator, length: int, cameras: dict[str, tuple[int, int]], state_dim: int, action_dim: int
) -> dict[str, np.ndarray]:
    """Smooth random-walk state/action and images whose mean brightness follows the frame index."""
    frames: dict[str, np.ndarray] = {}
    for name, (h, w) in cameras.items():
        base = np.linspace(0, 200, length, dtype=np.float32)[:, None, None, None]
        noise = rng.integers(0, 40, size=(length, h, w, 3))
        frames[f"observation.images.{name}"] = np.clip(base + noise, 0, 255).astype(np.uint8)
    if state_dim:
        frames["observation.state"] = np.cumsum(rng.normal(size=(length, state_dim)), 0).astype(np.float32)
    frames["action"] = rng.normal(size=(length, action_dim)).astype(np.float32)
    return frames


def write_dataset(
    out: Path,
    cameras: dict[str, tuple[int, int]],
    state_dim: int,
    action_dim: int,
    lengths: list[int],
    tasks: list[str],
    seed: int = 0,
    use_videos: bool = True,
    fps: int = 10,
    extra: dict[str, tuple[int, ...]] | None = None,
    data_files_size_in_mb: float | None = None,
) -> Path:
    """``extra``: further float features (key -> shape), filled with Gaussian noise. ``data_files_size_in_mb``:
    LeRobot's data file size (a tiny one: a file per episode)."""
    rng = np.random.default_rng(seed)
    feats = make_features(cameras, state_dim, action_dim, extra=extra, use_videos=use_videos)
    with DatasetWriter(
        out,
        fps=fps,
        features=feats,
        robot_type="synthetic",
        use_videos=use_videos,
        data_files_size_in_mb=data_files_size_in_mb,
    ) as w:
        for i, n in enumerate(lengths):
            frames = synthetic_episode(rng, n, cameras, state_dim, action_dim)
            frames |= {k: rng.normal(size=(n, *shape)).astype(np.float32) for k, shape in (extra or {}).items()}
            w.add_episode(frames, task=tasks[i % len(tasks)])
    return out


@pytest.fixture(scope="session")
def three_cam_dataset(tmp_path_factory) -> Path:
    """3 oddly named cameras (video), 7-dim state, 14-dim action, 3 episodes of 20-36 frames."""
    out = tmp_path_factory.mktemp("ds") / "bimanual"
    return write_dataset(out, THREE_CAMS, 7, 14, [30, 20, 36], ["fold the towel", "stack the cups"], seed=1)


@pytest.fixture(scope="session")
def metaworld_layout_dataset(tmp_path_factory) -> Path:
    """The MetaWorld layout: 2 cameras stored as images in parquet, 4-dim state and action."""
    out = tmp_path_factory.mktemp("ds") / "mw"
    return write_dataset(out, MW_CAMS, 4, 4, [24, 20], ["reach the goal"], seed=2, use_videos=False)


@pytest.fixture(scope="session")
def metaworld_env_state_dataset(tmp_path_factory) -> Path:
    """The MetaWorld layout with MetaWorld's privileged 39-dim observation.environment_state beside the state."""
    out = tmp_path_factory.mktemp("ds") / "mw_env_state"
    extra = {"observation.environment_state": (39,)}
    return write_dataset(
        out, MW_CAMS, 4, 4, [30, 26], ["reach the goal"], seed=3, use_videos=False, fps=80, extra=extra
    )


@pytest.fixture(scope="session")
def multi_file_dataset(tmp_path_factory) -> Path:
    """6 episodes of 8-15 frames, each in a data file of its own (one video file for all), 1 camera (video),
    4-dim state and action: a large dataset's many files, in small."""
    out = tmp_path_factory.mktemp("ds") / "multi_file"
    lengths = [12, 9, 15, 10, 8, 14]
    return write_dataset(out, {"image": (32, 32)}, 4, 4, lengths, ["reach", "push"], seed=4, data_files_size_in_mb=1e-4)


@pytest.fixture
def make_episode():
    """``make_episode(rng, T, cameras, S, D)`` -> frames dict for DatasetWriter.add_episode."""
    return synthetic_episode


@pytest.fixture
def write_synthetic():
    """``write_synthetic(out, cameras, S, D, lengths, tasks, ...)`` -> path of a new dataset."""
    return write_dataset


@pytest.fixture
def mw_cams() -> dict[str, tuple[int, int]]:
    return dict(MW_CAMS)


@pytest.fixture
def copy_dataset(tmp_path):
    """Copy a session dataset so a test may corrupt it."""

    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


@pytest.fixture
def serve_and_infer():
    """``serve_and_infer(checkpoint, obs) -> actions``: load the checkpoint as `vla serve` does, start a
    loopback server, and ask it once with the real openpi client (the keys the dataset used)."""

    def _run(checkpoint: Path, obs: dict) -> np.ndarray:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        from vla.models.policy import Policy
        from vla.serve.server import PolicyServer, ServeConfig, ServerThread

        cfg = ServeConfig(checkpoint=str(checkpoint), host="127.0.0.1", port=0, device="cpu")
        with ServerThread(PolicyServer(Policy.load(checkpoint), cfg)) as thread:
            return WebsocketClientPolicy(host="127.0.0.1", port=thread.port).infer(obs)["actions"]

    return _run


@pytest.fixture
def kill_at_checkpoint():
    """``kill_at_checkpoint(cmd, marker, env)``: start ``cmd``, SIGKILL it once ``marker`` (a checkpoint
    folder) exists, and check it was still running: the half of a kill-and-resume test."""
    import signal
    import subprocess
    import time

    def _run(cmd: list[str], marker: Path, env: dict, cwd: Path, done: Path) -> None:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not done.exists(), "the run finished before it could be killed"

    return _run
