"""Faults real recording pipelines produce in LeRobot v3 datasets, made on a copy of one small sound dataset.

The catalogue that `vla data validate` is tested against (tests/data/test_validate.py) and compared with
lerobot-doctor on (scripts/peers/validate_vs_doctor.py): each builder edits a copy in place the way a real
pipeline breaks it (a recorder stall, frames written twice, an encoder killed early ...), and ``FAULTS`` says
what a validator should answer. The builders address rows of the layout ``write_sound`` writes (episodes of 30,
20 and 36 frames at 10 fps, a camera named ``overhead``), which tests/conftest.py's ``three_cam_dataset`` shares.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla.utils.sched import scheduling_kept

CAMERAS = {"overhead": (32, 32), "wrist": (32, 32)}
STATE_DIM, ACTION_DIM = 7, 14
LENGTHS = [30, 20, 36]  # rows 0..29, 30..49, 50..85
TASKS = ["fold the towel", "stack the cups"]
FPS = 10
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
CAM = "observation.images.overhead"
VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"

REFUSE, WARN, SILENT = "REFUSED", "WARNED", "silent"


# ---- the sound dataset ------------------------------------------------------------------------------------------
def write_sound(out: Path, seed: int = 0) -> Path:
    """The dataset every fault starts from, with our exact statistics merged into meta/stats.json."""
    from data_pipelines.stats import compute_stats, save_stats
    from data_pipelines.writer import DatasetWriter, make_features

    rng = np.random.default_rng(seed)
    feats = make_features(CAMERAS, STATE_DIM, ACTION_DIM)
    with DatasetWriter(out, fps=FPS, features=feats, robot_type="synthetic") as w:
        for i, n in enumerate(LENGTHS):
            frames = {}
            for name, (h, wd) in CAMERAS.items():
                base = np.linspace(0, 200, n, dtype=np.float32)[:, None, None, None]
                noise = rng.integers(0, 40, size=(n, h, wd, 3))
                frames[f"observation.images.{name}"] = np.clip(base + noise, 0, 255).astype(np.uint8)
            frames["observation.state"] = np.cumsum(rng.normal(size=(n, STATE_DIM)), 0).astype(np.float32)
            frames["action"] = rng.normal(size=(n, ACTION_DIM)).astype(np.float32)
            w.add_episode(frames, task=TASKS[i % len(TASKS)])
    save_stats(compute_stats(out), out / "meta" / "stats.json")
    return out


# ---- editing helpers -------------------------------------------------------
def rewrite_parquet(path: Path, edit: Callable[[dict[str, list]], None]) -> None:
    """Apply ``edit(columns)`` to a parquet file, keeping its schema."""
    table = pq.read_table(path)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    edit(columns)
    pq.write_table(pa.table({k: pa.array(v, type=table.schema.field(k).type) for k, v in columns.items()}), path)


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


# ---- the faults: each edits a copy of the sound dataset in place -------------------------------------------------
def timestamp_gap(root: Path) -> None:
    """A recorder stall: episode 1 (rows 30..49) jumps 0.5 s before its frame 10."""

    def edit(c):
        for row in range(40, 50):
            c["timestamp"][row] += 0.5

    rewrite_parquet(root / DATA, edit)


def timestamps_backwards(root: Path) -> None:
    """Episode 2 (rows 50..85): frames 5 and 6 swapped."""

    def edit(c):
        c["timestamp"][55], c["timestamp"][56] = c["timestamp"][56], c["timestamp"][55]

    rewrite_parquet(root / DATA, edit)


def fps_disagrees(root: Path) -> None:
    """meta/info.json says 30 fps; the timestamps advance by 0.1 s."""
    edit_json(root / "meta" / "info.json", lambda info: info.update(fps=30))


def episode_index_disagrees(root: Path) -> None:
    """Episode 2's rows are labelled 7; meta/episodes still lists 0, 1, 2."""
    rewrite_parquet(root / DATA, lambda c: c["episode_index"].__setitem__(slice(50, 86), [7] * 36))


def _duplicate_frame(c: dict[str, list]) -> None:
    for values in c.values():
        values.insert(36, values[35])  # episode 1, frame 5 written twice


def duplicate_frame_stale(root: Path) -> None:
    """A frame of episode 1 written twice; meta/episodes and info.json left as they were."""
    rewrite_parquet(root / DATA, _duplicate_frame)


def duplicate_frame_consistent(root: Path) -> None:
    """A frame of episode 1 written twice, and every count updated to match (length, dataset_from/to_index,
    total_frames, ``index`` renumbered): only frame_index and timestamp repeat."""

    def edit(c):
        _duplicate_frame(c)
        c["index"] = list(range(len(c["index"])))

    def shift(c):
        c["length"][1] += 1
        c["dataset_to_index"][1] += 1
        c["dataset_from_index"][2] += 1
        c["dataset_to_index"][2] += 1

    rewrite_parquet(root / DATA, edit)
    rewrite_parquet(root / EPISODES, shift)
    edit_json(root / "meta" / "info.json", lambda info: info.update(total_frames=87))


