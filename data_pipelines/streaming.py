"""A LeRobot v3 dataset read incrementally: training on datasets larger than the disk.

``StreamSource`` gives the same canonical samples as ``LeRobotSource`` (the same FeatureMap, the
action chunk with its padding flags, LeRobot's own video decoder and image conversion) without
opening the dataset whole. Its metadata (``meta/``, small) is copied to a local cache; its data
files are read one at a time, only the columns the samples need and only the episodes this rank
reads, from wherever they are: a local path or any fsspec URL (``s3://``, ``gs://``,
``hf://datasets/ID``, ``file://``). A local path is read as ``file://``, so a local dataset takes the
code path of a remote one. Video frames are decoded by LeRobot's torchcodec decoder, which opens the
file through fsspec and reads only the bytes it seeks to. Nothing is written to disk but ``meta/``.

The order is a function of the metadata and the seed alone (``StreamPlan``), so a position in a
rank's stream is one number, and reaching it reads no data before it:

- pass p orders the data files by a permutation drawn from (seed, p), and the episodes inside each
  file by another, so a rank reads file after file, each once per pass;
- that concatenation of frames is cut into ``world`` contiguous shares of equal size (to a frame):
  rank r reads frames [r N / W, (r+1) N / W) of it, so the ranks together read each frame once per
  pass and none waits on a longer share (an episode cut by a boundary is read by both ranks, each
  taking its own frames; its action chunks still see the whole episode);
- a shuffle buffer (``ShuffleBuffer``, ``shuffle_buffer`` frames, its draws from (seed, p, r)) mixes
  the share, which arrives episode after episode.

Sample k of rank r is in pass k // S_r (S_r: its share's size) at offset k % S_r. To start there the
buffer is replayed on frame numbers only (no data; about a second per million frames) up to the
offset, the frames it then holds are read, file by file, and reading goes on where the replay's
input stopped: the samples from there are the uninterrupted stream's, bit for bit.

Why not LeRobot's ``StreamingLeRobotDataset`` (lerobot/datasets/streaming_dataset.py, 0.6.1)? Tried on the
test datasets, its samples through the same FeatureMap equal ``LeRobotSource``'s, but: it has no
resumable position (its state is its RNG, the HF iterators of its shards and a buffer of decoded
frames, none of it saved or restorable, so resuming would replay the stream, decoding every video
frame before the position); it splits neither between ranks nor between DataLoader workers (every
process iterates every shard in the same order, so every rank would read the same frames); its
buffer holds decoded frames (1000 x cameras x 3 x H x W float32) where this one holds rows; and it
reads a local root or the HF hub only.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_pipelines.feature_map import FeatureMapConfig
from data_pipelines.legacy import _locked, is_v3
from data_pipelines.lerobot_source import (
    check_episodes_exist,
    default_video_backend,
    delta_timestamps,
    reset_decoder_cache_after_fork,
)
from data_pipelines.stats import is_url, open_root
from vla.utils.atomic import atomic_dir
from vla.utils.paths import user_cache_dir

log = logging.getLogger(__name__)

TOLERANCE_S = 1e-4  # LeRobotDataset's default: how far a decoded video frame may lie from the query
BOOKKEEPING = ["index", "episode_index", "timestamp", "task_index"]
META_SUBDIR = "stream_meta"
UNIFORM_BATCH = 1024  # uniform draws of the shuffle buffer fetched per numpy call


# ── where the data is ─────────────────────────────────────────────────


def stream_url(root: str | None, repo_id: str | None = None) -> str:
    """The dataset as a URL: a local path becomes ``file://`` (read through fsspec like a remote store), a URL
    stays, a hub id alone is ``hf://datasets/ID``."""
    if root:
        if is_url(root):
            return str(root).rstrip("/")
        return Path(root).expanduser().resolve().as_uri()
    if repo_id:
        return f"hf://datasets/{repo_id}"
    raise ValueError("a streamed dataset needs dataset.root (a path or a URL) or dataset.repo_id")


