"""Contract tests for the three VLM backbone families on their tiny presets (CPU, offline).

What the heads rely on is pinned here: shapes and masks of the Prefix, KV shapes, that our
own mask/position path equals the HF model's forward, that token-by-token ``decode_step``
equals the one-pass teacher-forced suffix, that pixels and token ids equal the family's HF
processor, and that ``pretrained=`` loads what ``save_pretrained`` wrote.
"""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
import torch

from vla.models.backbones import BackboneConfig, list_presets
from vla.models.backbones.options import count_parameters
from vla.models.backbones.tokenizer import ASSET_PATH, build_tokenizer_json
from vla.registry import lookup

FAMILIES = ["paligemma", "smolvlm", "qwen2_5_vl"]
STATE_DIM = 7
INSTRUCTIONS = ["pick up the red mug", "open the top drawer of the cabinet and put the bowl inside it"]


def build(family: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return lookup(BackboneConfig, family)(**options).build(state_dim=STATE_DIM, num_cameras=2)


def batch(seed: int = 1, size=(80, 96)):
    """B=2, N=2 cameras at a size the models do not use; sample 1 lacks its second camera."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 2, 3, *size, generator=g)
    image_mask = torch.tensor([[True, True], [True, False]])
    state = torch.randn(2, STATE_DIM, generator=g)
    return images, image_mask, state


@pytest.fixture(scope="module", params=FAMILIES)
def family_backbone(request):
    return request.param, build(request.param).eval()


def test_registry_and_presets():
    assert set(FAMILIES) <= set(BackboneConfig.get_known_choices())
    presets = list_presets()
    assert {"tiny", "paligemma-3b"} <= set(presets["paligemma"])
    assert {"tiny", "smolvlm2-500m"} <= set(presets["smolvlm"])
    assert {"tiny", "qwen2_5_vl-3b"} <= set(presets["qwen2_5_vl"])
    with pytest.raises(KeyError, match="Did you mean 'smolvlm'"):
        lookup(BackboneConfig, "smolvml")
    with pytest.raises(KeyError, match="known"):
        lookup(BackboneConfig, "smolvlm")(preset="huge").build(STATE_DIM, 2)


def test_tokenizer_asset_is_reproducible(tmp_path):
    rebuilt = build_tokenizer_json(tmp_path / "bpe.json")
    assert filecmp.cmp(rebuilt, ASSET_PATH, shallow=False)


def test_encode_shapes_masks_kv(family_backbone):
    family, bb = family_backbone
    images, image_mask, state = batch()
    inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    T0 = inputs["input_ids"].shape[1]
    assert T0 == 2 * len(bb.camera_ids) + bb.cfg.max_text_tokens
    with torch.no_grad():
        prefix = bb.encode(inputs, state, with_kv=True)
    T = T0 + 1  # + state token
    assert prefix.hidden.shape == (2, T, bb.width)
    assert prefix.mask.shape == (2, T) and prefix.mask.dtype == torch.bool
    assert torch.isfinite(prefix.hidden).all()
    cam = len(bb.camera_ids)
    assert prefix.mask[0, : 2 * cam].all() and prefix.mask[1, :cam].all()
    assert not prefix.mask[1, cam : 2 * cam].any(), "the missing camera's tokens must be masked out"
    assert prefix.mask[:, -1].all(), "the state token is real"
    assert prefix.mask[0].sum() < prefix.mask[1].sum() + cam, "the short instruction is padded"
    assert len(prefix.keys) == len(prefix.values) == bb.num_layers
    for k, v in zip(prefix.keys, prefix.values, strict=True):
        assert k.shape == v.shape == (2, bb.num_kv_heads, T, bb.head_dim)
    assert torch.equal(prefix.state, state) and prefix.state_mask.all()
    assert bb.lm_logits(prefix.hidden).shape == (2, T, bb.vocab_size)
    assert bb.embed_tokens(inputs["input_ids"]).shape == (2, T0, bb.width)


def test_missing_camera_pixels_do_not_matter(family_backbone):
    _, bb = family_backbone
    images, image_mask, state = batch()
    other = images.clone()
    other[1, 1] = torch.rand_like(other[1, 1])
    with torch.no_grad():
        a = bb.encode(bb.prepare_inputs(images, image_mask, INSTRUCTIONS), state)
        b = bb.encode(bb.prepare_inputs(other, image_mask, INSTRUCTIONS), state)
    assert torch.allclose(a.hidden[a.mask], b.hidden[b.mask], atol=1e-6)


def test_state_token_reaches_the_lm(family_backbone):
    family, bb = family_backbone
    images, image_mask, state = batch()
    inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    with torch.no_grad():
        full = bb.encode(inputs, state).hidden
        a = full[:, -1]
        b = bb.encode(inputs, state + 1.0).hidden
    assert not torch.allclose(a, b[:, -1])
    # the state token is last and a block of its own (pi0, SmolVLA): earlier tokens never see it,
    # even with a bidirectional prefix (PaliGemma's default)
    assert torch.allclose(full[:, :-1], b[:, :-1])


def test_matches_hf_forward(family_backbone):
    """Our 4-D mask + positions path gives the HF model's own hidden states (state token off)."""
    family, bb = family_backbone
    images, _, _ = batch()
    image_mask = torch.ones(2, 2, dtype=torch.bool)
    bb.state_proj, saved = None, bb.state_proj  # same weights, state_mode="head" behaviour
    try:
        inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
        with torch.no_grad():
            ours = bb.encode(inputs).hidden
            kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"].long())
            if family == "paligemma":  # token type 0 everywhere = one bidirectional prefix
                kw.update(pixel_values=inputs["pixel_values"], token_type_ids=torch.zeros_like(inputs["input_ids"]))
            elif family == "smolvlm":
                kw.update(pixel_values=inputs["pixel_values"].view(2, 2, 3, bb.image_size, bb.image_size))
            else:
                image_types = (inputs["input_ids"] == bb.image_token_id).int()
                kw.update(
                    pixel_values=inputs["pixel_values"],
                    image_grid_thw=inputs["image_grid_thw"],
                    mm_token_type_ids=image_types,
                )
            ref = bb.model.model(**kw).last_hidden_state
    finally:
        bb.state_proj = saved
    real = inputs["attention_mask"]
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-5)


