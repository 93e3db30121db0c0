"""Mixture of Horizons (MoH, Jing et al., arXiv 2511.19433): one head, several chunk lengths at once, fused per step.

A long chunk gives a policy foresight but its far actions are hard to fit, and they pull on the near
ones; a short chunk is precise but myopic. MoH runs the head's own action expert on N truncated copies
of the chunk (horizons ``h_1 < ... < h_N = H``) in one batch over one shared prefix (repeated
``repeat_interleave``-style, so copy ``i`` of sample ``b`` is row ``b * N + i``), and fuses the copies
step by step with a learned gate: step ``k`` (1-based) mixes the horizons that reach it (``h >= k``),

    alpha[k, h] = softmax over {h >= k} of gate(token of step k in copy h),   a_k = sum_h alpha[k, h] a_k^(h).

The gate is ``Linear(width -> 1)`` on the expert's output tokens (zero-initialized: it starts as the mean
of the valid horizons). In copy ``h`` the action tokens past ``h`` are padding, hidden from every
token's *attention* (not only from the loss): a short horizon then predicts exactly what a head built
for ``h`` steps would, whatever sits in the padded slots.

Training loss (the paper's): ``L_mix + individual_weight * sum_h L^(h) + balance_weight * L_bal``, with
``L^(h)`` the head's own error on steps ``1..h`` of copy ``h`` and ``L_bal`` the squared coefficient of
variation of mean gate usage, averaged over the step intervals ``(h_{i-1}, h_i]`` that more than one
horizon reaches (without it the gate collapses onto one horizon).

Inference (the paper's Algorithm 1, "cross-horizon consensus"): per step the gate-weighted L1
disagreement of the horizons with the fused chunk; a prefix of at least ``n`` actions is always
executed, and it extends while a step's disagreement stays within ``ratio`` times the mean over the
first ``n`` steps and at least ``m`` horizons still reach it. The paper's text says "at least m"
(its code stops at ``<= m``); we follow the text.

Not implemented: the reference code's learned gate noise during training (std ``softplus + 0.01``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from vla.config import at_least
from vla.models.heads.action_expert import masked_mean
from vla.types import Prefix


@dataclass
class MixtureOfHorizonsConfig:
    """``policy.head.moh``: off unless ``horizons`` is set (flow and regression heads)."""

    horizons: list[int] | None = None  # e.g. [3, 6, 9, 12, 15]; strictly increasing, the last = chunk_size
    balance_weight: float = 1e-3  # lambda_bal on the gate's load-balance loss
    individual_weight: float = 1.0  # lambda_ind on the sum of the per-horizon losses
    # Inference: execute only the prefix the horizons agree on (the policy's action queue then replans
    # after it instead of after n_action_steps). Paper defaults: n = 5, m = 5, r in [1.0, 1.4] (1.1 plotted).
    consensus: bool = False
    consensus_ratio: float = 1.1  # r: a step joins the prefix while its disagreement <= r * mean of the first n
    consensus_min_horizons: int = 5  # m: and while at least m horizons reach it
    consensus_min_steps: int = 5  # n: always execute at least this many actions
    consensus_max_steps: int | None = None  # never more than this many (None: the whole chunk)

    def __post_init__(self):
        if self.horizons is not None:
            self.horizons = [int(h) for h in self.horizons]
            if not self.horizons or self.horizons[0] < 1 or any(a >= b for a, b in itertools.pairwise(self.horizons)):
                raise ValueError(f"moh.horizons must be positive and strictly increasing, got {self.horizons}")
        at_least("moh.balance_weight", self.balance_weight, 0.0)
        at_least("moh.individual_weight", self.individual_weight, 0.0)
        at_least("moh.consensus_ratio", self.consensus_ratio, 0.0)
        at_least("moh.consensus_min_horizons", self.consensus_min_horizons, 1)
        at_least("moh.consensus_min_steps", self.consensus_min_steps, 1)
        if self.consensus_max_steps is not None and self.consensus_max_steps < self.consensus_min_steps:
            raise ValueError(
                f"moh.consensus_max_steps={self.consensus_max_steps} is below "
                f"moh.consensus_min_steps={self.consensus_min_steps}"
            )

    @property
    def enabled(self) -> bool:
        return self.horizons is not None

    def check(self, head: str, chunk_size: int) -> None:
        """Raise if this mixture cannot run on a chunk of ``chunk_size`` (called when the head is built)."""
        if not self.enabled:
            if self.consensus:
                raise ValueError(f"{head} head: moh.consensus needs moh.horizons")
            return
        if self.horizons[-1] != chunk_size:
            raise ValueError(
                f"{head} head: the largest of moh.horizons={self.horizons} must equal policy.chunk_size={chunk_size}"
            )
        if self.consensus and self.consensus_min_steps > chunk_size:
            raise ValueError(
                f"{head} head: moh.consensus_min_steps={self.consensus_min_steps} exceeds chunk_size={chunk_size}"
            )
        if self.consensus and self.consensus_min_horizons > len(self.horizons):
            raise ValueError(
                f"{head} head: moh.consensus_min_horizons={self.consensus_min_horizons} exceeds the "
                f"{len(self.horizons)} horizons {self.horizons}: consensus could never extend the prefix"
            )


@dataclass
class HorizonSample:
    """What an MoH head's ``sample_details`` returns, for inspection and for the action queue."""

    chunk: torch.Tensor  # (B, H, D) the fused chunk (what ``sample`` returns)
    horizon_chunks: torch.Tensor  # (B, N, H, D) each horizon's chunk; steps past h are 0
    gates: torch.Tensor  # (B, H, N) alpha: sums to 1 over the horizons reaching each step, 0 elsewhere
    disagreement: torch.Tensor  # (B, H) gate-weighted L1 distance of the horizons from the fused chunk
    execute: torch.Tensor  # (B,) long: the consensus prefix length (how many leading actions to play)


