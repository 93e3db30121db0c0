"""pi0-style flow matching: an action expert that reads the VLM layer by layer.

The expert has as many layers as the backbone's language model; expert layer i attends
to [VLM layer i's keys/values over the prefix ; the expert's own tokens]. Its query heads,
kv heads and head_dim equal the VLM's (so the prefix K/V plug in without projection)
while its width is smaller (``expert_width``, half the VLM's by default; pi0: 1024 vs 2048).

Time convention (openpi's code, the reverse of the pi0 paper): t = 1 is pure noise,
t = 0 is data. x_t = t * noise + (1 - t) * actions, the target velocity is
u = dx_t/dt = noise - actions, and sampling integrates from t = 1 to t = 0 with Euler
steps of dt = -1 / num_steps. Training times follow Beta(1.5, 1) (noisier times more
often). Time enters as in pi0: a sinusoidal embedding concatenated to each action
token's embedding and mixed by an MLP.

The prefix (and its per-layer K/V) is computed once per ``sample`` call and reused at
every integration step; all loop state lives in local variables.

State: when the backbone hands the state to the head (``state_mode="head"``) one extra
state token precedes the action tokens (pi0's state token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla.models.compile import mark_step
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
from vla.models.heads.timesteps import sample_beta_time, sinusoidal_embedding
from vla.shapes import check_shape
from vla.types import Prefix


@HeadConfig.register_subclass("flow")
@dataclass
class FlowMatchingConfig(HeadConfig):
    expert_width: int | None = None  # None: half the backbone's width
    mlp_ratio: float = 4.0
    num_steps: int = 10  # Euler steps at sampling
    time_alpha: float = 1.5  # training times ~ Beta(time_alpha, time_beta)
    time_beta: float = 1.0

    def build(self, backbone, horizon: int, action_dim: int) -> FlowMatchingHead:
        return FlowMatchingHead(self, backbone, horizon, action_dim)


class FlowMatchingHead(Head):
    needs_kv = True

    def __init__(self, cfg: FlowMatchingConfig, backbone, horizon: int, action_dim: int):
        super().__init__()
        self.cfg, self.horizon, self.action_dim = cfg, horizon, action_dim
        width = cfg.expert_width or max(backbone.width // 2, 8)
        if width % 2:
            raise ValueError(f"flow head: expert_width must be even (sinusoidal time features), got {width}")
        self.width = width
        self.num_layers = backbone.num_layers
        self.expert = ActionExpert(
            ActionExpertConfig(
                width=width,
                num_layers=backbone.num_layers,
                num_heads=backbone.num_heads,
                num_kv_heads=backbone.num_kv_heads,
                head_dim=backbone.head_dim,
                mlp_ratio=cfg.mlp_ratio,
                max_tokens=horizon + 1,
            )
        )
        state_dim = head_state_dim(backbone)
        self.state_token = StateToken(state_dim, width) if state_dim else None
        self.action_in = nn.Linear(action_dim, width)
        self.time_mlp_in = nn.Linear(2 * width, width)  # pi0: action_time_mlp_in on [action ; time]
        self.time_mlp_out = nn.Linear(width, width)
        self.action_out = nn.Linear(width, action_dim)

    def velocity(self, prefix: Prefix, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy chunk (B, H, D) at times t (B,) -> predicted velocity (B, H, D)."""
        if prefix.keys is None or prefix.values is None:
            raise ValueError("flow head: prefix has no keys/values; call prefix_fn(with_kv=True)")
        if len(prefix.keys) != self.num_layers:
            raise ValueError(f"flow head: prefix has {len(prefix.keys)} K/V layers, expert has {self.num_layers}")
        dtype = self.action_in.weight.dtype
        tokens = self.action_in(x_t.to(dtype))  # (B, H, We)
        t_emb = sinusoidal_embedding(t, self.width).to(dtype)[:, None, :].expand_as(tokens)  # (B, H, We)
        tokens = self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([tokens, t_emb], dim=-1))))  # (B, H, We)
        tokens = prepend_state(self.state_token, prefix, tokens)
        out = self.expert(tokens, prefix.mask, context_kv=(prefix.keys, prefix.values))  # (B, [1+]H, We)
        return self.action_out(out[:, -self.horizon :]).float()  # (B, H, D)

    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        actions = batch["actions"].float()
        b = check_shape("actions", actions, "B H D", H=self.horizon, D=self.action_dim)["B"]
        weights = action_weights(batch, actions)
        actions = actions * weights  # padded entries -> 0, so their values never reach the expert's input
        prefix = prefix_fn(with_kv=True)
        noise = torch.randn_like(actions)
        t = sample_beta_time(b, self.cfg.time_alpha, self.cfg.time_beta, device=actions.device)  # (B,)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions  # (B, H, D)
        target = noise - actions  # velocity dx_t/dt
        err = (self.velocity(prefix, x_t, t) - target) ** 2
        loss = masked_mean(err, weights)
        return loss, {"loss": loss.detach()}  # tensors: the trainer decides when to sync

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        steps = num_steps or self.cfg.num_steps
        if steps < 1:
            raise ValueError(f"flow head: num_steps must be >= 1, got {steps}")
        prefix = prefix_fn(with_kv=True)  # once; reused by every Euler step
        b, device = prefix.hidden.shape[0], prefix.hidden.device
        x = batch.get("noise")  # (B, H, D) given per sample by the caller, or drawn here
        if x is None:
            x = torch.randn(b, self.horizon, self.action_dim, device=device)  # t = 1: noise
        dt = -1.0 / steps
        for i in range(steps):
            mark_step()  # compiled with CUDA graphs: the previous step's block outputs are dead
            t = torch.full((b,), 1.0 + i * dt, device=device)
            x = x + dt * self.velocity(prefix, x, t)
        return x  # t = 0: actions (B, H, D)
