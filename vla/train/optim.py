"""Optimizer parameter groups and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vla.config import at_least


@dataclass
class OptimConfig:
    lr: float = 1e-4  # head (and anything outside the backbone)
    backbone_lr: float | None = None  # None: same as lr. Fine-tuning a pretrained VLM usually wants ~0.1x
    weight_decay: float = 0.01  # never applied to norms, biases and embeddings of size < 2-D
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr must be a finite number > 0, got {self.lr}")
        if self.backbone_lr is not None and not (math.isfinite(self.backbone_lr) and self.backbone_lr >= 0):
            raise ValueError(f"optim.backbone_lr must be a finite number >= 0 (0 freezes it), got {self.backbone_lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "warmup_steps", "grad_clip"):
            at_least(f"optim.{name}", getattr(self, name), 0)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: {backbone, rest} x {decay, no decay}. 1-D params (norms, biases) get no decay."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        decay = p.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((is_backbone, decay), []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        lr = (cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr) if is_backbone else cfg.lr
        out.append(
            {
                "params": params,
                "lr": lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": f"{'backbone' if is_backbone else 'head'}{'' if decay else '_no_decay'}",
            }
        )
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int):
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters: is everything frozen? (policy.backbone.freeze_vlm, lora_rank)")
    fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return optimizer, scheduler