def local_meta(url: str, cache: str | Path | None = None) -> Path:
    """A local copy of the dataset's ``meta/`` (what ``LeRobotDatasetMetadata`` reads); its root.

    Keyed by the URL and each file's fsspec ``ukey`` (size and mtime, an ETag, a hub blob id), so runs on
    the same data share one copy and an edited dataset is fetched again; a lock lets the ranks of a run
    fetch it once. Copies of earlier states of the same URL are removed.
    """
    fs, base = open_root(url)
    meta = f"{base.rstrip('/')}/meta"
    try:
        files = sorted(fs.find(meta))
    except FileNotFoundError:
        files = []
    listing = [(f[len(meta) + 1 :], fs.ukey(f)) for f in files]
    if "info.json" not in dict(listing):
        raise FileNotFoundError(f"{url}/meta/info.json does not exist: {url} is not a LeRobot dataset")
    where = hashlib.sha256(url.encode()).hexdigest()[:8]
    state = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:12]
    cache = Path(cache) if cache is not None else user_cache_dir(META_SUBDIR)
    cache.mkdir(parents=True, exist_ok=True)
    name = f"{base.rstrip('/').rsplit('/', 1)[-1] or 'dataset'}-{where}"
    out = cache / f"{name}-{state}"
    with _locked(cache / f".{out.name}.lock"):
        if not (out / "meta" / "info.json").is_file():
            with atomic_dir(out) as tmp:
                for rel, _ in listing:
                    (tmp / "meta" / rel).parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f"{meta}/{rel}", str(tmp / "meta" / rel))
            for stale in cache.iterdir():
                if stale.name.startswith(f"{name}-") and stale != out and stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
    return out


def open_stream_meta(url: str, repo_id: str | None = None):
    """LeRobot's metadata of a streamed dataset, read from its local copy; v3 only (a v2.x dataset is
    converted from a local root, which `vla data convert` writes)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    root = local_meta(url)
    version = json.loads((root / "meta" / "info.json").read_text()).get("codebase_version", "")
    if not is_v3(str(version)):
        raise ValueError(
            f"{url} is LeRobot {version or 'of no codebase_version'}: streaming reads v3.0 only; convert it with "
            "`vla data convert ROOT --out DIR` (or train from a local v2.x root without streaming)"
        )
    return LeRobotDatasetMetadata(repo_id or f"stream/{root.name}", root=root)


# ── the order ─────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) (the ``index`` column) of one episode, whose rows are in data file ``file``."""

    episode: int
    start: int
    stop: int
    file: int


class StreamPlan:
    """Which frames each rank reads in each pass, and in what order: a function of the metadata and the seed.

    ``files``: a number per episode naming its data file (episodes of one file share it).
    """

    def __init__(
        self,
        episodes: Sequence[int],
        starts: Sequence[int],
        stops: Sequence[int],
        files: Sequence[int],
        seed: int = 0,
    ):
        self.episodes = np.asarray(episodes, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.asarray(stops, dtype=np.int64) - self.starts
        self.files = np.unique(np.asarray(files, dtype=np.int64), return_inverse=True)[1]
        self.num_files = int(self.files.max()) + 1 if len(self.files) else 0
        self.seed = int(seed)
        self.num_frames = int(self.lengths.sum())
        if (self.lengths <= 0).any():
            raise ValueError(f"episodes {self.episodes[self.lengths <= 0].tolist()} have no frames")
        by_start = np.argsort(self.starts)
        self._sorted_starts, self._sorted_pos = self.starts[by_start], by_start

    @classmethod
    def from_meta(cls, meta, episodes: Sequence[int] | None, seed: int = 0) -> StreamPlan:
        cols = ["episode_index", "dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index"]
        table = meta.episodes.select_columns(cols).to_pandas()
        if episodes is not None:
            table = table[table["episode_index"].isin(sorted(set(episodes)))]
        files = table["data/chunk_index"].to_numpy(np.int64) * (1 << 32) + table["data/file_index"].to_numpy(np.int64)
        return cls(table["episode_index"], table["dataset_from_index"], table["dataset_to_index"], files, seed=seed)

    def share(self, rank: int, world: int) -> tuple[int, int]:
        """Rank ``rank``'s frames, as positions [lo, hi) in a pass's concatenation."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in [0, world={world})")
        return rank * self.num_frames // world, (rank + 1) * self.num_frames // world

    def share_size(self, rank: int, world: int) -> int:
        lo, hi = self.share(rank, world)
        return hi - lo

    def order(self, pass_: int) -> np.ndarray:
        """Positions of the episodes in pass ``pass_``'s reading order: the files shuffled, then the
        episodes inside each file."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, pass_, 0]))
        file_rank = rng.permutation(self.num_files)
        within = rng.random(len(self.episodes))
        return np.lexsort((within, file_rank[self.files]))

    def segments(self, pass_: int, rank: int, world: int) -> list[Segment]:
        """What rank ``rank`` reads in pass ``pass_``, in order."""
        order = self.order(pass_)
        ends = np.cumsum(self.lengths[order])
        begins = ends - self.lengths[order]
        lo, hi = self.share(rank, world)
        out = []
        for j in range(int(np.searchsorted(ends, lo, side="right")), int(np.searchsorted(begins, hi, side="left"))):
            e = order[j]
            a, b = max(lo, begins[j]) - begins[j], min(hi, ends[j]) - begins[j]
            if b > a:
                out.append(
                    Segment(int(self.episodes[e]), int(self.starts[e] + a), int(self.starts[e] + b), int(self.files[e]))
                )
        return out

    def buffer_rng(self, pass_: int, rank: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, pass_, 1, rank]))

    def locate(self, frame: int) -> int:
        """Position (into ``episodes``) of the episode holding frame ``frame``."""
        j = int(np.searchsorted(self._sorted_starts, frame, side="right")) - 1
        pos = int(self._sorted_pos[j]) if j >= 0 else -1
        if pos < 0 or not self.starts[pos] <= frame < self.starts[pos] + self.lengths[pos]:
            raise IndexError(f"frame {frame} is in none of the streamed episodes")
        return pos


