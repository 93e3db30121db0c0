"""PaliGemma (SigLIP + Gemma) as a backbone: the pi0 family's VLM.

Layout per sample, as PaliGemmaProcessor builds it: ``<image> * n`` per camera, then
``<bos> instruction \\n``. Positions are 1-indexed (PaliGemma's convention) and the prefix
attends bidirectionally (its prefix-LM pretraining). Gemma scales token embeddings by
sqrt(W) inside ``embed_tokens``; image features enter unscaled, exactly as in the model's
own forward (a test pins the equality); custom embeddings (state token, suffix) are not
scaled either, which is fine since they are learned.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
)

from vla.models.backbones.base import BackboneConfig
from vla.models.backbones.common import VLMBackbone, VLMConfig, instantiate, load_pretrained
from vla.models.backbones.tokenizer import load_tokenizer

# Component builder arguments per preset (torchtune-style: presets only fill in numbers).
# vocab_size: the table size (at least the tokenizer's). Tiny leaves room above the shipped tokenizer for
# discrete action tokens (bins, FAST); scale presets use the public size (the shipped ids index a bigger table).
PRESETS: dict[str, dict] = {
    "tiny": dict(
        text_width=128, text_layers=4, text_ffn=256, text_heads=4, text_kv_heads=1, head_dim=32,
        vision_width=64, vision_layers=2, vision_ffn=128, vision_heads=2, patch_size=16, image_size=64,
        vocab_size=3072,  # 1,152 <loc>/<seg> ids + the tokenizer + room for FAST's 1,025 action ids
    ),
    "paligemma-3b": dict(  # google/paligemma-3b-pt-224
        text_width=2048, text_layers=18, text_ffn=16384, text_heads=8, text_kv_heads=1, head_dim=256,
        vision_width=1152, vision_layers=27, vision_ffn=4304, vision_heads=16, patch_size=14, image_size=224,
        vocab_size=257216,
    ),
}  # fmt: skip


def paligemma_model_config(
    *,
    text_width: int,
    text_layers: int,
    text_ffn: int,
    text_heads: int,
    text_kv_heads: int,
    head_dim: int,
    vision_width: int,
    vision_layers: int,
    vision_ffn: int,
    vision_heads: int,
    patch_size: int,
    image_size: int,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
) -> PaliGemmaConfig:
    """Every dimension of a PaliGemma model. ``projection_dim`` must equal the text width (the
    projector feeds image features straight into the text model)."""
    text = dict(
        model_type="gemma",
        hidden_size=text_width,
        intermediate_size=text_ffn,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        head_dim=head_dim,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=vision_width,
        intermediate_size=vision_ffn,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        patch_size=patch_size,
        image_size=image_size,
        projection_dim=text_width,
        vision_use_head=False,  # PaliGemma takes every patch token; the pooling head is unused weight
    )
    return PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image_token_id,
        projection_dim=text_width,
        hidden_size=text_width,
    )


def paligemma_processor(image_size: int, patch_size: int) -> PaliGemmaProcessor:
    """The HF processor around the shipped tokenizer (it adds ``<image>`` and 1,152 loc/seg tokens)."""
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=(image_size // patch_size) ** 2,
    )
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=load_tokenizer())


@BackboneConfig.register_subclass("paligemma")
@dataclass
class PaliGemmaBackboneConfig(VLMConfig):
    """PaliGemma backbone. Presets: ``tiny``, ``paligemma-3b``; or ``pretrained`` (hub id / local dir)."""

    def build(self, state_dim: int, num_cameras: int, architecture: str | None = None) -> PaliGemmaBackbone:
        if architecture or self.pretrained:
            model, processor = load_pretrained(self, PaliGemmaForConditionalGeneration, architecture)
        else:
            if self.preset not in PRESETS:
                raise KeyError(f"unknown paligemma preset {self.preset!r}; known: {sorted(PRESETS)}")
            dims = dict(PRESETS[self.preset])
            processor = paligemma_processor(dims["image_size"], dims["patch_size"])
            dims["vocab_size"] = max(dims["vocab_size"], len(processor.tokenizer))
            config = paligemma_model_config(
                **dims, image_token_id=processor.image_token_id, pad_token_id=processor.tokenizer.pad_token_id
            )
            model = instantiate(self, PaliGemmaForConditionalGeneration, config)
        return PaliGemmaBackbone(self, model, processor, state_dim, num_cameras)


class PaliGemmaBackbone(VLMBackbone):
    def __init__(self, cfg: PaliGemmaBackboneConfig, model, processor, state_dim: int, num_cameras: int):
        ip = processor.image_processor
        image_size = cfg.image_size or ip.size["height"]
        if image_size != model.config.vision_config.image_size:
            raise ValueError(
                f"paligemma: image_size {image_size} differs from the vision tower's {model.config.vision_config.image_size}"
            )
        tok = processor.tokenizer
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
            camera_ids=[processor.image_token_id] * processor.image_seq_length,
            text_prefix_ids=[tok.bos_token_id],  # what Gemma's tokenizer adds itself
            default_prompt="newline",  # PaliGemma's prompt format: "<bos>instruction\n"
            bidirectional_default=True,
            position_offset=1,  # PaliGemma positions are 1-indexed
        )

    def vision_modules(self):
        return [self.model.model.vision_tower, self.model.model.multi_modal_projector]

    def image_features(self, inputs):
        out = self.model.model.get_image_features(inputs["pixel_values"].to(self.model.dtype))
        return out.pooler_output  # (B*N, n, W), what the model's own forward scatters into the placeholders
