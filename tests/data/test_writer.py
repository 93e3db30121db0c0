import json

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from data_pipelines.lerobot_source import default_video_backend
from data_pipelines.writer import DatasetWriter, make_features


def test_make_features_keys_and_storage():
    feats = make_features({"top": (48, 64)}, 4, 3, extra={"observation.environment_state": (9,)}, use_videos=False)
    assert feats["observation.images.top"] == {
        "dtype": "image",
        "shape": (48, 64, 3),
        "names": ["height", "width", "channels"],
    }
    assert feats["observation.state"]["shape"] == (4,)
    assert feats["action"]["shape"] == (3,)
    assert feats["observation.environment_state"] == {"dtype": "float32", "shape": (9,), "names": None}


def test_written_dataset_reads_back_exactly(three_cam_dataset):
    ds = LeRobotDataset("local/bimanual", root=three_cam_dataset, video_backend=default_video_backend())
    assert ds.meta.total_episodes == 3 and len(ds) == 86
    assert ds.meta.robot_type == "synthetic" and ds.fps == 10
    assert set(ds.meta.video_keys) == {f"observation.images.{c}" for c in ("left_wrist_cam", "overhead", "zed_right")}
    item = ds[30]  # second episode, first frame
    assert item["episode_index"].item() == 1 and item["frame_index"].item() == 0
    assert item["task"] == "stack the cups"
    assert item["observation.images.overhead"].shape == (3, 32, 32)
    assert not (three_cam_dataset / "images").exists()  # staging dir cleaned
    assert not list(three_cam_dataset.parent.glob(".bimanual.*.partial"))


def test_exception_leaves_no_dataset(tmp_path, make_episode, mw_cams):
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    feats = make_features(mw_cams, 4, 4, use_videos=False)
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(out, fps=10, features=feats, robot_type="x", use_videos=False) as w:
            w.add_episode(make_episode(rng, 5, mw_cams, 4, 4), task="t")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_episode_is_named_and_aborts(tmp_path, make_episode, mw_cams):
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    feats = make_features(mw_cams, 4, 4, use_videos=False)
    ep = make_episode(rng, 5, mw_cams, 4, 4)
    ep["action"] = ep["action"][:, :3]
    with pytest.raises(ValueError, match=r"action: expected \(T, 4\), got \(5, 3\)"):
        with DatasetWriter(out, fps=10, features=feats, robot_type="x", use_videos=False) as w:
            w.add_episode(ep, task="t")
    ep = make_episode(rng, 5, mw_cams, 4, 4)
    del ep["observation.images.wrist"]
    with pytest.raises(KeyError, match="observation.images.wrist"):
        with DatasetWriter(out, fps=10, features=feats, robot_type="x", use_videos=False) as w:
            w.add_episode(ep, task="t")
    assert list(tmp_path.iterdir()) == []


def test_refuses_overwrite_unless_asked(tmp_path, make_episode, mw_cams):
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    feats = make_features(mw_cams, 4, 4, use_videos=False)
    for n in (5, 7):
        with DatasetWriter(out, fps=10, features=feats, robot_type="x", use_videos=False, overwrite=n == 7) as w:
            w.add_episode(make_episode(rng, n, mw_cams, 4, 4), task="t")
    assert json.loads((out / "meta" / "info.json").read_text())["total_frames"] == 7
    with pytest.raises(FileExistsError, match="already holds a complete dataset"):
        with DatasetWriter(out, fps=10, features=feats, robot_type="x", use_videos=False):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_encoding_videos_leaves_the_scheduling_policy_alone(tmp_path, make_episode):
    """SVT-AV1 makes the encoding thread SCHED_FIFO 99 where it may (root); every process started afterwards
    (training, simulator workers) would inherit it and starve the machine. The writer puts it back."""
    import os

    before = os.sched_getscheduler(0), os.sched_getparam(0)
    rng = np.random.default_rng(0)
    cams = {"front": (32, 32)}
    with DatasetWriter(tmp_path / "ds", fps=10, features=make_features(cams, 2, 2), robot_type="t") as w:
        w.add_episode(make_episode(rng, 12, cams, 2, 2), task="look")
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


def test_scheduling_kept_restores_what_svt_av1_changes(tmp_path):
    import os

    import av

    from vla.utils.sched import scheduling_kept

    before = os.sched_getscheduler(0), os.sched_getparam(0)
    with scheduling_kept(), av.open(str(tmp_path / "v.mp4"), "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
