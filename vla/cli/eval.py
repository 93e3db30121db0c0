"""`vla eval`: score a checkpoint, a reference policy or a policy server on a simulated suite.

    vla eval --checkpoint outputs/run/checkpoints/last --suite mw10 --episodes-per-task 50 --num-envs 2 --out DIR
    vla eval --policy oracle --suite mw-easy --episodes-per-task 5 --out DIR
    vla eval --policy random --suite libero_spatial --tasks 0 --episodes-per-task 1 --max-steps 20 --out DIR
    vla eval --server ws://localhost:8000 --suite mw10 --n-action-steps 5 --out DIR

Options (EvalConfig in eval/runner.py): --suite, --checkpoint | --policy oracle|random | --server URL,
--episodes-per-task, --num-envs, --tasks (indices or names, comma-separated), --max-steps, --seed,
--video-episodes K, --device, --compile (regional torch.compile), --n-action-steps, --image-size, --out.

Writes DIR/results.json, results.md, success.png, episodes.jsonl (rerun the same command to resume),
protocol.json and DIR/videos/*_{success,failure}.mp4.
"""

from __future__ import annotations

import json

from vla.cli.common import friendly_errors, hyphens_to_underscores


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with friendly_errors("eval"):
        from eval.runner import EvalConfig, evaluate
        from vla.config import parse_config

        cfg = parse_config(EvalConfig, hyphens_to_underscores(argv))
        res = evaluate(cfg)
        summary = {name: round(t["success_rate"], 4) for name, t in res["tasks"].items()}
        print(json.dumps({"average_success": res["average_success"], "tasks": summary, "out": cfg.out}, indent=2))
    return 0
