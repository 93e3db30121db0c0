"""LeRobot v2.1 and v2.0 datasets: converted with LeRobot's own converter into a cached v3 copy, trained on
directly, converted by `vla data convert`.

The datasets are written here to LeRobot's v2.1 layout: one parquet and one AV1 mp4 (LeRobot's own encoder,
its defaults then and now) per episode and camera, metadata in JSON lines. Checked once, outside the suite,
against lerobot 0.3.3's own writer (``LeRobotDataset.create``/``add_frame``/``save_episode``) fed the same
frames: the same file names; info.json, episodes.jsonl and tasks.jsonl byte for byte; episodes_stats.jsonl
key for key and value for value; parquet tables equal (the ``huggingface`` schema metadata as 0.3.3's pinned
``datasets<=3.6`` wrote it, "Sequence"); videos of the same codec, pixel format, time base and frame count
(pixels within 8 levels: SVT-AV1 is given slightly different options now).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tiny_policies import TINY

from data_pipelines.legacy import codebase_version, convert_to_v3, readable_root, source_key, v3_copy
from data_pipelines.validate import validate_dataset

REPO = Path(__file__).resolve().parents[2]

FPS = 10
CAMERAS = {"top": (32, 32), "wrist": (32, 32)}
DIM = 4  # state and action
EPISODES = [(12, "pick up the cube"), (9, "place the cube"), (14, "pick up the cube")]  # (frames, task)
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
BOOKKEEPING = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64"}


# ── a v2.x dataset, as LeRobot's v2.1 writer made them ─────────────────


def episode_frames(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Images whose brightness follows the frame (so a frame read at the wrong time shows), smooth state."""
    frames = {}
    for cam, (h, w) in CAMERAS.items():
        ramp = np.linspace(20, 230, n, dtype=np.float32)[:, None, None, None]
        frames[f"observation.images.{cam}"] = np.clip(ramp + rng.integers(0, 25, (n, h, w, 3)), 0, 255).astype(np.uint8)
    frames["observation.state"] = np.cumsum(rng.normal(size=(n, DIM)), 0).astype(np.float32)
    frames["action"] = rng.normal(size=(n, DIM)).astype(np.float32)
    return frames


def features() -> dict:
    video_info = {
        "video.height": 32,
        "video.width": 32,
        "video.codec": "av1",
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "video.fps": FPS,
        "video.channels": 3,
        "has_audio": False,
    }
    out = {
        f"observation.images.{cam}": {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": video_info,
        }
        for cam, (h, w) in CAMERAS.items()
    }
    out |= {key: {"dtype": "float32", "shape": [DIM], "names": None} for key in ("observation.state", "action")}
    out |= {key: {"dtype": dtype, "shape": [1], "names": None} for key, dtype in BOOKKEEPING.items()}
    out["task_index"] = {"dtype": "int64", "shape": [1], "names": None}
    return out


def hf_schema_metadata() -> bytes:
    """The ``huggingface`` parquet metadata LeRobot v2.1 wrote (datasets 3.x: lists are "Sequence")."""
    vec = {"feature": {"dtype": "float32", "_type": "Value"}, "length": DIM, "_type": "Sequence"}
    feats = {"observation.state": vec, "action": vec}
    feats |= {key: {"dtype": dtype, "_type": "Value"} for key, dtype in {**BOOKKEEPING, "task_index": "int64"}.items()}
    return json.dumps({"info": {"features": feats}}).encode()


def stats_of(values: np.ndarray) -> dict:
    """LeRobot v2.1's per-feature statistics: per dimension (per channel in [0, 1], shaped (3, 1, 1), for images)."""
    if values.ndim == 4:  # (T, H, W, C) uint8 frames
        per_channel = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        stats = {k: getattr(per_channel, k)(0)[:, None, None].tolist() for k in ("min", "max", "mean", "std")}
    else:
        v = values.reshape(len(values), -1)
        stats = {"min": v.min(0).tolist(), "max": v.max(0).tolist()}
        stats |= {"mean": v.mean(0, dtype=np.float64).tolist(), "std": v.std(0, dtype=np.float64).tolist()}
    return stats | {"count": [len(values)]}


def encode(frames: np.ndarray, path: Path, scratch: Path) -> None:
    """With LeRobot's own encoder (libsvtav1, yuv420p, g=2, crf=30: v2.1's defaults too), from PNGs as it did."""
    from lerobot.datasets.video_utils import encode_video_frames

    from vla.utils.sched import scheduling_kept

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(scratch / f"frame-{i:06d}.png")
    with scheduling_kept():  # SVT-AV1 would leave this thread real-time (vla/utils/sched.py)
        encode_video_frames(scratch, path, FPS, overwrite=True)
    shutil.rmtree(scratch)