def test_decode_step_equals_teacher_forced_suffix(family_backbone):
    family, bb = family_backbone
    images, image_mask, state = batch()
    inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    g = torch.Generator().manual_seed(3)
    suffix = torch.randn(2, 5, bb.width, generator=g)
    suffix_mask = torch.tensor([[True] * 5, [True, True, False, True, True]])
    with torch.no_grad():
        full = bb.encode(inputs, state, suffix_embeds=suffix, suffix_mask=suffix_mask)
        prefix = bb.encode(inputs, state, use_cache=True)
        Tp = prefix.hidden.shape[1]
        assert full.hidden.shape == (2, Tp + 5, bb.width) and full.mask.shape == (2, Tp + 5)
        torch.testing.assert_close(full.hidden[:, :Tp], prefix.hidden, atol=1e-5, rtol=1e-5)
        steps = [bb.decode_step(prefix, suffix[:, i : i + 1], suffix_mask[:, i : i + 1]) for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full.hidden[:, Tp:], atol=1e-5, rtol=1e-5)
    assert prefix.extras["cache"].get_seq_length() == Tp + 5
    # the suffix really is causal: changing the last suffix token leaves earlier ones alone
    changed = suffix.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        other = bb.encode(inputs, state, suffix_embeds=changed, suffix_mask=suffix_mask).hidden
    torch.testing.assert_close(other[:, : Tp + 4], full.hidden[:, : Tp + 4], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other[:, -1], full.hidden[:, -1])


def test_qwen_positions_match_get_rope_index():
    """Our vectorized mrope positions equal the model's own loop, with padding and a missing camera."""
    bb = build("qwen2_5_vl")
    images, image_mask, _ = batch()
    image_mask = torch.tensor([[False, True], [True, False]])
    inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ours = bb.position_ids(ids, mask, inputs)
    ref, _ = bb.model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == bb.image_token_id).int(), image_grid_thw=inputs["image_grid_thw"],
        attention_mask=mask.long(),
    )  # fmt: skip
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_reaches_vision_and_state(family):
    bb = build(family).train()
    images, image_mask, state = batch()
    prefix = bb.encode(bb.prepare_inputs(images, image_mask, INSTRUCTIONS), state)
    prefix.hidden[prefix.mask].pow(2).mean().backward()
    assert bb.state_proj.weight.grad.abs().sum() > 0
    vision_grads = [p.grad for m in bb.vision_modules() for p in m.parameters() if p.grad is not None]
    assert vision_grads and sum(g.abs().sum() for g in vision_grads) > 0


