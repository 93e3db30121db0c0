"""CheckpointManager: a run killed between moving its newest checkpoint into place and re-pointing ``last``
resumes from that newest checkpoint."""

from __future__ import annotations

import os

import pytest
from accelerate import Accelerator
from test_training_data import _policy_cfg

from vla.models.policy import Policy
from vla.train.checkpoint import CheckpointManager


@pytest.mark.parametrize("last", ["missing", "stale"])
def test_resume_finds_the_newest_complete_checkpoint_whatever_last_says(tmp_path, last):
    manager = CheckpointManager(tmp_path, 3, Accelerator(cpu=True))
    cfg = _policy_cfg()
    cfg.cameras, cfg.state_dim, cfg.action_dim = ["front"], 4, 4
    policy = Policy(cfg)
    manager.save(1, policy)
    manager.save(2, policy)
    manager.last.unlink()
    if last == "stale":  # as if killed after step 2 was renamed into place, before last was re-pointed
        os.symlink("step_0000001", manager.last)
    assert manager.resume() == 2
    assert manager.last.resolve().name == "step_0000002"
    empty = CheckpointManager(tmp_path / "none", 3, Accelerator(cpu=True))
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        empty.resume()
