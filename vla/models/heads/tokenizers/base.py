"""Action tokenizer contract: a normalized chunk (H, D) <-> a list of action-token ids.

Discrete heads own one of these. Ids are local to the tokenizer (``0 .. vocab_size-1``);
the head maps them into the VLM vocabulary. Tokenizers are pure numpy objects so they
can be fitted, inspected and tested without a model, and their whole state is a
JSON-able dict so a policy checkpoint can store it next to the weights.
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass
from pathlib import Path

import draccus
import numpy as np

from vla.registry import lookup
from vla.utils.atomic import atomic_file

STATE_FILE = "action_tokenizer.json"


@dataclass
class ActionTokenizerConfig(draccus.ChoiceRegistry):
    """Choice base: ``type: bins`` or ``type: fast``; ``build()`` returns an unfitted tokenizer."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def build(self) -> ActionTokenizer:
        raise TypeError(f"{type(self).__name__} must implement build()")


class ActionTokenizer(abc.ABC):
    """Chunk (H, D) in normalized units [-1, 1] <-> token ids in ``[0, vocab_size)``.

    ``decode`` never raises on a malformed sequence (a model can emit anything): it
    always returns a finite (H, D) chunk, padding or truncating what it got.
    """

    name: str
    # The action normalization of the chunks it was fitted on (``vla data fit-tokenizer --norm``, or the
    # policy's when the trainer fits it); a policy normalizing otherwise would feed it other numbers.
    normalization: str | None = None

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct action-token ids the tokenizer can emit."""

    @property
    @abc.abstractmethod
    def is_fitted(self) -> bool: ...

    @abc.abstractmethod
    def fit(self, chunks: np.ndarray) -> ActionTokenizer:
        """Fit on normalized chunks (N, H, D); returns self."""

    @abc.abstractmethod
    def encode(self, chunk: np.ndarray) -> list[int]:
        """One normalized chunk (H, D) -> token ids."""

    @abc.abstractmethod
    def decode(self, tokens, horizon: int, action_dim: int) -> np.ndarray:
        """Token ids -> chunk (H, D) float32; malformed input still gives (H, D)."""

    @abc.abstractmethod
    def params(self) -> dict:
        """JSON-able parameters from which ``from_params`` rebuilds an identical tokenizer."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: dict) -> ActionTokenizer: ...

    def state_dict(self) -> dict:
        """Everything ``tokenizer_from_state`` needs: the type, the normalization and the parameters."""
        return {"type": self.name, "normalization": self.normalization, **self.params()}

    def report(self, chunks: np.ndarray) -> dict[str, float]:
        """Round-trip quality on normalized chunks (N, H, D): what ``vla data fit-tokenizer`` prints."""
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3:
            raise ValueError(f"chunks: expected (N, H, D), got {chunks.shape}")
        _, h, d = chunks.shape
        errors, lengths = [], []
        for chunk in chunks:
            ids = self.encode(chunk)
            lengths.append(len(ids))
            errors.append(np.abs(self.decode(ids, h, d) - chunk).mean())
        return {
            "reconstruction_mae": float(np.mean(errors)),
            "max_chunk_mae": float(np.max(errors)),
            "mean_tokens_per_chunk": float(np.mean(lengths)),
            "max_tokens_per_chunk": float(np.max(lengths)),
            "vocab_size": float(self.vocab_size),
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``action_tokenizer.json`` into ``directory`` (write, then rename)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / STATE_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.state_dict()))
        return path


def tokenizer_from_state(state: dict) -> ActionTokenizer:
    """Rebuild any registered tokenizer from its ``state_dict()`` (dispatch on ``state["type"]``)."""
    if "type" not in state:
        raise KeyError(f"action tokenizer state has no 'type'; keys: {sorted(state)}")
    config_cls = lookup(ActionTokenizerConfig, state["type"], "action tokenizer")
    params = {k: v for k, v in state.items() if k not in ("type", "normalization")}
    tokenizer = config_cls.tokenizer_class.from_params(params)
    tokenizer.normalization = state.get("normalization")
    return tokenizer


def check_tokenizer_normalization(tokenizer: ActionTokenizer, action_norm: str, source: str) -> None:
    """A tokenizer fitted on differently normalized actions is an error that names both."""
    if tokenizer.normalization is not None and tokenizer.normalization != action_norm:
        raise ValueError(
            f"action tokenizer {source} was fitted on {tokenizer.normalization!r}-normalized actions but "
            f"policy.action_norm={action_norm!r}: refit it (vla data fit-tokenizer --norm {action_norm}) "
            f"or set policy.action_norm={tokenizer.normalization}"
        )


def load_tokenizer(directory: str | os.PathLike) -> ActionTokenizer:
    """Load a tokenizer saved with ``ActionTokenizer.save(directory)``."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no action tokenizer at {path}")
    return tokenizer_from_state(json.loads(path.read_text()))
