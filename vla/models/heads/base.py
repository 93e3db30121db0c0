"""Head contract: Prefix -> action chunk (B, H, D) in normalized units.

Every head is one registered file: ``@HeadConfig.register_subclass("name")`` on its
config, whose ``build`` returns the module.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import draccus
import torch
from torch import nn


@dataclass
class HeadConfig(draccus.ChoiceRegistry):
    # The action normalizations this head trains correctly on (None: any), and the one a policy uses
    # when ``policy.action_norm`` is not set. The head is the object that knows: token heads cover
    # [-1, 1] with their vocabulary, so mean/std actions (12-54% outside on MetaWorld) would be clipped.
    action_norms: ClassVar[tuple[str, ...] | None] = None
    default_action_norm: ClassVar[str] = "mean_std"

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def check_action_norm(self, mode: str) -> None:
        """Raise if actions normalized with ``mode`` would train this head wrong."""
        if self.action_norms is not None and mode not in self.action_norms:
            raise ValueError(
                f"policy.head.type={self.type} needs bounded actions: policy.action_norm must be one of "
                f"{list(self.action_norms)}, got policy.action_norm={mode!r} (leave it unset for {self.default_action_norm!r})"
            )

    def build(self, backbone, horizon: int, action_dim: int) -> Head:
        raise TypeError(f"{type(self).__name__} must implement build()")


class Head(nn.Module, abc.ABC):
    """Predicts a chunk of ``horizon`` actions of ``action_dim`` dims from a Prefix.

    ``needs_kv``: the head reads Prefix.keys/values (the backbone computes them).
    ``needs_suffix``: the head trains by teacher forcing through the backbone's LM
    (discrete heads); then ``loss`` calls the backbone itself with ``suffix_embeds``.
    """

    needs_kv: bool = False
    needs_suffix: bool = False

    @abc.abstractmethod
    def loss(self, prefix_fn, batch: dict) -> tuple[torch.Tensor, dict]:
        """Training loss on normalized ``batch["actions"]`` (B, H, D), and metrics (floats or detached
        0-d tensors: no ``.item()`` here, which would sync the GPU every step).

        ``prefix_fn(**kwargs) -> Prefix`` runs the backbone (so discrete heads can pass a
        suffix). ``batch`` carries ``actions``, ``action_pad`` (B, H) and
        ``action_dim_mask`` (B, D); padded steps and dims never contribute to the loss.
        A stochastic head draws each sample's noise/time with ``vla.utils.sample_rng`` from
        ``batch.get("generators")`` (one generator per sample in training, else None: the
        global RNG), so a sample's draws do not depend on the rank or batch it lands in.
        """

    @abc.abstractmethod
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        """Return a normalized chunk (B, H, D)."""

    @property
    def supports_rtc(self) -> bool:
        """Whether ``sample`` takes real-time chunking guidance (``batch["rtc"]``, ``heads/rtc.py``)."""
        return False

    @property
    def rtc_trained(self) -> bool:
        """Whether the head was trained with clean prefixes (RTC can then hard-inpaint them)."""
        return False

    @property
    def chooses_execute(self) -> bool:
        """Whether ``sample_plan`` says how many actions of each chunk to execute (callers then play exactly those)."""
        return False

    def sample_plan(
        self, prefix_fn, batch: dict, num_steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A normalized chunk (B, H, D) and how many of its leading actions to execute, (B,) long, or None
        when the head leaves that to the caller's ``n_action_steps``. Heads that choose it themselves
        (MoH's cross-horizon consensus, ``vla/models/heads/horizons.py``) override this."""
        return self.sample(prefix_fn, batch, num_steps), None
