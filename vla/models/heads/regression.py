"""Chunked parallel regression: H learned action queries decoded in one pass (ACT-style).

The queries cross-attend to the VLM's last hidden states through the shared action
expert (no adaLN, context = ``prefix.hidden``) and each query's output is projected to
one action. One forward pass per chunk, so this is the cheapest head to sample; it
regresses to the mean of multimodal demonstrations, which L1 softens (a median).

State: when the backbone hands the state to the head (``state_mode="head"``) one extra
state token is prepended to the queries.

Mixture of horizons (``moh.horizons``, see ``horizons.py``): the queries run as N truncated copies
in one batch, each copy's queries past its horizon hidden from attention, fused by a learned gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from vla.models.heads.horizons import (
    HorizonSample,
    HorizonsPlanMixin,
    MixtureOfHorizons,
    MixtureOfHorizonsConfig,
    disagreement,
    repeat_prefix,
)
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
    moh: MixtureOfHorizonsConfig = field(default_factory=MixtureOfHorizonsConfig)  # mixture of horizons (off)

    def build(self, backbone, horizon: int, action_dim: int) -> RegressionHead:
        return RegressionHead(self, backbone, horizon, action_dim)


class RegressionHead(HorizonsPlanMixin, Head):
    def __init__(self, cfg: RegressionConfig, backbone, horizon: int, action_dim: int):
        super().__init__()
        if cfg.loss not in ("l1", "l2"):
            raise ValueError(f"regression head: loss must be 'l1' or 'l2', got {cfg.loss!r}")
        cfg.moh.check("regression", horizon)
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
        self.moh = MixtureOfHorizons(cfg.moh, cfg.width, horizon) if cfg.moh.enabled else None

    def predict(self, prefix: Prefix) -> torch.Tensor:
        """Prefix -> chunk (B, H, D) in one pass."""
        if self.moh is not None:
            return self.predict_horizons(prefix)[0]
        b = prefix.hidden.shape[0]
        tokens = self.queries.to(prefix.hidden.dtype).expand(b, -1, -1)  # (B, H, We)
        tokens = prepend_state(self.state_token, prefix, tokens)
        out = self.expert(tokens, prefix.mask, context=prefix.hidden)  # (B, [1+]H, We)
        return self.action_out(out[:, -self.horizon :])  # (B, H, D)

    def predict_horizons(self, prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix -> fused chunk (B, H, D), per-horizon chunks (B, N, H, D), gates (B, H, N): the N
        truncated copies run as one batch of B * N over the repeated prefix."""
        b, n = prefix.hidden.shape[0], self.moh.n
        prefix = repeat_prefix(prefix, n)
        tokens = self.queries.to(prefix.hidden.dtype).expand(b * n, -1, -1)  # (B*N, H, We)
        tokens = prepend_state(self.state_token, prefix, tokens)  # (B*N, A, We)
        a = tokens.shape[1]
        everyone = torch.ones(a, a, dtype=torch.bool, device=tokens.device)  # the plain head's (no mask)
        mask = self.moh.self_mask(everyone, a - self.horizon, b)  # (B*N, A, A)
        out = self.expert(tokens, prefix.mask, context=prefix.hidden, self_mask=mask)[:, -self.horizon :]
        fused, per, alpha = self.moh.mix(out, self.action_out(out))
        return fused.float(), per.float(), alpha

    def _error(self, pred: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (pred - actions).abs() if self.cfg.loss == "l1" else (pred - actions) ** 2

    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        actions = batch["actions"]
        check_shape("actions", actions, "B H D", H=self.horizon, D=self.action_dim)
        actions = actions.float()
        weights = action_weights(batch, actions)
        metrics = {}
        if self.moh is None:
            pred = self.predict(prefix_fn()).float()
            loss = masked_mean(self._error(pred, actions), weights)
        else:
            pred, per, alpha = self.predict_horizons(prefix_fn())
            loss, metrics = self.moh.loss(
                self._error(pred, actions), self._error(per, actions[:, None]), weights, alpha
            )
        with torch.no_grad():
            mae = masked_mean((pred - actions).abs(), weights)
        return loss, {"loss": loss.detach(), "mae": mae.detach(), **metrics}  # tensors: no sync in the hot loop

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        return self.predict(prefix_fn()).float()  # num_steps is meaningless for a one-pass head

    @torch.no_grad()
    def sample_details(self, prefix_fn, batch: dict, num_steps: int | None = None) -> HorizonSample:
        """The fused chunk with each horizon's chunk, the gates and the consensus prefix (needs moh.horizons)."""
        if self.moh is None:
            raise ValueError("regression head: sample_details needs policy.head.moh.horizons")
        fused, per, alpha = self.predict_horizons(prefix_fn())
        dis = disagreement(fused, per, alpha, batch.get("action_dim_mask"))
        return HorizonSample(fused, per, alpha, dis, self.moh.execute(dis))
