import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