def test_deterministic_given_seed():
    a, b = build("qwen2_5_vl", seed=5), build("qwen2_5_vl", seed=5)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na


@pytest.mark.parametrize("family", FAMILIES)
def test_options(family):
    images, image_mask, state = batch()
    bb = build(family, num_layers=2, state_mode="head").eval()
    inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    with torch.no_grad():
        prefix = bb.encode(inputs, state, with_kv=True)
    assert bb.num_layers == 2 and len(prefix.keys) == 2
    assert prefix.hidden.shape[1] == inputs["input_ids"].shape[1], "state_mode='head' adds no token"
    assert torch.equal(prefix.state, state)

    full = count_parameters(bb)
    lora = build(family, lora_rank=4, freeze_vision=True)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("state_proj") for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert count_parameters(lora) > count_parameters(build(family, freeze_vision=True)) and full > 0

    frozen = build(family, freeze_vlm=True)
    assert not any(p.requires_grad for p in frozen.model.parameters())
    assert all(p.requires_grad for p in frozen.state_proj.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_trains_with_kv(family):
    """Under checkpointing transformers drops the cache; K/V are recomputed and must equal the cache's."""
    bb = build(family, gradient_checkpointing=True, freeze_vision=True)
    assert all(layer.gradient_checkpointing for layer in bb.lm.layers)
    images, image_mask, state = batch()
    inputs = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    with torch.no_grad():
        ref = bb.eval().encode(inputs, state, with_kv=True)
    prefix = bb.train().encode(inputs, state, with_kv=True)
    for got, want in zip(prefix.keys + prefix.values, ref.keys + ref.values, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (prefix.hidden.pow(2).mean() + prefix.keys[-1].pow(2).mean()).backward()
    assert bb.lm.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for m in bb.vision_modules() for p in m.parameters())
    with pytest.raises(RuntimeError, match="inference"):
        bb.encode(inputs, state, use_cache=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_parity(family):
    """Pixels and token ids equal the family's HF processor on the same uint8 image (one camera)."""
    bb = build(family, state_mode="head")
    image = np.random.default_rng(0).integers(0, 256, (bb.image_size, bb.image_size, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None, None].float() / 255
    ours = bb.prepare_inputs(tensor, torch.ones(1, 1, dtype=torch.bool), INSTRUCTIONS[:1])
    prompt = {
        "paligemma": "<image>" + INSTRUCTIONS[0],
        "smolvlm": "<image>" + INSTRUCTIONS[0],
        "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>" + INSTRUCTIONS[0],
    }[family]
    ref = bb.processor(text=[prompt], images=[[image]] if family != "qwen2_5_vl" else [image], return_tensors="pt")
    assert ref["input_ids"][0].tolist() == ours["input_ids"][ours["attention_mask"]].tolist()
    ref_pixels = ref["pixel_values"].reshape(ours["pixel_values"].shape)  # Qwen: (patches, C*2*14*14)
    torch.testing.assert_close(ours["pixel_values"], ref_pixels, atol=1e-5, rtol=0)
    if family == "qwen2_5_vl":
        assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])


def test_resize_close_to_processor():
    """Downscaling in float on any device stays close to the processor's uint8 resize."""
    bb = build("paligemma", state_mode="head")
    image = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None, None].float() / 255
    ours = bb.prepare_inputs(tensor, torch.ones(1, 1, dtype=torch.bool), ["x"])["pixel_values"]
    ref = bb.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    diff = (ours - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1  # normalized units (std 0.5): max ~ 10/255 at sharp edges


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_round_trip(family, tmp_path):
    bb = build(family, state_mode="head").eval()
    bb.save_pretrained(tmp_path)
    extra = {"image_size": bb.image_size} if family == "qwen2_5_vl" else {}
    loaded = build(family, seed=123, state_mode="head", pretrained=str(tmp_path), **extra).eval()
    images, image_mask, _ = batch()
    a_in = bb.prepare_inputs(images, image_mask, INSTRUCTIONS)
    b_in = loaded.prepare_inputs(images, image_mask, INSTRUCTIONS)
    for key in a_in:
        assert torch.equal(a_in[key], b_in[key]), key
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(b_in).hidden, bb.encode(a_in).hidden, atol=1e-6, rtol=0)


