"""Training data assembly: in-memory cache, mixtures with per-member statistics, FAST chunks, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipelines.feature_map import float_images
from data_pipelines.lerobot_source import LeRobotSource
from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig
from vla.train.config import AugmentConfig, DatasetConfig
from vla.train.data import build_training_data, normalized_action_chunks
from vla.train.sampler import ShardedStepSampler


def _policy_cfg(head="regression", chunk=4) -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class(head)(),
        chunk_size=chunk,
        n_action_steps=2,
    )


def test_cache_returns_the_same_samples(metaworld_layout_dataset):
    plain = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset)), _policy_cfg(), AugmentConfig(enabled=False)
    )
    cached = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset), cache=True), _policy_cfg(), AugmentConfig(enabled=False)
    )
    assert len(plain.dataset) == len(cached.dataset)
    for i in (0, 7, len(plain.dataset) - 1):
        a, b = plain.dataset[i], cached.dataset[i]
        assert set(a) == set(b)
        assert torch.allclose(a["images"], b["images"], atol=1 / 255 + 1e-6)  # stored as uint8
        assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["action_pad"], b["action_pad"])
    assert cached.stats == plain.stats


def test_mixture_normalizes_each_member_with_its_own_stats(metaworld_layout_dataset, three_cam_dataset):
    dcfg = DatasetConfig(root=str(metaworld_layout_dataset), mixture=[f"{three_cam_dataset}:2.0"])
    data = build_training_data(dcfg, _policy_cfg(), AugmentConfig(enabled=False))
    assert data.action_dim == 14 and data.state_dim == 7 and len(data.cameras) == 5
    assert len(data.stats["members"]) == 2 and data.sample_weights is not None
    cfg = _policy_cfg()
    cfg.cameras, cfg.state_dim, cfg.action_dim = data.cameras, data.state_dim, data.action_dim
    policy = Policy(cfg, data.stats)
    batch = data.collate([data.dataset[0], data.dataset[len(data.dataset) - 1]])
    assert batch["dataset_index"].tolist() == [0, 1]
    normed = policy._normalize("actions", batch["actions"], batch["dataset_index"])
    m0, m1 = data.stats["members"]
    want0 = (batch["actions"][0, :, :4] - torch.tensor(m0["actions"]["mean"])) / torch.tensor(m0["actions"]["std"])
    want1 = (batch["actions"][1] - torch.tensor(m1["actions"]["mean"])) / torch.tensor(m1["actions"]["std"])
    assert torch.allclose(normed[0, :, :4], want0, atol=1e-5) and torch.allclose(normed[1], want1, atol=1e-5)
    assert torch.equal(normed[0, :, 4:], batch["actions"][0, :, 4:])  # padded dims untouched
    loss, _ = policy.compute_loss(batch)
    assert torch.isfinite(loss)


def test_fast_chunks_stay_inside_episodes(metaworld_layout_dataset):
    data = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset)), _policy_cfg("fast", 5), AugmentConfig(enabled=False)
    )
    cfg = _policy_cfg("fast", 5)
    cfg.cameras, cfg.state_dim, cfg.action_dim = data.cameras, data.state_dim, data.action_dim
    policy = Policy(cfg, data.stats)
    chunks = normalized_action_chunks(data, policy)
    assert chunks.shape == ((24 - 4) + (20 - 4), 5, 4)  # windows of 5 inside episodes of 24 and 20 frames
    report = policy.head.fit_tokenizer(chunks, normalization=cfg.action_norm)
    assert report["mean_tokens_per_chunk"] > 0


def _cached(root, tmp_path, **kw):
    dcfg = DatasetConfig(root=str(root), cache=True, cache_dir=str(tmp_path / "store"), **kw)
    return build_training_data(dcfg, _policy_cfg(), AugmentConfig(enabled=False)).dataset


def test_decoded_samples_are_kept_and_reloaded_without_decoding(metaworld_layout_dataset, tmp_path, monkeypatch):
    first = _cached(metaworld_layout_dataset, tmp_path)
    kept = list((tmp_path / "store").glob("*.pt"))
    assert len(kept) == 1 and not list((tmp_path / "store").glob(".*partial"))

    def no_decoding(self, idx):
        raise AssertionError("a kept dataset must not be decoded again")

    monkeypatch.setattr(LeRobotSource, "__getitem__", no_decoding)
    again = _cached(metaworld_layout_dataset, tmp_path)
    assert len(again) == len(first)
    for i in (0, 5, len(first) - 1):
        a, b = first[i], again[i]
        assert set(a) == set(b) and a["instruction"] == b["instruction"]
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_changed_data_or_chunking_decodes_afresh(metaworld_layout_dataset, copy_dataset, tmp_path):
    root = copy_dataset(metaworld_layout_dataset)
    _cached(root, tmp_path)
    _cached(root, tmp_path, episodes=[0])  # another episode subset: another key
    parquet = next((root / "data").rglob("*.parquet"))
    parquet.touch()  # rewritten data (same bytes, new mtime): never trust the old decode
    _cached(root, tmp_path)
    assert len(list((tmp_path / "store").glob("*.pt"))) == 3


def test_a_failed_write_leaves_no_cache_file(metaworld_layout_dataset, tmp_path, monkeypatch):
    def disk_full(obj, f, *a, **kw):
        Path(f).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    ds = _cached(metaworld_layout_dataset, tmp_path)  # training goes on from memory
    assert len(ds) > 0 and list((tmp_path / "store").iterdir()) == []


def test_only_the_most_recently_used_caches_are_kept(tmp_path):
    import os

    from data_pipelines.cache import _evict_old

    for i in range(6):
        (tmp_path / f"{i}.pt").write_bytes(b"x")
        os.utime(tmp_path / f"{i}.pt", (i, i))
    _evict_old(tmp_path, keep=4)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["2.pt", "3.pt", "4.pt", "5.pt"]


def test_checkpoints_carry_the_dataset_keys_for_the_server(metaworld_layout_dataset, tmp_path):
    """A robot client that sends the training dataset's own keys is understood by `vla serve` as is."""
    import numpy as np
    from accelerate import Accelerator

    from data_pipelines.feature_map import FeatureMapConfig
    from data_pipelines.lerobot_source import LeRobotSourceConfig
    from vla.serve.obs_mapping import ObsMapping
    from vla.train.checkpoint import CheckpointManager
    from vla.train.trainer import dataset_obs_mapping

    cams = {"front": "observation.images.image", "wrist": "observation.images.wrist"}
    src = LeRobotSourceConfig(
        root=str(metaworld_layout_dataset), chunk=4, feature_map=FeatureMapConfig(cameras=cams)
    ).build()
    mapping = dataset_obs_mapping(src)
    assert mapping.keys == {"observation.images.image": "observation.images.front"}  # wrist and state: same names

    cfg = _policy_cfg()
    cfg.cameras, cfg.state_dim, cfg.action_dim = ["front", "wrist"], 4, 4
    last = CheckpointManager(tmp_path, 2, Accelerator(cpu=True), obs_mapping=mapping).save(1, Policy(cfg))
    served = ObsMapping.for_checkpoint(last)
    image = np.zeros((32, 32, 3), np.uint8)
    request = {
        "observation.images.image": image,
        "observation.images.wrist": image + 1,
        "observation.state": np.zeros(4, np.float32),
        "prompt": "reach the goal",
    }
    obs = served.to_canonical(request, ["front", "wrist"], 4)
    assert [int(im[0, 0, 0]) for im in obs.images] == [0, 1]  # dataset camera order kept


