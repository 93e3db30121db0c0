"""The fine-tuning recipes are the models they name: configs/experiments/{pi0,pi05,smolvla}_finetune.yaml
set exactly the options vla/interop/lerobot.py knows LeRobot's pi0, pi0.5 and SmolVLA by."""

from __future__ import annotations

import pytest

from vla.bench.peer import REPO
from vla.config import parse_config
from vla.interop.lerobot import TYPES, architecture_mismatches, lerobot_type
from vla.train.config import TrainConfig


@pytest.mark.parametrize("kind", TYPES)
def test_recipe_is_the_model(kind):
    cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / "experiments" / f"{kind}_finetune.yaml")])
    assert architecture_mismatches(cfg.policy, kind) == []
    assert lerobot_type(cfg.policy) == kind
    assert cfg.policy.chunk_size == 50 and cfg.policy.head.num_steps == 10
    assert cfg.policy.max_state_dim == cfg.policy.max_action_dim == 32
    assert cfg.train.mixed_precision == "bf16"
