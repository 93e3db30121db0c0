"""data_pipelines/frame_reader.py gives LeRobot's samples, key by key, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from data_pipelines.collate import collate
from data_pipelines.feature_map import FeatureMapConfig, float_images
from data_pipelines.frame_reader import read_draws, why_not
from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig
from vla import types as T


def assert_same(expected: dict, got: dict, where: str) -> None:
    assert set(expected) == set(got), where
    for k, v in expected.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, f"{where}: {k}"
            assert torch.equal(got[k], v), f"{where}: {k} differs"
        else:
            assert got[k] == v, f"{where}: {k}"


def lerobot_sample(src: LeRobotSource, i: int) -> dict:
    """What LeRobotSource gave before the reader: LeRobot's __getitem__ through the FeatureMap."""
    return src.feature_map(src.dataset[i])


def check_source(src: LeRobotSource) -> None:
    assert src.reader is not None, why_not(src.dataset, src.feature_map)
    n = len(src)
    expected = [lerobot_sample(src, i) for i in range(n)]
    assert any(e[T.ACTION_PAD].any() for e in expected), "the chunk must run past some episode end"
    for i in range(n):
        assert_same(expected[i], src[i], f"frame {i}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    for start in range(0, n, 7):  # batches, each video file decoded once per batch
        batch = order[start : start + 7]
        for i, got in zip(batch, src.__getitems__(batch), strict=True):
            assert_same(expected[i], got, f"frame {i} in a batch")
    # uint8 images, as training reads them, unless a camera is resized (in float, as before)
    resized = any(tuple(size) != src.feature_map.image_size for size in src.feature_map.native_sizes)
    for i, got in zip(order[:9], src.read_batch(order[:9], uint8_images=True), strict=True):
        assert got[T.IMAGES].dtype == (torch.float32 if resized else torch.uint8)
        assert_same(expected[i], {**got, T.IMAGES: float_images(got[T.IMAGES])}, f"frame {i}, uint8 images")


@pytest.mark.parametrize("episodes", [None, [2, 0]])
def test_video_samples_match_lerobot(three_cam_dataset, episodes):
    check_source(LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=8, episodes=episodes)))


@pytest.mark.parametrize("episodes", [None, [1]])
def test_image_samples_match_lerobot(metaworld_layout_dataset, episodes):
    check_source(LeRobotSource(LeRobotSourceConfig(root=str(metaworld_layout_dataset), chunk=6, episodes=episodes)))


def test_many_data_files_and_subsets_match_lerobot(multi_file_dataset):
    """A data file per episode (the table in several chunks), episodes out of order, a long chunk."""
    for episodes in (None, [5, 1, 3]):
        check_source(LeRobotSource(LeRobotSourceConfig(root=str(multi_file_dataset), chunk=20, episodes=episodes)))


def test_auxiliary_target_and_resize_match_lerobot(metaworld_env_state_dataset):
    fmap = FeatureMapConfig(auxiliary="observation.environment_state", image_size=[24, 20])
    check_source(LeRobotSource(LeRobotSourceConfig(root=str(metaworld_env_state_dataset), chunk=5, feature_map=fmap)))


def test_pyav_backend_matches_lerobot(three_cam_dataset):
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=4, video_backend="pyav"))
    assert src.reader is not None and src.reader.backend == "pyav"
    for i in (0, 29, 30, 85):
        assert_same(lerobot_sample(src, i), src[i], f"frame {i}")


def test_other_instruction_key_is_read_by_lerobot(three_cam_dataset):
    """What the reader does not cover goes through LeRobot's __getitem__, not through a guess."""
    fmap = FeatureMapConfig(instruction="task_index")
    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=4, feature_map=fmap))
    assert src.reader is None and "instruction" in why_not(src.dataset, src.feature_map)


