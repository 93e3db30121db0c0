"""A random-weight policy on the tiny SmolVLM preset, for tests that need a policy but no training, and the\n`vla train` arguments of that tiny model for tests that train one.

Imported by name (``from tiny_policies import random_tiny_policy``): tests/ is on sys.path through the root
conftest, and test folders have no packages, so helper modules need names of their own.
"""

from __future__ import annotations

import torch

from vla.models.backbones.base import BackboneConfig
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig

# `vla train` arguments for the tiny model (tiny SmolVLM architecture, chunk 4): what CLI tests train.
TINY_MODEL = [
    "--policy.backbone.preset=tiny-smolvlm",
    "--policy.chunk_size=4",
    "--policy.n_action_steps=2",
    "--train.num_workers=0",
    "--train.log_every=1",
    "--optim.warmup_steps=2",
    "--optim.lr=1e-3",
]
TINY = [*TINY_MODEL, "--augment.enabled=false"]


def random_tiny_policy(
    head: str,
    cameras: list[str],
    state_dim: int,
    action_dim: int,
    stats: dict,
    seed: int = 0,
    **config,
) -> Policy:
    """``Policy`` in eval mode; ``config`` sets any other PolicyConfig field (chunk_size, fps ...)."""
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class(head)(),
        cameras=list(cameras),
        state_dim=state_dim,
        action_dim=action_dim,
        **config,
    )
    return Policy(cfg, stats).eval()
