"""Expert styles: the transformer that turns a head's suffix tokens into outputs, reading the VLM's prefix.

A style is one registered config (``@ExpertConfig.register_subclass("name")``) whose ``build``
returns a module with one method the heads call::

    run_suffix(tokens (B, A, We), prefix: Prefix, self_mask (A, A) or (B, A, A) bool, cond (B, We) | None) -> (B, A, We)

``prefix`` carries the VLM's per-layer keys/values (post-rotary), its mask and the position of the
first token after it; ``self_mask[i, j]`` says whether suffix token i may attend to suffix token j
(pi0: the state token is a block of its own, the actions one bidirectional block; SmolVLA: causal
actions); ``cond`` is the time conditioning vector when the head conditions through adaptive
norms (pi0.5), else None. A style's config knows its shape rules; the head gives it the width,
the FFN width, the number of suffix tokens and whether norms are adaptive.
"""

from __future__ import annotations

from dataclasses import dataclass

import draccus
import torch
from torch import nn


@dataclass
class ExpertConfig(draccus.ChoiceRegistry):
    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def build(self, backbone, *, width: int, ffn: int | None, max_tokens: int, adaptive: bool) -> nn.Module:
        raise TypeError(f"{type(self).__name__} must implement build()")

    def default_ffn(self, width: int, mlp_ratio: float) -> int:
        """The FFN width when the head does not give one."""
        return int(width * mlp_ratio)


def suffix_self_mask(num_state: int, horizon: int, causal_actions: bool, device=None) -> torch.Tensor:
    """(A, A) bool, A = num_state + horizon: who in the suffix sees whom (True = may attend).

    The state token (if any) is a block of its own: it sees itself, never the actions. Actions see
    the state and either every action (pi0) or the earlier ones and themselves (SmolVLA).
    """
    a = num_state + horizon
    allowed = torch.zeros(a, a, dtype=torch.bool, device=device)
    allowed[:num_state, :num_state] = True
    allowed[num_state:, :num_state] = True
    if causal_actions:
        allowed[num_state:, num_state:] = torch.ones(horizon, horizon, dtype=torch.bool, device=device).tril()
    else:
        allowed[num_state:, num_state:] = True
    return allowed
