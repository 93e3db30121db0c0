"""A LeRobot v3 dataset as a torch Dataset of canonical samples.

The policy says how many future actions it needs (the chunk length H); this module
turns that step count into lerobot ``delta_timestamps`` (steps / fps), the same
resolution lerobot's own ``resolve_delta_timestamps`` does. Chunk steps past the
episode end are filled by lerobot with the last action and flagged in
``action_is_pad``, which the FeatureMap passes on as ``action_pad``, so heads can
mask them out of the loss. Observations are the current frame's only.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from data_pipelines.feature_map import FeatureMap, FeatureMapConfig
from data_pipelines.frame_reader import FrameReader
from data_pipelines.legacy import legacy_hint


@lru_cache(maxsize=1)
def default_video_backend() -> str:
    """torchcodec when it loads, else pyav, without lerobot's multi-page FFmpeg traceback.

    torchcodec is installed with lerobot but needs system FFmpeg libraries; when they
    are absent lerobot logs every failed FFmpeg version before falling back to pyav.
    """
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            importlib.import_module("torchcodec.decoders")
            return "torchcodec"
        except (ImportError, OSError, RuntimeError):
            return "pyav"


def reset_decoder_cache_after_fork() -> None:
    """Give this process its own lerobot video-decoder cache.

    lerobot keeps torchcodec decoders, with their open file handles, in a module-level
    cache. A forked DataLoader worker inherits the parent's cache and shares the file
    offsets, so once the parent has decoded anything the workers fail with "Could not
    push packet to decoder: Invalid data found". A fresh cache per process avoids it.
    """
    from lerobot.datasets import video_utils

    video_utils._default_decoder_cache = video_utils.VideoDecoderCache()


def worker_init_fn(worker_id: int) -> None:
    """For DataLoaders over a plain ``LeRobotDataset`` (``LeRobotSource`` does this itself)."""
    reset_decoder_cache_after_fork()


def delta_timestamps(feature_map: FeatureMap, fps: float, chunk: int) -> dict[str, list[float]]:
    """Actions at t .. t+H-1, in seconds."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got chunk={chunk}")
    return {feature_map.action: [i / fps for i in range(chunk)]}


def resolve_root(root: str | Path | None, repo_id: str | None) -> tuple[str, Path | None]:
    """Check the dataset location before lerobot sees it (lerobot would create an empty root), and its
    version (v2.0/v2.1 roots are read through their v3 copy, data_pipelines.legacy.readable_root)."""
    if root is None and not repo_id:
        raise ValueError("a LeRobot source needs root= (a local dataset) or repo_id=")
    if root is not None:
        root = Path(root).expanduser()
        if not (root / "meta" / "info.json").is_file():
            why = "does not exist" if not root.exists() else "has no meta/info.json"
            raise FileNotFoundError(f"LeRobot dataset root {root} {why}")
        hint = legacy_hint(root)  # LeRobot would say "BackwardCompatibilityError" and point at the hub
        if hint:
            raise ValueError(hint)
        return repo_id or f"local/{root.name}", root
    return repo_id, None


def open_meta(root: str | Path | None = None, repo_id: str | None = None):
    """Only the metadata (info, tasks, episodes): enough to resolve keys, dims and fps."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    repo_id, root = resolve_root(root, repo_id)
    try:
        return LeRobotDatasetMetadata(repo_id, root=root)
    except Exception as e:
        where = f"root {root}" if root else f"repo id {repo_id!r} (not found locally, hub unreachable or unknown)"
        raise FileNotFoundError(f"cannot open LeRobot metadata at {where}: {type(e).__name__}: {e}") from e


def open_lerobot(
    root: str | Path | None = None,
    repo_id: str | None = None,
    delta: dict[str, list[float]] | None = None,
    episodes: list[int] | None = None,
    video_backend: str | None = None,
):
    """Open a ``LeRobotDataset``, with an error naming the root or repo id when it cannot."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    repo_id, root = resolve_root(root, repo_id)
    try:
        return LeRobotDataset(
            repo_id,
            root=root,
            episodes=episodes,
            delta_timestamps=delta,
            video_backend=video_backend or default_video_backend(),
        )
    except Exception as e:  # hub errors come in many types; the message must name the dataset
        where = f"root {root}" if root else f"repo id {repo_id!r} (not found locally, hub unreachable or unknown)"
        raise FileNotFoundError(f"cannot open LeRobot dataset at {where}: {type(e).__name__}: {e}") from e