def test_batches_in_workers_match_one_process(three_cam_dataset):
    """Workers forked after the parent decoded open their own decoders; batches come through __getitems__,
    as the trainer's NumberedDataset reads them (read_draws), numbered."""
    from vla.train.data import NumberedDataset

    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=8))
    order = torch.randperm(len(src), generator=torch.Generator().manual_seed(1)).tolist()[:40]
    expected = collate([src[i] for i in order])  # the parent decodes first
    draws = [(i, 100 + j) for j, i in enumerate(order)]
    loader = DataLoader(NumberedDataset(src), batch_size=8, sampler=draws, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert all(b[T.IMAGES].dtype == torch.uint8 for b in batches)
    got = {k: torch.cat([b[k] for b in batches]) for k in expected if isinstance(expected[k], torch.Tensor)}
    got[T.IMAGES] = float_images(got[T.IMAGES])
    for k, v in got.items():
        assert torch.equal(v, expected[k]), k
    assert torch.cat([b[T.SAMPLE_NUMBER] for b in batches]).tolist() == list(range(100, 140))


def test_cached_dataset_is_indexed_not_read_again(metaworld_layout_dataset):
    """InMemoryDataset forwards attributes to its source; a DataLoader must not find the source's batch
    reader through it (it would decode again instead of indexing the cache)."""
    from data_pipelines.cache import InMemoryDataset

    src = LeRobotSource(LeRobotSourceConfig(root=str(metaworld_layout_dataset), chunk=4))
    cached = InMemoryDataset(src, workers=0)
    assert not hasattr(cached, "__getitems__") and not hasattr(cached, "read_batch")
    assert cached.feature_map is src.feature_map  # other attributes still forward
    assert read_draws(cached, [(3, 7)])[0][T.SAMPLE_NUMBER] == 7


def test_training_batches_carry_lerobots_floats_to_the_device(three_cam_dataset):
    """The trainer's path (NumberedDataset, collate, TrainingData.to_device) ends with LeRobot's float images."""
    from vla.train.data import TrainingData

    src = LeRobotSource(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=8))
    fmap = src.feature_map
    data = TrainingData(src, fmap.camera_names, fmap.state_dim, fmap.action_dim, src.fps, stats={})
    draws = [(29, 0), (3, 1), (85, 2)]
    batch = data.to_device(data.collate(data.numbered.__getitems__(draws)), "cpu", step=0)
    expected = collate([lerobot_sample(src, i) for i, _ in draws])
    for k, v in expected.items():
        if isinstance(v, torch.Tensor):
            assert batch[k].dtype == v.dtype and torch.equal(batch[k], v), k


@pytest.fixture(scope="module")
def faulty_datasets(tmp_path_factory):
    """data_pipelines/faults.py's catalogue: datasets broken the ways real pipelines break them."""
    from data_pipelines.faults import build_corrupted, write_sound

    tmp = tmp_path_factory.mktemp("faults")
    return build_corrupted(write_sound(tmp / "sound"), tmp / "faults")


@pytest.mark.parametrize("fault", ["1", "5", "6", "7", "8", "8b", "11"])
def test_broken_datasets_read_as_lerobot_reads_them(faulty_datasets, fault):
    """On data that is wrong (a timestamp gap, duplicated frames, a task that does not exist, a video shorter
    than its episode, a NaN), every frame gives what LeRobot gives: the same values, or the same error."""

    def outcome(read, i):
        try:
            return read(i)
        except Exception as e:  # what LeRobot raises, ours must raise
            return type(e).__name__

    src = LeRobotSource(LeRobotSourceConfig(root=str(faulty_datasets[fault]), chunk=8))
    assert src.reader is not None
    for i in range(len(src)):
        expected, got = outcome(lambda i: lerobot_sample(src, i), i), outcome(src.__getitem__, i)
        if isinstance(expected, str) or isinstance(got, str):
            assert expected == got, f"frame {i}"
            continue
        for k, v in expected.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v.nan_to_num(), got[k].nan_to_num()) and torch.equal(v.isnan(), got[k].isnan())
            else:
                assert v == got[k]
