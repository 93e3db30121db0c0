"""Write episodes as a LeRobot v3 dataset, atomically.

Every producer of data (scripted MetaWorld demos, raw-format conversion, tests) goes
through ``DatasetWriter`` so that all our datasets share one layout and one safety
rule: the dataset is built in a hidden temporary sibling directory and renamed to
``out_dir`` only once lerobot has finalized it (parquet footers written, videos
encoded). A crash, a Ctrl-C or a bad episode therefore never leaves a directory that
looks like a complete dataset but is not.

Images are given as HWC uint8 arrays, the layout simulators and cameras produce;
lerobot stores them either as AV1 videos (``use_videos=True``, small on disk, decoded
at read time) or as PNG bytes inside the parquet files (``use_videos=False``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from types import TracebackType

import numpy as np

from vla.utils.atomic import move_into_place, partial_sibling
from vla.utils.sched import scheduling_kept

logger = logging.getLogger(__name__)

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
VISUAL_DTYPES = ("video", "image")


def make_features(
    cameras: dict[str, tuple[int, int]],
    state_dim: int,
    action_dim: int,
    extra: dict[str, tuple[int, ...] | dict] | None = None,
    use_videos: bool = True,
) -> dict[str, dict]:
    """Build lerobot feature specs with our standard key names.

    ``cameras`` maps a camera name to its (H, W); the key becomes
    ``observation.images.<name>``. ``extra`` maps further keys (for example
    ``observation.environment_state``) to a float32 shape or to a full lerobot spec.
    """
    visual = "video" if use_videos else "image"
    features: dict[str, dict] = {}
    for name, (h, w) in cameras.items():
        features[f"{IMAGE_PREFIX}{name}"] = {
            "dtype": visual,
            "shape": (int(h), int(w), 3),
            "names": ["height", "width", "channels"],
        }
    if state_dim > 0:
        features[STATE_KEY] = {"dtype": "float32", "shape": (int(state_dim),), "names": None}
    features[ACTION_KEY] = {"dtype": "float32", "shape": (int(action_dim),), "names": None}
    for key, spec in (extra or {}).items():
        if isinstance(spec, dict):
            features[key] = dict(spec)
        else:
            features[key] = {"dtype": "float32", "shape": tuple(int(s) for s in spec), "names": None}
    return features


def is_complete_dataset(path: Path) -> bool:
    """A finalized dataset has its info file; temporary build dirs live elsewhere."""
    return (Path(path) / "meta" / "info.json").is_file()


class DatasetWriter:
    """Context manager that writes whole episodes into a LeRobot v3 dataset.

    >>> with DatasetWriter(out, fps=10, features=make_features({"top": (64, 64)}, 4, 4), robot_type="sawyer") as w:
    ...     w.add_episode({"observation.images.top": imgs, "observation.state": s, "action": a}, task="reach")

    ``frames`` maps every feature key to an array whose first axis is time (T).
    """

    def __init__(
        self,
        out_dir: str | Path,
        fps: int,
        features: dict[str, dict],
        robot_type: str,
        use_videos: bool = True,
        overwrite: bool = False,
        repo_id: str | None = None,
        parallel_encoding: bool = False,
        data_files_size_in_mb: float | None = None,
    ):
        self.out_dir = Path(out_dir).absolute()
        self.fps = int(fps)
        self.robot_type = robot_type
        self.use_videos = use_videos
        self.overwrite = overwrite
        self.repo_id = repo_id or f"local/{self.out_dir.name}"
        # Process-pool encoding costs more than it saves for small episodes on few cores.
        self.parallel_encoding = parallel_encoding
        # LeRobot starts a new data file once one would pass this size (None: LeRobot's 100 MB); a tiny value
        # gives one file per episode, as a large dataset's many files (tests of file-by-file streaming).
        self.data_files_size_in_mb = data_files_size_in_mb
        # lerobot refuses "video" features when use_videos=False and vice versa, so we
        # rewrite visual dtypes here: callers describe cameras once, storage is a flag.
        visual = "video" if use_videos else "image"
        self.features = {
            k: ({**v, "dtype": visual} if v.get("dtype") in VISUAL_DTYPES else dict(v)) for k, v in features.items()
        }
        self.num_episodes = 0
        self.num_frames = 0
        self._tmp_dir: Path | None = None
        self._dataset = None

    # ── lifecycle ──────────────────────────────────────────────────────

    def __enter__(self) -> DatasetWriter:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not self.overwrite:
            what = "a complete dataset" if is_complete_dataset(self.out_dir) else "a non-empty directory"
            raise FileExistsError(f"{self.out_dir} already holds {what}; pass overwrite=True to replace it")
        self._tmp_dir = partial_sibling(self.out_dir)
        self._dataset = LeRobotDataset.create(
            repo_id=self.repo_id,
            fps=self.fps,
            features=self.features,
            root=self._tmp_dir,
            robot_type=self.robot_type,
            use_videos=self.use_videos,
            data_files_size_in_mb=self.data_files_size_in_mb,
        )

    def close(self) -> Path:
        """Finalize lerobot's files, then move the dataset into place. Returns ``out_dir``."""
        if self._dataset is None or self._tmp_dir is None:
            raise RuntimeError(f"DatasetWriter for {self.out_dir} is not open")
        if self.num_episodes == 0:
            self.abort()
            raise ValueError(f"DatasetWriter for {self.out_dir}: no episode was added; nothing written")
        try:
            with scheduling_kept():  # SVT-AV1 would leave this thread real-time (vla/utils/sched.py)
                self._dataset.finalize()
        except BaseException:
            self.abort()
            raise
        # lerobot stages frames as PNGs under images/ before encoding; only empty dirs remain.
        staging = self._tmp_dir / "images"
        if staging.is_dir() and not any(p.is_file() for p in staging.rglob("*")):
            shutil.rmtree(staging)
        move_into_place(self._tmp_dir, self.out_dir)  # an existing out_dir: only with overwrite=True (or empty)
        self._dataset = None
        self._tmp_dir = None
        logger.info("wrote %d episodes, %d frames to %s", self.num_episodes, self.num_frames, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        """Drop everything written so far (the temporary dir); ``out_dir`` is untouched."""
        if self._dataset is not None:
            with contextlib.suppress(Exception), scheduling_kept():
                self._dataset.finalize()  # closes parquet writers so the files can be removed
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
        self._dataset = None
        self._tmp_dir = None

    # ── data ───────────────────────────────────────────────────────────

    def add_episode(self, frames: dict[str, np.ndarray], task: str) -> int:
        """Append one episode; every feature key must be present with the same T. Returns T."""
        if self._dataset is None:
            raise RuntimeError(f"DatasetWriter for {self.out_dir} is not open (use it as a context manager)")
        if not isinstance(task, str) or not task:
            raise ValueError(f"episode {self.num_episodes}: task must be a non-empty string, got {task!r}")
        missing = [k for k in self.features if k not in frames]
        unknown = [k for k in frames if k not in self.features]
        if missing or unknown:
            raise KeyError(
                f"episode {self.num_episodes}: missing feature(s) {missing}, unknown key(s) {unknown}; "
                f"expected {sorted(self.features)}"
            )
        arrays = {k: np.asarray(v) for k, v in frames.items()}
        lengths = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
        t = next(iter(lengths.values()))
        if t == 0 or any(n != t for n in lengths.values()):
            raise ValueError(f"episode {self.num_episodes}: all features need the same T > 0, got {lengths}")
        for key, arr in arrays.items():
            spec = self.features[key]
            want = tuple(spec["shape"])
            if tuple(arr.shape[1:]) != want:
                raise ValueError(f"{key}: expected (T, {', '.join(map(str, want))}), got {tuple(arr.shape)}")
            if spec["dtype"] in VISUAL_DTYPES:
                if arr.dtype != np.uint8:
                    raise TypeError(f"{key}: images must be HWC uint8, got dtype {arr.dtype}")
            else:
                arrays[key] = arr.astype(spec["dtype"], copy=False)
        for i in range(t):
            frame = {k: a[i] for k, a in arrays.items()}
            frame["task"] = task
            self._dataset.add_frame(frame)
        with scheduling_kept():  # the episode's videos are encoded here
            self._dataset.save_episode(parallel_encoding=self.parallel_encoding)
        self.num_episodes += 1
        self.num_frames += t
        return t
