"""LeRobot samples read from columns and open video decoders instead of LeRobot's per-sample queries.

``LeRobotDataset.__getitem__`` spends most of a sample's time around the data rather than on it
(profile in docs/benchmarks.md): each action chunk is H rows queried from the HF dataset (on an image
dataset those rows are read whole, so H x cameras PNGs are decoded and thrown away), each sample starts
a thread pool for its cameras, and every video frame goes through a per-call path lookup and an fsspec
file handle. ``FrameReader`` reads the same values from the dataset's own memory-mapped Arrow table:

- numeric columns (state, action, the auxiliary target, index, episode, timestamp, task) are read once
  into arrays; the action chunk and its padding flags are array slices (LeRobot's clamping, exactly);
- image columns are decoded for the current row only, with the ``datasets`` Image decoder LeRobot uses;
- video frames come from a torchcodec decoder kept open per file and per process (after a fork a worker
  opens its own), at the frame index LeRobot computes, with LeRobot's timestamp tolerance check; a batch
  (``get_many``) decodes each video file's frames in one call;
- images stay uint8 (the FeatureMap scales them, bit-identically to LeRobot's ``/ 255``).

The dicts it returns carry the keys the FeatureMap reads, with LeRobot's values
(tests/data/test_frame_reader.py compares them key by key). Datasets it does not cover (depth cameras,
image transforms, an instruction other than ``task``, a filtered HF dataset) return None from ``build``
and are read through LeRobot.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

MAX_OPEN_DECODERS = 100  # per process, as LeRobot's decoder cache (each holds a file and a few MB)


def _numeric(table: pa.Table, name: str) -> np.ndarray:
    """A column as an array of shape (n,) or (n, D), read once from the memory-mapped table."""
    col = table.column(name)
    if pa.types.is_fixed_size_list(col.type):  # LeRobot's vector features
        parts = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
        return np.concatenate(parts).reshape(len(table), col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return np.asarray(col.to_pylist())
    return col.to_numpy()


class FrameReader:
    """``reader.get(i)`` is ``dataset[i]`` for the keys ``feature_map`` reads; ``get_many`` for a batch."""

    def __init__(self, dataset, feature_map):
        self.root = Path(dataset.root)
        self.backend = dataset._video_backend
        self.tolerance_s = float(dataset.tolerance_s)
        hf = dataset.hf_dataset
        reader = dataset.reader
        meta = dataset.meta
        table = hf.data
        self.table = table
        self.n = len(hf)
        self.fmap = feature_map
        self.index = _numeric(table, "index").astype(np.int64)
        self.episode = _numeric(table, "episode_index").astype(np.int64)
        self.timestamp = _numeric(table, "timestamp")
        self.task_index = _numeric(table, "task_index").astype(np.int64)
        self.tasks = [str(name) for name in meta.tasks.index]  # LeRobot: tasks.iloc[task_index].name

        eps = meta.episodes  # row i: episode i, as LeRobot reads it
        self.ep_from = _numeric(eps.data, "dataset_from_index").astype(np.int64)
        self.ep_to = _numeric(eps.data, "dataset_to_index").astype(np.int64)

        self.delta = {k: np.asarray(v, dtype=np.int64) for k, v in (reader.delta_indices or {}).items()}
        numeric = {feature_map.action, *self.delta}
        if feature_map.state:
            numeric.add(feature_map.state)
        if feature_map.auxiliary:
            numeric.add(feature_map.auxiliary)
        self.columns = {k: _numeric(table, k) for k in numeric}
        # LeRobot reads chunk rows by absolute index: directly when all episodes are loaded, else through its map.
        if dataset.episodes is None:
            self.rel = None
        else:
            self.rel = np.full(int(self.index.max()) + 1 if self.n else 0, -1, dtype=np.int64)
            self.rel[self.index] = np.arange(self.n)

        self.image_keys = [k for _, k in feature_map.cameras if k in meta.image_keys]
        self.video_keys = [k for _, k in feature_map.cameras if k in meta.video_keys]
        self._image_cols = {k: table.column(k) for k in self.image_keys}
        # Per episode and camera: the video file and where the episode starts in it.
        self.videos: dict[str, dict[int, tuple[str, float]]] = {}
        for key in self.video_keys:
            per_ep = {}
            for ep in np.unique(self.episode).tolist():
                row = eps[int(ep)]
                per_ep[ep] = (
                    str(self.root / meta.get_video_file_path(ep, key)),
                    float(row[f"videos/{key}/from_timestamp"]),
                )
            self.videos[key] = per_ep
        self._decoders: OrderedDict[str, Any] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def build(cls, dataset, feature_map) -> FrameReader | None:
        """A reader for ``dataset``, or None where LeRobot's own path must read it (see module doc)."""
        if why_not(dataset, feature_map) is not None:
            return None
        return cls(dataset, feature_map)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):  # spawned workers: no decoders, the table pickles by its file
        state = dict(self.__dict__)
        state["_decoders"] = OrderedDict()
        return state

    # ── one sample ───────────────────────────────────────────────────

    def _row(self, idx: int) -> int:
        if not -self.n <= idx < self.n:
            raise IndexError(f"index {idx} out of range for {self.n} frames")
        return idx + self.n if idx < 0 else idx

    def _numeric_part(self, r: int) -> dict[str, Any]:
        fmap = self.fmap
        out: dict[str, Any] = {}
        abs_idx, ep = int(self.index[r]), int(self.episode[r])
        lo, hi = int(self.ep_from[ep]), int(self.ep_to[ep])
        for key, deltas in self.delta.items():
            q = abs_idx + deltas
            out[f"{key}_is_pad"] = torch.from_numpy((q < lo) | (q >= hi))
            q = np.clip(q, lo, hi - 1)
            if self.rel is not None:  # rows of the loaded episodes only, as LeRobot's map
                if q.max() >= len(self.rel) or (self.rel[q] < 0).any():
                    raise KeyError(f"frame {abs_idx}: chunk rows outside the loaded episodes")
                q = self.rel[q]
            out[key] = torch.from_numpy(self.columns[key][q])
        for key in (fmap.action, fmap.state, fmap.auxiliary):
            if key and key not in out:
                out[key] = torch.from_numpy(self.columns[key][r].copy())
        out[fmap.instruction] = self.tasks[int(self.task_index[r])]
        return out

    def _image(self, key: str, r: int) -> torch.Tensor:
        from datasets.features import Image
        from lerobot.datasets.io_utils import pil_to_chw_tensor

        value = self._image_cols[key][r].as_py()
        img = Image().decode_example(value)
        if img.mode != "RGB":  # LeRobot's conversion, whatever it gives
            return pil_to_chw_tensor(img)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8

    def get(self, idx: int) -> dict[str, Any]:
        r = self._row(idx)
        out = self._numeric_part(r)
        for key in self.image_keys:
            out[key] = self._image(key, r)
        for key in self.video_keys:
            path, ts = self._video_query(key, r)
            out[key] = self._decode(path, [ts])[0]
        return out

    def get_many(self, indices: list[int]) -> list[dict[str, Any]]:
        """Samples of a batch; the frames of each video file are decoded in one call."""
        rows = [self._row(int(i)) for i in indices]
        outs = [self._numeric_part(r) for r in rows]
        for key in self.image_keys:
            for out, r in zip(outs, rows, strict=True):
                out[key] = self._image(key, r)
        for key in self.video_keys:
            by_file: dict[str, list[tuple[int, float]]] = {}
            for j, r in enumerate(rows):
                path, ts = self._video_query(key, r)
                by_file.setdefault(path, []).append((j, ts))
            for path, wanted in by_file.items():
                frames = self._decode(path, [ts for _, ts in wanted])
                for (j, _), frame in zip(wanted, frames, strict=True):
                    outs[j][key] = frame
        return outs

    # ── video ────────────────────────────────────────────────────────

    def _video_query(self, key: str, r: int) -> tuple[str, float]:
        path, start = self.videos[key][int(self.episode[r])]
        return path, start + float(self.timestamp[r])

    def _decoder(self, path: str):
        if os.getpid() != self._pid:  # a forked worker: the parent's decoders share its file offsets
            self._decoders = OrderedDict()
            self._pid = os.getpid()
        dec = self._decoders.get(path)
        if dec is None:
            from torchcodec.decoders import VideoDecoder

            dec = VideoDecoder(path, seek_mode="approximate")
            self._decoders[path] = dec
            while len(self._decoders) > MAX_OPEN_DECODERS:
                self._decoders.popitem(last=False)
        else:
            self._decoders.move_to_end(path)
        return dec

    def _decode(self, path: str, timestamps: list[float]) -> list[torch.Tensor]:
        """uint8 frames (3, H, W) at ``timestamps`` (s, in the file), as LeRobot decodes them before its ``/ 255``."""
        from lerobot.datasets.video_utils import FrameTimestampError, decode_video_frames

        if self.backend != "torchcodec":
            return [
                decode_video_frames(path, [ts], self.tolerance_s, self.backend, return_uint8=True)[0]
                for ts in timestamps
            ]
        dec = self._decoder(path)
        fps = dec.metadata.average_fps
        batch = dec.get_frames_at(indices=[round(ts * fps) for ts in timestamps])
        got = batch.pts_seconds.tolist()
        # LeRobot's check, in its float32: |query - frame| < tolerance
        ok = ((torch.tensor(timestamps) - torch.tensor(got)).abs() < self.tolerance_s).tolist()
        bad = [(q, p) for q, p, fine in zip(timestamps, got, ok, strict=True) if not fine]
        if bad:
            raise FrameTimestampError(
                f"{path}: frames at {[p for _, p in bad]} s for queried {[q for q, _ in bad]} s, "
                f"beyond the tolerance of {self.tolerance_s} s"
            )
        return list(batch.data.unbind(0))


