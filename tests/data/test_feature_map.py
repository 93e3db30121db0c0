import draccus
import pytest
import torch

from data_pipelines.collate import collate
from data_pipelines.feature_map import FeatureMap, FeatureMapConfig
from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig, open_meta
from vla.shapes import check_shape


def test_three_unusual_cameras_load_and_batch(three_cam_dataset):
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=8))
    assert src.feature_map.camera_names == ["left_wrist_cam", "overhead", "zed_right"]
    batch = collate([src[i] for i in (0, 5, 29, 35)])
    check_shape("images", batch["images"], "B N 3 Hi Wi", B=4, N=3, Hi=32, Wi=32)
    check_shape("state", batch["state"], "B S", S=7)
    check_shape("actions", batch["actions"], "B H D", H=8, D=14)
    assert batch["images"].dtype == torch.float32 and 0 <= batch["images"].min() and batch["images"].max() <= 1
    assert batch["image_mask"].all() and batch["state_mask"].all() and batch["action_dim_mask"].all()
    assert batch["instruction"] == ["fold the towel"] * 3 + ["stack the cups"]
    # frame 29 is the last of episode 0 (30 frames): 1 real step, 7 padded
    assert batch["action_pad"][2].tolist() == [False] + [True] * 7
    assert not batch["action_pad"][0].any()


def test_chunk_matches_next_frames(three_cam_dataset):
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=4))
    plain = src.dataset.hf_dataset
    s = src[10]
    want = torch.stack([torch.as_tensor(plain[i]["action"]) for i in range(10, 14)])
    torch.testing.assert_close(s["actions"], want)
    torch.testing.assert_close(s["state"], torch.as_tensor(plain[10]["observation.state"]))


def test_explicit_mapping_renames_and_reorders(three_cam_dataset):
    meta = open_meta(three_cam_dataset)
    cfg = FeatureMapConfig(cameras={"wrist": "observation.images.left_wrist_cam", "top": "observation.images.overhead"})
    fm = cfg.build(meta)
    assert fm.camera_names == ["wrist", "top"] and fm.state_dim == 7 and fm.action_dim == 14
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=2, feature_map=cfg))
    assert src[3]["images"].shape == (2, 3, 32, 32)


def test_config_parses_from_yaml_and_resizes(three_cam_dataset, tmp_path):
    yaml = tmp_path / "fm.yaml"
    yaml.write_text("camera_keys: [observation.images.zed_right]\nimage_size: [16, 24]\n")
    cfg = draccus.parse(FeatureMapConfig, config_path=str(yaml), args=[])
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=2, feature_map=cfg))
    assert src.feature_map.camera_names == ["zed_right"]
    assert src[0]["images"].shape == (1, 3, 16, 24)


def test_missing_key_is_named(three_cam_dataset):
    meta = open_meta(three_cam_dataset)
    with pytest.raises(KeyError, match="observation.images.nope"):
        FeatureMapConfig(camera_keys=["observation.images.nope"]).build(meta)
    with pytest.raises(KeyError, match="observation.joints"):
        FeatureMapConfig(state="observation.joints").build(meta)


def test_wrong_sample_shape_is_named(three_cam_dataset):
    fm = FeatureMap.infer(open_meta(three_cam_dataset))
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=2))
    raw = dict(src.dataset[0])
    raw["action"] = raw["action"][:, :13]
    with pytest.raises(ValueError, match=r"action: expected \(H=\*, D=14\), got \(2, 13\)"):
        fm(raw)
    raw = dict(src.dataset[0])
    raw["observation.images.overhead"] = raw["observation.images.overhead"][:2]
    with pytest.raises(ValueError, match=r"observation.images.overhead: expected"):
        fm(raw)
    raw = dict(src.dataset[0])
    raw["observation.state"] = torch.stack([raw["observation.state"]] * 2)  # a time axis: one observation only
    with pytest.raises(ValueError, match=r"observation.state: expected \(S=7\), got \(2, 7\)"):
        fm(raw)


def test_missing_root_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        LeRobotSource(LeRobotSourceConfig(root=str(missing)))
    assert not missing.exists()  # lerobot would have created it
    with pytest.raises(FileNotFoundError, match="'nobody/no_such_dataset'"):
        LeRobotSource(LeRobotSourceConfig(repo_id="nobody/no_such_dataset"))


def test_collate_names_key_and_sample():
    a = {"state": torch.zeros(3), "instruction": "x"}
    b = {"state": torch.zeros(4), "instruction": "y"}
    with pytest.raises(ValueError, match=r"state of sample 1 has shape \(4,\), sample 0 has \(3,\)"):
        collate([a, b])
    with pytest.raises(KeyError, match="sample 1"):
        collate([a, {"state": torch.zeros(3)}])


def test_bench_dataloader_runs_both_loaders(three_cam_dataset):
    import json

    from data_pipelines.bench import bench_dataloader

    result = bench_dataloader(three_cam_dataset, batch_size=4, workers=0, steps=3, chunk=4)
    json.dumps(result)  # JSON-serializable
    assert result["frames"] == 86 and result["cameras"] == 3
    for name in ("ours", "lerobot"):
        assert result[name]["batches"] == 3 and result[name]["samples_per_s"] > 0


def test_workers_after_parent_decoded(tmp_path, write_synthetic):
    """lerobot's decoder cache is inherited by forked workers; the source must not reuse it.

    Without the per-process cache the workers share the parent's file offsets and
    torchcodec fails with "Invalid data found when processing input".
    """
    from torch.utils.data import DataLoader

    root = write_synthetic(tmp_path / "big", {"top": (96, 96)}, 2, 2, [40] * 4, ["t"])
    src = LeRobotSource(LeRobotSourceConfig(root=str(root), chunk=2))
    probe = list(range(0, len(src), 5))
    expected = torch.stack([src[i]["images"] for i in probe])  # the parent decodes first
    order = torch.randperm(len(src), generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(src, batch_size=16, sampler=order, num_workers=2, collate_fn=collate)
    got = torch.cat([b["images"] for b in loader])  # (160, 1, 3, 96, 96) in `order`
    position = {idx: k for k, idx in enumerate(order)}
    torch.testing.assert_close(got[[position[i] for i in probe]], expected)
