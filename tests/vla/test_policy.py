"""Policy: shapes and units, save/load round trip, action queue, temporal ensembling, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig, checkpoint_hash

STATS = {
    "state": {"mean": [1.0, 2.0, 3.0, 4.0], "std": [2.0, 2.0, 2.0, 2.0]},
    "actions": {
        "mean": [10.0, -10.0, 0.0],
        "std": [5.0, 1.0, 0.5],
        "q01": [0.0, -12.0, -1.0],
        "q99": [20.0, -8.0, 1.0],
    },
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_policy(
    head: str = "flow", preset: str = "tiny-smolvlm", backbone: dict | None = None, stats: dict | None = None, **kw
) -> Policy:
    torch.manual_seed(0)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset=preset, **(backbone or {})),
        head=HeadConfig.get_choice_class(head)(),
        chunk_size=6,
        n_action_steps=kw.pop("n_action_steps", 3),
        cameras=["image", "wrist"],
        state_dim=4,
        action_dim=3,
        **kw,
    )
    return Policy(cfg, stats or STATS).eval()


def obs(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "images": torch.randint(0, 255, (b, 2, 3, 48, 48), dtype=torch.uint8, generator=g),
        "state": torch.randn(b, 4, generator=g),
        "instruction": ["open the drawer", "push the button"][:b],
    }


def test_preset_name_picks_the_family():
    cfg = PolicyConfig(backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny-qwen2_5_vl"))
    assert cfg.backbone.type == "qwen2_5_vl" and cfg.backbone.preset == "tiny"
    cfg = PolicyConfig(backbone=BackboneConfig.get_choice_class("smolvlm")(preset="paligemma-3b"))
    assert cfg.backbone.type == "paligemma" and cfg.backbone.preset == "paligemma-3b"


def test_predict_chunk_is_in_robot_units():
    policy = make_policy("regression")
    chunk = policy.predict_chunk(obs())
    assert chunk.shape == (2, 6, 3)
    # Unnormalized: the regression head's near-zero outputs land near the action mean.
    assert torch.allclose(chunk.mean((0, 1)), torch.tensor([10.0, -10.0, 0.0]), atol=5.0)


def test_seeded_sampling_is_reproducible_and_unseeded_is_not():
    policy = make_policy("flow")
    a, b = policy.predict_chunk(obs(), seed=3), policy.predict_chunk(obs(), seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(policy.predict_chunk(obs()), policy.predict_chunk(obs()))


@pytest.mark.parametrize("head", ["flow", "bins"])
def test_save_load_gives_identical_outputs(tmp_path, head):
    policy = make_policy(head)
    path = policy.save(tmp_path / "ckpt")
    assert not list(tmp_path.glob(".*partial"))
    loaded = Policy.load(path)
    assert torch.equal(policy.predict_chunk(obs(), seed=0), loaded.predict_chunk(obs(), seed=0))
    assert json.loads((path / "stats.json").read_text())["actions"]["std"] == [5.0, 1.0, 0.5]
    assert len(checkpoint_hash(path)) == 16


def test_save_load_rebuilds_the_conv_stem(tmp_path):
    """The stem is not in the saved HF model config: the policy config records it, Policy.load rebuilds the
    same modules, the weights load strictly and the chunks are identical."""
    policy = make_policy("regression", backbone={"conv_stem": True})
    path = policy.save(tmp_path / "ckpt")
    assert json.loads((path / "config.json").read_text())["backbone"]["conv_stem"] is True
    loaded = Policy.load(path)
    stem = loaded.backbone.model.model.vision_model.embeddings.patch_embedding
    assert isinstance(stem, torch.nn.Sequential)
    assert torch.equal(policy.predict_chunk(obs(), seed=0), loaded.predict_chunk(obs(), seed=0))


def test_load_rejects_mismatched_weights(tmp_path):
    make_policy("regression").save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["action_dim"] = 5
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape mismatch"):
        Policy.load(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        Policy.load(tmp_path / "nothing")


def test_bad_observations_name_the_key():
    policy = make_policy("regression")
    bad = obs()
    bad["state"] = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"state: expected \(B=2, S=4\)"):
        policy.predict_chunk(bad)
    bad = obs()
    bad["images"] = bad["images"][:, :1]
    with pytest.raises(ValueError, match="images"):
        policy.predict_chunk(bad)
    bad = obs()
    del bad["instruction"]
    with pytest.raises(KeyError, match="instruction"):
        policy.predict_chunk(bad)


def test_select_action_plays_n_action_steps_of_each_chunk(monkeypatch):
    policy = make_policy("regression", n_action_steps=3)
    calls = []
    chunks = [torch.arange(6 * 3, dtype=torch.float32).reshape(1, 6, 3) + 100 * i for i in range(3)]

    def fake_predict(observation, **kw):
        calls.append(1)
        return chunks[len(calls) - 1]

    monkeypatch.setattr(policy, "predict_chunk", fake_predict)
    actions = [policy.select_action(obs(1)) for _ in range(6)]
    assert len(calls) == 2  # a new chunk every 3 steps
    assert torch.equal(actions[0], chunks[0][:, 0]) and torch.equal(actions[2], chunks[0][:, 2])
    assert torch.equal(actions[3], chunks[1][:, 0])
    policy.reset()
    policy.select_action(obs(1))
    assert len(calls) == 3


def test_temporal_ensembling_averages_overlapping_chunks(monkeypatch):
    policy = make_policy("regression", n_action_steps=1, temporal_ensemble_coeff=0.0)
    chunks = iter([torch.zeros(1, 6, 3), torch.ones(1, 6, 3) * 3])
    monkeypatch.setattr(policy, "predict_chunk", lambda observation, **kw: next(chunks))
    first = policy.select_action(obs(1))
    second = policy.select_action(obs(1))
    assert torch.allclose(first, torch.zeros(1, 3))
    assert torch.allclose(second, torch.full((1, 3), 1.5))  # equal weights: mean of 0 and 3


def test_adaptive_ensembling_blends_by_agreement_and_is_an_inference_choice(monkeypatch):
    """policy.adaptive_ensemble_alpha: every step a new chunk, blended by CogACT's exp(alpha * cos) weights;
    use_ensembling switches a checkpoint trained without it (alpha 0: the plain mean)."""
    policy = make_policy("regression")
    assert policy.config.n_action_steps != 1
    policy.use_ensembling(adaptive_alpha=0.0)
    assert policy.config.n_action_steps == 1 and policy.config.adaptive_ensemble_alpha == 0.0
    chunks = iter([torch.ones(1, 6, 3), torch.ones(1, 6, 3) * 3])
    monkeypatch.setattr(policy, "predict_chunk", lambda observation, **kw: next(chunks))
    policy.select_action(obs(1))
    assert torch.allclose(policy.select_action(obs(1)), torch.full((1, 3), 2.0))  # mean of 1 and 3
    policy.use_ensembling(adaptive_alpha=4.0)
    opposite = iter([torch.full((1, 6, 3), -1.0), torch.ones(1, 6, 3)])
    monkeypatch.setattr(policy, "predict_chunk", lambda observation, **kw: next(opposite))
    policy.select_action(obs(1))
    second = policy.select_action(obs(1))  # (-1, ..) disagrees with the newest (1, ..): weight e^-4 vs e^4
    assert torch.all(second > 0.99), second


def test_config_rejects_impossible_combinations():
    with pytest.raises(ValueError, match="n_action_steps"):
        PolicyConfig(chunk_size=4, n_action_steps=5)
    with pytest.raises(ValueError, match="temporal_ensemble_coeff"):
        PolicyConfig(chunk_size=4, n_action_steps=2, temporal_ensemble_coeff=0.01)
    with pytest.raises(ValueError, match="adaptive_ensemble_alpha needs policy.n_action_steps=1"):
        PolicyConfig(chunk_size=4, n_action_steps=2, adaptive_ensemble_alpha=0.1)
    with pytest.raises(ValueError, match="exclude each other"):
        PolicyConfig(chunk_size=4, n_action_steps=1, adaptive_ensemble_alpha=0.1, temporal_ensemble_coeff=0.1)


@pytest.mark.parametrize("head", ["flow", "diffusion"])
def test_per_sample_seeds_make_rows_independent_of_the_batch(head):
    policy = make_policy(head)
    pair = obs(2)
    first = {"images": pair["images"][:1], "state": pair["state"][:1], "instruction": pair["instruction"][:1]}
    both = policy.predict_chunk(pair, seed=[5, 7])
    alone = policy.predict_chunk(first, seed=[5])
    assert torch.allclose(both[:1], alone, atol=1e-4)
    swapped_seeds = policy.predict_chunk(obs(2), seed=[7, 7])
    assert not torch.allclose(both[0], swapped_seeds[0])
    with pytest.raises(ValueError, match="per-sample seeds"):
        policy.predict_chunk(obs(2), seed=[1])


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-paligemma", "tiny-qwen2_5_vl"])
def test_bf16_inference_on_every_family(preset):
    policy = make_policy("flow", preset=preset).to(torch.bfloat16)
    o = obs(1)
    o["images"] = o["images"].to(torch.bfloat16) / 255  # resized in fp32 inside, cast back
    chunk = policy.predict_chunk(o, seed=0)
    assert chunk.shape == (1, 6, 3) and torch.isfinite(chunk).all()


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-paligemma", "tiny-qwen2_5_vl"])
def test_lm_logits_over_a_subset_of_ids_equals_the_full_product(preset):
    backbone = make_policy("regression", preset=preset).backbone
    hidden = torch.randn(2, 3, backbone.width)
    ids = torch.tensor([5, backbone.vocab_size - 1, 17])
    full = backbone.lm_logits(hidden)
    assert torch.allclose(backbone.lm_logits(hidden, ids=ids), full.index_select(-1, ids), atol=1e-5)


def test_lora_finetune_starts_from_the_base_weights(tmp_path):
    """peft renames a wrapped layer's weight to ``base_layer.weight``: --init-from with LoRA must still load the
    base checkpoint's weights there (only the adapters are new, and with B = 0 the policy is unchanged)."""
    from vla.models.backbones import BackboneConfig
    from vla.models.heads import HeadConfig
    from vla.train.finetune import init_from_checkpoint

    torch.manual_seed(0)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny", num_layers=2),
        head=HeadConfig.get_choice_class("flow")(),
        chunk_size=4,
        n_action_steps=4,
        cameras=["a"],
        state_dim=3,
        action_dim=2,
    )
    base = Policy(cfg).eval()
    base.save(tmp_path / "base")
    user = PolicyConfig(
        **{**vars(cfg), "backbone": BackboneConfig.get_choice_class("smolvlm")(preset="tiny", lora_rank=4)}
    )
    tuned, plan = init_from_checkpoint(tmp_path / "base", user, base.stats)
    assert plan["reinitialized"] and all("lora_" in k for k in plan["reinitialized"])
    obs = {"images": torch.rand(2, 1, 3, 64, 64), "state": torch.randn(2, 3), "instruction": ["a", "b"]}
    assert torch.equal(base.predict_chunk(obs, seed=[1, 2]), tuned.eval().predict_chunk(obs, seed=[1, 2]))