def why_not(dataset, feature_map) -> str | None:
    """Why ``FrameReader`` cannot read ``dataset`` as LeRobot would (None: it can)."""
    meta = dataset.meta
    hf = dataset.hf_dataset  # loads LeRobot's reader
    reader = dataset.reader
    cams = [k for _, k in feature_map.cameras]
    if getattr(reader, "_image_transforms", None) is not None:
        return "image transforms"
    if getattr(reader, "_return_uint8", False):
        return "return_uint8"
    if any(k in meta.depth_keys for k in cams):
        return "depth cameras"
    if feature_map.instruction != "task":
        return f"the instruction from {feature_map.instruction!r}"
    if getattr(hf, "_indices", None) is not None:
        return "an index-mapped HF dataset"
    if meta.video_keys and dataset._video_backend not in ("torchcodec", "pyav"):
        return f"video backend {dataset._video_backend}"
    if any(k in meta.video_keys or k in meta.image_keys for k in reader.delta_indices or {}):
        return "delta timestamps on a camera"
    return None


def read_draws(dataset, draws, uint8_images: bool = False) -> list[dict[str, Any]]:
    """``NumberedDataset``'s samples: those of a batch of ``(index, number)`` draws, each with its
    ``sample_number``, read together where ``dataset`` reads batches (``LeRobotSource.read_batch``: each
    video file decoded once; ``uint8_images`` as there). Methods are looked up on the type: a wrapper that
    forwards attributes to its source (InMemoryDataset) is indexed, not bypassed."""
    from vla import types as T

    indices = [int(index) for index, _ in draws]
    if hasattr(type(dataset), "read_batch"):
        samples = dataset.read_batch(indices, uint8_images)
    elif hasattr(type(dataset), "__getitems__"):
        samples = dataset.__getitems__(indices)
    else:
        samples = [dataset[i] for i in indices]
    return [{**s, T.SAMPLE_NUMBER: number} for s, (_, number) in zip(samples, draws, strict=True)]
