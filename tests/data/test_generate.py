"""Scripted MetaWorld demonstrations: a real (small) run, opened back with LeRobot."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.demos.metaworld import ENV_STATE_KEY, generate
from data_pipelines.writer import is_complete_dataset
from eval.suites.metaworld import EASY, INSTRUCTIONS


@pytest.mark.sim
def test_generate_mw_easy_writes_a_lerobot_dataset(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = tmp_path / "mw_easy_demos"
    report = generate(suite="mw-easy", episodes_per_task=2, out=out, image_size=64, workers=2)

    assert report["episodes_attempted"] == 10
    assert set(report["per_task"]) == set(EASY)
    assert report["success_rate"] >= 0.9  # the easy experts succeed every time in our runs
    assert report["episodes_written"] == sum(r["succeeded"] for r in report["per_task"].values())
    assert report["episodes_per_minute"] > 0
    assert is_complete_dataset(out) and not list(tmp_path.glob(".*tmp*"))  # renamed into place

    ds = LeRobotDataset(repo_id="local/mw_easy_demos", root=out)
    assert ds.num_episodes == report["episodes_written"] and ds.fps == 80
    shapes = {k: tuple(v["shape"]) for k, v in ds.features.items()}
    assert shapes["observation.images.image"] == (64, 64, 3) and shapes["observation.images.wrist"] == (64, 64, 3)
    assert shapes["observation.state"] == (4,) and shapes["action"] == (4,) and shapes[ENV_STATE_KEY] == (39,)
    assert {ds.meta.tasks.index[i] for i in range(len(ds.meta.tasks))} <= {INSTRUCTIONS[n] for n in EASY}

    # Episodes end a few steps after success, well before the step limit.
    lengths = [r["mean_length"] for r in report["per_task"].values() if r["succeeded"]]
    assert max(lengths) < 150
    frame = ds[0]
    assert frame["observation.images.image"].shape == (3, 64, 64)
    state, env_state, action = frame["observation.state"], frame[ENV_STATE_KEY], frame["action"]
    np.testing.assert_allclose(state.numpy(), env_state.numpy()[:4])
    assert float(action.abs().max()) <= 1.0


def test_generate_rejects_non_metaworld_suites(tmp_path):
    with pytest.raises(ValueError, match="not a MetaWorld suite"):
        generate(suite="libero_spatial", episodes_per_task=1, out=tmp_path / "x", workers=1)
    assert not (tmp_path / "x").exists()


@pytest.mark.sim
def test_a_failed_run_leaves_no_dataset(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(RuntimeError, match="no successful"):
        # Five steps are too few for any expert: every episode fails and none is kept.
        generate("mw-easy", episodes_per_task=1, out=out, cameras=("image",), image_size=32, workers=1, max_steps=5)
    assert not out.exists() and not list(tmp_path.iterdir())