def check_episodes_exist(episodes: list[int] | None, total: int, where) -> None:
    """Name the episodes a dataset lacks (LeRobot would fail later with "Instruction 'train' corresponds to no data")."""
    if episodes is None:
        return
    if not episodes:
        raise ValueError(f"dataset.episodes is empty: list episodes of {where} (0..{total - 1}) or leave it unset")
    missing = sorted({e for e in episodes if not 0 <= e < total})
    if missing:
        raise ValueError(
            f"dataset.episodes: {where} has episodes 0..{total - 1}; no episode {', '.join(map(str, missing[:10]))}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )


@dataclass
class LeRobotSourceConfig:
    """One LeRobot dataset as a training source. ``root`` wins over the hub cache."""

    root: str | None = None
    repo_id: str | None = None
    chunk: int = 50  # H: actions per sample
    episodes: list[int] | None = None
    video_backend: str | None = None
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)

    def build(self) -> LeRobotSource:
        return LeRobotSource(self)


class LeRobotSource(torch.utils.data.Dataset):
    """``source[i]`` is the canonical sample of frame ``i`` (see data_pipelines.feature_map)."""

    def __init__(self, cfg: LeRobotSourceConfig):
        self.cfg = cfg
        # Metadata first (cheap), to resolve the feature map and the delta timestamps.
        meta = open_meta(cfg.root, cfg.repo_id)
        self.feature_map = cfg.feature_map.build(meta)
        self.fps = meta.fps
        self.delta = delta_timestamps(self.feature_map, self.fps, cfg.chunk)
        check_episodes_exist(cfg.episodes, meta.total_episodes, cfg.root or cfg.repo_id)
        self.dataset = open_lerobot(cfg.root, cfg.repo_id, self.delta, cfg.episodes, cfg.video_backend)
        self.meta = self.dataset.meta
        # LeRobot's values without its per-sample queries (data_pipelines/frame_reader.py); None: LeRobot reads.
        self.reader = FrameReader.build(self.dataset, self.feature_map)
        self._pid = os.getpid()

    @property
    def root(self) -> Path:
        return Path(self.dataset.root)

    @property
    def episodes(self) -> list[int] | None:
        """The episodes this source serves (None: all); statistics must cover these and no others."""
        return self.dataset.episodes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.read_batch([idx])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A DataLoader's batch (it calls this with a batch sampler's indices)."""
        return self.read_batch(indices)

    def read_batch(self, indices: list[int], uint8_images: bool = False) -> list[dict[str, Any]]:
        """The samples of ``indices``, each video file's frames decoded in one call. ``uint8_images``: images
        stay uint8 (a quarter of the bytes through a DataLoader; ``feature_map.float_images`` on the device
        gives the floats, bit for bit; training reads so, vla.train.data.NumberedDataset)."""
        if os.getpid() != self._pid:  # first batch in a forked DataLoader worker
            reset_decoder_cache_after_fork()
            self._pid = os.getpid()
        if self.reader is None:
            raws = [self.dataset[int(i)] for i in indices]
        else:
            raws = self.reader.get_many([int(i) for i in indices])
        return [self.feature_map(raw, uint8_images) for raw in raws]

    def __repr__(self) -> str:
        return (
            f"LeRobotSource({self.root}, episodes={self.dataset.num_episodes}, frames={len(self)}, "
            f"chunk={self.cfg.chunk}, cameras={self.feature_map.camera_names})"
        )
