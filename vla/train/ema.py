"""Exponential moving average of the trainable weights (kept in fp32)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module):
        """Temporarily load the EMA weights into ``model`` (to save or evaluate them)."""
        params = dict(model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, v in self.shadow.items():
                params[n].copy_(v.to(params[n].dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, v in backup.items():
                    params[n].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        # accelerate loads custom state onto the CPU; the shadow stays where the model's weights are
        # (on a GPU, a CPU shadow would fail the next update's lerp_ with a device mismatch).
        unknown = sorted(set(state["shadow"]) - set(self.shadow))
        if unknown:
            raise KeyError(f"EMA state has weights the model does not train: {unknown[:5]}")
        self.shadow = {n: v.to(self.shadow[n].device, torch.float32) for n, v in state["shadow"].items()}
