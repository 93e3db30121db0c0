"""Backbone contract: a transformers VLM that turns an observation into a Prefix.

A backbone knows images, text and (optionally) the proprio state; it knows nothing
of actions. Heads talk to it only through this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import draccus
import torch
from torch import nn

from vla.types import Prefix


@dataclass
class BackboneConfig(draccus.ChoiceRegistry):
    """Common options of every VLM family. ``type`` picks the family; ``preset`` the size.

    ``preset`` is a registered preset name (``tiny`` builds a small random-weight
    model of the same architecture with a tokenizer shipped in the repo; ``paligemma-3b``
    and friends build the public checkpoint's exact dimensions without weights).
    ``pretrained`` (a hub id or a local directory) loads real weights with
    ``from_pretrained`` and wins over ``preset``.
    """

    preset: str = "tiny"
    pretrained: str | None = None
    num_layers: int | None = None  # keep only the first K language-model layers (SmolVLA-style)
    freeze_vision: bool = False
    freeze_vlm: bool = False
    lora_rank: int = 0  # >0: LoRA adapters on the language model through peft
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    state_mode: str = "token"  # token: one prefix token; head: passed to the head only; prompt: written into the text
    max_text_tokens: int = 48
    attn_implementation: str = "sdpa"

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def build(self, state_dim: int, num_cameras: int, architecture: str | None = None) -> Backbone:
        """The backbone; ``architecture`` (a checkpoint's ``backbone/`` folder: model config and
        processor, no weights) rebuilds a saved model offline, whatever preset or hub id made it."""
        raise TypeError(f"{type(self).__name__} must implement build()")


class Backbone(nn.Module, abc.ABC):
    """A VLM wrapper. Subclasses set the attributes below in ``__init__``.

    width:        hidden size W of the language model
    num_layers:   language-model layers L actually run
    num_heads:    query heads of the language model
    num_kv_heads: key/value heads K
    head_dim:     Dh
    image_size:   the square resolution images are resized to
    """

    width: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    image_size: int

    @abc.abstractmethod
    def prepare_inputs(
        self, images: torch.Tensor, image_mask: torch.Tensor, instruction: list[str]
    ) -> dict[str, torch.Tensor]:
        """Images (B, N, 3, Hi, Wi) in [0, 1] at any size + instructions -> model inputs.

        Resizing, pixel normalization, image-placeholder tokens and text tokenization
        happen here, identically in training, evaluation and serving.
        """

    @abc.abstractmethod
    def encode(
        self,
        inputs: dict[str, torch.Tensor],
        state: torch.Tensor | None = None,
        *,
        with_kv: bool = False,
        suffix_embeds: torch.Tensor | None = None,
        suffix_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        suffix_block: int = 0,
    ) -> Prefix:
        """Run the VLM over the prefix (and an optional causal suffix of embeddings).

        With ``suffix_embeds`` (B, Ts, W) the returned ``hidden`` spans prefix + suffix
        and the suffix attends causally to itself and fully to the prefix (teacher
        forcing for the discrete heads). ``suffix_block`` > 0 makes the last that many
        suffix tokens a bidirectional block (they see each other both ways; no earlier
        token sees them): the masked action block of discrete diffusion. ``with_kv``
        fills ``Prefix.keys/values``. ``use_cache`` stores a transformers cache in
        ``Prefix.extras["cache"]`` for ``decode_step`` / ``decode_block``.
        """

    @abc.abstractmethod
    def decode_step(self, prefix: Prefix, token_embeds: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
        """Autoregressive step: (B, 1, W) embeddings -> (B, 1, W) hidden; extends the cache in place."""

    @abc.abstractmethod
    def decode_block(
        self, prefix: Prefix, block_embeds: torch.Tensor, block_mask: torch.Tensor | None = None, *, keep: bool = False
    ) -> torch.Tensor:
        """A bidirectional block (B, Tb, W) after the cached sequence -> its hidden (B, Tb, W).

        The same numbers as ``encode(..., suffix_embeds=[cached suffix; block], suffix_block=Tb)``
        gives the block, without recomputing the prefix. ``keep=False`` leaves the cache as it was
        (a parallel decoder scores one block per round against one prefix); ``keep=True`` appends it.
        """

    @abc.abstractmethod
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> embeddings (B, T, W), scaled as the model's own input embeddings."""

    @abc.abstractmethod
    def lm_logits(self, hidden: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden (B, T, W) -> vocabulary logits (B, T, V) through the VLM's LM head (only rows ``ids`` if given)."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    def camera_features(self, prefix: Prefix, num_cameras: int) -> torch.Tensor:
        """Each camera's mean last-layer hidden state over its image tokens: (B, N, W), zero for a missing camera.

        For training-only probes (vla/models/auxiliary.py); a backbone that cannot say where its image tokens
        are does not support them."""
        raise NotImplementedError(f"{type(self).__name__} does not expose per-camera image features")
