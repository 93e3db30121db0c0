"""MuJoCo renders through EGL on the NVIDIA driver, and a MetaWorld evaluation runs on the GPU with it.

On the CPU machine EGL falls back to Mesa's software ``llvmpipe``; on a GPU machine a missing vendor file or
library silently gives the same fallback, and evaluation then renders on the CPU at a fraction of the speed.
Each check runs in a fresh process: the GL backend is chosen when ``mujoco`` is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from gpu_runs import REPO, run_vla
from tiny_policies import random_tiny_policy

PROBE = """
import json
import eval.suites.render  # noqa: F401  (the GL backend defaults, before mujoco)
import numpy as np
from OpenGL import GL
from eval.suites.base import get_suite

env = get_suite("mw-easy", image_size=64).make_env(0)
images = env.reset(0)["images"]
renderer = GL.glGetString(GL.GL_RENDERER).decode()  # the context MuJoCo's renderer made current
print(json.dumps({"renderer": renderer, "std": {k: float(np.std(v)) for k, v in images.items()}}))
"""


def test_mujoco_renders_with_egl_on_the_nvidia_device():
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert "NVIDIA" in found["renderer"], f"EGL renders with {found['renderer']!r}, not the GPU"
    assert all(std > 5 for std in found["std"].values()), found  # a scene, not a blank frame


def test_metaworld_evaluation_on_the_gpu(tmp_path):
    """`vla eval` of a (random) checkpoint on CUDA, compiled, with 2 environment processes rendering by EGL:
    every episode runs to its end and the report is written."""
    stats = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [0.0] * 4, "std": [0.5] * 4}}
    ckpt = random_tiny_policy("flow", ["image", "wrist"], 4, 4, stats, chunk_size=8, n_action_steps=4).save(
        tmp_path / "ckpt"
    )
    out = tmp_path / "eval"
    run_vla(
        [
            "eval",
            "--checkpoint", str(ckpt), "--suite", "mw-easy", "--tasks", "reach-v3,drawer-close-v3",
            "--episodes-per-task", "2", "--max-steps", "40", "--num-envs", "2",
            "--device", "cuda", "--compile", "true", "--out", str(out),
        ],
        env={"MUJOCO_GL": "egl"},
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["overall"]["episodes"] == 4, results["overall"]
    lengths = [json.loads(line)["length"] for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(lengths) == 4 and np.all(np.array(lengths) > 0)