def write_legacy(root: Path, version: str = "v2.1", seed: int = 0) -> Path:
    """A v2.1 dataset (v2.0: one meta/stats.json instead of meta/episodes_stats.jsonl)."""
    rng = np.random.default_rng(seed)
    tasks = list(dict.fromkeys(task for _, task in EPISODES))
    feats = features()
    episodes, episodes_stats, start = [], [], 0
    for e, (n, task) in enumerate(EPISODES):
        frames = episode_frames(rng, n)
        columns = {
            "observation.state": frames["observation.state"],
            "action": frames["action"],
            "timestamp": (np.arange(n) / FPS).astype(np.float32),
            "frame_index": np.arange(n),
            "episode_index": np.full(n, e),
            "index": np.arange(start, start + n),
            "task_index": np.full(n, tasks.index(task)),
        }
        arrays = [
            pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), DIM) if v.ndim == 2 else pa.array(v)
            for v in columns.values()
        ]
        table = pa.Table.from_arrays(arrays, names=list(columns)).replace_schema_metadata(
            {"huggingface": hf_schema_metadata()}
        )
        path = root / DATA_PATH.format(episode_chunk=0, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for cam in CAMERAS:
            key = f"observation.images.{cam}"
            encode(frames[key], root / VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=e), root / "png")
        stats = {key: stats_of(frames[key]) for key in feats if key in frames}
        episodes_stats.append(stats | {key: stats_of(columns[key]) for key in (*BOOKKEEPING, "task_index")})
        episodes.append({"episode_index": e, "tasks": [task], "length": n})
        start += n
    info = {
        "codebase_version": version,
        "robot_type": "synthetic",
        "total_episodes": len(EPISODES),
        "total_frames": start,
        "total_tasks": len(tasks),
        "total_videos": len(EPISODES) * len(CAMERAS),
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(EPISODES)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": feats,
    }
    meta = root / "meta"
    meta.mkdir()
    (meta / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks))
    )
    if version == "v2.1":
        lines = [json.dumps({"episode_index": e, "stats": s}) + "\n" for e, s in enumerate(episodes_stats)]
        (meta / "episodes_stats.jsonl").write_text("".join(lines))
    else:
        from lerobot.datasets.compute_stats import aggregate_stats
        from lerobot.datasets.io_utils import cast_stats_to_numpy, write_stats

        write_stats(aggregate_stats([cast_stats_to_numpy(s) for s in episodes_stats]), root)
    return root


@pytest.fixture(scope="module")
def v21(tmp_path_factory) -> Path:
    return write_legacy(tmp_path_factory.mktemp("legacy") / "v21")


def listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def decoded(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def run_vla(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "vla", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def errors(root: Path) -> list:
    return [p for p in validate_dataset(root) if p.level == "error"]


# ── tests ─────────────────────────────────────────────────────────────


def test_v21_converts_to_a_sound_v3_copy_with_the_source_frames_actions_and_tasks(v21, tmp_path):
    from data_pipelines.lerobot_source import open_lerobot

    before = listing(v21)
    out = convert_to_v3(v21, tmp_path / "v3")
    assert listing(v21) == before  # the source is only read
    assert codebase_version(out) == "v3.0" and errors(out) == []
    assert [p.name for p in tmp_path.iterdir()] == ["v3"]  # no temporary folder left beside it

    ds = open_lerobot(out, video_backend="pyav")
    assert (ds.num_episodes, len(ds), ds.fps) == (len(EPISODES), sum(n for n, _ in EPISODES), FPS)
    tasks = [json.loads(line)["task"] for line in (v21 / "meta" / "tasks.jsonl").read_text().splitlines()]
    i = 0
    for e, (n, task) in enumerate(EPISODES):
        table = pq.read_table(v21 / DATA_PATH.format(episode_chunk=0, episode_index=e))
        videos = {
            cam: decoded(
                v21 / VIDEO_PATH.format(episode_chunk=0, video_key=f"observation.images.{cam}", episode_index=e)
            )
            for cam in CAMERAS
        }
        for t in range(n):
            item = ds[i + t]
            assert int(item["episode_index"]) == e and int(item["frame_index"]) == t
            assert item["task"] == task == tasks[table.column("task_index")[t].as_py()]
            for key in ("action", "observation.state"):
                np.testing.assert_array_equal(item[key].numpy(), np.asarray(table.column(key)[t].as_py(), np.float32))
            for cam, frames in videos.items():  # stream-copied: the same decoded pixels, at the same time
                got = (item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0) * 255).round()
                np.testing.assert_array_equal(got, frames[t])
        i += n


def test_training_reads_a_v21_root_through_one_cached_copy(v21, tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_CACHE_DIR", str(tmp_path / "cache"))
    args = [
        "train",
        f"--dataset.root={v21}",
        "--policy.head.type=regression",
        "--train.steps=2",
        "--train.batch_size=2",
        *TINY,
    ]
    first = run_vla([*args, f"--output_dir={tmp_path / 'run1'}"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{v21} is LeRobot v2.1: reading its v3 copy" in first.stderr and "converted now" in first.stderr
    (copy,) = [p for p in (tmp_path / "cache" / "lerobot_v3").iterdir() if not p.name.startswith(".")]
    made = listing(copy)
    assert [json.loads(line)["step"] for line in (tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]

    second = run_vla([*args, f"--output_dir={tmp_path / 'run2'}"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "converted earlier, reused" in second.stderr and "converted now" not in second.stderr
    assert listing(copy) == made  # not converted again


def test_vla_data_convert_takes_a_v21_dataset(v21, tmp_path, capsys):
    from vla.cli.data import main

    out = tmp_path / "v3"
    assert main(["convert", str(v21), "--out", str(out)]) == 0
    assert f"wrote {out} (LeRobot v2.1 -> v3.0)" in capsys.readouterr().out
    assert codebase_version(out) == "v3.0" and errors(out) == []
    assert main(["convert", str(v21), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(v21), "--out", str(tmp_path / "x"), "--fps", "5"]) == 2
    assert "--fps: for raw episode files" in capsys.readouterr().err
    for verb, code in (("inspect", 2), ("stats", 2), ("validate", 1)):  # the other tools read v3 only, and say so
        assert main([verb, str(v21)]) == code
        assert f"vla data convert {v21} --out DIR" in "".join(capsys.readouterr()), verb
    assert not (v21 / "meta" / "stats.json").exists()


def test_v20_is_converted_with_per_episode_statistics_computed(tmp_path):
    src = write_legacy(tmp_path / "v20", version="v2.0", seed=1)
    assert not (src / "meta" / "episodes_stats.jsonl").exists()
    out = convert_to_v3(src, tmp_path / "v3")
    assert codebase_version(out) == "v3.0" and errors(out) == []
    episodes = pq.read_table(next((out / "meta" / "episodes").rglob("*.parquet"))).to_pandas()
    assert list(episodes["length"]) == [n for n, _ in EPISODES]
    assert "stats/action/mean" in episodes and "stats/observation.images.top/mean" in episodes
    # Recomputed over the frames themselves: the v2.0 totals, exactly for numbers, within AV1's loss for images.
    before, after = (json.loads((root / "meta" / "stats.json").read_text()) for root in (src, out))
    for key in ("action", "observation.state"):
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(after[key][stat], before[key][stat], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        after["observation.images.top"]["mean"], before["observation.images.top"]["mean"], atol=0.02
    )


def test_a_copy_is_converted_once_per_state_of_the_source_and_never_left_half_written(v21, tmp_path, monkeypatch):
    from lerobot.scripts import convert_dataset_v21_to_v30 as lerobot_v30

    src = tmp_path / "src"
    shutil.copytree(v21, src)
    cache = tmp_path / "cache"
    copy, converted = v3_copy(src, cache)
    assert converted and v3_copy(src, cache) == (copy, False)

    os.utime(src / "meta" / "tasks.jsonl", ns=(1, 1))  # an edited source is converted again; the old copy goes
    killed = cache / f".{src.name}-{'-'.join(source_key(src))}.0123abcd.partial"  # a conversion killed midway
    killed.mkdir()
    fresh, converted = v3_copy(src, cache)
    assert converted and fresh != copy and not copy.exists() and not killed.exists() and errors(fresh) == []

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lerobot_v30, "convert_videos", crash)
    os.utime(src / "meta" / "tasks.jsonl", ns=(2, 2))
    with pytest.raises(ValueError, match=f"cannot convert {src.resolve()} to LeRobot v3: OSError: disk full"):
        readable_root(src, cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [fresh.name]


def test_v3_roots_pass_through_and_unknown_versions_are_refused_naming_the_file(v21, tmp_path):
    v3 = convert_to_v3(v21, tmp_path / "v3")
    assert readable_root(v3) == v3
    old = tmp_path / "v16"
    shutil.copytree(v21 / "meta", old / "meta")
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps(info | {"codebase_version": "v1.6"}))
    with pytest.raises(ValueError, match=rf"{old / 'meta' / 'info.json'} says codebase_version 'v1.6'"):
        readable_root(old)
    (old / "meta" / "info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "codebase_version"}))
    with pytest.raises(ValueError, match="has no codebase_version"):
        readable_root(old)
    with pytest.raises(ValueError, match="is already LeRobot v3.0"):
        convert_to_v3(v3, tmp_path / "again")
