"""What the interop tests share: the small dimensions LeRobot's models are built with, and how to run
LeRobot's reference script in its side environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vla.bench.peer import REPO, side_env

SCRIPT = REPO / "scripts" / "peers" / "lerobot_reference.py"
PI_DIMS = {  # keep 8 query heads: LeRobot's pi0 reshapes with a literal 8 * head_dim
    "vlm": {"width": 64, "depth": 2, "mlp_dim": 128, "num_heads": 8, "num_kv_heads": 1, "head_dim": 16},
    "expert": {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 8, "num_kv_heads": 1, "head_dim": 16},
    "vision": {"width": 32, "ffn": 64, "layers": 1, "heads": 2, "patch": 8},
    "vocab": 2048,
    "image": 32,
}
SMOLVLA_DIMS = {"image": 64, "num_vlm_layers": 4}  # the tiny SmolVLM: 4 layers, so 2 joint + 2 cross
CAMERAS = ["top", "wrist"]
S, D, H = 6, 5, 4


def run_lerobot(spec: dict, tmp: Path) -> dict:
    """Run the reference script on one spec; return its JSON line."""
    path = tmp / f"{spec['action']}_{spec['policy']}_{len(list(tmp.iterdir()))}.json"
    path.write_text(json.dumps(spec))
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(path)], env=side_env(), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
