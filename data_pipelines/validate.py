"""Check a LeRobot v3 dataset on disk and report every problem with where it is.

Training on a broken dataset fails late (a worker dies on one corrupt video an hour
in) or silently (a NaN action poisons the statistics). ``validate_dataset`` reads the
files directly (pyarrow for parquet, PyAV for videos) rather than through
``LeRobotDataset``, so one broken file is reported instead of aborting the load, and
it never raises: anything unexpected becomes a ``Problem`` of kind ``internal``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

META_FILES = ("meta/info.json", "meta/tasks.parquet")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
MAX_LISTED = 5  # bad rows listed per (file, key); the count says how many in all


@dataclass(frozen=True)
class Problem:
    kind: str  # missing_meta, missing_key, missing_file, corrupt_parquet, missing_video, unreadable_video, shape, non_finite, short_episode, inconsistent, internal
    where: str  # file, key, or episode/frame
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.message}"


class _Report:
    """Collects problems; ``guard`` turns an unexpected exception into a Problem."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[Problem] = []

    def add(self, kind: str, where: str | Path, message: str) -> None:
        if isinstance(where, Path):
            where = str(where.relative_to(self.root)) if where.is_relative_to(self.root) else str(where)
        self.problems.append(Problem(kind, where, message))

    def guard(self, what: str, fn: Callable, *args):
        try:
            return fn(*args)
        except Exception as e:  # the contract is: report, never crash
            self.add("internal", what, f"{type(e).__name__}: {e}")
            return None


def _read_parquet(report: _Report, path: Path) -> pa.Table | None:
    try:
        return pq.read_table(path)
    except Exception as e:
        report.add("corrupt_parquet", path, f"unreadable parquet file ({type(e).__name__}: {e})")
        return None


def _check_meta(report: _Report) -> dict | None:
    root = report.root
    if not root.is_dir():
        report.add("missing_meta", root, "dataset directory does not exist")
        return None
    for rel in META_FILES:
        if not (root / rel).is_file():
            report.add("missing_meta", rel, "required metadata file is missing")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except Exception as e:
        report.add("missing_meta", info_path, f"unreadable JSON ({type(e).__name__}: {e})")
        return None
    missing = [k for k in ("features", "fps", "data_path", "total_frames") if k not in info]
    if missing:
        report.add("missing_meta", info_path, f"info.json lacks {missing}")
        return None
    if (root / "meta" / "tasks.parquet").is_file():
        _read_parquet(report, root / "meta" / "tasks.parquet")
    return info


def _load_episodes(report: _Report) -> pa.Table | None:
    files = sorted((report.root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        report.add("missing_meta", "meta/episodes", "no episode metadata parquet files")
        return None
    tables = [t for t in (_read_parquet(report, f) for f in files) if t is not None]
    if len(tables) != len(files):
        return None
    return pa.concat_tables(tables, promote_options="default")


def _check_numeric(report: _Report, path: Path, table: pa.Table, key: str, spec: dict) -> None:
    """Shape (list length per row) and NaN/inf of one 1-D float column."""
    col = table.column(key).combine_chunks()
    dim = int(spec["shape"][0])
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            report.add(
                "shape",
                f"{path.relative_to(report.root)}:{key}",
                f"rows {bad[:MAX_LISTED].tolist()} have {lengths[bad[0]]} values, info.json says shape ({dim},)",
            )
            return
        values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), dim)  # (rows, dim)
    elif dim == 1:
        values = col.to_numpy(zero_copy_only=False).reshape(-1, 1)
    else:
        report.add("shape", f"{path.relative_to(report.root)}:{key}", f"scalar column, info.json says shape ({dim},)")
        return
    bad_rows = np.flatnonzero(~np.isfinite(values.astype(np.float64)).all(axis=1))
    if bad_rows.size == 0:
        return
    ep = table.column("episode_index").to_numpy() if "episode_index" in table.column_names else None
    fr = table.column("frame_index").to_numpy() if "frame_index" in table.column_names else None
    where = [
        f"episode {ep[r]} frame {fr[r]}" if ep is not None and fr is not None else f"row {r}"
        for r in bad_rows[:MAX_LISTED]
    ]
    more = f" (+{bad_rows.size - MAX_LISTED} more)" if bad_rows.size > MAX_LISTED else ""
    report.add("non_finite", f"{key} in {path.relative_to(report.root)}", f"NaN/inf at {', '.join(where)}{more}")


