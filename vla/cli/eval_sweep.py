"""`vla eval-sweep RUN_DIR --suite NAME [--episodes-per-task N ...]`: score every checkpoint of a run.

    vla eval-sweep outputs/run --suite mw10 --episodes-per-task 10 --num-envs 2
    vla eval-sweep outputs/run --suite mw-easy --ema true --out outputs/run/sweep_ema

Evaluates RUN_DIR/checkpoints/step_* with the same options as `vla eval` (see `vla eval --help`),
writes OUT/sweep.json, sweep.md, success_vs_step.png (OUT defaults to RUN_DIR/eval_sweep/<suite>)
and prints the best checkpoint.
"""

from __future__ import annotations

import json

from vla.cli.common import friendly_errors, hyphens_to_underscores


def main(argv: list[str]) -> int:
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with friendly_errors("eval-sweep"):
        from eval.sweep import SweepConfig, sweep
        from vla.config import parse_config

        args = list(argv)
        if not args[0].startswith("--"):  # the run dir, given positionally
            args = [f"--run_dir={args[0]}"] + args[1:]
        cfg = parse_config(SweepConfig, hyphens_to_underscores(args))
        summary = sweep(cfg)
        print(
            json.dumps(
                {
                    "best": summary["best"],
                    "checkpoints": {r["step"]: r["average_success"] for r in summary["checkpoints"]},
                },
                indent=2,
            )
        )
    return 0
