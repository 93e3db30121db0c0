"""FAST action tokenizer (Pertsch et al. 2025): DCT per dim over the chunk, then BPE.

Encoding a normalized chunk (H, D):
1. ``scipy.fft.dct(chunk, axis=0, norm="ortho")``: per-dim frequency coefficients (H, D).
   Smooth motions put almost all energy in the first few coefficients.
2. ``round(coeff * scale)``: integers; most high-frequency ones become 0. ``scale`` trades
   reconstruction error (about 0.5 / scale per coefficient before the inverse DCT) for length.
3. Flatten frequency-major (coefficient 0 of every dim, then coefficient 1, ...), so the runs
   of zeros of the high frequencies sit together at the end, and map each integer to one
   unicode character.
4. A byte-pair encoding trained with the ``tokenizers`` library merges frequent runs
   (mostly zeros) into single tokens, giving far fewer tokens than H * D.

Decoding inverts each step. A malformed id sequence (ids out of range, truncated, empty)
still decodes: unknown ids are dropped and the coefficient vector is zero-padded
(missing high frequencies) or truncated to H * D before the inverse DCT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from tokenizers import Tokenizer, models, trainers

from vla.models.heads.tokenizers.base import ActionTokenizer, ActionTokenizerConfig

# Integers are shifted to start at this code point so no coefficient becomes whitespace
# or a control character; the alphabet must stay below the UTF-16 surrogate block.
_CHAR_OFFSET = 0x100
_MAX_ALPHABET = 0xD800 - _CHAR_OFFSET


class FastTokenizer(ActionTokenizer):
    name = "fast"

    def __init__(self, vocab_size: int = 1024, scale: float = 10.0):
        if scale <= 0:
            raise ValueError(f"fast tokenizer: scale must be > 0, got {scale}")
        self.target_vocab_size = int(vocab_size)
        self.scale = float(scale)
        self.min_coeff = 0  # smallest rounded coefficient seen at fit time (maps to char 0)
        self.max_coeff = 0
        self.horizon: int | None = None
        self.action_dim: int | None = None
        self._bpe: Tokenizer | None = None

    # ---- properties -------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._bpe is not None

    @property
    def vocab_size(self) -> int:
        """Ids the fitted BPE can emit (the configured size until fitted)."""
        return self._bpe.get_vocab_size() if self._bpe is not None else self.target_vocab_size

    def _require_fitted(self) -> Tokenizer:
        if self._bpe is None:
            raise RuntimeError(
                "fast tokenizer is not fitted: call fit(chunks) (or head.fit_tokenizer / `vla data fit-tokenizer`)"
            )
        return self._bpe

    # ---- the integer stage (pure numpy) ----------------------------------------------
    def coefficients(self, chunks: np.ndarray) -> np.ndarray:
        """(..., H, D) chunks -> rounded integer DCT coefficients, same shape."""
        coeff = scipy.fft.dct(np.asarray(chunks, dtype=np.float64), axis=-2, norm="ortho")
        return np.rint(coeff * self.scale).astype(np.int64)

    def _to_text(self, coeff: np.ndarray) -> str:
        flat = np.clip(coeff.reshape(-1), self.min_coeff, self.max_coeff)  # (H, D) -> (H*D,) frequency-major
        return "".join(chr(int(v) - self.min_coeff + _CHAR_OFFSET) for v in flat)

    # ---- fitting ----------------------------------------------------------------------
    def fit(self, chunks: np.ndarray) -> FastTokenizer:
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or chunks.shape[0] == 0:
            raise ValueError(f"fast tokenizer fit: chunks must be (N, H, D) with N > 0, got {chunks.shape}")
        if not np.isfinite(chunks).all():
            raise ValueError("fast tokenizer fit: chunks contain NaN or inf")
        _, self.horizon, self.action_dim = chunks.shape
        coeff = self.coefficients(chunks)  # (N, H, D)
        self.min_coeff, self.max_coeff = int(coeff.min()), int(coeff.max())
        alphabet_size = self.max_coeff - self.min_coeff + 1
        if alphabet_size > _MAX_ALPHABET:
            raise ValueError(
                f"fast tokenizer fit: {alphabet_size} distinct coefficient values (scale={self.scale}); "
                "lower the scale or normalize the actions into [-1, 1]"
            )
        if alphabet_size > self.target_vocab_size:
            raise ValueError(
                f"fast tokenizer fit: vocab_size={self.target_vocab_size} is smaller than the "
                f"{alphabet_size} single-coefficient symbols at scale={self.scale}; raise vocab_size or lower scale"
            )
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab_size,
            min_frequency=2,
            show_progress=False,
            initial_alphabet=[chr(_CHAR_OFFSET + i) for i in range(alphabet_size)],
            max_token_length=10_000,
        )
        bpe.train_from_iterator((self._to_text(c) for c in coeff), trainer=trainer)
        self._bpe = bpe
        return self

    # ---- encode / decode --------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> list[int]:
        bpe = self._require_fitted()
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (self.horizon, self.action_dim):
            raise ValueError(
                f"fast tokenizer encode: expected chunk ({self.horizon}, {self.action_dim}), got {chunk.shape}"
            )
        return bpe.encode(self._to_text(self.coefficients(chunk))).ids

    def decode(self, tokens, horizon: int | None = None, action_dim: int | None = None) -> np.ndarray:
        bpe = self._require_fitted()
        h = horizon or self.horizon
        d = action_dim or self.action_dim
        pieces = []
        for t in tokens:
            piece = bpe.id_to_token(int(t)) if 0 <= int(t) < bpe.get_vocab_size() else None
            if piece is not None:  # ids outside the vocabulary are dropped
                pieces.append(piece)
        values = np.fromiter((ord(c) - _CHAR_OFFSET + self.min_coeff for c in "".join(pieces)), dtype=np.float64)
        values = np.concatenate([values[: h * d], np.zeros(max(0, h * d - values.size))])  # pad high freqs with 0
        coeff = values.reshape(h, d) / self.scale  # (H, D), inverse of the frequency-major flatten
        return scipy.fft.idct(coeff, axis=0, norm="ortho").astype(np.float32)

    # ---- state ------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "vocab_size": self.target_vocab_size,
            "scale": self.scale,
            "min_coeff": self.min_coeff,
            "max_coeff": self.max_coeff,
            "horizon": self.horizon,
            "action_dim": self.action_dim,
            "bpe": self._bpe.to_str() if self._bpe is not None else None,
        }

    @classmethod
    def from_params(cls, params: dict) -> FastTokenizer:
        tok = cls(params["vocab_size"], params["scale"])
        tok.min_coeff, tok.max_coeff = params["min_coeff"], params["max_coeff"]
        tok.horizon, tok.action_dim = params["horizon"], params["action_dim"]
        tok._bpe = Tokenizer.from_str(params["bpe"]) if params.get("bpe") else None
        return tok


@ActionTokenizerConfig.register_subclass("fast")
@dataclass
class FastTokenizerConfig(ActionTokenizerConfig):
    vocab_size: int = 1024  # BPE vocabulary (FAST+ uses 2048; must cover the coefficient alphabet)
    scale: float = 10.0  # DCT coefficient scale before rounding: higher = more precise, longer

    tokenizer_class = FastTokenizer

    def build(self) -> FastTokenizer:
        return FastTokenizer(self.vocab_size, self.scale)


def fit_fast_tokenizer(
    chunks: np.ndarray, vocab_size: int = 1024, scale: float = 10.0, normalization: str | None = None
) -> FastTokenizer:
    """Fit a FAST tokenizer on chunks (N, H, D) normalized with ``normalization``; used by ``vla data fit-tokenizer``."""
    tokenizer = FastTokenizer(vocab_size, scale).fit(chunks)
    tokenizer.normalization = normalization
    return tokenizer
