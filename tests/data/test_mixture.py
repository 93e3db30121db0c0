from collections import Counter

from torch.utils.data import DataLoader

from data_pipelines.collate import collate
from data_pipelines.feature_map import FeatureMapConfig
from data_pipelines.lerobot_source import LeRobotSourceConfig
from data_pipelines.mixture import MixtureConfig, MixtureMemberConfig
from vla.train.data import NumberedDataset
from vla.train.sampler import ShardedStepSampler


def members(three_cam_dataset, mw_root, w=(1.0, 3.0)):
    return [
        MixtureMemberConfig(LeRobotSourceConfig(root=str(three_cam_dataset), chunk=6), weight=w[0]),
        MixtureMemberConfig(LeRobotSourceConfig(root=str(mw_root), chunk=6), weight=w[1]),
    ]


def test_mixture_pads_dims_and_cameras(three_cam_dataset, metaworld_layout_dataset):
    mix = MixtureConfig(members(three_cam_dataset, metaworld_layout_dataset)).build()
    assert mix.camera_names == ["left_wrist_cam", "overhead", "zed_right", "image", "wrist"]
    assert (mix.state_dim, mix.action_dim, len(mix)) == (7, 14, 86 + 44)
    loader = DataLoader(mix, batch_size=4, sampler=[0, 86, 40, 129], collate_fn=collate)
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 5, 3, 32, 32)
    assert batch["dataset_index"].tolist() == [0, 1, 0, 1]
    assert batch["image_mask"].tolist() == [[True, True, True, False, False], [False, False, False, True, True]] * 2
    assert (batch["images"][1, :3] == 0).all() and (batch["images"][0, 3:] == 0).all()
    assert batch["state_mask"].sum(1).tolist() == [7, 4, 7, 4]
    assert batch["action_dim_mask"].sum(1).tolist() == [14, 4, 14, 4]
    assert (batch["actions"][1, :, 4:] == 0).all() and (batch["state"][1, 4:] == 0).all()
    assert batch["actions"].shape == (4, 6, 14)
    assert batch["action_pad"][3].tolist() == [False] + [True] * 5  # last frame of the mw dataset
    assert batch["instruction"][1] == "reach the goal"


def test_max_layout_packs_cameras(three_cam_dataset, metaworld_layout_dataset):
    mix = MixtureConfig(members(three_cam_dataset, metaworld_layout_dataset), camera_layout="max").build()
    s = mix[100]
    assert s["images"].shape == (3, 3, 32, 32) and s["image_mask"].tolist() == [True, True, False]


def test_training_sampler_draws_members_by_weight_and_shards(three_cam_dataset, metaworld_layout_dataset):
    mix = MixtureConfig(members(three_cam_dataset, metaworld_layout_dataset, w=(1.0, 3.0))).build()

    def order(**kw) -> list[int]:
        return [d.index for d in ShardedStepSampler(len(mix), weights=mix.sample_weights(), **kw)]

    drawn = order(batch_size=40, total_micro_steps=100, seed=7)
    counts = Counter(mix.locate(i)[0] for i in drawn)
    assert abs(counts[1] / 4000 - 0.75) < 0.03
    assert drawn == order(batch_size=40, total_micro_steps=100, seed=7)
    assert drawn != order(batch_size=40, total_micro_steps=100, seed=8)
    full = order(batch_size=10, total_micro_steps=10, seed=3)
    shards = [order(batch_size=5, total_micro_steps=10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert all(
        full[10 * s : 10 * s + 10] == shards[0][5 * s : 5 * s + 5] + shards[1][5 * s : 5 * s + 5] for s in range(10)
    )


def test_mixture_loads_with_workers(three_cam_dataset, metaworld_layout_dataset):
    resize = FeatureMapConfig(image_size=[16, 16])
    m = members(three_cam_dataset, metaworld_layout_dataset)
    for mm in m:
        mm.source.feature_map = resize
    mix = MixtureConfig(m).build()
    loader = DataLoader(
        NumberedDataset(mix),  # indexed by the sampler's draws (dataset index, stream number)
        batch_size=8,
        sampler=ShardedStepSampler(len(mix), 8, 2, weights=mix.sample_weights()),
        collate_fn=collate,
        num_workers=2,
    )
    batches = list(loader)
    assert [b["images"].shape for b in batches] == [(8, 5, 3, 16, 16)] * 2
