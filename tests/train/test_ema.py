"""EMA of the trainable weights: averaging, swapping in, and restoring onto the model's device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vla.train.ema import EMA


def test_ema_follows_the_weights_and_swaps_in_and_out():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 1.0)  # halfway
    with ema.swapped_into(model):
        assert torch.allclose(model.weight, start + 1.0)
    assert torch.allclose(model.weight, start + 2.0)


def test_restored_shadow_stays_on_the_models_device():
    """accelerate reloads custom state onto the CPU; a GPU model's shadow must not move there
    (meta stands in for cuda on this CPU-only machine)."""
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    saved = {"decay": 0.9, "shadow": {n: torch.zeros(v.shape) for n, v in ema.shadow.items()}}
    ema.load_state_dict(saved)
    assert {v.device.type for v in ema.shadow.values()} == {"meta"}
    with pytest.raises(KeyError, match="extra"):
        ema.load_state_dict({"decay": 0.9, "shadow": {**saved["shadow"], "extra": torch.zeros(1)}})
