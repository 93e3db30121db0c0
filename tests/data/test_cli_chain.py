"""The issue's acceptance chain through the real command line: generate -> validate -> open -> stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def vla(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MUJOCO_GL="egl")
    return subprocess.run(
        [sys.executable, "-m", "vla", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.sim
def test_generate_validate_open_stats(tmp_path):
    out = tmp_path / "mw-easy"
    r = vla(
        "data", "generate", "--suite", "mw-easy", "--episodes-per-task", "1", "--out", str(out), "--image-size", "64"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = vla("data", "validate", str(out))
    assert r.returncode == 0, r.stdout + r.stderr

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id="local/mw-easy", root=out)
    assert ds.num_episodes == 5 and "observation.images.image" in ds.meta.features

    r = vla("data", "stats", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert len(stats["action"]["q99"]) == 4 and len(stats["observation.state"]["mean"]) == 4
