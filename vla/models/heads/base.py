"""Head contract: Prefix -> action chunk (B, H, D) in normalized units.

Every head is one registered file: ``@HeadConfig.register_subclass("name")`` on its
config, whose ``build`` returns the module.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import draccus
import torch
from torch import nn


@dataclass
class HeadConfig(draccus.ChoiceRegistry):
    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

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
        """

    @abc.abstractmethod
    def sample(self, prefix_fn, batch: dict, num_steps: int | None = None) -> torch.Tensor:
        """Return a normalized chunk (B, H, D)."""