def frame_numbers(segments: Iterable[Segment]) -> Iterator[int]:
    return itertools.chain.from_iterable(range(s.start, s.stop) for s in segments)


class ShuffleBuffer:
    """Emit the items of ``source`` in a shuffled order, holding at most ``size`` of them.

    Each step fills the buffer from the source, then emits a uniformly drawn item (swap-removed); once
    the source is dry the rest drains the same way. The draws come from ``rng`` alone, so the order
    does not depend on what the items are: the trainer replays it on frame numbers to find a position,
    then swaps in the rows (``buffer`` and ``source`` may be replaced between steps).
    ``consumed`` counts the items taken from the source.
    """

    def __init__(self, source: Iterable, size: int, rng: np.random.Generator):
        if size < 1:
            raise ValueError(f"shuffle buffer size must be >= 1, got {size}")
        self.source = iter(source)
        self.size = size
        self.rng = rng
        self.buffer: list = []
        self.consumed = 0
        self.dry = False
        self._uniform = np.empty(0)
        self._next_uniform = 0

    def __iter__(self) -> ShuffleBuffer:
        return self

    def __next__(self):
        while not self.dry and len(self.buffer) < self.size:
            item = next(self.source, _END)
            if item is _END:
                self.dry = True
            else:
                self.buffer.append(item)
                self.consumed += 1
        if not self.buffer:
            raise StopIteration
        if self._next_uniform == len(self._uniform):
            self._uniform, self._next_uniform = self.rng.random(UNIFORM_BATCH), 0
        i = int(self._uniform[self._next_uniform] * len(self.buffer))
        self._next_uniform += 1
        out = self.buffer[i]
        self.buffer[i] = self.buffer[-1]
        self.buffer.pop()
        return out


_END = object()


# ── the source ────────────────────────────────────────────────────────


@dataclass
class StreamSourceConfig:
    """One LeRobot v3 dataset read incrementally. ``root``: a local path or a URL (wins over ``repo_id``)."""

    root: str | None = None
    repo_id: str | None = None
    chunk: int = 50  # H: actions per sample
    episodes: list[int] | None = None
    feature_map: FeatureMapConfig = field(default_factory=FeatureMapConfig)
    shuffle_buffer: int = 1000  # frames mixed in each rank's stream
    seed: int = 0  # the order's: files, episodes, rank shares and the buffer's draws


