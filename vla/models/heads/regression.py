"""Chunked parallel regression: H learned action queries decoded in one pass (ACT-style).

The queries cross-attend to the VLM's last hidden states through the shared action
expert (no adaLN, context = ``prefix.hidden``) and each query's output is projected to
one action. One forward pass per chunk, so this is the cheapest head to sample; it
regresses to the mean of multimodal demonstrations, which L1 softens (a median).

State: when the backbone hands the state to the head (``state_mode="head"``) one extra
state token is prepended to the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vla.models.heads.action_expert import (
    ActionExpert,
    ActionExpertConfig,
    StateToken,
    action_weights,
    head_state_dim,
    masked_mean,
    prepend_state,
)
from vla.models.heads.base import Head, HeadConfig
from vla.shapes import check_shape
from vla.types import Prefix


@HeadConfig.register_subclass("regression")
@dataclass
class RegressionConfig(HeadConfig):
    loss: Literal["l1", "l2"] = "l1"  # L1: less pulled toward the mean of multimodal demos
    width: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0

    def build(self, backbone, horizon: int, action_dim: int) -> RegressionHead:
        return RegressionHead(self, backbone, horizon, action_dim)


class RegressionHead(Head):
    def __init__(self, cfg: RegressionConfig, backbone, horizon: int, action_dim: int):
        super().__init__()
        if cfg.loss not in ("l1", "l2"):
            raise ValueError(f"regression head: loss must be 'l1' or 'l2', got {cfg.loss!r}")
        self.cfg, self.horizon, self.action_dim = cfg, horizon, action_dim
        state_dim = head_state_dim(backbone)
        self.expert = ActionExpert(
            ActionExpertConfig.cross_attention(
                "regression", cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio, horizon, backbone.width
            )
        )
        self.queries = nn.Parameter(torch.randn(horizon, cfg.width) * 0.02)  # (H, We)
        self.state_token = StateToken(state_dim, cfg.width) if state_dim else None
        self.action_out = nn.Linear(cfg.width, action_dim)

    def predict(self, prefix: Prefix) -> torch.Tensor:
        """Prefix -> chunk (B, H, D) in one pass."""
        b = prefix.hidden.shape[0]
        tokens = self.queries.to(prefix.hidden.dtype).expand(b, -1, -1)  # (B, H, We)
        tokens = prepend_state(self.state_token, prefix, tokens)
        out = self.expert(tokens, prefix.mask, context=prefix.hidden)  # (B, [1+]H, We)
        return self.action_out(out[:, -self.horizon :])  # (B, H, D)

    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        actions = batch["actions"]
        check_shape("actions", actions, "B H D", H=self.horizon, D=self.action_dim)
        pred = self.predict(prefix_fn()).float()
        err = (pred - actions.float()).abs() if self.cfg.loss == "l1" else (pred - actions.float()) ** 2
        weights = action_weights(batch, actions.float())
        loss = masked_mean(err, weights)
        with torch.no_grad():
            mae = masked_mean((pred - actions.float()).abs(), weights)
        return loss, {"loss": loss.detach(), "mae": mae.detach()}  # tensors: no sync in the hot loop

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        return self.predict(prefix_fn()).float()  # num_steps is meaningless for a one-pass head
