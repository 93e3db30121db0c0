"""Discrete diffusion over action tokens (Discrete Diffusion VLA, Liang et al. 2025): the bins head's ``decoding="diffusion"``.

The chunk's ``L = H * D`` bin tokens form one block after the prefix (and the action-start token),
and the VLM itself denoises it with absorbing-mask ("masked") diffusion. The block is
bidirectional inside and sees the whole prefix; the prefix never sees it
(``encode(suffix_block=L)``). An extra VLM id, reserved below the start token like the action
ids, is the [MASK] token.

Training: a mask ratio ``gamma = cos(pi/2 * u)``, ``u ~ U[0, 1)`` per sample (the cosine schedule of
the decoder below) hides ``ceil(gamma * n)`` of the sample's ``n`` real tokens (at least one),
chosen at random; cross-entropy over the action ids on the hidden real tokens only. Padded steps
and dims are always [MASK] in the input and never a target, so their values reach nothing.
Draws come from ``batch["generators"]`` (one per sample, ``vla.utils.sample_rng``).

Decoding (``parallel_decode``): start fully masked; each of T rounds scores the block once
against the cached prefix (``backbone.decode_block``: the prefix is encoded once per chunk), takes
every position's most probable bin and its probability (the confidence), and keeps the
``L - m_k`` most confident positions, ``m_k = floor(L * cos(pi/2 * k/T))`` clamped so each round
commits at least one new token (T is capped at L). Committed tokens stay (``remask="none"``), or
compete again with their current probability times ``1 - k/T`` (``remask="soft"``, the rule of the
released code; the paper's threshold re-masking has no published thresholds). Greedy throughout
(argmax bins, no Gumbel noise on the confidences), so decoding is deterministic. The last round
commits every position, and those sampled tokens are returned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vla import types as T
from vla.models.heads.discrete import IGNORE, DiscreteHead
from vla.models.heads.tokenizers import BinsTokenizer
from vla.utils import sample_rng

MASKED = -1  # a masked position in a block of local token ids


def unmask_schedule(length: int, rounds: int) -> list[int]:
    """Positions still masked after each round: cosine, strictly decreasing, ending at 0.

    ``floor(L * cos(pi/2 * k/T))`` can stall for a round (L=12, T=12: 11, 11, ...), so each round
    keeps at most one fewer than the last, and at least one per round left: with T = L exactly one
    token per round. T > L would leave rounds with nothing to commit, so T is capped at L.
    """
    if length < 1 or rounds < 1:
        raise ValueError(f"unmask_schedule: need length >= 1 and rounds >= 1, got {length}, {rounds}")
    rounds = min(rounds, length)
    out, prev = [], length
    for k in range(1, rounds + 1):
        m = math.floor(length * math.cos(math.pi / 2 * k / rounds))
        prev = max(min(m, prev - 1), rounds - k)
        out.append(prev)
    return out


def training_mask(real: torch.Tensor, generators=None) -> torch.Tensor:
    """(B, L) bool real tokens -> (B, L) bool, the real tokens hidden behind [MASK] in this step.

    Row i draws its ratio and its positions from ``generators[i]`` alone (or the global RNG)."""
    b, length = real.shape
    ratio = torch.cos(math.pi / 2 * sample_rng.rand((b,), generators, real.device))  # (B,) in (0, 1]
    n_real = real.sum(1)
    n_mask = torch.minimum((ratio * n_real).ceil().long().clamp(min=1), n_real)  # (B,)
    scores = sample_rng.rand((b, length), generators, real.device).masked_fill(~real, 2.0)  # padding ranks last
    rank = scores.argsort(1).argsort(1)  # (B, L) each position's place in a random order of the real ones
    return (rank < n_mask[:, None]) & real


def parallel_decode(logits_fn, batch_size: int, length: int, rounds: int, remask: str, device) -> tuple:
    """Confidence-ordered parallel unmasking.

    ``logits_fn(tokens)`` maps (B, L) local ids (``MASKED`` where masked) to (B, L, V) logits.
    Returns the final tokens (B, L) and the committed tokens after each round (B, T, L), ``MASKED``
    where still masked (the decoding order, for tests and analysis).
    """
    schedule = unmask_schedule(length, rounds)
    tokens = torch.full((batch_size, length), MASKED, dtype=torch.long, device=device)
    history = []
    for k, n_masked in enumerate(schedule, 1):
        probs = logits_fn(tokens).float().softmax(-1)  # (B, L, V)
        confidence, guess = probs.max(-1)  # (B, L)
        committed = tokens != MASKED
        current = torch.where(committed, tokens, guess)
        if remask == "soft":
            still = probs.gather(-1, current[..., None])[..., 0] * (1 - k / len(schedule))
            score = torch.where(committed, still, confidence)
        else:
            score = confidence.masked_fill(committed, float("inf"))
        keep = torch.zeros_like(committed).scatter(1, score.topk(length - n_masked, dim=1).indices, True)
        tokens = current.masked_fill(~keep, MASKED)
        history.append(tokens)
    return current, torch.stack(history, 1)


class MaskedDiffusionHead(DiscreteHead):
    """The bins head trained and decoded as masked discrete diffusion (see the module docstring)."""

    n_special = 2  # [MASK], then the action-start token: the action and start ids stay those of the AR head

    def __init__(self, tokenizer: BinsTokenizer, backbone, horizon: int, action_dim: int, steps: int, remask: str):
        super().__init__(tokenizer, backbone, horizon, action_dim, max_tokens=horizon * action_dim)
        self.steps, self.remask = steps, remask
        self.register_buffer("mask_id", torch.tensor(self.special_ids[0]), persistent=False)  # () VLM id

    def _block_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) local ids with ``MASKED`` -> VLM ids with [MASK]."""
        return torch.where(tokens == MASKED, self.mask_id, self.action_ids[tokens.clamp(min=0)])

    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        targets, metrics = self._targets(batch)  # (B, L), IGNORE on padding
        b, length = targets.shape
        real = targets != IGNORE
        hidden_tokens = training_mask(real, batch.get(T.GENERATORS))  # (B, L)
        inputs = targets.masked_fill(hidden_tokens | ~real, MASKED)  # padding is always [MASK]: unknown
        state = batch.get("state") if self.state_token is not None else None
        start = self._start_embeds(state, batch.get("state_mask"), b)  # (B, S0, W)
        suffix = torch.cat([start, self._embed(self._block_ids(inputs))], 1)  # (B, S0 + L, W)
        prefix = prefix_fn(suffix_embeds=suffix, suffix_block=length)
        logits = self._action_logits(prefix.hidden[:, -length:])  # (B, L, n_action)
        scored = targets.masked_fill(~hidden_tokens, IGNORE)  # only the masked real tokens are predicted
        loss = F.cross_entropy(logits.flatten(0, 1), scored.flatten(), ignore_index=IGNORE)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == targets) & hidden_tokens).sum() / hidden_tokens.sum().clamp(min=1)
            ratio = hidden_tokens.sum() / real.sum().clamp(min=1)
        metrics.update(loss=loss.detach(), token_accuracy=acc.detach(), mask_ratio=ratio.detach())
        return loss, metrics

    @torch.no_grad()
    def decode_tokens(self, prefix_fn, batch: dict, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Local ids (B, L) and the per-round committed tokens (B, T, L): one prefix pass, T block passes."""
        state = batch.get("state") if self.state_token is not None else None
        b = len(batch["instruction"]) if "instruction" in batch else batch["state"].shape[0]
        start = self._start_embeds(state, batch.get("state_mask"), b)
        prefix = prefix_fn(suffix_embeds=start, use_cache=True)  # prefix + [state] + start, cached once

        def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
            hidden = self.backbone.decode_block(prefix, self._embed(self._block_ids(tokens)))  # cache kept as is
            return self._action_logits(hidden)

        return parallel_decode(logits_fn, b, self.horizon * self.action_dim, rounds, self.remask, start.device)

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        """``num_steps`` rounds of parallel decoding (the config's ``diffusion_steps`` when None)."""
        tokens, _ = self.decode_tokens(prefix_fn, batch, num_steps or self.steps)
        return self._detokenize(tokens.cpu().numpy()).to(tokens.device)  # .cpu(): once per chunk
