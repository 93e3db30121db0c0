"""Discrete heads (``bins``, ``fast``): action tokens decoded through the VLM's own LM head.

Action tokens live inside the VLM vocabulary, OpenVLA-style: the head takes the last
ids of the vocabulary (the LM head's rows), skipping the tokenizer's special and added
tokens (image placeholders, ``<loc>``/``<seg>``, chat markers), so no token a prompt uses
has its embedding repurposed. The highest ``n_action`` such ids are the action tokens
(local id k -> ``action_ids[k]``) and the id just below them is the action-start token.

Training is teacher forcing: ``prefix_fn(suffix_embeds=embed([start, a_1 .. a_{L-1}]))``
runs the VLM with a causal suffix after the prefix, and the suffix hidden states predict
``a_1 .. a_L`` through ``backbone.lm_logits``. The softmax is restricted to the action
ids (the same constraint as at sampling). Sampling is greedy autoregressive decoding with
the VLM's KV cache (``prefix_fn(use_cache=True)`` + ``backbone.decode_step``).

* ``bins``: H * D tokens per chunk, step-major; padded steps and dims are masked token by token.
* ``fast``: a variable-length FAST sequence plus an end token, at most ``max_tokens``.
  FAST tokens mix all steps (DCT), so they cannot be masked per step: padded steps are
  filled with the last real step and padded dims with 0 before encoding, so padding
  carries no data into the targets.

The FAST tokenizer must be fitted before training: ``FastHeadConfig.tokenizer_path``
loads one saved by ``vla data fit-tokenizer``, else the trainer calls
``head.fit_tokenizer(chunks)``. Its state is not a tensor, so it is not in
``state_dict()``: a checkpoint stores ``head.tokenizer_state()`` (a JSON-able dict)
and restores it with ``head.load_tokenizer_state(state)`` (or ``save_tokenizer(dir)`` /
``load_tokenizer(dir)``).

``decoding="diffusion"`` (bins only): discrete diffusion over the same tokens instead of teacher
forcing and greedy decoding (Discrete Diffusion VLA; ``masked_diffusion.py``).

State: with ``state_mode="head"`` one state token (from ``batch["state"]``, which must be the
normalized state as the Policy passes it) is prepended to the suffix, before the start token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from vla.models.heads.action_expert import StateToken, head_state_dim
from vla.models.heads.base import Head, HeadConfig
from vla.models.heads.tokenizers import (
    ActionTokenizer,
    BinsTokenizer,
    FastTokenizer,
    check_tokenizer_normalization,
    load_tokenizer,
    tokenizer_from_state,
)
from vla.shapes import check_shape

IGNORE = -100  # cross-entropy target of padded tokens


@dataclass
class TokenHeadConfig(HeadConfig):
    """What the token heads share: their vocabulary covers normalized actions in [-1, 1], so the
    actions must be normalized into that range (q01/q99 or min/max), not by mean/std.

    ``decoding``: ``autoregressive`` (teacher forcing, greedy decoding token by token) or ``diffusion``
    (masked discrete diffusion over the whole chunk, ``masked_diffusion.py``): a random fraction of the
    tokens is replaced by a [MASK] token and predicted with a bidirectional action block; decoding
    unmasks the most confident tokens over ``diffusion_steps`` rounds (``sample(num_steps=T)`` overrides
    it). ``remask``: ``none`` (a committed token stays) or ``soft`` (the released code's rule: committed
    tokens compete again each round with their current probability scaled by 1 - k/T).
    """

    action_norms = ("quantile", "min_max")
    default_action_norm = "quantile"
    # diffusion needs a chunk of a fixed number of tokens known before decoding (bins: H*D)
    supports_diffusion: ClassVar[bool] = False
    decoding: Literal["autoregressive", "diffusion"] = "autoregressive"
    diffusion_steps: int = 12  # T, the parallel decoding rounds (the paper's code default)
    remask: Literal["none", "soft"] = "none"

    def __post_init__(self):
        if self.decoding not in ("autoregressive", "diffusion"):
            raise ValueError(f"decoding must be 'autoregressive' or 'diffusion', got {self.decoding!r}")
        if self.remask not in ("none", "soft"):
            raise ValueError(f"remask must be 'none' or 'soft', got {self.remask!r}")
        if self.diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be >= 1, got {self.diffusion_steps}")
        if self.decoding == "diffusion" and not self.supports_diffusion:
            raise ValueError(
                f"policy.head.decoding='diffusion' is not supported by the {self.type} head: discrete diffusion "
                "decodes a block of a fixed number of tokens in parallel, and this head's chunks vary in length "
                "and end with an end token (which would need padding/end handling inside the block); use "
                "policy.head.type=bins with decoding=diffusion, or decoding=autoregressive"
            )


@HeadConfig.register_subclass("bins")
@dataclass
class BinsHeadConfig(TokenHeadConfig):
    n_bins: int = 256  # uniform bins per dim over the normalized range [-1, 1]

    supports_diffusion = True

    def build(self, backbone, horizon: int, action_dim: int) -> DiscreteHead:
        tokenizer = BinsTokenizer(self.n_bins)
        if self.decoding == "diffusion":
            from vla.models.heads.masked_diffusion import MaskedDiffusionHead  # imports this module

            return MaskedDiffusionHead(tokenizer, backbone, horizon, action_dim, self.diffusion_steps, self.remask)
        return DiscreteHead(tokenizer, backbone, horizon, action_dim, max_tokens=horizon * action_dim)


@HeadConfig.register_subclass("fast")
@dataclass
class FastHeadConfig(TokenHeadConfig):
    vocab_size: int = 1024  # FAST BPE vocabulary; the head reserves vocab_size + 1 (end token) VLM ids
    scale: float = 10.0  # DCT coefficient scale
    max_tokens: int = 256  # longest decoded sequence, end token included
    tokenizer_path: str | None = None  # a directory written by `vla data fit-tokenizer`

    def check_action_norm(self, mode: str) -> None:
        super().check_action_norm(mode)
        if self.tokenizer_path:  # a tokenizer fitted by `vla data fit-tokenizer` records its normalization
            check_tokenizer_normalization(load_tokenizer(self.tokenizer_path), mode, self.tokenizer_path)

    def build(self, backbone, horizon: int, action_dim: int) -> DiscreteHead:
        tokenizer = (
            load_tokenizer(self.tokenizer_path) if self.tokenizer_path else FastTokenizer(self.vocab_size, self.scale)
        )
        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(
                f"fast head: tokenizer at {self.tokenizer_path} has {tokenizer.vocab_size} ids > vocab_size={self.vocab_size}"
            )
        return DiscreteHead(
            tokenizer, backbone, horizon, action_dim, max_tokens=self.max_tokens, n_action_ids=self.vocab_size
        )


def action_vocab_ids(vocab_size: int, reserved: set[int], n: int) -> list[int]:
    """The highest ``n`` ids below ``vocab_size`` not in ``reserved``, ascending."""
    ids = [i for i in range(vocab_size - 1, -1, -1) if i not in reserved][:n]
    if len(ids) < n:
        raise ValueError(f"discrete head: needs {n} action ids but the vocabulary has only {len(ids)} free ids")
    return ids[::-1]


def reserved_token_ids(backbone) -> set[int]:
    """Ids the prompt may use and an action token must not take: special and added tokens."""
    reserved = set()
    tok = getattr(backbone, "tokenizer", None)
    if tok is not None:
        reserved |= set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}))
    if getattr(backbone, "image_token_id", None) is not None:
        reserved.add(int(backbone.image_token_id))
    return reserved


def fill_padding(actions: np.ndarray, action_pad: np.ndarray | None, dim_mask: np.ndarray | None) -> np.ndarray:
    """(B, H, D): padded steps take the last real step's values (0 before any), padded dims become 0."""
    out = actions.copy()
    h = actions.shape[1]
    if action_pad is not None:
        real = ~action_pad.astype(bool)  # (B, H)
        last_real = np.maximum.accumulate(np.where(real, np.arange(h)[None], 0), axis=1)  # (B, H)
        seen = np.logical_or.accumulate(real, axis=1)  # (B, H) a real step at or before h
        out = np.take_along_axis(out, last_real[:, :, None], axis=1) * seen[:, :, None]
    if dim_mask is not None:
        out = out * dim_mask.astype(out.dtype)[:, None, :]
    return out


