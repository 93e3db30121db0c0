"""The canonical data contract, written once with its shapes.

Shape letters used everywhere: B batch, N cameras, C channels, Hi/Wi image size,
S state dims, H action horizon (chunk length), D action dims, T tokens, W width,
L layers, K key/value heads, Dh head dim.

Past the FeatureMap (data) or the suite adapter (simulation) no dataset- or
environment-specific key name appears: only these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

# Canonical batch keys (dict form, as produced by data_pipelines.collate and eval suites)
IMAGES = "images"  # (B, N, 3, Hi, Wi) float32 in [0, 1]
IMAGE_MASK = "image_mask"  # (B, N) bool: True where the camera exists (mixtures may lack some)
STATE = "state"  # (B, S) float32, raw robot units until the Policy normalizes it
STATE_MASK = "state_mask"  # (B, S) bool: True on real dims (mixtures pad to a common S)
ACTIONS = "actions"  # (B, H, D) float32 raw robot units
ACTION_PAD = "action_pad"  # (B, H) bool: True where the chunk runs past the episode end
ACTION_DIM_MASK = "action_dim_mask"  # (B, D) bool: True on real dims
INSTRUCTION = "instruction"  # list[str] of length B
# The instruction already tokenized in the backbone's prompt format (an exported graph's input, vla/interop/onnx_export.py)
TEXT_IDS = "text_ids"  # (B, max_text_tokens) long
TEXT_MASK = "text_mask"  # (B, max_text_tokens) bool: True on real tokens
DATASET_INDEX = "dataset_index"  # (B,) long, which mixture member a sample came from (optional)
# Training only, with policy.auxiliary.key set: that dataset feature of the current frame, predicted by a probe
# on the image features (vla/models/auxiliary.py). Never an input: inference neither needs nor reads it.
AUX_TARGET = "aux_target"  # (B, A) float32, raw units until the Policy normalizes it
# Training only: the key of each sample's random draws (vla.utils.sample_rng), and the draws' sources.
SAMPLE_NUMBER = "sample_number"  # (B,) long, the sample's place in the run's stream of drawn samples
GENERATORS = "generators"  # list of B torch.Generator: sample i's augmentation, noise and time come from the i-th


@dataclass
class Batch:
    """A training or inference batch in canonical form. Actions are absent at inference."""

    images: torch.Tensor  # (B, N, 3, Hi, Wi) float in [0, 1]
    image_mask: torch.Tensor  # (B, N) bool
    state: torch.Tensor  # (B, S)
    state_mask: torch.Tensor  # (B, S) bool
    instruction: list[str]
    actions: torch.Tensor | None = None  # (B, H, D)
    action_pad: torch.Tensor | None = None  # (B, H) bool, True = padded step
    action_dim_mask: torch.Tensor | None = None  # (B, D) bool, True = real dim
    aux_target: torch.Tensor | None = None  # (B, A), training only (policy.auxiliary)

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def to(self, device, dtype: torch.dtype | None = None) -> Batch:
        """Move tensors; only floating tensors change dtype."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device, non_blocking=True)
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
            out[f.name] = v
        return Batch(**out)

    @classmethod
    def from_dict(cls, d: dict) -> Batch:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Prefix:
    """What a backbone hands to a head: the encoded observation.

    ``hidden`` is the last layer's hidden states over the prefix tokens (images,
    language, optionally the state token). ``keys``/``values`` are the per-layer
    attention keys and values of the language model over those same tokens (after
    rotary embedding, as stored in a transformers KV cache), for heads that attend
    layer by layer (the pi0-style flow expert). They are computed once per
    observation and reused across denoising/integration steps.
    """

    hidden: torch.Tensor  # (B, T, W)
    mask: torch.Tensor  # (B, T) bool, True = real token
    keys: list[torch.Tensor] | None = None  # L x (B, K, T, Dh)
    values: list[torch.Tensor] | None = None  # L x (B, K, T, Dh)
    state: torch.Tensor | None = None  # (B, S) normalized state, for heads that condition on it directly
    state_mask: torch.Tensor | None = None  # (B, S) bool
    extras: dict = field(default_factory=dict)  # backbone-specific (e.g. a transformers cache for AR decoding)
    next_pos: torch.Tensor | None = None  # (B,) rotary position of a token appended after the prefix
