"""`vla import lerobot CKPT_DIR --out OUT [--processor DIR]`: a LeRobot pi0, pi0.5 or SmolVLA checkpoint as ours.

CKPT_DIR is what LeRobot's ``save_pretrained`` writes or a hub download (lerobot/pi0_base,
lerobot/pi05_base, lerobot/smolvla_base, a fine-tuned one): config.json, model.safetensors and,
when present, the pre/post-processor files with the normalization statistics. The checkpoint holds
no tokenizer: --processor DIR is a local copy of the VLM it was built on
(google/paligemma-3b-pt-224 for pi0/pi0.5, HuggingFaceTB/SmolVLM2-500M-Video-Instruct for SmolVLA;
SmolVLA's own vlm_model_name is used when it is a local folder). OUT is one of our self-contained
checkpoints: vla serve, vla eval, vla export and vla train --init-from take it, offline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla.cli.common import friendly_errors

SUMMARY = "read another stack's checkpoint (LeRobot pi0, pi0.5, SmolVLA) into ours"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vla import", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source", choices=["lerobot"], help="the stack the checkpoint comes from")
    p.add_argument("checkpoint", type=Path, help="the checkpoint folder (config.json, model.safetensors, ...)")
    p.add_argument("--out", type=Path, required=True, help="where to write our checkpoint")
    p.add_argument("--processor", type=Path, default=None, help="the VLM's folder: tokenizer, processor (config.json)")
    a = p.parse_args(argv)
    with friendly_errors("import"):
        from vla.interop.lerobot_import import import_lerobot

        report = import_lerobot(a.checkpoint, a.out, a.processor)
        print(json.dumps(report, indent=2))
    return 0