def test_bfloat16_build_and_decode():
    bb = build("smolvlm", dtype="bfloat16").eval()
    assert {p.dtype for p in bb.parameters()} == {torch.bfloat16}
    images, image_mask, state = batch()
    with torch.no_grad():
        prefix = bb.encode(bb.prepare_inputs(images, image_mask, INSTRUCTIONS), state, use_cache=True)
        step = bb.decode_step(prefix, torch.zeros(2, 1, bb.width, dtype=torch.bfloat16), torch.ones(2, 1).bool())
    assert prefix.hidden.dtype == step.dtype == torch.bfloat16 and torch.isfinite(step).all()


@pytest.mark.parametrize(
    "family,preset,billions,width,layers",
    [
        ("paligemma", "paligemma-3b", 2.92, 2048, 18),
        ("smolvlm", "smolvlm2-500m", 0.51, 960, 32),
        ("qwen2_5_vl", "qwen2_5_vl-3b", 3.75, 2048, 36),
    ],
)
def test_scale_presets_on_meta(family, preset, billions, width, layers):
    bb = lookup(BackboneConfig, family)(preset=preset, init_device="meta").build(state_dim=STATE_DIM, num_cameras=2)
    assert next(bb.model.parameters()).device.type == "meta"
    assert bb.width == width and bb.num_layers == layers
    assert abs(count_parameters(bb.model) / 1e9 - billions) < 0.01 * billions + 0.005


def test_random_init_follows_the_ambient_device():
    """Presets are created where the caller builds (``with torch.device("cuda")`` on a GPU), never on a
    hidden default: a scale preset once landed on ``meta`` and the policy could not move to its device."""
    with torch.device("meta"):
        on_meta = lookup(BackboneConfig, "smolvlm")(preset="tiny").build(state_dim=STATE_DIM, num_cameras=1)
    assert next(on_meta.model.parameters()).device.type == "meta"
    plain = lookup(BackboneConfig, "smolvlm")(preset="tiny").build(state_dim=STATE_DIM, num_cameras=1)
    assert next(plain.model.parameters()).device.type == "cpu"


def test_a_preset_of_another_family_keeps_every_option():
    """``--policy.backbone.preset=tiny-paligemma`` on the default (SmolVLM) config switches family
    without dropping family-level options such as the weights' dtype (a 3B model built in fp32
    first would need twice the memory)."""
    from vla.models.backbones.base import BackboneConfig
    from vla.models.policy import resolve_backbone_config

    cfg = BackboneConfig.get_choice_class("smolvlm")(
        preset="tiny-paligemma", dtype="bfloat16", image_size=64, max_text_tokens=12
    )
    resolved = resolve_backbone_config(cfg)
    assert resolved.type == "paligemma" and resolved.preset == "tiny"
    assert (resolved.dtype, resolved.image_size, resolved.max_text_tokens) == ("bfloat16", 64, 12)


def test_a_preset_of_another_family_refuses_an_option_it_would_drop():
    """SmolVLM's conv stem set, then a PaliGemma preset: an error naming the option, not a model without it."""
    from vla.models.backbones.base import BackboneConfig
    from vla.models.policy import resolve_backbone_config

    cfg = BackboneConfig.get_choice_class("smolvlm")(preset="tiny-paligemma", conv_stem=True)
    with pytest.raises(ValueError, match="no option conv_stem=True"):
        resolve_backbone_config(cfg)


def test_smolvlm_preset_patch_and_image_size_reshape_the_vision_tower():
    """A from-scratch preset can trade speed for finer image tokens: patch 4 at 64 px gives 64 tokens per camera
    (8 gives 16), and image_size 128 keeps patch 8 with 64 tokens; shapes that do not tile are refused."""
    from vla.models.backbones.smolvlm import SmolVLMBackboneConfig

    def tokens(**kw) -> int:
        b = SmolVLMBackboneConfig(preset="tiny", **kw).build(state_dim=4, num_cameras=1)
        return sum(i == b.image_token_id for i in b.camera_ids), b.image_size

    assert tokens() == (16, 64)
    assert tokens(patch_size=4) == (64, 64)
    assert tokens(image_size=128) == (64, 128)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tokens(patch_size=6)
    with pytest.raises(ValueError, match="patch_size"):
        SmolVLMBackboneConfig(pretrained="some/hub-id", patch_size=4).build(state_dim=4, num_cameras=1)


