"""Uniform bins (RT-2 / OpenVLA): each action dim of each step becomes one token.

256 bins over the normalized range [-1, 1]; values outside are clipped, so the
round-trip error of an in-range value is at most half a bin width (1 / n_bins).
A chunk is always ``H * D`` tokens, step-major (all dims of step 0, then step 1, ...),
which lets the head mask padded steps and dims token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.models.heads.tokenizers.base import ActionTokenizer, ActionTokenizerConfig


class BinsTokenizer(ActionTokenizer):
    name = "bins"

    def __init__(self, n_bins: int = 256, low: float = -1.0, high: float = 1.0):
        if n_bins < 2 or not high > low:
            raise ValueError(f"bins tokenizer: need n_bins >= 2 and high > low, got {n_bins}, [{low}, {high}]")
        self.n_bins, self.low, self.high = n_bins, float(low), float(high)

    @property
    def vocab_size(self) -> int:
        return self.n_bins

    @property
    def is_fitted(self) -> bool:
        return True  # the bin edges are fixed by the normalized range; there is nothing to learn

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.n_bins

    def fit(self, chunks: np.ndarray) -> BinsTokenizer:
        return self  # fixed edges over the normalized range, independent of the data

    def encode_array(self, x: np.ndarray) -> np.ndarray:
        """Vectorized: any array of values -> same-shape int64 bin ids."""
        x = np.clip(np.asarray(x, dtype=np.float64), self.low, self.high)
        ids = np.floor((x - self.low) / self.bin_width).astype(np.int64)
        return np.clip(ids, 0, self.n_bins - 1)

    def decode_array(self, ids: np.ndarray) -> np.ndarray:
        """Vectorized: bin ids -> bin centers (ids are clipped into range first)."""
        ids = np.clip(np.asarray(ids, dtype=np.int64), 0, self.n_bins - 1)
        return (self.low + (ids + 0.5) * self.bin_width).astype(np.float32)

    def encode(self, chunk: np.ndarray) -> list[int]:
        return self.encode_array(chunk).reshape(-1).tolist()  # (H*D,) step-major

    def decode(self, tokens, horizon: int, action_dim: int) -> np.ndarray:
        ids = np.asarray(list(tokens), dtype=np.int64).reshape(-1)[: horizon * action_dim]
        # a short sequence is padded with the bin holding 0 (the normalized mean)
        pad = np.full(horizon * action_dim - ids.size, self.encode_array(0.0), dtype=np.int64)
        return self.decode_array(np.concatenate([ids, pad])).reshape(horizon, action_dim)

    def params(self) -> dict:
        return {"n_bins": self.n_bins, "low": self.low, "high": self.high}

    @classmethod
    def from_params(cls, params: dict) -> BinsTokenizer:
        return cls(params["n_bins"], params["low"], params["high"])


@ActionTokenizerConfig.register_subclass("bins")
@dataclass
class BinsTokenizerConfig(ActionTokenizerConfig):
    n_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    tokenizer_class = BinsTokenizer

    def build(self) -> BinsTokenizer:
        return BinsTokenizer(self.n_bins, self.low, self.high)
