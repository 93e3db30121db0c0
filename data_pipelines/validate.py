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

from data_pipelines.legacy import legacy_hint

META_FILES = ("meta/info.json", "meta/tasks.parquet")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
MAX_LISTED = 5  # bad rows listed per (file, key); the count says how many in all


ERROR, WARNING = "error", "warning"
TOLERANCE_S = 1e-4  # LeRobotDataset's default: consecutive timestamps lie 1/fps apart within this


@dataclass(frozen=True)
class Problem:
    # missing_meta, missing_key, missing_file, corrupt_parquet, missing_video, unreadable_video, short_video, shape,
    # non_finite, short_episode, inconsistent, frame_index, index, timestamps, fps, task_index, version, internal (errors);
    # frozen_action, constant_channel, zero_std (warnings)
    kind: str
    where: str  # file, key, or episode/frame
    message: str
    level: str = ERROR  # error: training would fail or read the wrong frames; warning: legal, but worth a look

    def __str__(self) -> str:
        return f"[{self.kind}{'' if self.level == ERROR else ', warning'}] {self.where}: {self.message}"

    def as_dict(self) -> dict:
        return {"level": self.level, "kind": self.kind, "where": self.where, "message": self.message}


class _Report:
    """Collects problems; ``guard`` turns an unexpected exception into a Problem."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[Problem] = []

    def add(self, kind: str, where: str | Path, message: str, level: str = ERROR) -> None:
        if isinstance(where, Path):
            where = str(where.relative_to(self.root)) if where.is_relative_to(self.root) else str(where)
        self.problems.append(Problem(kind, where, message, level))

    def guard(self, what: str, fn: Callable, *args):
        try:
            return fn(*args)
        except Exception as e:  # the contract is: report, never crash
            self.add("internal", what, f"{type(e).__name__}: {e}")
            return None


def _read_parquet(report: _Report, path: Path, columns: list[str] | None = None) -> pa.Table | None:
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:
        report.add("corrupt_parquet", path, f"unreadable parquet file ({type(e).__name__}: {e})")
        return None


def _check_meta(report: _Report) -> dict | None:
    root = report.root
    if not root.is_dir():
        report.add("missing_meta", root, "dataset directory does not exist")
        return None
    hint = legacy_hint(root)  # v2.x (or older): none of the v3 checks below applies
    if hint:
        report.add("version", "meta/info.json", hint)
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
    finite = np.isfinite(values.astype(np.float64))
    constant = np.flatnonzero(finite.all(axis=0) & (np.ptp(values, axis=0) == 0)) if len(values) > 1 else []
    if len(constant):
        where = f"{path.relative_to(report.root)}:{key}"
        report.add("constant_channel", where, f"dim(s) {_listed(constant)} never change in {len(values)} rows", WARNING)
    bad_rows = np.flatnonzero(~finite.all(axis=1))
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


def _check_data(report: _Report, info: dict, episodes: pa.Table | None) -> pa.Table | None:
    """Files, keys, shapes and NaN/inf of the numeric columns; returns the bookkeeping columns (and the action)
    of every row for the per-episode checks."""
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
        return None
    stored = [k for k, v in features.items() if v.get("dtype") != "video"]
    images = {k for k, v in features.items() if v.get("dtype") == "image"}  # encoded bytes: not read here
    rows, frames = 0, []
    for path in files:
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as e:
            report.add("corrupt_parquet", path, f"unreadable parquet file ({type(e).__name__}: {e})")
            continue
        table = _read_parquet(report, path, [n for n in names if n not in images])
        if table is None:
            continue
        rows += table.num_rows
        frames.append(table.select([k for k in (*BOOKKEEPING, "action") if k in table.column_names]))
        absent = [k for k in stored if k not in names]
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
    return pa.concat_tables(frames, promote_options="default") if frames else None


def _episode_rows(episode_index: np.ndarray) -> Callable[[int], np.ndarray]:
    """``rows(e)``: the row numbers of episode ``e``, in file order (one sort, then a lookup per episode)."""
    order = np.argsort(episode_index, kind="stable")
    ordered = episode_index[order]

    def rows(e: int) -> np.ndarray:
        return order[np.searchsorted(ordered, e, "left") : np.searchsorted(ordered, e, "right")]

    return rows


def _listed(values) -> str:
    values = list(values)
    return ", ".join(map(str, values[:MAX_LISTED])) + (
        f" (+{len(values) - MAX_LISTED} more)" if len(values) > MAX_LISTED else ""
    )


def _check_frames(report: _Report, info: dict, episodes: pa.Table, frames: pa.Table) -> None:
    """Each episode's rows against meta/episodes: their number, frame_index, index, timestamps and tasks.

    What these catch trains silently wrong through LeRobot: a recorder stall or a timestamp going back pairs
    a frame with another moment's image, duplicated rows shift every index after them, and a task_index
    without a task fails only when sampling first reaches that episode."""
    cols = set(frames.column_names)
    if "episode_index" not in cols:
        return
    ep = frames.column("episode_index").to_numpy()
    meta = {
        name: episodes.column(name).to_numpy() if name in episodes.column_names else None
        for name in ("episode_index", "length", "dataset_from_index", "dataset_to_index")
    }
    known = set(meta["episode_index"].tolist())
    stray = sorted(set(np.unique(ep).tolist()) - known)
    if stray:
        report.add(
            "inconsistent",
            "data",
            f"rows of episode(s) {_listed(stray)} are in the data files but not in meta/episodes",
        )
    rows_of = _episode_rows(ep)
    column = {k: frames.column(k).to_numpy() for k in ("frame_index", "index", "timestamp", "task_index") if k in cols}
    period = 1.0 / float(info["fps"])
    steps = []  # (episode, its timestamp steps, their tolerance): the fps check needs them all
    for i, e in enumerate(meta["episode_index"].tolist()):
        rows = rows_of(e)
        where = f"episode {e}"
        if meta["length"] is not None and rows.size != meta["length"][i]:
            report.add(
                "inconsistent",
                where,
                f"meta/episodes says {meta['length'][i]} frames, the data files hold {rows.size} rows",
            )
        if "frame_index" in column and not np.array_equal(column["frame_index"][rows], np.arange(rows.size)):
            bad = np.flatnonzero(column["frame_index"][rows] != np.arange(rows.size))
            report.add(
                "frame_index",
                where,
                f"frame_index is not 0..{rows.size - 1}: rows {_listed(bad)} break it (duplicated or dropped frames?)",
            )
        if "index" in column and meta["dataset_from_index"] is not None:
            start = meta["dataset_from_index"][i]
            if not np.array_equal(column["index"][rows], np.arange(start, start + rows.size)):
                report.add("index", where, f"index is not {start}..{start + rows.size - 1} as meta/episodes says")
        if "timestamp" in column and rows.size > 1:
            ts = column["timestamp"][rows]
            # LeRobot stores float32: past 1024 s its rounding step (1.2e-4 s) exceeds LeRobot's own tolerance.
            tol = np.maximum(TOLERANCE_S, 2 * np.spacing(np.abs(ts[1:]).astype(np.float32)).astype(np.float64))
            steps.append((e, np.diff(ts.astype(np.float64)), tol))
    if steps:
        _check_timestamps(report, steps, period, info["fps"])
    if "task_index" in column:
        _check_tasks(report, ep, column["task_index"])
    if "action" in cols:
        _check_frozen_actions(report, frames, rows_of, meta["episode_index"].tolist())


def _check_timestamps(report: _Report, steps: list[tuple[int, np.ndarray, np.ndarray]], period: float, fps) -> None:
    """``steps``: per episode, its timestamp steps and the tolerance of each."""
    median = float(np.median(np.concatenate([dt for _, dt, _ in steps])))
    if abs(median - period) > TOLERANCE_S:  # the whole dataset: info.json's fps is wrong, not one episode
        report.add(
            "fps",
            "meta/info.json",
            f"fps is {fps} but timestamps advance by {median:.6g} s per frame ({1 / median:.4g} fps)",
        )
        return
    for e, dt, tol in steps:
        back = np.flatnonzero(dt <= 0)
        if back.size:
            report.add("timestamps", f"episode {e}", f"timestamps do not increase at frame(s) {_listed(back + 1)}")
        gaps = np.flatnonzero((dt > 0) & (np.abs(dt - period) > tol))
        if gaps.size:
            report.add(
                "timestamps",
                f"episode {e}",
                f"timestamp gap at frame(s) {_listed(gaps + 1)}: {dt[gaps[0]]:.4g} s after the frame before, "
                f"1/fps = {period:.4g} s (a recorder stall?)",
            )


def _check_tasks(report: _Report, ep: np.ndarray, task_index: np.ndarray) -> None:
    tasks_path = report.root / "meta" / "tasks.parquet"
    if not tasks_path.is_file():
        return
    tasks = _read_parquet(report, tasks_path)
    if tasks is None or "task_index" not in tasks.column_names:
        return
    valid = set(tasks.column("task_index").to_pylist())
    bad = ~np.isin(task_index, list(valid))
    for e in np.unique(ep[bad]).tolist():
        values = sorted(set(task_index[bad & (ep == e)].tolist()))
        report.add(
            "task_index",
            f"episode {e}",
            f"task_index {_listed(values)} names no task in meta/tasks.parquet ({len(valid)} tasks)",
        )


def _check_frozen_actions(report: _Report, frames: pa.Table, rows_of, episode_ids: list[int]) -> None:
    """Every action channel constant for a whole episode: a recorder or an arm that stopped. (One constant
    channel alone is normal: a gripper held open through a reaching episode.)"""
    col = frames.column("action").combine_chunks()
    if not (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)):
        return
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if lengths.size == 0 or (lengths != lengths[0]).any():
        return  # shapes are reported by _check_numeric
    actions = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), int(lengths[0]))
    for e in episode_ids:
        rows = rows_of(e)
        if rows.size > 1 and np.all(np.ptp(actions[rows], axis=0) == 0):
            report.add("frozen_action", f"episode {e}", f"the action is the same in all {rows.size} frames", WARNING)


def _check_stats(report: _Report, info: dict) -> None:
    """A zero standard deviation in meta/stats.json: mean/std normalization divides by it."""
    path = report.root / "meta" / "stats.json"
    if not path.is_file():
        return
    stats = json.loads(path.read_text())
    for key, spec in info["features"].items():
        if key in BOOKKEEPING or not str(spec.get("dtype", "")).startswith("float") or "std" not in stats.get(key, {}):
            continue
        dims = np.flatnonzero(np.asarray(stats[key]["std"], dtype=np.float64).reshape(-1) == 0)
        if dims.size:
            report.add(
                "zero_std",
                f"meta/stats.json:{key}",
                f"std is 0 in dim(s) {_listed(dims)}: a channel that never changes",
                WARNING,
            )


def header_frames(stream) -> int:
    """The frame count a video stream's header gives (0: the container does not say; then only decoding tells)."""
    return int(stream.frames or 0)


