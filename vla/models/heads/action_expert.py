"""A small transformer over action tokens, shared by the flow, diffusion and regression heads.

Each block attends jointly to [context keys/values ; its own tokens' keys/values] in one
softmax: the action tokens see every real context token and each other (bidirectional,
as in pi0's action expert). The context comes in one of two ways:

* ``context_kv``: per-layer (keys, values) of the VLM's language model, (B, K, T, Dh) each
  (the pi0 layout: expert layer i reads VLM layer i; the expert's query heads, kv heads
  and head_dim then equal the VLM's so the shapes line up, while its width is smaller);
* ``context``: the VLM's last hidden states (B, T, Wc), projected to keys/values by each
  block (cross-attention, used by the diffusion DiT and the regression decoder).

With ``adaln`` every block is modulated by a conditioning vector (DiT adaLN-Zero: shift,
scale and a zero-initialized gate per sub-layer), which is how the diffusion head
injects its timestep; the flow head instead mixes time into the tokens (pi0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class ActionExpertConfig:
    width: int = 256  # We: the expert's residual width (pi0: 1024 next to a 2048-wide VLM)
    num_layers: int = 4
    num_heads: int = 4  # query heads
    num_kv_heads: int = 4  # K; must divide num_heads
    head_dim: int = 64  # Dh
    mlp_ratio: float = 4.0
    max_tokens: int = 128  # learned positions for the expert's own tokens
    adaln: bool = False
    cond_dim: int = 0  # width of the adaLN conditioning vector when adaln
    context_width: int = 0  # >0: blocks project a context hidden (B, T, Wc) to keys/values themselves
    ffn: int | None = None  # MLP width; None: width * mlp_ratio

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"action expert: num_heads={self.num_heads} not divisible by num_kv_heads={self.num_kv_heads}"
            )
        if self.adaln and self.cond_dim <= 0:
            raise ValueError("action expert: adaln=True needs cond_dim > 0")

    @classmethod
    def cross_attention(
        cls,
        head: str,
        width: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        horizon: int,
        context_width: int,
        **extra,
    ) -> ActionExpertConfig:
        """An expert of its own width that projects the VLM's hidden states (``context_width``) itself:
        the DiT of the diffusion head and the decoder of the regression head. Room for H + 1 tokens (state)."""
        if width % num_heads:
            raise ValueError(f"{head} head: width={width} not divisible by num_heads={num_heads}")
        return cls(
            width=width,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_heads,
            head_dim=width // num_heads,
            mlp_ratio=mlp_ratio,
            max_tokens=horizon + 1,
            context_width=context_width,
            **extra,
        )


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # x (B, A, We), shift/scale (B, We)


class ExpertBlock(nn.Module):
    def __init__(self, cfg: ActionExpertConfig):
        super().__init__()
        w, dh = cfg.width, cfg.head_dim
        self.cfg = cfg
        self.norm1 = nn.LayerNorm(w, elementwise_affine=not cfg.adaln)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=not cfg.adaln)
        self.q = nn.Linear(w, cfg.num_heads * dh)
        self.k = nn.Linear(w, cfg.num_kv_heads * dh)
        self.v = nn.Linear(w, cfg.num_kv_heads * dh)
        self.o = nn.Linear(cfg.num_heads * dh, w)
        hidden = cfg.ffn or int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, w))
        if cfg.context_width:
            self.ctx_k = nn.Linear(cfg.context_width, cfg.num_kv_heads * dh)
            self.ctx_v = nn.Linear(cfg.context_width, cfg.num_kv_heads * dh)
        if cfg.adaln:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, 6 * w))
            nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(self.ada[1].bias)

    def forward(
        self,
        x: torch.Tensor,  # (B, A, We)
        ctx_k: torch.Tensor,  # (B, K, T, Dh)
        ctx_v: torch.Tensor,  # (B, K, T, Dh)
        attn_mask: torch.Tensor,  # (B, 1, 1 or A, T + A) bool, True = may attend
        cond: torch.Tensor | None,  # (B, cond_dim)
    ) -> torch.Tensor:
        if self.cfg.adaln:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=-1)  # 6 x (B, We)
            h = _modulate(self.norm1(x), shift1, scale1)
        else:
            h = self.norm1(x)
        q = rearrange(self.q(h), "b a (h d) -> b h a d", d=self.cfg.head_dim)  # (B, Hq, A, Dh)
        k = rearrange(self.k(h), "b a (k d) -> b k a d", d=self.cfg.head_dim)  # (B, K, A, Dh)
        v = rearrange(self.v(h), "b a (k d) -> b k a d", d=self.cfg.head_dim)
        k = torch.cat([ctx_k.to(k.dtype), k], dim=2)  # (B, K, T + A, Dh)
        v = torch.cat([ctx_v.to(v.dtype), v], dim=2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)  # (B, Hq, A, Dh)
        att = self.o(rearrange(att, "b h a d -> b a (h d)"))  # (B, A, We)
        if self.cfg.adaln:
            x = x + gate1[:, None] * att
            return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))
        x = x + att
        return x + self.mlp(self.norm2(x))

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, Wc) hidden -> keys, values (B, K, T, Dh) for this block's cross-attention."""
        k = rearrange(self.ctx_k(context), "b t (k d) -> b k t d", d=self.cfg.head_dim)
        v = rearrange(self.ctx_v(context), "b t (k d) -> b k t d", d=self.cfg.head_dim)
        return k, v


