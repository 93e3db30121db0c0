"""Experts that run beside the VLM layer by layer: pi0's Gemma expert (pi0.5 with adaptive norms) and SmolVLA's.

Both are a stack of transformers decoder layers as wide as the expert, as deep as the VLM, with
the VLM's query heads, key/value heads and head_dim. Expert layer i reads VLM layer i:

- **joint** layers (pi0 every layer, SmolVLA every other layer from 0): the expert's queries attend to
  [the VLM's keys/values over the prefix ; the expert's own keys/values], one softmax, RoPE on the
  expert's queries and keys at positions continuing after the prefix. This is exactly LeRobot's and
  openpi's layer-wise joint attention, because the prefix never attends to the suffix: the prefix
  keys/values are what the VLM computes alone, cached once per chunk.
- **cross** layers (SmolVLA's odd layers): the expert projects the VLM's post-rotary keys and values
  with its own ``k_proj``/``v_proj`` (input K * Dh) and attends to the prefix only; its query
  positions restart at 0.

The layers are transformers' own ``GemmaDecoderLayer`` (RMSNorm with ``1 + w``, GeGLU MLP, no biases)
and ``LlamaDecoderLayer`` (SmolVLM's blocks: RMSNorm with ``w``, SwiGLU), with a ``forward`` for the
joint/cross attention; parameter names are theirs, so LeRobot's tensors map one to one. With
adaptive conditioning (pi0.5) every norm becomes an ``AdaptiveRMSNorm`` and residuals are gated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GemmaConfig, LlamaConfig
from transformers.models.gemma.modeling_gemma import (
    GemmaDecoderLayer,
    GemmaRMSNorm,
    GemmaRotaryEmbedding,
    apply_rotary_pos_emb,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from vla.models.heads.experts.base import ExpertConfig


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale, shift and residual gate come from a conditioning vector (pi0.5's adaRMS).

    ``dense`` maps the condition to (scale, shift, gate); its weight starts at zero, so the norm
    starts as a plain RMSNorm with unit scale and a gate equal to ``dense.bias``'s third part.
    """

    def __init__(self, dim: int, eps: float, cond_dim: int):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)  # (B, 1, W) each
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


def _norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return norm(x, cond) if isinstance(norm, AdaptiveRMSNorm) else (norm(x), None)


def _residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