def test_token_heads_train_on_bounded_actions(metaworld_layout_dataset):
    """A perfect token sequence must reconstruct the training targets: bins would clip mean/std actions."""
    data = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset)), _policy_cfg("bins", 5), AugmentConfig(enabled=False)
    )
    cfg = _policy_cfg("bins", 5)
    assert cfg.action_norm == "quantile"  # the token head's own choice, not the mean/std default
    cfg.cameras, cfg.state_dim, cfg.action_dim = data.cameras, data.state_dim, data.action_dim
    policy = Policy(cfg, data.stats)
    chunks = normalized_action_chunks(data, policy)  # (N, H, D) as the head trains on them
    tok = policy.head.tokenizer
    errors = [abs(tok.decode(tok.encode(c), 5, 4) - c).mean() for c in chunks]
    assert sum(errors) / len(errors) < tok.bin_width  # half a bin on average, plus the few clipped tails


@pytest.mark.parametrize("head", ["flow", "diffusion"])
def test_a_samples_draws_do_not_depend_on_the_batch_it_lands_in(metaworld_layout_dataset, head):
    """Augmentation (on by default), noise and time are keyed by (seed, step, sample number): a batch of 4
    gives each sample what two batches of 2 give it (the ranks of DDP, the micro-steps of accumulation)."""
    data = build_training_data(DatasetConfig(root=str(metaworld_layout_dataset)), _policy_cfg(head), AugmentConfig())
    assert data.augment is not None
    cfg = _policy_cfg(head)
    cfg.cameras, cfg.state_dim, cfg.action_dim = data.cameras, data.state_dim, data.action_dim
    torch.manual_seed(0)
    policy = Policy(cfg, data.stats)

    def batch(draws, step=3):  # draws: (dataset index, stream number) pairs, as the sampler yields them
        return data.to_device(data.collate([data.numbered[d] for d in draws]), "cpu", step=step)

    draws = [(5, 0), (17, 1), (2, 2), (30, 3)]
    whole, halves = batch(draws), [batch(draws[:2]), batch(draws[2:])]
    torch.testing.assert_close(whole["images"], torch.cat([h["images"] for h in halves]), rtol=0, atol=1e-6)
    raw = data.collate([data.numbered[d] for d in draws])["images"]
    assert raw.dtype == torch.uint8  # the loader's form; to_device makes floats
    assert not torch.allclose(whole["images"], float_images(raw))  # augmented
    losses = [policy.compute_loss(h)[0] for h in halves]
    torch.testing.assert_close(policy.compute_loss(whole)[0], sum(losses) / 2, rtol=1e-5, atol=1e-6)
    # Another step, or the same step again, draws anew / the same.
    assert not torch.equal(batch(draws[:2])["images"], batch(draws[:2], step=4)["images"])
    torch.testing.assert_close(policy.compute_loss(batch(draws[:2]))[0], losses[0], rtol=0, atol=0)
    # A frame drawn twice in one step (weighted sampling) is augmented twice, differently.
    twice = batch([(5, 0), (5, 1)])["images"]
    assert not torch.equal(twice[0], twice[1])
    with pytest.raises(KeyError, match="sample_number"):
        data.to_device(data.collate([data.dataset[0]]), "cpu", step=0)


