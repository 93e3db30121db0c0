"""What the GPU tests share: running the CLI from the repository root, reading a run's metrics, a tiny recipe.

Imported by name (``from gpu_runs import run_vla``): test folders have no packages (see tests/tiny_policies.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY_TRAINING = [
    "--policy.backbone.preset=tiny-smolvlm",
    "--policy.chunk_size=4",
    "--policy.n_action_steps=2",
    "--train.num_workers=0",
    "--train.log_every=1",
    "--train.save_every=0",
    "--optim.warmup_steps=2",
    "--optim.lr=1e-3",
    "--augment.enabled=false",
]


def run_vla(args: list[str], launcher: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m vla ARGS`` (or ``LAUNCHER vla ARGS``) from the repository root; fails the test with its stderr."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **(env or {}))
    cmd = (launcher or [sys.executable, "-m"]) + ["vla", *args]
    r = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def tiny_observation(batch: int) -> dict:
    """An observation for a policy trained on ``metaworld_layout_dataset`` (2 cameras at 32 px, 4-dim state), on CUDA."""
    return {
        "images": torch.rand(batch, 2, 3, 32, 32, device="cuda"),
        "state": torch.randn(batch, 4, device="cuda"),
        "instruction": ["reach the goal"] * batch,
    }