def _check_video_file(
    report: _Report, path: Path, key: str, spec: dict, spans: list[tuple[int, float]], fps: float, decode: bool
) -> None:
    """``spans``: (episode, time of its last frame in this file) for the episodes stored in the file. Always
    (reading the header only): the frames the container says it holds against what its episodes need. With
    ``decode``: the first frame's size against info.json, and the last frame of every episode decoded. A video
    shorter than its episodes fails only when training first samples those frames."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                report.add("unreadable_video", path, f"{key}: file has no video stream")
                return
            stream = container.streams.video[0]
            # The stream's own rate: info.json's fps may be the thing that is wrong (reported by the fps check).
            period = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / fps
            needed = round(max((last for _, last in spans), default=-period) / period) + 1
            held = header_frames(stream)
            if held and held < needed:
                report.add("short_video", path, f"{key}: holds {held} frames; its episodes need {needed}")
                return
            if not decode:
                return
            frame = next(container.decode(stream))
            h, w = int(spec["shape"][0]), int(spec["shape"][1])
            if (frame.height, frame.width) != (h, w):
                report.add(
                    "shape", path, f"{key}: video frames are {frame.height}x{frame.width}, info.json says {h}x{w}"
                )
            for episode, last in spans:
                container.seek(max(0, int((last - 1.0) / stream.time_base)), stream=stream, backward=True)
                latest = None
                for frame in container.decode(stream):
                    latest = float(frame.pts * stream.time_base)
                    if latest >= last - TOLERANCE_S:
                        break
                else:
                    ends = f"its last frame is at {latest:.3f} s" if latest is not None else "it has no frame there"
                    report.add("short_video", path, f"{key}: episode {episode} needs a frame at {last:.3f} s; {ends}")
    except Exception as e:
        report.add("unreadable_video", path, f"{key}: cannot decode ({type(e).__name__}: {e})")


def _last_frame_times(frames: pa.Table | None) -> dict[int, float]:
    """Each episode's last data timestamp: LeRobot reads a frame at ``from_timestamp + timestamp``."""
    if frames is None or not {"episode_index", "timestamp"} <= set(frames.column_names):
        return {}
    ep, ts = frames.column("episode_index").to_numpy(), frames.column("timestamp").to_numpy().astype(np.float64)
    if ep.size == 0:
        return {}
    order = np.argsort(ep, kind="stable")
    ids, starts = np.unique(ep[order], return_index=True)
    return dict(zip(ids.tolist(), np.maximum.reduceat(ts[order], starts).tolist(), strict=True))