# ---- pure functions: masks, fusion, losses, consensus -------------------------------------------------


def valid_steps(horizons: list[int], chunk_size: int, device=None) -> torch.Tensor:
    """(N, H) bool: step k (0-based) of copy i is real, k < horizons[i]."""
    steps = torch.arange(chunk_size, device=device)
    return steps[None, :] < torch.tensor(horizons, device=device)[:, None]


def truncated_self_mask(base: torch.Tensor, horizons: list[int], num_state: int, batch: int) -> torch.Tensor:
    """(B * N, A, A) bool: the head's own suffix mask ``base`` (A, A) with the padded action tokens of each
    copy removed as keys, so no token of copy ``h`` attends to a step past ``h``. Padded tokens still
    attend (to the prefix and the real tokens): their outputs are never read, and no row is empty."""
    a = base.shape[-1]
    keys = torch.ones(len(horizons), a, dtype=torch.bool, device=base.device)  # (N, A)
    keys[:, num_state:] = valid_steps(horizons, a - num_state, base.device)
    mask = base.to(torch.bool)[None] & keys[:, None, :]  # (N, A, A)
    return mask.repeat(batch, 1, 1)  # row b * N + i is copy i of sample b


def repeat_prefix(prefix: Prefix, n: int) -> Prefix:
    """The prefix of every sample repeated n times in place (B -> B * N rows, copy i of sample b at b * N + i).

    ``extras`` (a backbone's cache for autoregressive decoding) is dropped: these heads never read it."""

    def rep(x):
        return None if x is None else x.repeat_interleave(n, dim=0)

    return dataclasses.replace(
        prefix,
        hidden=rep(prefix.hidden),
        mask=rep(prefix.mask),
        keys=None if prefix.keys is None else [rep(k) for k in prefix.keys],
        values=None if prefix.values is None else [rep(v) for v in prefix.values],
        state=rep(prefix.state),
        state_mask=rep(prefix.state_mask),
        next_pos=rep(prefix.next_pos),
        extras={},
    )


