"""Action heads, registered by name under ``HeadConfig``: bins, fast, vq, diffusion, flow, regression.

Importing this package registers every head (and every action tokenizer). Adding a head
is one file plus one import line here.
"""

from vla.models.heads.base import Head, HeadConfig
from vla.models.heads.diffusion import DiffusionConfig, DiffusionHead
from vla.models.heads.discrete import BinsHeadConfig, DiscreteHead, FastHeadConfig
from vla.models.heads.flow_matching import FlowMatchingConfig, FlowMatchingHead
from vla.models.heads.regression import RegressionConfig, RegressionHead
from vla.models.heads.tokenizers import fit_fast_tokenizer
from vla.models.heads.vq import VQHeadConfig

__all__ = [
    "BinsHeadConfig",
    "DiffusionConfig",
    "DiffusionHead",
    "DiscreteHead",
    "FastHeadConfig",
    "FlowMatchingConfig",
    "FlowMatchingHead",
    "Head",
    "HeadConfig",
    "RegressionConfig",
    "RegressionHead",
    "VQHeadConfig",
    "fit_fast_tokenizer",
]
