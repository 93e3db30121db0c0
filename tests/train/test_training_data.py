"""Training data assembly: in-memory cache, mixtures with per-member statistics, FAST chunks, export."""

from __future__ import annotations

import torch

from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig
from vla.train.config import AugmentConfig, DatasetConfig
from vla.train.data import build_training_data, normalized_action_chunks


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
    report = policy.head.fit_tokenizer(chunks)
    assert report["mean_tokens_per_chunk"] > 0
