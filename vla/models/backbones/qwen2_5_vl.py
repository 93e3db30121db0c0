"""Qwen2.5-VL (windowed ViT + patch merger + Qwen2 with 3-D rotary positions) as a backbone.

Layout per camera: ``<|vision_start|><|image_pad|> * n<|vision_end|>``, then the raw
instruction. Pixels are not an image tensor but a flat list of patches in
Qwen2VLImageProcessor's order (merge windows contiguous, the still image repeated along
the temporal patch axis) plus ``image_grid_thw`` per image. Rotary positions are 3-D
(temporal, height, width) over image tokens and 1-D after them: we compute them by the
rule of the model's own ``get_rope_index`` (skipping masked tokens; a test pins the two
equal), and text generated after the prefix continues from the largest position + 1, as
the model's ``rope_deltas`` do.
Prefix attention defaults to causal, as pretrained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vla.models.backbones.base import BackboneConfig
from vla.models.backbones.common import VLMBackbone, VLMConfig, instantiate, load_pretrained
from vla.models.backbones.tokenizer import load_tokenizer

SPECIAL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# vocab_size: the table size (at least the tokenizer's). Tiny leaves room above the shipped tokenizer for
# discrete action tokens (bins, FAST); scale presets use the public size (the shipped ids index a bigger table).
# image_size is our choice of square input (a multiple of patch * merge), not a property of the model.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        text_width=128, text_layers=4, text_ffn=256, text_heads=4, text_kv_heads=2, mrope_section=[4, 6, 6],
        vision_width=64, vision_depth=2, vision_ffn=128, vision_heads=2, fullatt_blocks=[1],
        patch_size=14, merge_size=2, image_size=56, vocab_size=2048, tie_embeddings=True,
    ),
    "qwen2_5_vl-3b": dict(  # Qwen/Qwen2.5-VL-3B-Instruct
        text_width=2048, text_layers=36, text_ffn=11008, text_heads=16, text_kv_heads=2,
        mrope_section=[16, 24, 24], vision_width=1280, vision_depth=32, vision_ffn=3420, vision_heads=16,
        fullatt_blocks=[7, 15, 23, 31], patch_size=14, merge_size=2, image_size=224, vocab_size=151936,
        tie_embeddings=True,
    ),
}  # fmt: skip


def qwen_patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(M, C, H, W) -> (M, Hp*Wp, C*temporal*patch*patch) in Qwen2VLImageProcessor's order.

    Patches are grouped by merge window (a 2x2 block of patches is contiguous) because the
    vision tower's patch merger concatenates consecutive rows; a still image is repeated
    ``temporal`` times along the temporal patch axis.
    """
    return repeat(
        pixels,
        "m c (gh mh ph) (gw mw pw) -> m (gh gw mh mw) (c tp ph pw)",
        mh=merge, mw=merge, ph=patch, pw=patch, tp=temporal,
    )  # fmt: skip


def qwen2_5_vl_model_config(
    *,
    text_width: int,
    text_layers: int,
    text_ffn: int,
    text_heads: int,
    text_kv_heads: int,
    mrope_section: list[int],
    vision_width: int,
    vision_depth: int,
    vision_ffn: int,
    vision_heads: int,
    fullatt_blocks: list[int],
    patch_size: int,
    merge_size: int,
    vocab_size: int,
    tie_embeddings: bool,
    token_ids: dict[str, int],
    pad_token_id: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    image_size: int = 0,  # a processor setting; accepted so presets can be splatted
) -> Qwen2_5_VLConfig:
    """Every dimension of a Qwen2.5-VL model. ``mrope_section`` must sum to head_dim / 2 (the
    3-D rotary split of each head; transformers does not check it)."""
    head_dim = text_width // text_heads
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"qwen2_5_vl: mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    text = dict(
        hidden_size=text_width,
        intermediate_size=text_ffn,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(mrope_section)},
    )
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_width,
        intermediate_size=vision_ffn,
        num_heads=vision_heads,
        out_hidden_size=text_width,
        patch_size=patch_size,
        spatial_merge_size=merge_size,
        fullatt_block_indexes=list(fullatt_blocks),
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=tie_embeddings,
    )


def qwen2_5_vl_processor(image_size: int, patch_size: int, merge_size: int) -> Qwen2_5_VLProcessor:
    """The HF processor around the shipped tokenizer; pixel bounds admit our square resolution."""
    image_processor = Qwen2VLImageProcessor(
        min_pixels=(patch_size * merge_size) ** 2,
        max_pixels=max(image_size, 448) ** 2,
        patch_size=patch_size,
        merge_size=merge_size,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=load_tokenizer(SPECIAL_TOKENS),
        video_processor=Qwen2VLVideoProcessor(),
    )


