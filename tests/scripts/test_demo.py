"""`make demo` end to end at a toy size: every stage runs and the report holds what the README promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "experiments").glob("*.yaml"))


def test_demo_recipe_reads_no_privileged_state(tmp_path):
    """`make demo` learns from cameras, instruction and proprioception: the config it trains with,
    built exactly as the demo builds it, must not read the simulator's object and goal positions."""
    from lerobot.utils.constants import OBS_ENV_STATE

    from scripts.demo import train_config

    for gpu in (False, True):
        cfg = train_config(tmp_path / "train", tmp_path / "data", steps=10, batch_size=2, gpu=gpu)
        assert cfg.dataset.state_key != OBS_ENV_STATE
        assert not any(OBS_ENV_STATE in m for m in cfg.dataset.mixture)


def reads_privileged_input(recipe_text: str) -> bool:
    """Whether a recipe feeds MetaWorld's object and goal positions to the policy anywhere (state, cameras,
    mixture ...). A training-only auxiliary target (``policy.auxiliary``: predicted from the image features,
    never an input, and stated in every report of the checkpoint's inputs) is not an input."""
    import yaml
    from lerobot.utils.constants import OBS_ENV_STATE

    raw = yaml.safe_load(recipe_text) or {}
    (raw.get("policy") or {}).pop("auxiliary", None)
    return OBS_ENV_STATE in json.dumps(raw)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if not r.stem.endswith("_privileged")], ids=lambda p: p.stem)
def test_only_recipes_named_privileged_read_privileged_state(recipe):
    """Privileged inputs are allowed only in baselines whose name says so (``*_privileged.yaml``); an
    auxiliary target (training only, not an input) may name them anywhere (see ``reads_privileged_input``)."""
    assert not reads_privileged_input(recipe.read_text()), (
        f"{recipe.name} reads privileged state: name it *_privileged.yaml"
    )


def test_an_auxiliary_target_is_not_a_privileged_input():
    state = "dataset: {root: d, state_key: observation.environment_state}\npolicy: {head: {type: regression}}\n"
    assert reads_privileged_input(state)
    assert reads_privileged_input("dataset: {root: d, mixture: ['x:1', 'observation.environment_state']}\n")
    aux = "dataset: {root: d}\npolicy:\n  auxiliary: {key: observation.environment_state, weight: 0.1}\n"
    assert not reads_privileged_input(aux)
    for recipe in RECIPES:  # the baselines named so still count as privileged
        assert reads_privileged_input(recipe.read_text()) == recipe.stem.endswith("_privileged"), recipe.name


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
    assert "random" in report and "privileged" not in report.lower()
    assert "`observation.state` (4 dims: proprioception)" in report  # the inputs, read from the checkpoint
    # judged through the policy's own cameras at 64 px: reach's goal is not averaged in silently
    assert "seen by the cameras at 64 px" in report and "**reach-v3**: goal not visible" in report
    assert "tasks its cameras can show" in r.stdout
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
