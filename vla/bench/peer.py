"""LeRobot's own pi0, timed beside ours in the same `vla bench` run.

LeRobot 0.6.1's pi models need transformers 5.5.4, which is not ours, so the peer runs in
a child process with its own ``PYTHONPATH`` (a directory holding lerobot and that
transformers) and prints one JSON line per measurement; its rows join ours in
``bench.json`` and the markdown table, tagged ``peer=lerobot-pi0``. The script is
``scripts/peers/lerobot_bench.py`` (the same inputs as ``vla bench --scale pi0``: 2
cameras at 224 px, an 8-dim state, a 7-dim action, chunk 50, 48 tokens, bf16, eager).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = REPO / "scripts" / "peers" / "lerobot_bench.py"
PEERS = ("lerobot-pi0", "lerobot-pi05")
SIDE_ENV = REPO / ".peers" / "lerobot"  # transformers 5.5.x for LeRobot's pi models (make install)


def side_env(pythonpath: str | None = None) -> dict:
    """The environment of a child process that runs LeRobot's pi models: ``pythonpath`` (default: the
    side folder ``make install`` fills) first on PYTHONPATH, so its transformers shadows ours."""
    path = pythonpath or os.environ.get("VLA_LEROBOT_PYTHONPATH") or str(SIDE_ENV)
    if not Path(path, "transformers").is_dir():
        raise FileNotFoundError(
            f"{path} holds no transformers for LeRobot's pi models: run `make install` (it fills {SIDE_ENV}) "
            "or point VLA_LEROBOT_PYTHONPATH at a folder with transformers==5.5.4"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
    return env


def run_peer(
    peer: str,
    *,
    batch_sizes: list[int],
    cameras: int = 2,
    infer_only: bool = False,
    pythonpath: str | None = None,
    python: str | None = None,
    timeout_s: float = 3600,
    save_to: str | None = None,
) -> list[dict]:
    """Run the peer's benchmark in a child process; return its measurement rows.

    ``save_to``: the peer also saves its freshly built policy there (LeRobot's ``save_pretrained``),
    for ours to start from the same weights."""
    if peer not in PEERS:
        raise ValueError(f"--peer {peer!r}: known peers: {', '.join(PEERS)}")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"--peer {peer}: the peer benchmark runs on a CUDA GPU only (LeRobot's script builds on cuda)"
        )
    cmd = [python or sys.executable, str(PEER_SCRIPT), "--policy", peer.removeprefix("lerobot-")]
    cmd += ["--batches", ",".join(map(str, batch_sizes)), "--cams", str(cameras)]
    if infer_only:
        cmd.append("--infer-only")
    if save_to:
        cmd += ["--save-to", save_to]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=side_env(pythonpath), timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} benchmark exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return parse_rows(proc.stdout)


def parse_rows(stdout: str) -> list[dict]:
    """The peer's measurement rows (lines that are JSON objects with a ``what``), in order."""
    rows = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "what" in row:
            rows.append(row)
    return rows
