"""The ``vq`` token head: the discrete head over residual-VQ action tokens (VQ-VLA, Wang et al. 2025).

A chunk is ``H / W * L`` tokens (``W``-step windows, ``L`` residual levels of ``K`` codes each;
see ``tokenizers/vq.py``), decoded autoregressively through the VLM's LM head by the same
``DiscreteHead`` as FAST, which appends an end token; every chunk has the same length, so
``max_tokens`` is that length plus the end token. Padded steps and dims are filled before encoding
(a window mixes its steps), as for FAST.

The tokenizer is fitted before training like FAST's: ``tokenizer_path`` loads one written by
``vla data fit-tokenizer --type vq``, else the trainer calls ``head.fit_tokenizer(chunks)`` with
the ``tokenizer`` settings. It is frozen from then on, and the checkpoint stores it
(``action_tokenizer.json``, weights included) and restores it on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.models.heads.base import HeadConfig
from vla.models.heads.discrete import DiscreteHead, TokenHeadConfig
from vla.models.heads.tokenizers import VQTokenizer, VQTokenizerConfig, check_tokenizer_normalization, load_tokenizer


@HeadConfig.register_subclass("vq")
@dataclass
class VQHeadConfig(TokenHeadConfig):
    tokenizer: VQTokenizerConfig = field(default_factory=VQTokenizerConfig)  # window, levels, codes, fitting
    tokenizer_path: str | None = None  # a directory written by `vla data fit-tokenizer --type vq`

    def check_action_norm(self, mode: str) -> None:
        super().check_action_norm(mode)
        if self.tokenizer_path:  # a fitted tokenizer records the normalization of its chunks
            check_tokenizer_normalization(load_tokenizer(self.tokenizer_path), mode, self.tokenizer_path)

    def build(self, backbone, horizon: int, action_dim: int) -> DiscreteHead:
        tokenizer = load_tokenizer(self.tokenizer_path) if self.tokenizer_path else self.tokenizer.build()
        if not isinstance(tokenizer, VQTokenizer):
            raise ValueError(f"vq head: {self.tokenizer_path} holds a {tokenizer.name!r} tokenizer, not 'vq'")
        tokenizer.check_shape(horizon, action_dim)  # W divides H; a fitted tokenizer's D is the head's
        n_tokens = tokenizer.tokens_per_chunk(horizon)
        return DiscreteHead(
            tokenizer, backbone, horizon, action_dim, max_tokens=n_tokens + 1, n_action_ids=tokenizer.vocab_size
        )
