"""Config parsing, recipes and the `vla` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vla.config import ConfigError, parse_config
from vla.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_parses(recipe):
    cfg = parse_config(TrainConfig, ["--config", str(recipe)])
    assert cfg.train.steps > 0 and cfg.policy.head.type in {"bins", "fast", "diffusion", "flow", "regression"}


def test_overrides_keep_the_recipe_head_type():
    recipe = REPO / "configs/experiments/mw10_diffusion.yaml"
    cfg = parse_config(TrainConfig, ["--config", str(recipe), "--policy.head.num_inference_steps=4"])
    assert cfg.policy.head.type == "diffusion" and cfg.policy.head.num_inference_steps == 4
    cfg = parse_config(TrainConfig, ["--policy.head.num_steps=3"])  # default head (flow)
    assert cfg.policy.head.type == "flow" and cfg.policy.head.num_steps == 3


def test_switching_the_type_over_a_recipe_starts_from_the_new_defaults():
    cfg = parse_config(
        TrainConfig, ["--config", str(REPO / "configs/experiments/tiny_cpu.yaml"), "--policy.head.type=regression"]
    )
    assert cfg.policy.head.type == "regression" and cfg.dataset.root == "outputs/data/mw-easy"


def test_unknown_or_mistyped_keys_are_named():
    with pytest.raises(ConfigError, match="train.stpes"):
        parse_config(TrainConfig, ["--train.stpes=3"])
    with pytest.raises(ConfigError):
        parse_config(TrainConfig, ["--train.steps=many"])
    with pytest.raises(ConfigError, match="not found"):
        parse_config(TrainConfig, ["--config", "nope.yaml"])
    with pytest.raises(ConfigError, match="train.eval_timeout_s must be > 0"):
        parse_config(TrainConfig, ["--train.eval_timeout_s=0"])
    with pytest.raises(ConfigError, match=r"policy.head.type=bins needs bounded actions.*'mean_std'"):
        parse_config(TrainConfig, ["--policy.head.type=bins", "--policy.action_norm=mean_std"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("--optim.lr=-1e-4", "optim.lr must be a finite number > 0, got -0.0001"),
        ("--optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
        ("--train.steps=0", "train.steps must be >= 1, got 0"),
        ("--train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("--train.save_every=-5", "train.save_every must be >= 0, got -5"),
        ("--train.keep_last=0", "train.keep_last must be >= 1, got 0"),
        ("--optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
        ("--optim.min_lr_ratio=2", r"optim.min_lr_ratio must be in \[0, 1\]"),
    ],
)
def test_settings_that_make_no_sense_are_refused_at_parse_time(override, words):
    with pytest.raises(ConfigError, match=words):
        parse_config(TrainConfig, [override])


def test_an_unknown_choice_lists_the_known_ones_in_one_line():
    with pytest.raises(
        ConfigError, match=r"unknown --policy.head.type 'flwo'. Did you mean 'flow'\? Known: .*regression"
    ) as e:
        parse_config(TrainConfig, ["--policy.head.type=flwo"])
    assert "\n" not in str(e.value)
    r = subprocess.run(
        [sys.executable, "-m", "vla", "train", "--policy.head.type=flwo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Did you mean 'flow'" in r.stderr and "usage:" not in r.stderr, r.stderr[-2000:]


def test_contract_command_line_parses():
    cfg = parse_config(
        TrainConfig,
        [
            "--dataset.root=/d",
            "--policy.backbone.preset=tiny-paligemma",
            "--policy.head.type=bins",
            "--train.steps=5",
            "--train.batch_size=2",
            "--output_dir=/o",
        ],
    )
    assert (cfg.policy.backbone.type, cfg.policy.backbone.preset, cfg.policy.head.type) == ("paligemma", "tiny", "bins")


@pytest.mark.parametrize(
    "sub", ["", "data", "train", "eval", "eval-sweep", "observability", "serve", "bench", "export", "peer"]
)
def test_every_subcommand_has_help(sub):
    args = [sys.executable, "-m", "vla"] + ([sub] if sub else []) + ["--help"]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) > 100


def test_unknown_subcommand_suggests():
    r = subprocess.run([sys.executable, "-m", "vla", "trian"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "train" in r.stderr