def test_smolvlm_conv_stem_replaces_the_patchify_conv_with_the_same_tokens():
    """conv_stem: three stride-2 3x3 stages (16, 32, 64 channels) and a 1x1 conv instead of the 8x8 patchify
    conv; per 64 px camera the tower still gives 8x8 patch tokens of width 64 and the connector 16 image tokens."""
    from torch import nn

    from vla.models.backbones.smolvlm import SmolVLMBackboneConfig

    def tower(**kw):
        torch.manual_seed(0)
        b = SmolVLMBackboneConfig(preset="tiny", **kw).build(state_dim=4, num_cameras=1)
        pixels = torch.randn(2, 3, 64, 64)
        hidden = b.model.model.vision_model(pixel_values=pixels).last_hidden_state
        return b, hidden.shape, b.image_features({"pixel_values": pixels}).shape

    plain, hidden, feats = tower()
    stem, stem_hidden, stem_feats = tower(conv_stem=True)
    assert (stem_hidden, stem_feats) == (hidden, feats) == ((2, 64, 64), (2, 16, 128))
    assert stem.camera_ids == plain.camera_ids
    module = stem.model.model.vision_model.embeddings.patch_embedding
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (16, (3, 3), (2, 2)),
        (32, (3, 3), (2, 2)),
        (64, (3, 3), (2, 2)),
        (64, (1, 1), (1, 1)),
    ]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def test_smolvlm_conv_stem_is_refused_with_real_weights_or_an_odd_patch():
    from vla.models.backbones.smolvlm import SmolVLMBackboneConfig

    with pytest.raises(ValueError, match="conv_stem"):
        SmolVLMBackboneConfig(pretrained="some/hub-id", conv_stem=True).build(state_dim=4, num_cameras=1)
    with pytest.raises(ValueError, match="conv_stem.*power of two.*got 12"):
        SmolVLMBackboneConfig(preset="tiny", conv_stem=True, patch_size=12, image_size=96).build(4, 1)


def test_smolvlm_conv_stem_trains():
    """25 Adam steps of the regression head on a fixed batch, the whole backbone training: the loss falls
    (measured 0.25x) and the stem's weights move."""
    from vla.models.backbones.smolvlm import SmolVLMBackboneConfig
    from vla.models.heads.base import HeadConfig

    torch.manual_seed(0)
    backbone = SmolVLMBackboneConfig(preset="tiny", conv_stem=True, max_text_tokens=12, num_layers=2).build(
        state_dim=STATE_DIM, num_cameras=1
    )
    head = HeadConfig.get_choice_class("regression")(width=64).build(backbone, 4, 3)
    g = torch.Generator().manual_seed(0)
    images, state = torch.rand(4, 1, 3, 64, 64, generator=g), torch.randn(4, STATE_DIM, generator=g)
    batch = {
        "state": state,
        "state_mask": torch.ones(4, STATE_DIM, dtype=torch.bool),
        "actions": torch.rand(4, 4, 3, generator=g) - 0.5,
        "action_pad": torch.zeros(4, 4, dtype=torch.bool),
        "action_dim_mask": torch.ones(4, 3, dtype=torch.bool),
    }
    inputs = backbone.prepare_inputs(images, torch.ones(4, 1, dtype=torch.bool), INSTRUCTIONS * 2)

    def prefix_fn(**kw):
        return backbone.encode(inputs, state, state_mask=batch["state_mask"], **kw)

    stem = backbone.model.model.vision_model.embeddings.patch_embedding
    before = stem[0].weight.detach().clone()
    opt = torch.optim.Adam([*head.parameters(), *backbone.parameters()], lr=2e-3)
    losses = []
    for _ in range(25):
        loss, _ = head.loss(prefix_fn, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert not torch.equal(stem[0].weight, before)