class JointLayerMixin:
    """The forward of one expert layer beside VLM layer i (joint or cross attention, see the module doc)."""

    cross: bool = False

    def forward(self, x, prefix_k, prefix_v, mask, rotary, cond=None):
        b, a, _ = x.shape
        attn = self.self_attn
        h, gate = _norm(self.input_layernorm, x, cond)
        q = attn.q_proj(h).view(b, a, -1, attn.head_dim).transpose(1, 2)  # (B, Hq, A, Dh)
        cos, sin = rotary
        if self.cross:  # keys/values: the VLM's, projected by this layer
            q, _ = apply_rotary_pos_emb(q, q, cos, sin)
            flat_k = prefix_k.transpose(1, 2).flatten(2).to(h.dtype)  # (B, T, K*Dh)
            flat_v = prefix_v.transpose(1, 2).flatten(2).to(h.dtype)
            k = attn.k_proj(flat_k).view(b, flat_k.shape[1], -1, attn.head_dim).transpose(1, 2)  # (B, K, T, Dh)
            v = attn.v_proj(flat_v).view(b, flat_v.shape[1], -1, attn.head_dim).transpose(1, 2)
        else:  # keys/values: [the VLM's over the prefix ; the expert's own]
            k = attn.k_proj(h).view(b, a, -1, attn.head_dim).transpose(1, 2)  # (B, K, A, Dh)
            v = attn.v_proj(h).view(b, a, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([prefix_k.to(k.dtype), k], dim=2)  # (B, K, T + A, Dh)
            v = torch.cat([prefix_v.to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=True)
        x = _residual(x, attn.o_proj(out.transpose(1, 2).reshape(b, a, -1)), gate)
        h, gate = _norm(self.post_attention_layernorm, x, cond)
        return _residual(x, self.mlp(h), gate)


class GemmaJointLayer(JointLayerMixin, GemmaDecoderLayer):
    pass


class LlamaJointLayer(JointLayerMixin, LlamaDecoderLayer):
    pass


BLOCKS = {
    # block: (config class, layer class, final norm, rotary)
    "gemma": (GemmaConfig, GemmaJointLayer, GemmaRMSNorm, GemmaRotaryEmbedding),
    "llama": (LlamaConfig, LlamaJointLayer, LlamaRMSNorm, LlamaRotaryEmbedding),
}


class LayerwiseExpert(nn.Module):
    """Decoder layers beside the VLM's (see the module docstring); ``run_suffix`` is the expert contract."""

    def __init__(
        self, backbone, *, block: str, width: int, ffn: int, eps: float, act: str, cross_every: int, adaptive: bool
    ):
        super().__init__()
        config_cls, layer_cls, norm_cls, rotary_cls = BLOCKS[block]
        act_key = "hidden_activation" if block == "gemma" else "hidden_act"
        self.config = config_cls(
            hidden_size=width,
            intermediate_size=ffn,
            num_hidden_layers=backbone.num_layers,
            num_attention_heads=backbone.num_heads,
            num_key_value_heads=backbone.num_kv_heads,
            head_dim=backbone.head_dim,
            rms_norm_eps=eps,
            rope_parameters={"rope_type": "default", "rope_theta": backbone.rope_theta},
            vocab_size=1,  # no embedding table: the head embeds its own tokens
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            **{act_key: act},
        )
        self.layers = nn.ModuleList(layer_cls(self.config, i) for i in range(backbone.num_layers))
        self.norm = norm_cls(width, eps=eps)
        kv_width = backbone.num_kv_heads * backbone.head_dim
        for i, layer in enumerate(self.layers):
            layer.cross = bool(cross_every) and i % cross_every != 0
            if layer.cross:  # SmolVLA: these layers project the VLM's keys/values, not their own tokens
                layer.self_attn.k_proj = nn.Linear(kv_width, kv_width, bias=False)
                layer.self_attn.v_proj = nn.Linear(kv_width, kv_width, bias=False)
            if adaptive:
                layer.input_layernorm = AdaptiveRMSNorm(width, eps, width)
                layer.post_attention_layernorm = AdaptiveRMSNorm(width, eps, width)
        if adaptive:
            self.norm = AdaptiveRMSNorm(width, eps, width)
        self.rotary_emb = rotary_cls(self.config)

    def run_suffix(self, tokens, prefix, self_mask, cond=None):
        if prefix.keys is None or prefix.values is None or prefix.next_pos is None:
            raise ValueError("layer-wise expert: the prefix needs keys/values and next_pos (prefix_fn(with_kv=True))")
        if len(prefix.keys) != len(self.layers):
            raise ValueError(
                f"layer-wise expert: prefix has {len(prefix.keys)} K/V layers, expert has {len(self.layers)}"
            )
        if isinstance(self.norm, AdaptiveRMSNorm) and cond is None:
            raise ValueError("layer-wise expert with adaptive norms needs cond (B, width)")
        b, a, _ = tokens.shape
        steps = torch.arange(a, device=tokens.device)
        joint_rotary = self.rotary_emb(tokens, prefix.next_pos.to(tokens.device)[:, None] + steps)  # after the prefix
        cross_rotary = self.rotary_emb(tokens, steps[None].expand(b, a))  # SmolVLA: restart at 0
        real = prefix.mask.bool()
        own = self_mask.expand(b, a, a)  # (A, A), or (B, A, A) when each sample has its own (MoH horizons)
        joint_mask = torch.cat([real[:, None, :].expand(b, a, -1), own], dim=2)[:, None]
        cross_mask = real[:, None, None, :]  # (B, 1, 1, T)
        x = tokens
        for i, layer in enumerate(self.layers):
            rotary, mask = (cross_rotary, cross_mask) if layer.cross else (joint_rotary, joint_mask)
            x = layer(x, prefix.keys[i], prefix.values[i], mask, rotary, cond)
        return _norm(self.norm, x, cond)[0]


@ExpertConfig.register_subclass("gemma")
@dataclass
class GemmaExpertConfig(ExpertConfig):
    """pi0's action expert (pi0.5's with the head's ``time_conditioning=adaptive``): Gemma layers, joint
    attention in every layer. Gemma-300M beside PaliGemma-3B is width 1024, FFN 4096."""

    def build(self, backbone, *, width, ffn, max_tokens, adaptive):
        return LayerwiseExpert(
            backbone, block="gemma", width=width, ffn=ffn, eps=1e-6, act="gelu_pytorch_tanh", cross_every=0,
            adaptive=adaptive,
        )  # fmt: skip


@ExpertConfig.register_subclass("smolvla")
@dataclass
class SmolVLAExpertConfig(ExpertConfig):
    """SmolVLA's action expert: the VLM's own (Llama) layer type at the expert's width, cross-attention
    layers interleaved with joint ones (``self_attn_every``: layers 0, n, 2n, ... are joint)."""

    self_attn_every: int = 2

    def __post_init__(self):
        if self.self_attn_every < 1:
            raise ValueError(f"smolvla expert: self_attn_every must be >= 1, got {self.self_attn_every}")

    def default_ffn(self, width, mlp_ratio):
        # SmolVLA's get_intermediate_size: 4 * (2/3 width), rounded up to a multiple of 256 (720 -> 2048)
        return 256 * ((4 * int(2 * width / 3) + 255) // 256)

    def build(self, backbone, *, width, ffn, max_tokens, adaptive):
        text = backbone.lm.config
        return LayerwiseExpert(
            backbone, block="llama", width=width, ffn=ffn, eps=getattr(text, "rms_norm_eps", 1e-6),
            act=getattr(text, "hidden_act", "silu"), cross_every=self.self_attn_every, adaptive=adaptive,
        )  # fmt: skip
