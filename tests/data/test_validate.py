import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines import faults
from data_pipelines.validate import validate_dataset

DATA = "data/chunk-000/file-000.parquet"


def kinds(problems):
    return sorted({p.kind for p in problems})


def test_sound_datasets_pass(three_cam_dataset, metaworld_layout_dataset):
    assert validate_dataset(three_cam_dataset) == []
    assert validate_dataset(metaworld_layout_dataset, chunk=20) == []


def test_nan_action_names_episode_and_frame(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    table = pq.read_table(root / DATA)
    i = table.column_names.index("action")
    actions = np.stack(table.column("action").to_pylist()).astype(np.float32)  # (86, 14)
    actions[33, 2] = np.nan  # episode 1 (frames 30..49), frame 3
    actions[80, 0] = np.inf  # episode 2 (frames 50..85), frame 30
    arr = pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1)), 14)
    pq.write_table(table.set_column(i, table.schema.field(i), arr), root / DATA)
    problems = validate_dataset(root)
    assert kinds(problems) == ["non_finite"]
    msg = str(problems[0])
    assert "action" in msg and "episode 1 frame 3" in msg and "episode 2 frame 30" in msg and DATA in msg


def test_missing_camera_key(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.images.ghost_cam"] = info["features"]["observation.images.overhead"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    problems = validate_dataset(root)
    assert [(p.kind, p.where) for p in problems] == [("missing_key", "observation.images.ghost_cam")]
    assert "no videos/observation.images.ghost_cam directory" in problems[0].message


def test_missing_image_column(metaworld_layout_dataset, copy_dataset):
    root = copy_dataset(metaworld_layout_dataset)
    table = pq.read_table(root / DATA)
    pq.write_table(table.drop_columns(["observation.images.wrist"]), root / DATA)
    problems = validate_dataset(root)
    assert [(p.kind, p.where) for p in problems] == [("missing_key", "observation.images.wrist")]
    assert DATA in problems[0].message


def test_truncated_parquet(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    blob = (root / DATA).read_bytes()
    (root / DATA).write_bytes(blob[: len(blob) // 2])
    problems = validate_dataset(root)
    assert [(p.kind, p.where) for p in problems] == [("corrupt_parquet", DATA)]


def test_deleted_and_corrupt_video(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    gone = "videos/observation.images.overhead/chunk-000/file-000.mp4"
    (root / gone).unlink()
    bad = root / "videos/observation.images.zed_right/chunk-000/file-000.mp4"
    bad.write_bytes(b"not a video at all")
    problems = validate_dataset(root)
    assert sorted((p.kind, p.where) for p in problems) == [
        ("missing_video", gone),
        ("unreadable_video", "videos/observation.images.zed_right/chunk-000/file-000.mp4"),
    ]


def test_short_episode(three_cam_dataset):
    problems = validate_dataset(three_cam_dataset, chunk=25)
    assert [(p.kind, p.where) for p in problems] == [("short_episode", "episode 1")]
    assert "20 frames" in problems[0].message


def test_missing_meta_and_garbage_never_crash(three_cam_dataset, copy_dataset, tmp_path):
    root = copy_dataset(three_cam_dataset)
    (root / "meta" / "tasks.parquet").unlink()
    assert [(p.kind, p.where) for p in validate_dataset(root)] == [("missing_meta", "meta/tasks.parquet")]
    (root / "meta" / "info.json").write_text("{not json")
    assert kinds(validate_dataset(root)) == ["missing_meta"]
    assert kinds(validate_dataset(tmp_path / "nothing")) == ["missing_meta"]
    root2 = copy_dataset(three_cam_dataset, "eps")
    for f in (root2 / "meta" / "episodes").rglob("*.parquet"):
        f.write_bytes(b"PAR1garbage")
    assert "corrupt_parquet" in kinds(validate_dataset(root2))


def test_cli_validate_exit_codes(three_cam_dataset, copy_dataset, capsys):
    from vla.cli.data import main

    assert main(["validate", str(three_cam_dataset)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["validate", str(three_cam_dataset), "--chunk", "25"]) == 1
    out = capsys.readouterr().out
    assert "[short_episode] episode 1: 20 frames" in out and "1 problem(s)" in out
    root = copy_dataset(three_cam_dataset)
    (root / "videos/observation.images.overhead/chunk-000/file-000.mp4").unlink()
    assert main(["validate", str(root), "--no-decode"]) == 1
    assert "[missing_video] videos/observation.images.overhead/chunk-000/file-000.mp4" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from vla.cli.data import main

    monkeypatch.setenv("VLA_CACHE_DIR", str(tmp_path / "cache"))  # where the traceback goes
    monkeypatch.setenv("VLA_DEBUG", "0")
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    message, where = capsys.readouterr().err.strip().splitlines()  # the cause, then where its traceback is
    assert message == f"vla data inspect: error: LeRobot dataset root {tmp_path / 'nope'} does not exist"
    assert where.startswith(f"  full traceback: {tmp_path / 'cache' / 'logs' / 'data-inspect-error.log'}")
    assert main(["stats", str(tmp_path)]) == 2
    assert "not a LeRobot dataset" in capsys.readouterr().err
    assert main(["validate"]) == 2  # argparse usage error
    for verb in ("validate", "stats", "convert", "inspect", "fit-tokenizer", "generate"):
        assert main([verb, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: vla data {verb}")


def test_shape_mismatch_against_info(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [13]
    info["features"]["observation.images.overhead"]["shape"] = [48, 32, 3]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    problems = sorted(validate_dataset(root), key=str)
    assert [(p.kind, p.where) for p in problems] == [
        ("shape", f"{DATA}:action"),
        ("shape", "videos/observation.images.overhead/chunk-000/file-000.mp4"),
    ]
    assert "have 14 values, info.json says shape (13,)" in problems[0].message
    assert "32x32, info.json says 48x32" in problems[1].message


# ---- what real pipelines break (issue 20; data_pipelines/faults.py): each named by file, key and episode ---------


def test_timestamp_gap_and_backwards_name_the_episode_and_frame(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    faults.timestamp_gap(root)  # episode 1: a 0.5 s recorder stall before its frame 10
    faults.timestamps_backwards(root)  # episode 2: frames 5 and 6 swapped
    problems = validate_dataset(root, decode_videos=False)
    assert {(p.kind, p.where) for p in problems} == {("timestamps", "episode 1"), ("timestamps", "episode 2")}
    said = " | ".join(str(p) for p in problems)
    assert "episode 1: timestamp gap at frame(s) 10: 0.6 s after the frame before, 1/fps = 0.1 s" in said
    assert "episode 2: timestamps do not increase at frame(s) 6" in said


def test_fps_in_info_that_disagrees_with_the_timestamps(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    faults.fps_disagrees(root)
    for decode in (False, True):  # and the videos, at their own rate, do not look short
        problems = validate_dataset(root, decode_videos=decode)
        assert [(p.kind, p.where) for p in problems] == [("fps", "meta/info.json")]
        assert "fps is 30 but timestamps advance by 0.1 s per frame (10 fps)" in problems[0].message


def test_rows_whose_episode_index_disagrees_with_meta_episodes(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    faults.episode_index_disagrees(root)  # episode 2's rows labelled 7
    found = {(p.kind, p.where): p.message for p in validate_dataset(root, decode_videos=False)}
    assert "rows of episode(s) 7 are in the data files but not in meta/episodes" in found["inconsistent", "data"]
    assert "meta/episodes says 36 frames, the data files hold 0 rows" in found["inconsistent", "episode 2"]


@pytest.mark.parametrize("metadata", ["stale", "consistent"])
def test_duplicated_frames_are_named_by_episode(three_cam_dataset, copy_dataset, metadata):
    """A frame of episode 1 written twice; with its metadata left as it was, or updated to match."""
    root = copy_dataset(three_cam_dataset)
    (faults.duplicate_frame_stale if metadata == "stale" else faults.duplicate_frame_consistent)(root)
    found = {(p.kind, p.where): p.message for p in validate_dataset(root, decode_videos=False)}
    assert "frame_index is not 0..20: rows 6" in found["frame_index", "episode 1"]
    if metadata == "stale":
        assert "meta/episodes says 20 frames, the data files hold 21 rows" in found["inconsistent", "episode 1"]
    else:
        assert ("inconsistent", "episode 1") not in found


def test_a_task_index_that_names_no_task(three_cam_dataset, copy_dataset):
    root = copy_dataset(three_cam_dataset)
    faults.task_index_dangles(root)
    problems = validate_dataset(root, decode_videos=False)
    assert [(p.kind, p.where) for p in problems] == [("task_index", "episode 1")]
    assert "task_index 5 names no task in meta/tasks.parquet (2 tasks)" in problems[0].message


def test_a_video_shorter_than_its_episode(three_cam_dataset, copy_dataset):
    """Episode 2 is placed 0.5 s later in the overhead video than it is: its last frame would be read at 9.0 s
    of an 8.6 s file. The file's header (86 frames) tells without decoding, so training refuses it too."""
    root = copy_dataset(three_cam_dataset)
    faults.video_shorter_in_metadata(root)
    for decode in (True, False):
        problems = validate_dataset(root, decode_videos=decode)
        assert [(p.kind, p.where) for p in problems] == [
            ("short_video", "videos/observation.images.overhead/chunk-000/file-000.mp4")
        ]
        assert "holds 86 frames; its episodes need 91" in problems[0].message


def test_an_episode_past_the_last_decoded_frame(three_cam_dataset, copy_dataset, monkeypatch):
    """Where a container's header gives no frame count, decoding each episode's last frame still tells."""
    from data_pipelines import validate

    root = copy_dataset(three_cam_dataset)
    faults.video_shorter_in_metadata(root)  # episode 2's last frame would be read at 9.0 s of an 8.6 s file
    monkeypatch.setattr(validate, "header_frames", lambda stream: 0)
    problems = validate_dataset(root)
    assert [(p.kind, p.where) for p in problems] == [
        ("short_video", "videos/observation.images.overhead/chunk-000/file-000.mp4")
    ]
    assert "episode 2 needs a frame at 9.000 s; its last frame is at 8.500 s" in problems[0].message
    assert validate_dataset(root, decode_videos=False) == []  # without the header and without decoding: unseen


def test_a_frozen_action_a_constant_channel_and_a_zero_std_are_warnings(three_cam_dataset, copy_dataset, capsys):
    root = copy_dataset(three_cam_dataset)
    faults.frozen_action(root)  # episode 0
    faults.zero_std(root)  # observation.state dim 3 in meta/stats.json
    faults.rewrite_parquet(root / DATA, lambda c: [row.__setitem__(5, 0.25) for row in c["observation.state"]])
    problems = validate_dataset(root, decode_videos=False)
    assert sorted((p.level, p.kind, p.where) for p in problems) == [
        ("warning", "constant_channel", f"{DATA}:observation.state"),
        ("warning", "frozen_action", "episode 0"),
        ("warning", "zero_std", "meta/stats.json:observation.state"),
    ]
    assert "dim(s) 5 never change in 86 rows" in str(problems)
    from vla.cli.data import main

    assert main(["validate", str(root), "--no-decode", "--json"]) == 0  # warnings alone: still sound
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["warnings"] == 3
    assert {p["kind"] for p in report["problems"]} == {"constant_channel", "frozen_action", "zero_std"}


def test_training_refuses_data_that_would_train_wrong(metaworld_layout_dataset, copy_dataset):
    """The fast checks run before training: a timestamp going back in episode 1 stops it, naming the episode."""
    from vla.models.backbones.base import BackboneConfig
    from vla.models.heads.base import HeadConfig
    from vla.models.policy import PolicyConfig
    from vla.train.config import AugmentConfig, DatasetConfig
    from vla.train.data import build_training_data

    root = copy_dataset(metaworld_layout_dataset)
    faults.rewrite_parquet(
        root / DATA, lambda c: c["timestamp"].__setitem__(30, 0.0)
    )  # episode 1 (rows 24..43), frame 6
    pcfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class("regression")(),
    )
    with pytest.raises(ValueError, match=r"\[timestamps\] episode 1: timestamps do not increase at frame\(s\) 6"):
        build_training_data(DatasetConfig(root=str(root)), pcfg, AugmentConfig(enabled=False))


def test_float32_timestamps_of_a_long_episode_are_not_gaps(metaworld_layout_dataset, copy_dataset):
    """Past 1024 s a float32 timestamp moves in steps of 1.2e-4 s, more than LeRobot's 1e-4 s tolerance."""
    root = copy_dataset(metaworld_layout_dataset)
    faults.rewrite_parquet(
        root / DATA, lambda c: c["timestamp"].__setitem__(slice(24, 44), [2000.0 + t for t in c["timestamp"][24:44]])
    )
    assert validate_dataset(root) == []


def test_training_checks_only_the_episodes_it_reads_and_can_skip_the_check(metaworld_layout_dataset, copy_dataset):
    from vla.models.backbones.base import BackboneConfig
    from vla.models.heads.base import HeadConfig
    from vla.models.policy import PolicyConfig
    from vla.train.config import AugmentConfig, DatasetConfig
    from vla.train.data import build_training_data

    root = copy_dataset(metaworld_layout_dataset)
    faults.rewrite_parquet(root / DATA, lambda c: c["timestamp"].__setitem__(30, 0.0))  # episode 1, frame 6
    pcfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class("regression")(),
    )
    assert (
        len(build_training_data(DatasetConfig(root=str(root), episodes=[0]), pcfg, AugmentConfig(False)).dataset) == 24
    )
    data = build_training_data(DatasetConfig(root=str(root), validate=False), pcfg, AugmentConfig(enabled=False))
    assert len(data.dataset) == 44  # the user said so