class DiscreteHead(Head):
    needs_suffix = True
    n_special = 1  # VLM ids reserved below the action ids: the action-start token (diffusion adds [MASK])

    def __init__(
        self,
        tokenizer: ActionTokenizer,
        backbone,
        horizon: int,
        action_dim: int,
        *,
        max_tokens: int,
        n_action_ids: int | None = None,
    ):
        super().__init__()
        fitted_shape = (getattr(tokenizer, "horizon", None), getattr(tokenizer, "action_dim", None))
        if tokenizer.is_fitted and None not in fitted_shape and fitted_shape != (horizon, action_dim):
            raise ValueError(
                f"discrete head: tokenizer was fitted on (H, D)={fitted_shape}, head has {(horizon, action_dim)}"
            )
        self.tokenizer = tokenizer
        self.horizon, self.action_dim, self.max_tokens = horizon, action_dim, max_tokens
        self.fixed_length = isinstance(tokenizer, BinsTokenizer)  # H*D tokens, no end token
        n_tokens = n_action_ids or tokenizer.vocab_size
        self.eos = None if self.fixed_length else n_tokens  # local id of the end token
        self.n_action = n_tokens + (0 if self.fixed_length else 1)
        ids = action_vocab_ids(backbone.vocab_size, reserved_token_ids(backbone), self.n_action + self.n_special)
        self.special_ids = ids[: self.n_special]  # ascending; the start token is the last, just below the actions
        self.register_buffer("start_id", torch.tensor([ids[self.n_special - 1]]), persistent=False)  # (1,)
        self.register_buffer("action_ids", torch.tensor(ids[self.n_special :]), persistent=False)  # (n_action,)
        self.width = backbone.width
        # The head calls the backbone's embeddings, LM head and decode_step but does not own
        # their weights: a plain tuple keeps nn.Module from registering the backbone as a child
        # (its parameters would appear twice in the policy's state_dict and optimizer).
        self._backbone_ref = (backbone,)
        state_dim = head_state_dim(backbone)
        self.state_token = StateToken(state_dim, backbone.width) if state_dim else None

    # ---- tokenizer management ---------------------------------------------------------
    def fit_tokenizer(self, chunks: np.ndarray, normalization: str) -> dict[str, float]:
        """Fit the action tokenizer on chunks (N, H, D) normalized with ``normalization`` (recorded in
        the tokenizer); returns its round-trip report."""
        chunks = np.asarray(chunks)
        check_shape("chunks", chunks, "N H D", H=self.horizon, D=self.action_dim)
        self.tokenizer.fit(chunks)
        self.tokenizer.normalization = normalization
        if self.tokenizer.vocab_size > self.n_action - (0 if self.fixed_length else 1):
            raise ValueError(f"fitted tokenizer has {self.tokenizer.vocab_size} ids, head reserved {self.n_action}")
        return self.tokenizer.report(chunks[:1000])

    def tokenizer_state(self) -> dict:
        return self.tokenizer.state_dict()

    def load_tokenizer_state(self, state: dict) -> None:
        self.tokenizer = tokenizer_from_state(state)

    def save_tokenizer(self, directory: str | os.PathLike) -> None:
        self.tokenizer.save(directory)

    def load_tokenizer(self, directory: str | os.PathLike) -> None:
        self.tokenizer = load_tokenizer(directory)

    # ---- helpers ----------------------------------------------------------------------
    @property
    def backbone(self):
        return self._backbone_ref[0]

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(ids)  # (B, T) -> (B, T, W)

    def _start_embeds(self, prefix_state, state_mask, b: int) -> torch.Tensor:
        """[state token]? + start token embeddings: (B, 1 or 2, W)."""
        start = self._embed(self.start_id.expand(b, 1))  # (B, 1, W)
        if self.state_token is None:
            return start
        return torch.cat([self.state_token(prefix_state, state_mask).to(start.dtype), start], dim=1)

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, W) -> (B, L, n_action) logits over the action ids only (float32)."""
        return self.backbone.lm_logits(hidden, ids=self.action_ids).float()

    def _targets(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Local target ids (B, L) with IGNORE on padding, and tokenization metrics."""
        actions = batch["actions"]
        b = check_shape("actions", actions, "B H D", H=self.horizon, D=self.action_dim)["B"]
        pad = batch.get("action_pad")
        dims = batch.get("action_dim_mask")
        if self.fixed_length:
            ids = torch.as_tensor(self.tokenizer.encode_array(actions.detach().float().cpu().numpy()))  # (B, H, D)
            ignore = torch.zeros(b, self.horizon, self.action_dim, dtype=torch.bool)
            if pad is not None:
                ignore |= pad.bool().cpu()[:, :, None]
            if dims is not None:
                ignore |= ~dims.bool().cpu()[:, None, :]
            ids = ids.masked_fill(ignore, IGNORE).reshape(b, -1)  # (B, H*D) step-major
            return ids.to(actions.device), {}
        if not self.tokenizer.is_fitted:
            raise RuntimeError("fast head: tokenizer not fitted; call head.fit_tokenizer(chunks) or set tokenizer_path")
        filled = fill_padding(
            actions.detach().float().cpu().numpy(),  # .cpu(): sync point, once per step (BPE runs on CPU)
            None if pad is None else pad.cpu().numpy(),
            None if dims is None else dims.cpu().numpy(),
        )
        seqs, truncated = [], 0
        for chunk in filled:
            seq = self.tokenizer.encode(chunk) + [self.eos]
            truncated += len(seq) > self.max_tokens
            seqs.append(seq[: self.max_tokens])
        length = max(len(s) for s in seqs)
        ids = torch.full((b, length), IGNORE, dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq)
        metrics = {"tokens_per_chunk": float(np.mean([len(s) for s in seqs])), "truncated_frac": truncated / b}
        return ids.to(actions.device), metrics

    # ---- contract ---------------------------------------------------------------------
    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        targets, metrics = self._targets(batch)  # (B, L)
        b, length = targets.shape
        real = targets != IGNORE  # (B, L)
        # teacher-forcing inputs: start, then the previous targets (ignored ones embed as action id 0)
        prev = self.action_ids[targets.clamp(min=0)[:, :-1]]  # (B, L-1) VLM ids
        state = batch.get("state") if self.state_token is not None else None
        start = self._start_embeds(state, batch.get("state_mask"), b)  # (B, S0, W)
        suffix = torch.cat([start, self._embed(prev)], dim=1)  # (B, S0 + L - 1, W)
        # the FAST padding after the end token is masked out of attention; bins keep every input
        suffix_mask = torch.cat([torch.ones(b, start.shape[1], dtype=torch.bool, device=real.device), real[:, :-1]], 1)
        if self.fixed_length:
            suffix_mask = torch.ones_like(suffix_mask)
        prefix = prefix_fn(suffix_embeds=suffix, suffix_mask=suffix_mask)
        logits = self._action_logits(prefix.hidden[:, -length:])  # (B, L, n_action)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == targets) & real).sum() / real.sum().clamp(min=1)
        metrics.update(loss=loss.detach(), token_accuracy=acc.detach())  # tensors: no sync in the hot loop
        return loss, metrics

    @torch.no_grad()
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        """Greedy decoding; ``num_steps`` is unused (the length is H*D or up to the end token)."""
        if not self.fixed_length and not self.tokenizer.is_fitted:
            raise RuntimeError("fast head: tokenizer not fitted; call head.fit_tokenizer(chunks) or set tokenizer_path")
        state = batch.get("state") if self.state_token is not None else None
        b = len(batch["instruction"]) if "instruction" in batch else batch["state"].shape[0]
        start = self._start_embeds(state, batch.get("state_mask"), b)
        prefix = prefix_fn(suffix_embeds=start, use_cache=True)  # local: this call's own KV cache
        hidden = prefix.hidden[:, -1:]  # (B, 1, W)
        n_steps = self.horizon * self.action_dim if self.fixed_length else self.max_tokens
        allowed = torch.zeros(self.n_action, dtype=torch.bool, device=hidden.device)
        allowed[: self.tokenizer.vocab_size] = True
        if self.eos is not None:
            allowed[self.eos] = True
        done = torch.zeros(b, dtype=torch.bool, device=hidden.device)
        out = []
        for step in range(n_steps):
            logits = self._action_logits(hidden)[:, 0].masked_fill(~allowed, float("-inf"))  # (B, n_action)
            token = logits.argmax(-1)  # (B,)
            out.append(token)
            if self.eos is not None:
                done |= token == self.eos
                if bool(done.all()):  # sync point, once per decoded token
                    break
            if step + 1 < n_steps:
                emb = self._embed(self.action_ids[token][:, None])  # (B, 1, W)
                hidden = self._decode_step(prefix, emb)
        tokens = torch.stack(out, 1).cpu().numpy()  # (B, L) local ids; .cpu(): once per chunk
        return self._detokenize(tokens).to(prefix.hidden.device)

    def _decode_step(self, prefix, emb: torch.Tensor) -> torch.Tensor:
        step_mask = torch.ones(emb.shape[0], 1, dtype=torch.bool, device=emb.device)
        return self.backbone.decode_step(prefix, emb, step_mask)  # (B, 1, W); extends prefix's own cache

    def _detokenize(self, tokens: np.ndarray) -> torch.Tensor:
        if self.fixed_length:
            chunk = self.tokenizer.decode_array(tokens).reshape(-1, self.horizon, self.action_dim)
            return torch.from_numpy(chunk)
        chunks = []
        for seq in tokens:
            seq = seq.tolist()
            seq = seq[: seq.index(self.eos)] if self.eos in seq else seq
            chunks.append(self.tokenizer.decode(seq, self.horizon, self.action_dim))
        return torch.from_numpy(np.stack(chunks)).float()