def _check_videos(
    report: _Report, info: dict, episodes: pa.Table | None, decode: bool, frames: pa.Table | None = None
) -> None:
    video_keys = [k for k, v in info["features"].items() if v.get("dtype") == "video"]
    if not video_keys:
        return
    if not info.get("video_path"):
        report.add("missing_meta", "meta/info.json", f"video features {video_keys} but no video_path")
        return
    if episodes is None:
        return
    last = _last_frame_times(frames)
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
        starts = f"videos/{key}/from_timestamp"
        rows = episodes.select(["episode_index", *cols, starts]).to_pylist() if starts in episodes.column_names else []
        for chunk, file in pairs:
            rel = info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
            path = report.root / rel
            if not path.is_file():
                report.add("missing_video", rel, f"video file of camera {key} is missing")
                continue
            spans = [  # (episode, the time in this file of the last frame training reads)
                (row["episode_index"], row[starts] + last[row["episode_index"]])
                for row in rows
                if (row[cols[0]], row[cols[1]]) == (chunk, file) and row["episode_index"] in last
            ]
            _check_video_file(report, path, key, info["features"][key], spans, float(info["fps"]), decode)


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
    ``decode_videos``: open each video file, decode its first frame (checks size too) and the last frame of
    every episode in it. Without it the checks read only metadata and parquet columns (no images): fast
    enough to run before every training (vla.train.data).
    """
    report = _Report(Path(path).absolute())
    info = report.guard("meta", _check_meta, report)
    if info is None:
        return report.problems
    episodes = report.guard("meta/episodes", _load_episodes, report)
    frames = report.guard("data", _check_data, report, info, episodes)
    report.guard("videos", _check_videos, report, info, episodes, decode_videos, frames)
    report.guard("meta/stats.json", _check_stats, report, info)
    if episodes is not None:
        if frames is not None:
            report.guard("frames", _check_frames, report, info, episodes, frames)
        report.guard("meta/episodes", _check_episodes, report, episodes, chunk)
        total = info.get("total_episodes")
        if total is not None and total != episodes.num_rows:
            report.add(
                "inconsistent",
                "meta/info.json",
                f"total_episodes is {total} but meta/episodes lists {episodes.num_rows}",
            )
    return report.problems
