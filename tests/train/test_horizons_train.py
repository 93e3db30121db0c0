"""A mixture-of-horizons head trains through `vla train` on the tiny model, and its checkpoint reloads and plans."""

from __future__ import annotations

import math

import pytest
import torch
from test_trainer import metrics, run_vla
from tiny_policies import TINY


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_moh_head_trains_from_the_cli_and_its_checkpoint_reloads(head, metaworld_layout_dataset, tmp_path):
    out = tmp_path / "run"
    r = run_vla(
        [
            "train",
            f"--dataset.root={metaworld_layout_dataset}",
            f"--policy.head.type={head}",
            "--policy.head.moh.horizons=[2,4]",  # chunk_size 4 in TINY
            "--policy.head.moh.consensus=true",
            "--policy.head.moh.consensus_min_steps=1",
            "--policy.head.moh.consensus_min_horizons=1",
            "--train.steps=4",
            "--train.batch_size=2",
            f"--output_dir={out}",
            *TINY,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and all(math.isfinite(row["loss"]) for row in rows)

    from vla.models.policy import Policy

    policy = Policy.load(out / "checkpoints" / "last")
    assert policy.config.head.moh.horizons == [2, 4] and policy.head.chooses_execute
    obs = {"images": torch.rand(2, 2, 3, 32, 32), "state": torch.randn(2, 4), "instruction": ["reach", "reach"]}
    chunk, execute = policy.predict_plan(obs)
    assert chunk.shape == (2, 4, 4) and ((execute >= 1) & (execute <= 4)).all()
