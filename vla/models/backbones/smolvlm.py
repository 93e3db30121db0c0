"""SmolVLM (Idefics3-style: SigLIP + pixel-shuffle connector + Llama) as a backbone: SmolVLA's VLM.

Layout per camera, as SmolVLMProcessor writes an unsplit image:
``<fake_token_around_image><global-img><image> * n<fake_token_around_image>``, then the raw
instruction. Images are never split into tiles (one global view per camera at the preset's
resolution), which is what SmolVLA does too. Prefix attention defaults to causal, the way the
model was pretrained; ``prefix_attention="bidirectional"`` switches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vla.models.backbones.base import BackboneConfig
from vla.models.backbones.common import VLMBackbone, VLMConfig, instantiate, load_pretrained
from vla.models.backbones.inputs import leading_special_ids
from vla.models.backbones.options import conv_stem
from vla.models.backbones.tokenizer import load_tokenizer

# named as in SmolVLM's own tokenizer config (LeRobot's SmolVLA reads tokenizer.fake_image_token_id)
SPECIAL_TOKENS = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}

# vocab_size: the table size (at least the tokenizer's). Tiny leaves room above the shipped tokenizer for
# discrete action tokens (bins, FAST); scale presets use the public size (the shipped ids index a bigger table).
PRESETS: dict[str, dict] = {
    "tiny": dict(
        text_width=128, text_layers=4, text_ffn=256, text_heads=4, text_kv_heads=2,
        vision_width=64, vision_layers=2, vision_ffn=128, vision_heads=2, patch_size=8, image_size=64,
        scale_factor=2, vocab_size=2048, tie_embeddings=False,
    ),
    "smolvlm2-500m": dict(  # HuggingFaceTB/SmolVLM2-500M-Video-Instruct
        text_width=960, text_layers=32, text_ffn=2560, text_heads=15, text_kv_heads=5,
        vision_width=768, vision_layers=12, vision_ffn=3072, vision_heads=12, patch_size=16, image_size=512,
        scale_factor=4, vocab_size=49280, tie_embeddings=False,
    ),
}  # fmt: skip


def smolvlm_model_config(
    *,
    text_width: int,
    text_layers: int,
    text_ffn: int,
    text_heads: int,
    text_kv_heads: int,
    vision_width: int,
    vision_layers: int,
    vision_ffn: int,
    vision_heads: int,
    patch_size: int,
    image_size: int,
    scale_factor: int,
    vocab_size: int,
    tie_embeddings: bool,
    image_token_id: int,
    pad_token_id: int,
) -> SmolVLMConfig:
    """Every dimension of a SmolVLM model; ``image_token_id`` must be the tokenizer's ``<image>`` id."""
    text = dict(
        model_type="llama",
        hidden_size=text_width,
        intermediate_size=text_ffn,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_embeddings,
    )
    vision = dict(
        hidden_size=vision_width,
        intermediate_size=vision_ffn,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        patch_size=patch_size,
        image_size=image_size,
    )
    return SmolVLMConfig(
        text_config=text,
        vision_config=vision,
        scale_factor=scale_factor,
        image_token_id=image_token_id,
        tie_word_embeddings=tie_embeddings,
    )


def smolvlm_processor(image_size: int, patch_size: int, scale_factor: int) -> SmolVLMProcessor:
    """The HF processor around the shipped tokenizer; one unsplit global image per camera."""
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=False,
    )
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=load_tokenizer(SPECIAL_TOKENS),
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=(image_size // patch_size) ** 2 // scale_factor**2,
    )


