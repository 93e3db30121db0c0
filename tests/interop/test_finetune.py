"""Fine-tuning an imported LeRobot pi0.5 onto another robot: 3 cameras, a 7-dim state, 14-dim actions.

The base is LeRobot's own small pi0.5 (2 cameras, 6-dim state, 5-dim actions), imported with
``vla import lerobot``. ``--init-from`` with the pi0.5 recipe trains it on the new robot (the state
and action projections are padded to 32 dims, so every tensor carries over), a killed run resumes
exactly, the open-loop evaluation scores it on the recorded episodes, and ``vla serve`` answers the
real openpi client with a (50, 14) chunk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vla.bench.peer import REPO
from vla.interop.lerobot_import import import_lerobot

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def vla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vla", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900
    )


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_imported_pi05_finetunes_resumes_evaluates_and_serves(
    lerobot_checkpoint, paligemma_dir, three_cam_dataset, tmp_path, serve_and_infer, kill_at_checkpoint
):
    ckpt, _ = lerobot_checkpoint("pi05")
    base = tmp_path / "pi05_base"
    import_lerobot(ckpt, base, paligemma_dir)
    train = [
        "train", "--config", "configs/experiments/pi05_finetune.yaml", f"--init-from={base}",
        f"--dataset.root={three_cam_dataset}", "--train.steps=6", "--train.batch_size=2", "--train.save_every=2",
        "--train.num_workers=0", "--train.log_every=1", "--train.mixed_precision=no", "--augment.enabled=false",
    ]  # fmt: skip
    full = tmp_path / "full"
    r = vla(*train, f"--output_dir={full}")
    assert r.returncode == 0, r.stderr[-3000:]
    plan = r.stdout[r.stdout.index("training plan:") :]
    assert "re-initialized (shape changed or new): nothing" in plan  # 32-dim projections fit the new robot

    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "vla", *train, f"--output_dir={crashed}"]
    kill_at_checkpoint(cmd, crashed / "checkpoints" / "step_0000002", ENV, REPO, crashed / "summary.json")
    r = vla(*train, f"--output_dir={crashed}", "--resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = metrics(full), metrics(crashed)
    assert [x["step"] for x in b] == list(range(1, 7))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-7), (ra, rb)

    last = full / "checkpoints" / "last"
    out = tmp_path / "eval"
    r = vla(
        "eval", f"--checkpoint={last}", f"--dataset={three_cam_dataset}", "--frames=8", f"--out={out}", "--device=cpu"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["frames"] == 8 and len(res["mae_per_dim"]) == 14 and np.isfinite(res["mae"])
    assert (out / "results.md").is_file()

    rng = np.random.default_rng(0)
    obs = {f"observation.images.{c}": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
           for c in ("left_wrist_cam", "overhead", "zed_right")}  # fmt: skip
    obs.update({"observation.state": rng.normal(size=7).astype(np.float32), "prompt": "fold the towel"})
    actions = serve_and_infer(last, obs)
    assert actions.shape == (50, 14) and np.isfinite(actions).all()
