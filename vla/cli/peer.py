"""`vla peer train`: LeRobot's own policies trained on a dataset for a wall-clock budget, as peers of ours.

    vla peer train --recipe configs/peers/lerobot_diffusion_cpu.yaml --dataset outputs/demo/data --minutes 4 \\
                   --out outputs/peers/diffusion_demo
    vla peer train --recipe configs/peers/lerobot_act_cpu.yaml --dataset DIR --steps 2000 --out OUT --batch_size=32
    vla eval --policy lerobot:OUT/checkpoints/last/pretrained_model --suite mw-easy --episodes-per-task 10 --out EVAL

The recipe is a lerobot-train config (configs/peers/); options this command does not know are passed to
LeRobot as overrides of it (--batch_size=32, --policy.chunk_size=10, --policy.device=cuda). LeRobot's own
training entry point runs (vla/peers/lerobot_train.py); the policy reads the dataset's cameras and
observation.state, never observation.environment_state. --minutes M times --calibration-steps steps first
(default 20), then trains M * 60 / seconds-per-step steps; --steps N trains N.

Writes what lerobot-train writes (OUT/checkpoints/last/pretrained_model: config.json, model.safetensors,
train_config.json, the processors with their statistics) and OUT/peer_train.json (inputs, calibration,
steps, time, loss curve).
"""

from __future__ import annotations

import argparse
import json
import sys

from vla.cli.common import friendly_errors


def parse_train_args(argv: list[str]):
    """Our options, plus LeRobot's overrides (every option we do not know) for the recipe."""
    from vla.config import ConfigError
    from vla.peers.lerobot_train import PeerTrainConfig

    p = argparse.ArgumentParser(prog="vla peer train", allow_abbrev=False)
    p.add_argument("--recipe", required=True, help="a lerobot-train config file (configs/peers/lerobot_*_cpu.yaml)")
    p.add_argument("--dataset", required=True, help="a LeRobot v3 dataset folder")
    p.add_argument("--out", required=True, help="the run's folder (LeRobot's output_dir); must not exist")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="train this long: steps from a measured time per step")
    budget.add_argument("--steps", type=int, help="train exactly this many steps")
    p.add_argument("--calibration-steps", type=int, default=20, help="steps timed for --minutes (default 20)")
    known, lerobot_args = p.parse_known_args(argv)
    stray = [a for a in lerobot_args if not (a.startswith("--") and "=" in a)]
    if stray:
        raise ConfigError(f"unexpected argument(s) {stray}: LeRobot's overrides of the recipe are written --key=value")
    return PeerTrainConfig(
        recipe=known.recipe,
        dataset=known.dataset,
        out=known.out,
        minutes=known.minutes,
        steps=known.steps,
        calibration_steps=known.calibration_steps,
        lerobot_args=lerobot_args,
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] != "train":
        print(f"vla peer: unknown action {argv[0]!r}; the one action is: train (vla peer --help)", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(__doc__)
        return 0
    with friendly_errors("peer") as failures:
        from vla.peers.lerobot_train import train_peer

        cfg = parse_train_args(argv[1:])
        failures.run_dir = cfg.out
        summary = train_peer(cfg)
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}, indent=2))
    return 0
