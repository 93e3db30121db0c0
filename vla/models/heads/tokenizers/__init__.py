"""Action tokenizers for the discrete heads, registered by name (``bins``, ``fast``, ``vq``).

Importing this package registers every tokenizer: add one file plus one import line.
"""

from vla.models.heads.tokenizers.base import (
    ActionTokenizer,
    ActionTokenizerConfig,
    check_tokenizer_normalization,
    load_tokenizer,
    tokenizer_from_state,
)
from vla.models.heads.tokenizers.bins import BinsTokenizer, BinsTokenizerConfig
from vla.models.heads.tokenizers.fast import FastTokenizer, FastTokenizerConfig, fit_fast_tokenizer
from vla.models.heads.tokenizers.vq import VQTokenizer, VQTokenizerConfig

__all__ = [
    "ActionTokenizer",
    "ActionTokenizerConfig",
    "BinsTokenizer",
    "BinsTokenizerConfig",
    "FastTokenizer",
    "FastTokenizerConfig",
    "VQTokenizer",
    "VQTokenizerConfig",
    "check_tokenizer_normalization",
    "fit_fast_tokenizer",
    "load_tokenizer",
    "tokenizer_from_state",
]
