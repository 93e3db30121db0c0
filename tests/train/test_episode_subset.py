"""dataset.episodes selects the training episodes: held-out episodes must not reach normalization."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.stats import compute_stats, summarize
from data_pipelines.writer import DatasetWriter, make_features
from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig
from vla.train.config import AugmentConfig, DatasetConfig
from vla.train.data import build_training_data, normalized_action_chunks

TRAIN, HELD_OUT = [0, 2], [1, 3]
LENGTHS = [12, 9, 14, 10]


@pytest.fixture
def split_dataset(tmp_path, make_episode, mw_cams):
    """Four episodes; the held-out ones (1, 3) act around +100 (state around -50), the training ones around 0."""
    out = tmp_path / "split"
    rng = np.random.default_rng(3)
    feats = make_features(mw_cams, 4, 4, use_videos=False)
    with DatasetWriter(out, fps=10, features=feats, robot_type="synthetic", use_videos=False) as w:
        for ep, length in enumerate(LENGTHS):
            frames = make_episode(rng, length, mw_cams, 4, 4)
            if ep in HELD_OUT:
                frames["action"] = frames["action"] + 100.0
                frames["observation.state"] = frames["observation.state"] - 50.0
            w.add_episode(frames, task="reach the goal")
    return out


def rows_of(root, key, episodes):
    """The column's values in the given episodes, read back through lerobot itself."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/split", root=root, episodes=episodes)
    return np.stack([np.asarray(ds.hf_dataset[i][key], dtype=np.float64) for i in range(len(ds))])


def policy_cfg() -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class("regression")(),
        chunk_size=4,
        n_action_steps=2,
    )


@pytest.mark.parametrize("cache", [False, True])
def test_training_statistics_cover_the_selected_episodes_only(split_dataset, cache):
    data = build_training_data(
        DatasetConfig(root=str(split_dataset), episodes=TRAIN, cache=cache), policy_cfg(), AugmentConfig(enabled=False)
    )
    assert len(data.dataset) == LENGTHS[0] + LENGTHS[2]
    for canonical, key in (("actions", "action"), ("state", "observation.state")):
        want = summarize(rows_of(split_dataset, key, TRAIN))
        for stat, value in want.items():
            np.testing.assert_allclose(data.stats[canonical][stat], value, rtol=1e-6, err_msg=f"{canonical}.{stat}")
    assert max(data.stats["actions"]["max"]) < 50  # nothing of the held-out +100 episodes
    assert compute_stats(split_dataset, ["action"])["action"]["max"][0] > 50  # the whole dataset has them


def test_tokenizer_chunks_come_from_the_selected_episodes_only(split_dataset):
    data = build_training_data(
        DatasetConfig(root=str(split_dataset), episodes=TRAIN), policy_cfg(), AugmentConfig(enabled=False)
    )
    cfg = policy_cfg()
    cfg.cameras, cfg.state_dim, cfg.action_dim = data.cameras, data.state_dim, data.action_dim
    chunks = normalized_action_chunks(data, Policy(cfg, data.stats))
    assert chunks.shape == ((LENGTHS[0] - 3) + (LENGTHS[2] - 3), 4, 4)  # windows of 4 inside episodes 0 and 2
    assert np.abs(chunks).max() < 10  # normalized with the training stats, no +100 chunk among them


def test_an_episode_the_dataset_lacks_is_named(split_dataset):
    with pytest.raises(ValueError, match=r"episodes \[7\] are not in .*split"):
        compute_stats(split_dataset, ["action"], episodes=[0, 7])


def test_training_on_episodes_the_dataset_lacks_names_them(split_dataset):
    """Before LeRobot opens the data (its own error is "Instruction 'train' corresponds to no data!")."""
    with pytest.raises(ValueError, match=r"has episodes 0..3; no episode 7, 9"):
        build_training_data(
            DatasetConfig(root=str(split_dataset), episodes=[0, 7, 9]), policy_cfg(), AugmentConfig(enabled=False)
        )
