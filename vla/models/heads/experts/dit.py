"""The project's own expert style: pre-LayerNorm blocks with learned positions (``action_expert.py``).

Each block attends to [VLM layer i's keys/values ; its own tokens], so its layers, query heads,
key/value heads and head_dim follow the backbone while its width is its own. Time enters either
mixed into the tokens or, with adaptive conditioning, through DiT's adaLN-Zero modulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from vla.models.heads.action_expert import ActionExpert, ActionExpertConfig
from vla.models.heads.experts.base import ExpertConfig


@ExpertConfig.register_subclass("dit")
@dataclass
class DiTExpertConfig(ExpertConfig):
    def build(self, backbone, *, width, ffn, max_tokens, adaptive):
        return DiTExpert(
            ActionExpertConfig(
                width=width,
                num_layers=backbone.num_layers,
                num_heads=backbone.num_heads,
                num_kv_heads=backbone.num_kv_heads,
                head_dim=backbone.head_dim,
                ffn=ffn,
                max_tokens=max_tokens,
                adaln=adaptive,
                cond_dim=width if adaptive else 0,
            )
        )


class DiTExpert(ActionExpert):
    def run_suffix(self, tokens, prefix, self_mask, cond=None):
        if prefix.keys is None or prefix.values is None:
            raise ValueError("dit expert: prefix has no keys/values; call prefix_fn(with_kv=True)")
        return self(tokens, prefix.mask, context_kv=(prefix.keys, prefix.values), cond=cond, self_mask=self_mask)