def test_the_sampler_numbers_its_draws_independently_of_the_split():
    """One process at batch 4, two at batch 2, and batch 2 accumulated over 2 micro-steps number each
    sample alike; a frame drawn twice gets two numbers."""
    one = list(ShardedStepSampler(30, 4, 6, seed=1))
    ranks = [list(ShardedStepSampler(30, 2, 6, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    interleaved = [d for step in range(6) for r in (0, 1) for d in ranks[r][2 * step : 2 * step + 2]]
    accumulated = list(ShardedStepSampler(30, 2, 12, seed=1))
    assert one == interleaved == accumulated and [d.number for d in one] == list(range(24))
    weighted = list(ShardedStepSampler(3, 8, 2, weights=torch.ones(3)))  # 16 draws of 3 frames
    assert len({d.number for d in weighted}) == 16 > len({d.index for d in weighted})


def test_episodes_select_from_the_primary_dataset_only(metaworld_layout_dataset, three_cam_dataset):
    full = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset), mixture=[str(three_cam_dataset)]),
        _policy_cfg(),
        AugmentConfig(enabled=False),
    )
    subset = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset), mixture=[str(three_cam_dataset)], episodes=[1]),
        _policy_cfg(),
        AugmentConfig(enabled=False),
    )
    primary, member = (len(s) for s in full.dataset.sources)
    assert [len(s) for s in subset.dataset.sources] == [20, member]  # episode 1 of (24, 20) frames; all of the other
    assert primary == 44