def test_finetuning_normalizes_with_the_new_datasets_statistics(tmp_path):
    """--init-from on the same robot: the weights come from the base checkpoint, the normalization statistics
    from the new dataset (the plan says so). Same widths must not let the base's statistics load over them."""
    from vla.train.finetune import init_from_checkpoint

    base = make_policy("regression")
    base.save(tmp_path / "base")
    new_stats = {
        "state": {"mean": [-5.0, 0.0, 5.0, 9.0], "std": [1.0, 3.0, 0.5, 4.0]},
        "actions": {**STATS["actions"], "mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 3.0]},
    }
    tuned, plan = init_from_checkpoint(tmp_path / "base", base.config, new_stats)
    assert plan["stats"] == "computed from the new dataset"
    fresh = Policy(base.config, new_stats)
    x = torch.randn(5, 4)
    torch.testing.assert_close(tuned.normalizers[0].normalize("state", x), fresh.normalizers[0].normalize("state", x))
    a = torch.randn(5, 3)
    torch.testing.assert_close(
        tuned.normalizers[0].unnormalize("actions", a), fresh.normalizers[0].unnormalize("actions", a)
    )
    tuned_head = tuned.head.state_dict()
    assert all(torch.equal(v, tuned_head[k]) for k, v in base.head.state_dict().items())  # the weights: the base's


@pytest.mark.parametrize("head", ["bins", "fast"])
def test_token_heads_refuse_unbounded_action_normalization(head):
    head_cfg = HeadConfig.get_choice_class(head)()
    assert PolicyConfig(head=head_cfg).action_norm == "quantile"
    assert PolicyConfig(head=head_cfg, action_norm="min_max").action_norm == "min_max"
    with pytest.raises(ValueError, match=rf"policy.head.type={head} .*policy.action_norm='mean_std'"):
        PolicyConfig(head=head_cfg, action_norm="mean_std")
    assert PolicyConfig(head=HeadConfig.get_choice_class("flow")()).action_norm == "mean_std"


# ---- policy.auxiliary: a training-only target predicted from the image features ---------------------
AUX_STATS = {**STATS, "aux_target": {"mean": [0.0, 1.0, 5.0], "std": [1.0, 2.0, 0.0]}}  # dim 2 never varies


def aux_policy(weight: float = 0.5, head: str = "regression") -> Policy:
    from vla.models.auxiliary import AuxiliaryConfig

    aux = AuxiliaryConfig(key="observation.environment_state", weight=weight, dim=3)
    return make_policy(head, stats=AUX_STATS, auxiliary=aux).train()


def aux_batch() -> dict:
    g = torch.Generator().manual_seed(2)
    target = torch.stack([torch.randn(2, generator=g), 1 + 2 * torch.randn(2, generator=g), torch.full((2,), 5.0)], 1)
    return {**obs(2), "actions": torch.randn(2, 6, 3, generator=g), "aux_target": target}


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_auxiliary_target_adds_its_weighted_probe_loss_on_one_backbone_pass(head, monkeypatch):
    batch = aux_batch()
    batch["noise"], batch["time"] = torch.randn(2, 6, 3), torch.rand(2)  # the flow head's draws, fixed
    off = aux_policy(weight=0.0, head=head)
    loss0, parts0 = off.compute_loss(batch)
    assert torch.equal(loss0, parts0["action_loss"]) and torch.isfinite(parts0["aux_loss"]) and parts0["aux_loss"] > 0
    on = aux_policy(weight=0.5, head=head)  # the same seed: the same weights
    calls = []
    encode = on.backbone.encode
    monkeypatch.setattr(on.backbone, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    loss, parts = on.compute_loss(batch)
    assert len(calls) == 1  # the probe reads the head's backbone pass
    assert torch.allclose(parts["action_loss"], parts0["action_loss"]) and torch.allclose(
        parts["aux_loss"], parts0["aux_loss"]
    )
    assert torch.allclose(loss, parts["action_loss"] + 0.5 * parts["aux_loss"]) and not torch.allclose(loss, loss0)
    loss.backward()
    assert on.aux_probe.net[0].weight.grad.abs().sum() > 0
    # Its loss reads the normalized target on the dims that vary (dim 2 is constant in the statistics).
    with torch.no_grad():
        pred = on.aux_probe(on.backbone.camera_features(encode(*on._prefix_fn(batch)[0].args), 2))
    want = (batch["aux_target"] - torch.tensor([0.0, 1.0, 5.0])) / torch.tensor([1.0, 2.0, 1.0])
    assert torch.allclose(parts["aux_loss"], ((pred[:, :2] - want[:, :2]) ** 2).mean(), atol=1e-5)
    del batch["aux_target"]
    with pytest.raises(KeyError, match="policy.auxiliary.key='observation.environment_state'.*'aux_target'"):
        on.compute_loss(batch)


def test_auxiliary_probe_is_saved_and_prediction_never_reads_it(tmp_path):
    policy = aux_policy().eval()
    o = obs(2)  # images, state and instruction: no auxiliary target
    chunk = policy.predict_chunk(o, seed=[1, 2])
    loaded = Policy.load(policy.save(tmp_path / "ckpt"))  # strict: the probe's weights are in the checkpoint
    assert torch.equal(loaded.aux_probe.net[0].weight, policy.aux_probe.net[0].weight)
    assert loaded.aux_probe.varies.tolist() == [True, True, False]
    assert torch.equal(loaded.predict_chunk(o, seed=[1, 2]), chunk)
    with torch.no_grad():
        for p in loaded.aux_probe.parameters():
            p.normal_()
    assert torch.equal(loaded.predict_chunk(o, seed=[1, 2]), chunk)  # the probe plays no part in a chunk


def test_inputs_description_names_the_training_only_target():
    from vla.models.auxiliary import AuxiliaryConfig

    base = {"cameras": ["image"], "state_dim": 4, "action_dim": 4}
    plain = PolicyConfig(**base).inputs_description()
    assert "auxiliary" not in plain and "privileged" not in plain
    aux = AuxiliaryConfig(key="observation.environment_state", dim=39, weight=0.1)
    text = PolicyConfig(**base, auxiliary=aux).inputs_description()
    assert text.startswith(plain) and "`observation.state` (4 dims: proprioception)" in text
    assert "training only: auxiliary target `observation.environment_state` (39 dims: privileged, not an input" in text
