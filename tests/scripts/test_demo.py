"""`make demo` end to end at a toy size: every stage runs and the report holds what the README promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.sim
def test_demo_pipeline_small(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), PYTHONUNBUFFERED="1")
    args = ["--out", str(out), "--episodes-per-task", "1", "--steps", "10", "--eval-episodes", "1"]
    r = subprocess.run(
        [sys.executable, "-m", "scripts.demo", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"=== {stage}" in r.stdout
    report = (out / "report.md").read_text()
    assert "random" in report and "privileged" in report.lower()
    assert (out / "train" / "loss_curve.png").stat().st_size > 0
    policy = json.loads((out / "eval_policy" / "results.json").read_text())
    random = json.loads((out / "eval_random" / "results.json").read_text())
    assert policy["protocol"]["image_size"] == 64  # rendered at the demo data's resolution
    assert (
        sum(t["episodes"] for t in policy["tasks"].values())
        == 5
        == sum(t["episodes"] for t in random["tasks"].values())
    )
    assert list((out / "eval_policy" / "videos").glob("*.mp4"))
