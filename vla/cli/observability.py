"""`vla observability`: can the cameras show what each MetaWorld task needs (its objects and its goal)?

    vla observability --suite mw10 --image-size 64 --compare-sizes '[128,224]' --out docs/img/observability
    vla observability --suite mw-easy --tasks '[reach-v3]' --compare-sizes '[]' --out /tmp/obs

Renders the suite's own env (cameras, renderer options, init state --episode, default 0) and measures
from MuJoCo: pixels of the task's objects, of the bodies its goal is fixed to, of the goal marker (in the
segmentation render, and RGB pixels it changes), whether the marker is drawn at all and whether the goal
is in each camera's field of view; then a verdict per task and size: observable, goal not visible or
object not visible (eval/observability.py says how each is found).

Options (ObservabilityConfig in eval/observability.py): --suite (mw-easy, mw10, mw50), --image-size (the
training resolution; frames are saved at it), --compare-sizes (measured too, not saved), --cameras, --tasks,
--episode, --goal-episodes (init states compared to tell a fixed, anchored or free goal), --min-pixels,
--min-contrast, --upscale, --out.

Writes OUT/<suite>/<task>.png (cameras side by side, upscaled nearest-neighbour), contact_sheet.png,
observability.json and observability.md.
"""

from __future__ import annotations

import json

from vla.cli.common import friendly_errors, hyphens_to_underscores


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with friendly_errors("observability") as failures:
        from eval.observability import ObservabilityConfig, observe
        from vla.config import parse_config

        cfg = parse_config(ObservabilityConfig, hyphens_to_underscores(argv))
        failures.run_dir = cfg.out
        report = observe(cfg)
        verdicts = {t["task"]: {s: t["sizes"][str(s)]["verdict"] for s in report["sizes"]} for t in report["tasks"]}
        print(json.dumps({"suite": report["suite"], "verdicts": verdicts, "out": f"{cfg.out}/{cfg.suite}"}, indent=2))
    return 0