@BackboneConfig.register_subclass("smolvlm")
@dataclass
class SmolVLMBackboneConfig(VLMConfig):
    """SmolVLM backbone. Presets: ``tiny``, ``smolvlm2-500m``; or ``pretrained`` (hub id / local dir).

    ``image_special_tokens``: wrap each camera's image tokens in ``<fake_token_around_image><global-img>
    ... <fake_token_around_image>`` as SmolVLM's processor does; SmolVLA feeds the image tokens alone.
    """

    image_special_tokens: bool = True
    # A preset built from scratch: the vision tower's patch side (smaller: more image tokens, finer
    # positions; the tiny preset's 8 gives 16 tokens per 64 px camera, 4 gives 64). Not for real weights.
    patch_size: int | None = None
    # A preset built from scratch: a small CNN (options.conv_stem) in place of the vision tower's patchify
    # conv, same tokens out. Recorded in the policy config, so a checkpoint's architecture rebuilds it.
    conv_stem: bool = False

    def build(self, state_dim: int, num_cameras: int, architecture: str | None = None) -> SmolVLMBackbone:
        for option in ("patch_size", "conv_stem"):
            if getattr(self, option) and self.pretrained:
                raise ValueError(
                    f"policy.backbone.{option} changes the vision tower of a preset built from scratch; "
                    "pretrained weights fix it"
                )
        if architecture or self.pretrained:
            # reloaded, the processor would pick the PIL backend, whose LANCZOS pixels differ by up to 0.23;
            # the torchvision backend keeps them identical to a fresh processor's
            model, processor = load_pretrained(
                self, SmolVLMForConditionalGeneration, architecture, backend="torchvision"
            )
        else:
            if self.preset not in PRESETS:
                raise KeyError(f"unknown smolvlm preset {self.preset!r}; known: {sorted(PRESETS)}")
            dims = dict(PRESETS[self.preset])
            dims["image_size"] = self.image_size or dims["image_size"]
            dims["patch_size"] = self.patch_size or dims["patch_size"]
            grid = dims["image_size"] // dims["patch_size"]
            if dims["image_size"] % dims["patch_size"] or grid % dims["scale_factor"]:
                raise ValueError(
                    f"smolvlm preset {self.preset!r}: image_size {dims['image_size']} must be a multiple of "
                    f"patch_size {dims['patch_size']} times scale_factor {dims['scale_factor']}"
                )
            processor = smolvlm_processor(dims["image_size"], dims["patch_size"], dims["scale_factor"])
            dims["vocab_size"] = max(dims["vocab_size"], len(processor.tokenizer))
            config = smolvlm_model_config(
                **dims, image_token_id=processor.image_token_id, pad_token_id=processor.tokenizer.pad_token_id
            )
            model = instantiate(self, SmolVLMForConditionalGeneration, config)
        if self.conv_stem:  # before the backbone's freezing and checkpointing options see the tower
            embeddings = model.model.vision_model.embeddings
            embeddings.patch_embedding = conv_stem(embeddings.patch_embedding)
        return SmolVLMBackbone(self, model, processor, state_dim, num_cameras)


class SmolVLMBackbone(VLMBackbone):
    def __init__(self, cfg: SmolVLMBackboneConfig, model, processor, state_dim: int, num_cameras: int):
        ip = processor.image_processor
        image_size = cfg.image_size or ip.max_image_size["longest_edge"]
        if image_size != model.config.vision_config.image_size:
            raise ValueError(
                f"smolvlm: image_size {image_size} differs from the vision tower's {model.config.vision_config.image_size}"
            )
        tok = processor.tokenizer
        fake, glob = tok.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>"])
        super().__init__(
            cfg,
            model,
            processor,
            lm=model.model.text_model,
            text_config=model.config.text_config,
            state_dim=state_dim,
            num_cameras=num_cameras,
            image_size=image_size,
            image_mean=list(ip.image_mean),
            image_std=list(ip.image_std),
            image_token_id=processor.image_token_id,
            camera_ids=[fake, glob] * cfg.image_special_tokens
            + [processor.image_token_id] * processor.image_seq_len
            + [fake] * cfg.image_special_tokens,
            text_prefix_ids=leading_special_ids(tok),
            default_prompt="task",
            bidirectional_default=False,
        )

    def vision_modules(self):
        return [self.model.model.vision_model, self.model.model.connector]

    def image_features(self, inputs):
        # The vision tower directly, not get_image_features: that one drops all-zero images, and the
        # placeholder count must not depend on pixel values.
        pixels = inputs["pixel_values"].to(self.model.dtype)  # (B*N, 3, S, S)
        hidden = self.model.model.vision_model(pixel_values=pixels).last_hidden_state  # (B*N, P, Wv)
        return self.model.model.connector(hidden)  # (B*N, n, W)