class StreamSource(torch.utils.data.Dataset):
    """``entries(rank, world, start)``: a rank's endless stream of (frame index, undecoded row), and
    ``decode(row)``: its canonical sample, equal to ``LeRobotSource``'s for that frame.

    ``source[i]`` reads the ``i``-th frame of the streamed episodes (in episode order) alone: for the
    trainer's few probes, not for training.
    """

    def __init__(self, cfg: StreamSourceConfig):
        from lerobot.datasets.feature_utils import get_delta_indices

        self.cfg = cfg
        self.url = stream_url(cfg.root, cfg.repo_id)
        self.meta = open_stream_meta(self.url, cfg.repo_id)
        self.feature_map = cfg.feature_map.build(self.meta)
        self.fps = self.meta.fps
        self.delta = delta_timestamps(self.feature_map, self.fps, cfg.chunk)
        self.delta_steps = {k: np.asarray(v, np.int64) for k, v in get_delta_indices(self.delta, self.fps).items()}
        check_episodes_exist(cfg.episodes, self.meta.total_episodes, self.url)
        self.plan = StreamPlan.from_meta(self.meta, cfg.episodes, seed=cfg.seed)
        self.shuffle_buffer = cfg.shuffle_buffer
        self._episodes = sorted(set(cfg.episodes)) if cfg.episodes is not None else None
        features = self.meta.features
        keys = [k for _, k in self.feature_map.cameras] + [
            self.feature_map.state or "",
            self.feature_map.auxiliary or "",
        ]
        self.video_keys = [k for k in keys if k and features[k]["dtype"] == "video"]
        self.image_keys = [k for k in keys if k and features[k]["dtype"] == "image"]
        self.row_keys = [k for k in keys if k and k not in self.video_keys]  # one value per frame
        self.columns = list(dict.fromkeys(BOOKKEEPING + self.row_keys + list(self.delta_steps)))
        order = np.argsort(self.plan.episodes)  # __getitem__: episodes in index order, as LeRobotDataset numbers them
        self._by_index = (self.plan.starts[order], np.cumsum(self.plan.lengths[order]))
        self._videos: dict[tuple[int, str], tuple[str, float]] = {}
        self._backend = default_video_backend()
        self._pid, self._fs = None, None

    # ── what LeRobotSource also offers ──

    @property
    def root(self) -> str:
        """The dataset's URL (statistics are read from it: data_pipelines.stats reads URLs)."""
        return self.url

    @property
    def episodes(self) -> list[int] | None:
        return self._episodes

    def __len__(self) -> int:
        return self.plan.num_frames

    def __getitem__(self, idx: int) -> dict[str, Any]:
        starts, ends = self._by_index
        if not 0 <= idx < len(self):
            raise IndexError(f"frame {idx} of {len(self)}")
        j = int(np.searchsorted(ends, idx, side="right"))
        frame = int(starts[j] + idx - (ends[j - 1] if j else 0))
        return self.decode(self.read_frames([frame])[frame])

    def __repr__(self) -> str:
        return (
            f"StreamSource({self.url}, episodes={len(self.plan.episodes)}, frames={len(self)}, chunk={self.cfg.chunk}, "
            f"cameras={self.feature_map.camera_names}, shuffle_buffer={self.shuffle_buffer})"
        )

    # ── the stream ──

    def share_size(self, rank: int, world: int) -> int:
        return self.plan.share_size(rank, world)

    def entries(self, rank: int = 0, world: int = 1, start: int = 0) -> Iterator[tuple[int, dict]]:
        """Rank ``rank``'s stream of (frame index, row), from its ``start``-th sample on, pass after pass."""
        size = self.plan.share_size(rank, world)
        if size == 0:
            raise ValueError(f"{len(self)} frames cannot be shared among {world} ranks: each needs one at least")
        first, offset = divmod(start, size)
        for pass_ in itertools.count(first):
            yield from self._pass(pass_, rank, world, offset)
            offset = 0

    def _pass(self, pass_: int, rank: int, world: int, skip: int) -> Iterator[tuple[int, dict]]:
        """One pass of the rank's share, from its ``skip``-th sample: the buffer replayed on frame numbers
        to there (nothing read), then the frames it holds read, then the rows from where its input stopped."""
        segments = self.plan.segments(pass_, rank, world)
        buf = ShuffleBuffer(frame_numbers(segments), self.shuffle_buffer, self.plan.buffer_rng(pass_, rank))
        for _ in range(skip):
            next(buf)
        held = self.read_frames(buf.buffer)
        buf.buffer = [(f, held[f]) for f in buf.buffer]
        buf.source = self._read_segments(segments, skip=buf.consumed)
        yield from buf

    def _read_segments(self, segments: list[Segment], skip: int) -> Iterator[tuple[int, dict]]:
        """(frame, row) of ``segments`` from the ``skip``-th frame on; each data file read once, when its turn
        comes, and only the episodes of it that are read (files wholly before ``skip`` are not opened)."""
        done = 0
        for _, group in itertools.groupby(segments, key=lambda s: s.file):
            group = list(group)
            n = sum(s.stop - s.start for s in group)
            if done + n <= skip:
                done += n
                continue
            rows = self._read_file([s.episode for s in group])
            for s in group:
                for frame in range(s.start, s.stop):
                    if done >= skip:
                        yield frame, self._row(rows[s.episode], frame)
                    done += 1

    def read_frames(self, frames: Iterable[int]) -> dict[int, dict]:
        """The rows of any frames, their data files read one at a time."""
        by_file: dict[int, dict[int, list[int]]] = {}
        for f in frames:
            pos = self.plan.locate(f)
            by_file.setdefault(int(self.plan.files[pos]), {}).setdefault(int(self.plan.episodes[pos]), []).append(f)
        out = {}
        for wanted in by_file.values():
            rows = self._read_file(sorted(wanted))
            for episode, fs in wanted.items():
                out.update({f: self._row(rows[episode], f) for f in fs})
        return out

    # ── reading ──

    def _filesystem(self):
        """This process's fsspec filesystem (a forked DataLoader worker makes its own: remote ones are not
        fork-safe), and its own video decoders (lerobot_source.reset_decoder_cache_after_fork)."""
        if self._pid != os.getpid():
            if self._pid is not None:
                reset_decoder_cache_after_fork()
            self._pid, self._fs = os.getpid(), open_root(self.url)
        return self._fs

    def _read_file(self, episodes: list[int]) -> dict[int, dict[str, Any]]:
        """Whole episodes of one data file (all of them: the action chunk looks ahead): episode -> columns."""
        fs, base = self._filesystem()
        path = f"{base.rstrip('/')}/{self.meta.get_data_file_path(episodes[0])}"
        table = pq.read_table(path, columns=self.columns, filters=[("episode_index", "in", episodes)], filesystem=fs)
        columns = {k: _column(table.column(k), k in self.image_keys) for k in self.columns}
        which = columns["episode_index"]
        out = {}
        for e in episodes:
            rows = np.flatnonzero(which == e)
            index = columns["index"][rows]
            if len(rows) == 0 or not np.array_equal(index, np.arange(index[0], index[0] + len(rows))):
                raise ValueError(f"{path}: the rows of episode {e} are missing or not in frame order")
            out[e] = {k: v[rows] for k, v in columns.items()}
        return out

    def _row(self, episode: dict[str, Any], frame: int) -> dict[str, Any]:
        """One frame's values, copied out of its file's arrays (a row in the buffer must not keep a whole
        file alive), with the chunks of ``delta_steps`` clamped to the episode and flagged past its ends,
        as LeRobotDataset pads them."""
        n = len(episode["index"])
        i = frame - int(episode["index"][0])
        row: dict[str, Any] = {k: _copy(episode[k][i]) for k in BOOKKEEPING + self.row_keys}
        for key, steps in self.delta_steps.items():
            q = i + steps
            row[key] = episode[key][np.clip(q, 0, n - 1)]
            row[f"{key}_is_pad"] = (q < 0) | (q >= n)
        return row

    # ── decoding ──

    def decode(self, row: dict[str, Any]) -> dict[str, Any]:
        """The canonical sample of a row: images decoded (parquet images as LeRobot converts them, video
        frames by LeRobot's decoder at the frame's timestamp in its file), through the FeatureMap."""
        from lerobot.datasets.io_utils import pil_to_chw_tensor
        from PIL import Image

        self._filesystem()
        item: dict[str, Any] = {}
        for key, value in row.items():
            if key in self.image_keys:
                item[key] = pil_to_chw_tensor(Image.open(io.BytesIO(value)))
            else:
                item[key] = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.tensor(value)
        for key in self.video_keys:
            item[key] = self._video_frame(key, int(row["episode_index"]), float(row["timestamp"]))
        item["task"] = self.meta.tasks.iloc[int(row["task_index"])].name
        return self.feature_map(item)

    def _video_frame(self, key: str, episode: int, timestamp: float) -> torch.Tensor:
        from lerobot.datasets.video_utils import decode_video_frames

        if (episode, key) not in self._videos:
            ep = self.meta.episodes[episode]
            url = f"{self.url}/{self.meta.get_video_file_path(episode, key)}"
            self._videos[episode, key] = (url, ep[f"videos/{key}/from_timestamp"])
        url, start = self._videos[episode, key]
        if self._backend == "pyav":  # PyAV opens paths and file objects, not fsspec URLs
            fs, path = open_root(url)
            with fs.open(path, "rb") as f:
                return decode_video_frames(f, [start + timestamp], TOLERANCE_S, "pyav").squeeze(0)
        return decode_video_frames(url, [start + timestamp], TOLERANCE_S, self._backend).squeeze(0)


def _column(column: pa.ChunkedArray, image: bool) -> np.ndarray:
    """A parquet column as numpy: (N,), (N, D) for list columns, or (N,) objects: encoded images."""
    arr = column.combine_chunks()
    if image:  # struct<bytes, path>: LeRobot embeds the encoded image
        values = arr.field("bytes").to_pylist() if pa.types.is_struct(arr.type) else arr.to_pylist()
        if any(v is None for v in values):
            raise ValueError(f"an image column holds a row without embedded bytes ({column.type})")
        out = np.empty(len(values), dtype=object)  # fancy-indexed by episode like the numeric columns
        out[:] = values
        return out
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), -1) if len(arr) else flat.reshape(0, 0)
    return arr.to_numpy(zero_copy_only=False)


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value
