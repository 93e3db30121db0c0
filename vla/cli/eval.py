"""`vla eval`: score a checkpoint, a reference policy, a LeRobot policy or a policy server on a simulated suite.

    vla eval --checkpoint outputs/run/checkpoints/last --suite mw10 --episodes-per-task 50 --num-envs 2 --out DIR
    vla eval --policy oracle --suite mw-easy --episodes-per-task 5 --out DIR
    vla eval --policy random --suite libero_spatial --tasks 0 --episodes-per-task 1 --max-steps 20 --out DIR
    vla eval --server ws://localhost:8000 --suite mw10 --n-action-steps 5 --out DIR
    vla eval --policy lerobot:RUN/checkpoints/last/pretrained_model --suite mw-easy --num-envs 2 --out DIR
    vla eval --checkpoint CKPT --dataset DIR --frames 64 --out OUT   # open loop, for robots with no simulator

Options (EvalConfig in eval/runner.py): --suite, --checkpoint | --policy oracle|random|lerobot:DIR | --server URL,
--episodes-per-task, --first-episode (init states first..first+N-1; default 0), --num-envs, --tasks
(indices or names, comma-separated), --max-steps, --seed, --video-episodes K, --device, --compile
(regional torch.compile), --n-action-steps, --image-size, --num-shards/--shard-index (one share of the
episodes, into DIR/shard_<index>), --out. A checkpoint trained with policy.temporal_ensemble_coeff
plays ACT's ensembled actions, as Policy.select_action does. --policy lerobot:DIR plays a LeRobot policy
(ACT, Diffusion Policy, ...: a folder LeRobot's from_pretrained loads, e.g. from `vla peer train`) with
LeRobot's own processors, one select_action per step (eval/lerobot_policy.py).

Writes DIR/results.json, results.md, success.png, episodes.jsonl (rerun the same command to resume),
protocol.json and DIR/videos/*_{success,failure}.mp4. With --dataset (open loop, eval/offline.py):
results.json and results.md with the chunk MAE in robot and normalized units beside the dataset-mean
predictor's on the same frames.
"""

from __future__ import annotations

import json

from vla.cli.common import friendly_errors, hyphens_to_underscores


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with friendly_errors("eval") as failures:
        from eval.runner import EvalConfig, evaluate
        from vla.config import parse_config

        cfg = parse_config(EvalConfig, hyphens_to_underscores(argv))
        failures.run_dir = cfg.out
        if cfg.dataset:
            from eval.offline import evaluate_offline
            from vla.models.policy import Policy

            if not cfg.checkpoint:
                raise ValueError("--dataset (open-loop evaluation) needs --checkpoint")
            res = evaluate_offline(
                Policy.load(cfg.checkpoint, device=cfg.device), cfg.dataset, cfg.out, cfg.frames, seed=cfg.seed
            )
            print(json.dumps({k: v for k, v in res.items() if k != "mae_per_dim"} | {"out": cfg.out}, indent=2))
            return 0
        res = evaluate(cfg)
        summary = {name: round(t["success_rate"], 4) for name, t in res["tasks"].items()}
        print(json.dumps({"average_success": res["average_success"], "tasks": summary, "out": cfg.out}, indent=2))
    return 0