# ---- policy.auxiliary: a training-only target carried beside the sample ------------------------------
ENV_STATE = "observation.environment_state"


def _aux_cfg(key: str = ENV_STATE) -> PolicyConfig:
    cfg = _policy_cfg()
    cfg.auxiliary.key = key
    return cfg


def test_auxiliary_target_rides_in_the_batch_with_its_statistics(metaworld_env_state_dataset, tmp_path):
    import numpy as np

    from data_pipelines.stats import read_columns

    dcfg = DatasetConfig(root=str(metaworld_env_state_dataset))
    data = build_training_data(dcfg, _aux_cfg(), AugmentConfig(enabled=False))
    column = read_columns(metaworld_env_state_dataset, [ENV_STATE])[ENV_STATE]  # (N, 39), frames in order
    assert data.aux_dim == 39 and data.state_dim == 4  # the state is still the proprioception
    batch = data.collate([data.dataset[i] for i in (0, 7, 40)])
    assert torch.allclose(batch["aux_target"], torch.as_tensor(column[[0, 7, 40]], dtype=torch.float32))
    assert np.allclose(data.stats["aux_target"]["mean"], column.mean(0))
    assert "aux_target" not in build_training_data(dcfg, _policy_cfg(), AugmentConfig(enabled=False)).stats
    cached = DatasetConfig(root=str(metaworld_env_state_dataset), cache=True, cache_dir=str(tmp_path / "store"))
    again = build_training_data(cached, _aux_cfg(), AugmentConfig(enabled=False))
    assert torch.equal(again.dataset[7]["aux_target"], data.dataset[7]["aux_target"])
    cfg = _aux_cfg()
    cfg.cameras, cfg.state_dim, cfg.action_dim, cfg.auxiliary.dim = data.cameras, 4, 4, data.aux_dim
    loss, parts = Policy(cfg, data.stats).compute_loss(batch)
    assert torch.isfinite(loss) and torch.isfinite(parts["aux_loss"])


def test_a_missing_auxiliary_key_names_the_key_and_the_dataset(metaworld_layout_dataset, three_cam_dataset):
    with pytest.raises(KeyError, match=rf"policy.auxiliary.key='{ENV_STATE}': {metaworld_layout_dataset} has no"):
        build_training_data(DatasetConfig(root=str(metaworld_layout_dataset)), _aux_cfg(), AugmentConfig(enabled=False))
    with pytest.raises(ValueError, match="1-D float feature"):  # an image is no target
        build_training_data(
            DatasetConfig(root=str(metaworld_layout_dataset)), _aux_cfg("observation.images.image"), AugmentConfig()
        )
    mixed = DatasetConfig(root=str(metaworld_layout_dataset), mixture=[str(three_cam_dataset)])
    with pytest.raises(ValueError, match="auxiliary.*mixture"):
        build_training_data(mixed, _aux_cfg(), AugmentConfig(enabled=False))


def test_decoded_caches_of_runs_without_an_auxiliary_target_keep_their_key(metaworld_layout_dataset):
    """The option is off by default: the key of decoded samples (runs going on elsewhere) must not change."""
    import dataclasses
    import hashlib
    import json

    from data_pipelines.cache import FORMAT, fingerprint

    src = build_training_data(
        DatasetConfig(root=str(metaworld_layout_dataset)), _policy_cfg(), AugmentConfig(enabled=False)
    ).dataset
    root = Path(src.root).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    listing = [(str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    cfg = dataclasses.asdict(src.cfg)
    del cfg["feature_map"]["auxiliary"]  # as written before the option existed
    blob = json.dumps({"format": FORMAT, "root": str(root), "files": listing, "cfg": cfg}, sort_keys=True, default=str)
    assert fingerprint(src) == hashlib.sha256(blob.encode()).hexdigest()[:20]
    src.cfg.feature_map.auxiliary = "observation.state"
    assert fingerprint(src) != hashlib.sha256(blob.encode()).hexdigest()[:20]
