"""`vla eval-sweep RUN_DIR --suite NAME [--episodes-per-task N ...]`: choose a run's best checkpoint, report it.

    vla eval-sweep outputs/run --suite mw10 --episodes-per-task 10 --num-envs 2
    vla eval-sweep outputs/run --suite mw-easy --ema true --out outputs/run/sweep_ema
    vla eval-sweep outputs/run --suite mw10 --episodes-per-task 25 --selection-episodes-per-task 25

Every checkpoint RUN_DIR/checkpoints/step_* plays the *selection* episodes (the
--selection-episodes-per-task init states, default --episodes-per-task, that follow the held-out
ones); the best there then plays the *held-out* episodes (init states 0..N-1 of each task, as
`vla eval --episodes-per-task N`), which played no part in the choice: report that number. Other
options as `vla eval` (see `vla eval --help`). Writes OUT/sweep.json, sweep.md and
success_vs_step.png, each naming which episodes every number comes from (OUT defaults to
RUN_DIR/eval_sweep/<suite>), and prints the chosen checkpoint.
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
        selection = {r["step"]: r["average_success"] for r in summary["selection"]["checkpoints"]}
        print(json.dumps({"best": summary["best"], "selection_success": selection}, indent=2))
    return 0
