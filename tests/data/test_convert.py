import h5py
import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from data_pipelines.convert import convert
from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig, default_video_backend
from data_pipelines.validate import validate_dataset


def raw_episode(rng, t):
    return {
        "images/front": rng.integers(0, 255, size=(t, 24, 32, 3), dtype=np.uint8),
        "images/wrist": rng.integers(0, 255, size=(t, 24, 32, 3), dtype=np.uint8),
        "state": rng.normal(size=(t, 5)).astype(np.float32),
        "action": rng.normal(size=(t, 6)).astype(np.float32),
    }


def write_npz(path, ep, instruction):
    np.savez(path, instruction=np.array(instruction), **ep)


def write_hdf5(path, ep, instruction):
    with h5py.File(path, "w") as f:
        for k, v in ep.items():
            f.create_dataset(k, data=v)  # "images/front" creates the group
        f.attrs["instruction"] = instruction


@pytest.mark.parametrize("fmt", ["npz", "hdf5"])
def test_convert_validates_and_opens(tmp_path, fmt):
    rng = np.random.default_rng(0)
    src = tmp_path / "raw"
    src.mkdir()
    episodes = [raw_episode(rng, t) for t in (12, 9)]
    for i, ep in enumerate(episodes):
        (write_npz if fmt == "npz" else write_hdf5)(src / f"episode_{i:03d}.{fmt}", ep, f"task {i}")
    out = convert(src, tmp_path / "out", fps=15, robot_type="arm", use_videos=fmt == "npz")
    assert validate_dataset(out, chunk=4) == []
    ds = LeRobotDataset("local/out", root=out, video_backend=default_video_backend())
    assert (ds.meta.total_episodes, len(ds), ds.fps, ds.meta.robot_type) == (2, 21, 15, "arm")
    np.testing.assert_allclose(ds.hf_dataset[14]["action"], episodes[1]["action"][2])
    np.testing.assert_allclose(ds.hf_dataset[3]["observation.state"], episodes[0]["state"][3])
    item = ds[13]
    assert item["task"] == "task 1" and item["observation.images.wrist"].shape == (3, 24, 32)
    if fmt == "hdf5":  # images stored losslessly in parquet: exact
        got = (item["observation.images.front"] * 255).round().byte().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, episodes[1]["images/front"][1])
    src_ds = LeRobotSource(LeRobotSourceConfig(root=str(out), chunk=4))
    assert src_ds.feature_map.camera_names == ["front", "wrist"] and src_ds[0]["actions"].shape == (4, 6)


def test_convert_reports_bad_episode_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "raw"
    src.mkdir()
    write_npz(src / "episode_000.npz", raw_episode(rng, 5), "a")
    bad = raw_episode(rng, 5)
    bad["action"] = bad["action"][:, :4]
    write_npz(src / "episode_001.npz", bad, "b")
    with pytest.raises(ValueError, match="episode_001.npz: layout"):
        convert(src, tmp_path / "out", use_videos=False)
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        convert(empty, tmp_path / "x")


def test_cli_convert_then_inspect(tmp_path, capsys):
    import json

    from vla.cli.data import main

    rng = np.random.default_rng(1)
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(2):
        write_npz(src / f"episode_{i:03d}.npz", raw_episode(rng, 6), "wipe the table")
    assert main(["convert", str(src), "--out", str(tmp_path / "ds"), "--fps", "20", "--no-videos"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "ds"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["episodes"], report["frames"], report["fps"], report["tasks"]) == (2, 12, 20, ["wipe the table"])
    assert report["features"]["observation.images.front"] == {"dtype": "image", "shape": [24, 32, 3]}
    assert main(["convert", str(src), "--out", str(tmp_path / "ds")]) == 2  # exists, no --overwrite
    assert "already holds a complete dataset" in capsys.readouterr().err