def task_index_dangles(root: Path) -> None:
    """Episode 1's rows point to task 5; meta/tasks.parquet has 2 tasks."""
    rewrite_parquet(root / DATA, lambda c: c["task_index"].__setitem__(slice(30, 50), [5] * 20))


def video_truncated(root: Path, drop: int = 10) -> None:
    """The overhead camera's video re-encoded without its last ``drop`` frames (an encoder killed before the
    end): episode 2 (8.6 s in the file) loses 8.6..9.5 s; the metadata still says 5.0..8.6 s. Same codec,
    size and pixel format as the original; frame times kept."""
    import av

    path = root / VIDEO
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        pix_fmt = stream.codec_context.pix_fmt
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(stream)]
    keep = frames[: len(frames) - drop]
    spec = json.loads((root / "meta" / "info.json").read_text())["features"][CAM]["info"]
    codec = {"av1": "libsvtav1"}.get(spec["video.codec"], spec["video.codec"])  # the decoder is libdav1d
    tmp = path.with_name("truncated.mp4")
    with scheduling_kept(), av.open(str(tmp), "w") as dst:
        out = dst.add_stream(codec, rate=FPS, options={"g": str(spec["video.g"]), "crf": str(spec["video.crf"])})
        out.width, out.height, out.pix_fmt = keep[0].shape[1], keep[0].shape[0], pix_fmt
        out.time_base = Fraction(1, FPS)
        for i, img in enumerate(keep):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            dst.mux(out.encode(frame))
        dst.mux(out.encode())
    tmp.replace(path)


def video_shorter_in_metadata(root: Path) -> None:
    """meta/episodes places the last episode 0.5 s later in the overhead video than it is (a bad merge of
    two recordings): training would read its last frames from past the end of the file (8.6 s)."""
    for key in (f"videos/{CAM}/from_timestamp", f"videos/{CAM}/to_timestamp"):
        rewrite_parquet(root / EPISODES, lambda c, key=key: c[key].__setitem__(2, c[key][2] + 0.5))


def frozen_action(root: Path) -> None:
    """Episode 0's action is its first value for all 30 frames (a teleop stream that stopped updating)."""
    rewrite_parquet(root / DATA, lambda c: c["action"].__setitem__(slice(0, 30), [c["action"][0]] * 30))


def zero_std(root: Path) -> None:
    """meta/stats.json: std = 0 for observation.state dim 3 (normalization would divide by ~0)."""
    edit_json(root / "meta" / "stats.json", lambda s: s["observation.state"]["std"].__setitem__(3, 0.0))


def nan_action(root: Path) -> None:
    """One NaN in the action column: episode 1 frame 3, dim 2."""

    def edit(c):
        c["action"][33] = [*c["action"][33][:2], float("nan"), *c["action"][33][3:]]

    rewrite_parquet(root / DATA, edit)


# (id, name, builder, the right answer)
FAULTS: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("1", "timestamp gap inside an episode (+0.5 s, episode 1)", timestamp_gap, REFUSE),
    ("2", "timestamps going backwards (2 frames swapped, episode 2)", timestamps_backwards, REFUSE),
    ("3", "fps in info.json 30, timestamps say 10", fps_disagrees, REFUSE),
    ("4", "episode_index of rows disagrees with meta/episodes (2 -> 7)", episode_index_disagrees, REFUSE),
    ("5", "duplicated frame, metadata stale", duplicate_frame_stale, REFUSE),
    ("6", "duplicated frame, metadata updated to match", duplicate_frame_consistent, REFUSE),
    ("7", "task_index pointing to no task", task_index_dangles, REFUSE),
    ("8", "video shorter than its episode (re-encoded without its last 10 frames)", video_truncated, REFUSE),
    (
        "8b",
        "video shorter than its episode as meta/episodes places it (from/to_timestamp +0.5 s)",
        video_shorter_in_metadata,
        REFUSE,
    ),
    ("9", "action frozen for a whole episode (episode 0)", frozen_action, WARN),
    ("10", "std = 0 in meta/stats.json (observation.state dim 3)", zero_std, WARN),
    ("11", "NaN in the action column (episode 1 frame 3)", nan_action, REFUSE),
]


def build_corrupted(sound: Path, out: Path) -> dict[str, Path]:
    """One copy of ``sound`` per fault under ``out``; returns id -> root."""
    roots = {}
    for fid, _, build, _ in FAULTS:
        root = out / f"fault_{fid}"
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(sound, root)
        build(root)
        roots[fid] = root
    return roots