@BackboneConfig.register_subclass("qwen2_5_vl")
@dataclass
class Qwen2_5_VLBackboneConfig(VLMConfig):
    """Qwen2.5-VL backbone. Presets: ``tiny``, ``qwen2_5_vl-3b``; or ``pretrained`` (hub id / local dir)."""

    def build(self, state_dim: int, num_cameras: int, architecture: str | None = None) -> Qwen2_5_VLBackbone:
        if architecture or self.pretrained:
            model, processor = load_pretrained(self, Qwen2_5_VLForConditionalGeneration, architecture)
            image_size = self.image_size or 224
        else:
            if self.preset not in PRESETS:
                raise KeyError(f"unknown qwen2_5_vl preset {self.preset!r}; known: {sorted(PRESETS)}")
            dims = dict(PRESETS[self.preset])
            image_size = self.image_size or dims["image_size"]
            processor = qwen2_5_vl_processor(image_size, dims["patch_size"], dims["merge_size"])
            tok = processor.tokenizer
            dims["vocab_size"] = max(dims["vocab_size"], len(tok))
            ids = dict(zip(SPECIAL_TOKENS, tok.convert_tokens_to_ids(SPECIAL_TOKENS), strict=True))
            config = qwen2_5_vl_model_config(
                **dims,
                token_ids=ids,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
            model = instantiate(self, Qwen2_5_VLForConditionalGeneration, config)
        return Qwen2_5_VLBackbone(self, model, processor, state_dim, num_cameras, image_size)


class Qwen2_5_VLBackbone(VLMBackbone):
    def __init__(
        self, cfg: Qwen2_5_VLBackboneConfig, model, processor, state_dim: int, num_cameras: int, image_size: int
    ):
        ip = processor.image_processor
        unit = ip.patch_size * ip.merge_size
        if image_size % unit:
            raise ValueError(f"qwen2_5_vl: image_size {image_size} must be a multiple of patch*merge = {unit}")
        grid = image_size // ip.patch_size
        n = grid * grid // ip.merge_size**2
        start, end = processor.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
        super().__init__(
            cfg,
            model,
            processor,
            lm=model.model.language_model,
            text_config=model.config.text_config,
            state_dim=state_dim,
            num_cameras=num_cameras,
            image_size=image_size,
            image_mean=list(ip.image_mean),
            image_std=list(ip.image_std),
            image_token_id=processor.image_token_id,
            camera_ids=[start] + [processor.image_token_id] * n + [end],
            text_prefix_ids=[],
            default_prompt="task",
            bidirectional_default=False,
        )
        self.patch_size, self.merge_size, self.temporal_patch = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        self.grid = grid

    def vision_modules(self):
        return [self.model.model.visual]  # its patch merger (the projector) lives inside

    def pixel_inputs(self, pixels):
        M = pixels.shape[0]
        patches = qwen_patchify(pixels, self.patch_size, self.merge_size, self.temporal_patch)  # (M, P, Dp)
        grid_thw = torch.tensor([1, self.grid, self.grid], device=pixels.device).repeat(M, 1)  # (M, 3)
        return {"pixel_values": rearrange(patches, "m p d -> (m p) d"), "image_grid_thw": grid_thw}

    def image_features(self, inputs):
        out = self.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        feats = torch.cat(out.pooler_output, 0)  # (M*n, W)
        return rearrange(feats, "(m n) w -> m n w", m=inputs["image_grid_thw"].shape[0])

    def position_ids(self, ids, mask, inputs):
        """(3, B, T) mrope positions, vectorized for our fixed layout (no host sync, unlike get_rope_index).

        Same rule as ``Qwen2_5_VLModel.get_rope_index`` over the real tokens only: a text token
        takes (p, p, p) and advances p by 1; the k-th image token of a camera takes
        (s, s + row, s + col) on the merged g x g grid, and the image advances p by g.
        """
        g = self.grid // self.merge_size
        is_img = ids == self.image_token_id  # (B, T)
        # index of a token among its camera's image tokens (block = vision_start, g*g pads, vision_end)
        k = (torch.arange(ids.shape[1], device=ids.device) % len(self.camera_ids) - 1).clamp(min=0)  # (T,)
        advance = torch.where(is_img, (k == g * g - 1).long() * g, 1) * mask  # (B, T)
        start = advance.cumsum(-1) - advance  # (B, T) position before this token
        row, col = torch.where(is_img, k // g, 0), torch.where(is_img, k % g, 0)
        return torch.stack([start, start + row, start + col]) * mask  # (3, B, T); masked tokens at 0

    def step_positions(self, next_pos):
        return next_pos[None, :, None].expand(3, -1, 1)  # (3, B, 1): text continues on all three axes