def gate_weights(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Gate logits (B, N, H) and valid (N, H) -> alpha (B, H, N): softmax over the horizons reaching each step."""
    logits = logits.float().masked_fill(~valid[None], float("-inf"))
    return rearrange(logits.softmax(dim=1), "b n h -> b h n")  # the largest horizon reaches every step: no NaN


def fuse(per_horizon: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(B, N, H, D) per-horizon outputs and alpha (B, H, N) -> the fused (B, H, D)."""
    return torch.einsum("bnhd,bhn->bhd", per_horizon, alpha.to(per_horizon.dtype))


def balance_loss(alpha: torch.Tensor, horizons: list[int], step_weights: torch.Tensor) -> torch.Tensor:
    """Mean over the intervals (h_{i-1}, h_i] reached by more than one horizon of CV^2 of the mean gate usage.

    ``alpha`` (B, H, N); ``step_weights`` (B, H) 1 on real steps, 0 on padded ones (which carry no usage).
    A single horizon (or nothing but padding) gives 0.
    """
    terms = []
    start = 0
    for i, end in enumerate(horizons):
        active = len(horizons) - i  # horizons i..N-1 reach the steps start..end-1
        w = step_weights[:, start:end].to(alpha.dtype)  # (B, h_i - h_{i-1})
        if active > 1 and w.sum() > 0:
            usage = (alpha[:, start:end, i:] * w[..., None]).sum((0, 1)) / w.sum()  # (active,)
            terms.append(usage.var(unbiased=False) / usage.mean().pow(2).clamp(min=1e-12))
        start = end
    return torch.stack(terms).mean() if terms else alpha.new_zeros(())


def disagreement(
    fused: torch.Tensor, per_horizon: torch.Tensor, alpha: torch.Tensor, dim_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """d_k = sum_h alpha[k, h] * ||a_k - a_k^(h)||_1 over the real action dims -> (B, H).

    ``fused`` (B, H, D), ``per_horizon`` (B, N, H, D), ``alpha`` (B, H, N) (0 on horizons not reaching
    step k, so they never count); ``dim_mask`` (B, D) drops padded action dims, whose outputs are untrained.
    """
    diff = (fused[:, None] - per_horizon).abs()  # (B, N, H, D)
    if dim_mask is not None:
        diff = diff * dim_mask.to(diff.dtype)[:, None, None, :]
    return torch.einsum("bnh,bhn->bh", diff.sum(-1), alpha.to(diff.dtype))


def consensus_length(
    dis: torch.Tensor,
    horizons: list[int],
    ratio: float,
    min_horizons: int,
    min_steps: int,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Algorithm 1 of the paper: how many leading actions of each chunk to execute -> (B,) long.

    ``dis`` (B, H): per-step disagreement. The first ``n = min_steps`` steps always run; step ``k > n``
    (1-based) joins while every step up to it has ``dis <= ratio * mean(dis[:n])`` and at least
    ``min_horizons`` horizons reach it (``h >= k``). The result is cut to ``max_steps`` (None: H).
    """
    b, chunk = dis.shape
    n = min(min_steps, chunk)
    thr = ratio * dis[:, :n].mean(dim=1, keepdim=True)  # (B, 1)
    reach = (torch.tensor(horizons, device=dis.device)[None, :] > torch.arange(chunk, device=dis.device)[:, None]).sum(
        1
    )
    ok = (dis[:, n:] <= thr) & (reach[n:] >= min_horizons)[None]  # (B, H - n) step may join
    extra = ok.to(torch.long).cumprod(dim=1).sum(dim=1)  # the run of joining steps right after the first n
    return (n + extra).clamp(max=max_steps or chunk)


# ---- the module a head owns ---------------------------------------------------------------------------


class MixtureOfHorizons(nn.Module):
    """The gate and the bookkeeping of one head's horizon mixture (see the module docstring)."""

    def __init__(self, cfg: MixtureOfHorizonsConfig, width: int, chunk_size: int):
        super().__init__()
        self.cfg, self.horizons, self.chunk_size = cfg, list(cfg.horizons), chunk_size
        self.gate = nn.Linear(width, 1)
        nn.init.zeros_(self.gate.weight)  # starts as the plain mean of the horizons reaching each step
        nn.init.zeros_(self.gate.bias)
        self.register_buffer("valid", valid_steps(self.horizons, chunk_size), persistent=False)  # (N, H)

    @property
    def n(self) -> int:
        return len(self.horizons)

    def self_mask(self, base: torch.Tensor, num_state: int, batch: int) -> torch.Tensor:
        return truncated_self_mask(base, self.horizons, num_state, batch)  # (B * N, A, A)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B * N, H, ...) rows of the batched copies -> (B, N, H, ...)."""
        return rearrange(x, "(b n) ... -> b n ...", n=self.n)

    def mix(self, tokens: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert tokens (B*N, H, W) and the head's outputs from them (B*N, H, D) -> fused (B, H, D),
        per-horizon outputs (B, N, H, D) with padded steps zeroed, alpha (B, H, N)."""
        per = self.split(outputs)
        per = per * self.valid[None, :, :, None].to(per.dtype)  # padded steps: 0, never NaN into the sum
        alpha = gate_weights(self.split(self.gate(tokens.to(self.gate.weight.dtype)).squeeze(-1)), self.valid)
        return fuse(per, alpha), per, alpha

    def loss(
        self, fused_err: torch.Tensor, horizon_err: torch.Tensor, weights: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """The MoH training loss from the head's elementwise errors, each term reduced like the plain head's.

        ``fused_err`` (B, H, D) of the fused output, ``horizon_err`` (B, N, H, D) of each copy, ``weights``
        (B, H, D) 1 on real entries; copy h's loss counts its steps 1..h only.
        """
        mix = masked_mean(fused_err, weights)
        per = [masked_mean(horizon_err[:, i], weights * self.valid[i][None, :, None]) for i in range(self.n)]
        individual = torch.stack(per).sum()
        bal = balance_loss(alpha, self.horizons, (weights.sum(-1) > 0).to(alpha.dtype))
        total = mix + self.cfg.individual_weight * individual + self.cfg.balance_weight * bal
        metrics = {"moh_mix": mix.detach(), "moh_individual": individual.detach(), "moh_balance": bal.detach()}
        metrics.update({f"moh_h{h}": p.detach() for h, p in zip(self.horizons, per, strict=True)})
        return total, metrics

    def execute(self, dis: torch.Tensor) -> torch.Tensor:
        """(B, H) disagreement -> (B,) consensus prefix lengths with this config's r, m, n."""
        c = self.cfg
        return consensus_length(
            dis,
            self.horizons,
            c.consensus_ratio,
            c.consensus_min_horizons,
            c.consensus_min_steps,
            c.consensus_max_steps,
        )


class HorizonsPlanMixin:
    """For a head with ``self.moh`` (MixtureOfHorizons or None) and ``sample_details``: with
    ``moh.consensus`` its ``sample_plan`` says how many leading actions of each chunk to execute."""

    @property
    def chooses_execute(self) -> bool:
        return self.moh is not None and self.moh.cfg.consensus

    def sample_plan(self, prefix_fn, batch: dict, num_steps: int | None = None):
        if not self.chooses_execute:
            return super().sample_plan(prefix_fn, batch, num_steps)
        details = self.sample_details(prefix_fn, batch, num_steps)
        return details.chunk, details.execute
