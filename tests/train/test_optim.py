"""Learning-rate schedule and parameter groups."""

from __future__ import annotations

import pytest
from torch import nn

from vla.train.optim import OptimConfig, build_optimizer, lr_factor, param_groups


def test_warmup_then_cosine_to_floor():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 100, 0.1) == pytest.approx(0.1)
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_groups_split_decay_and_backbone_lr():
    groups = {g["name"]: g for g in param_groups(Toy(), OptimConfig(lr=1e-3, backbone_lr=1e-4, weight_decay=0.1))}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-3
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.1
    assert len(groups["backbone_no_decay"]["params"]) == 3  # linear bias + layernorm weight and bias
    n_trainable = sum(len(g["params"]) for g in groups.values())
    assert n_trainable == 6  # the frozen linear is left out


def test_everything_frozen_is_a_clear_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig(), 10)
