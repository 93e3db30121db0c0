"""`vla train`: train a policy from a YAML recipe plus dotted overrides.

    vla train --config configs/experiments/tiny_cpu.yaml --train.steps=200
    vla train --dataset.root=DIR --policy.backbone.preset=tiny-smolvlm --policy.head.type=flow \\
              --train.steps=100 --train.batch_size=8 --output_dir=outputs/run
    accelerate launch --config_file configs/accelerate/zero2.yaml -m vla train --config ...

Writes OUT/metrics.jsonl, OUT/checkpoints/{step_*,last}, OUT/loss_curve.png, OUT/summary.json,
and OUT/error.log with the traceback if the run fails.
"""

from __future__ import annotations

import json

from vla.cli.common import friendly_errors, hyphens_to_underscores


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        from vla.config import parse_config
        from vla.train.config import TrainConfig

        try:
            parse_config(TrainConfig, ["--help"])
        except BaseException:  # noqa: BLE001  draccus prints the option list and exits
            pass
        return 0
    with friendly_errors("train") as failures:
        from vla.config import parse_config
        from vla.train.config import TrainConfig
        from vla.train.trainer import run_training

        cfg = parse_config(TrainConfig, hyphens_to_underscores(argv))
        failures.run_dir = cfg.output_dir  # a failure's traceback goes to OUT/error.log once OUT exists
        summary = run_training(cfg)
        if summary:
            print(json.dumps(summary, indent=2))
    return 0