class ActionExpert(nn.Module):
    """Tokens (B, A, We) + context -> tokens (B, A, We), final-normed (adaLN-modulated if enabled)."""

    def __init__(self, cfg: ActionExpertConfig):
        super().__init__()
        self.cfg = cfg
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(ExpertBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=not cfg.adaln)
        if cfg.adaln:
            self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_dim, 2 * cfg.width))
            nn.init.zeros_(self.ada_out[1].weight)
            nn.init.zeros_(self.ada_out[1].bias)

    def forward(
        self,
        x: torch.Tensor,  # (B, A, We)
        context_mask: torch.Tensor,  # (B, T) bool, True = real context token
        *,
        context_kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,  # L x (B, K, T, Dh) each
        context: torch.Tensor | None = None,  # (B, T, Wc)
        cond: torch.Tensor | None = None,  # (B, cond_dim)
        self_mask: torch.Tensor | None = None,  # (A, A) or per sample (B, A, A) bool, who sees whom; None: everyone
    ) -> torch.Tensor:
        b, a, _ = x.shape
        if a > self.cfg.max_tokens:
            raise ValueError(f"action expert: {a} tokens exceed max_tokens={self.cfg.max_tokens}")
        if (context_kv is None) == (context is None):
            raise ValueError("action expert: pass exactly one of context_kv (per-layer K/V) or context (hidden)")
        if context_kv is not None and len(context_kv[0]) != len(self.blocks):
            raise ValueError(f"action expert: {len(context_kv[0])} context layers for {len(self.blocks)} expert layers")
        if self.cfg.adaln and cond is None:
            raise ValueError("action expert: adaln needs cond (B, cond_dim)")
        x = x + self.pos[:a].to(x.dtype)
        if self_mask is None:
            own = torch.ones(b, a, dtype=torch.bool, device=x.device)
            attn_mask = torch.cat([context_mask.to(torch.bool), own], dim=1)[:, None, None, :]  # (B, 1, 1, T + A)
        else:
            ctx = context_mask.to(torch.bool)[:, None, :].expand(b, a, -1)  # (B, A, T)
            own = self_mask.to(x.device).expand(b, a, a)  # (B, A, A); one (A, A) mask broadcasts
            attn_mask = torch.cat([ctx, own], dim=2)[:, None]  # (B, 1, A, T + A)
        if context is not None:
            context = context.to(x.dtype)
        for i, block in enumerate(self.blocks):
            if context_kv is not None:
                ctx_k, ctx_v = context_kv[0][i], context_kv[1][i]
            else:
                ctx_k, ctx_v = block.project_context(context)
            x = block(x, ctx_k, ctx_v, attn_mask, cond)
        x = self.norm_out(x)
        if self.cfg.adaln:
            shift, scale = self.ada_out(cond).chunk(2, dim=-1)
            x = _modulate(x, shift, scale)
        return x  # (B, A, We)


# ---- helpers the heads share around the expert ---------------------------------------


def head_state_dim(backbone) -> int:
    """S when the backbone hands the state to the head (``state_mode == "head"``), else 0.

    With ``state_mode == "token"`` the backbone already put the state into the prefix,
    so the head must not see it twice.
    """
    mode = getattr(backbone, "state_mode", None) or getattr(getattr(backbone, "cfg", None), "state_mode", "token")
    if mode == "head":
        state_dim = getattr(backbone, "state_dim", None)
        if not state_dim:
            raise ValueError(
                f"{type(backbone).__name__}: state_mode='head' but no state_dim attribute to size the head"
            )
        return int(state_dim)
    return 0


class StateToken(nn.Module):
    """Normalized state (B, S) -> one token (B, 1, W); padded state dims are zeroed first."""

    def __init__(self, state_dim: int, width: int):
        super().__init__()
        self.state_dim = state_dim
        self.proj = nn.Linear(state_dim, width)

    def forward(self, state: torch.Tensor | None, state_mask: torch.Tensor | None) -> torch.Tensor:
        if state is None:
            raise ValueError("head conditions on the state (backbone state_mode='head') but prefix.state is None")
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"prefix.state: expected (B, S={self.state_dim}), got {tuple(state.shape)}")
        if state_mask is not None:
            state = state * state_mask.to(state.dtype)
        return self.proj(state.to(self.proj.weight.dtype))[:, None, :]  # (B, 1, W)


def prepend_state(state_token: StateToken | None, prefix, tokens: torch.Tensor) -> torch.Tensor:
    """[state token ; tokens] (B, 1 + A, W) when the head reads the state itself, else ``tokens``."""
    if state_token is None:
        return tokens
    return torch.cat([state_token(prefix.state, prefix.state_mask).to(tokens.dtype), tokens], dim=1)


def action_weights(batch: dict, actions: torch.Tensor) -> torch.Tensor:
    """(B, H, D) float weights: 1 on real (step, dim) pairs, 0 on padded steps or dims."""
    b, h, d = actions.shape
    weights = torch.ones(b, h, d, dtype=actions.dtype, device=actions.device)
    if batch.get("action_pad") is not None:
        weights = weights * (~batch["action_pad"].to(torch.bool)).to(actions.dtype)[:, :, None]
    if batch.get("action_dim_mask") is not None:
        weights = weights * batch["action_dim_mask"].to(actions.dtype)[:, None, :]
    return weights


def masked_mean(err: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over samples of each sample's mean over its real (step, dim) entries.

    Every sample weighs the same however much of its chunk is padding, so the loss is a
    plain mean over the batch: the average of per-rank losses under DDP then equals the
    loss of one process on the whole global batch exactly. A sample of pure padding gives 0.
    """
    return per_sample_mean(err, weights).mean()


def per_sample_mean(err: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,): each sample's mean of ``err`` over its real (step, dim) entries (0 for pure padding)."""
    return (err * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp(min=1.0)