def _check_data(report: _Report, info: dict, episodes: pa.Table | None) -> None:
    root = report.root
    features = info["features"]
    files = sorted((root / "data").rglob("*.parquet"))
    if episodes is not None and {"data/chunk_index", "data/file_index"} <= set(episodes.column_names):
        pairs = set(
            zip(
                episodes.column("data/chunk_index").to_pylist(),
                episodes.column("data/file_index").to_pylist(),
                strict=True,
            )
        )
        for chunk, file in sorted(pairs):
            rel = info["data_path"].format(chunk_index=chunk, file_index=file)
            if not (root / rel).is_file():
                report.add("missing_file", rel, "data file referenced by meta/episodes is missing")
    if not files:
        report.add("missing_file", "data", "no data parquet files")
        return
    stored = [k for k, v in features.items() if v.get("dtype") != "video"]
    rows = 0
    for path in files:
        table = _read_parquet(report, path)
        if table is None:
            continue
        rows += table.num_rows
        absent = [k for k in stored if k not in table.column_names]
        for key in absent:
            report.add("missing_key", key, f"listed in meta/info.json but absent from {path.relative_to(root)}")
        for key in stored:
            spec = features[key]
            if key in absent or key in BOOKKEEPING or not str(spec.get("dtype", "")).startswith("float"):
                continue
            if len(spec.get("shape", ())) != 1:
                continue
            report.guard(f"{key} in {path.relative_to(root)}", _check_numeric, report, path, table, key, spec)
    if rows and not any(p.kind == "corrupt_parquet" and p.where.startswith("data") for p in report.problems):
        if rows != info["total_frames"]:
            report.add(
                "inconsistent",
                "meta/info.json",
                f"total_frames is {info['total_frames']} but data files hold {rows} rows",
            )


def _check_video_file(report: _Report, path: Path, key: str, spec: dict) -> None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                report.add("unreadable_video", path, f"{key}: file has no video stream")
                return
            frame = next(container.decode(video=0))
    except Exception as e:
        report.add("unreadable_video", path, f"{key}: cannot decode ({type(e).__name__}: {e})")
        return
    h, w = int(spec["shape"][0]), int(spec["shape"][1])
    if (frame.height, frame.width) != (h, w):
        report.add("shape", path, f"{key}: video frames are {frame.height}x{frame.width}, info.json says {h}x{w}")


def _check_videos(report: _Report, info: dict, episodes: pa.Table | None, decode: bool) -> None:
    video_keys = [k for k, v in info["features"].items() if v.get("dtype") == "video"]
    if not video_keys:
        return
    if not info.get("video_path"):
        report.add("missing_meta", "meta/info.json", f"video features {video_keys} but no video_path")
        return
    if episodes is None:
        return
    for key in video_keys:
        cols = (f"videos/{key}/chunk_index", f"videos/{key}/file_index")
        if not set(cols) <= set(episodes.column_names):
            on_disk = (report.root / "videos" / key).is_dir()
            report.add(
                "missing_key",
                key,
                "camera listed in meta/info.json has no video entries in meta/episodes"
                + ("" if on_disk else f" and no videos/{key} directory"),
            )
            continue
        pairs = sorted(
            set(zip(episodes.column(cols[0]).to_pylist(), episodes.column(cols[1]).to_pylist(), strict=True))
        )
        for chunk, file in pairs:
            rel = info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
            path = report.root / rel
            if not path.is_file():
                report.add("missing_video", rel, f"video file of camera {key} is missing")
            elif decode:
                _check_video_file(report, path, key, info["features"][key])


def _check_episodes(report: _Report, episodes: pa.Table, chunk: int | None) -> None:
    if "length" not in episodes.column_names or "episode_index" not in episodes.column_names:
        report.add("missing_key", "meta/episodes", "episode metadata lacks 'length' or 'episode_index'")
        return
    lengths = episodes.column("length").to_numpy()
    index = episodes.column("episode_index").to_numpy()
    if chunk is not None:
        for e, n in zip(index[lengths < chunk], lengths[lengths < chunk], strict=True):
            report.add("short_episode", f"episode {e}", f"{n} frames, shorter than the action chunk of {chunk}")


def validate_dataset(path: str | Path, chunk: int | None = None, decode_videos: bool = True) -> list[Problem]:
    """Every problem found in the dataset at ``path``; an empty list means it is sound.

    ``chunk``: also flag episodes shorter than this action chunk length.
    ``decode_videos``: open each video file and decode its first frame (checks size too).
    """
    report = _Report(Path(path).absolute())
    info = report.guard("meta", _check_meta, report)
    if info is None:
        return report.problems
    episodes = report.guard("meta/episodes", _load_episodes, report)
    report.guard("data", _check_data, report, info, episodes)
    report.guard("videos", _check_videos, report, info, episodes, decode_videos)
    if episodes is not None:
        report.guard("meta/episodes", _check_episodes, report, episodes, chunk)
        total = info.get("total_episodes")
        if total is not None and total != episodes.num_rows:
            report.add(
                "inconsistent",
                "meta/info.json",
                f"total_episodes is {total} but meta/episodes lists {episodes.num_rows}",
            )
    return report.problems
