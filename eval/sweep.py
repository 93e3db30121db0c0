"""Evaluate every checkpoint of a training run on one suite and name the best.

    vla eval-sweep outputs/run --suite mw10 --episodes-per-task 10 --num-envs 2

Each checkpoint ``RUN/checkpoints/step_*`` is scored by the ordinary runner into
``OUT/step_*`` (so each one resumes on its own, and an interrupted sweep redoes no
finished episode); ``OUT`` defaults to ``RUN/eval_sweep/<suite>``. The sweep writes
``sweep.json``, ``sweep.md`` and ``success_vs_step.png``. The best checkpoint is the
one with the highest average success; ties go to the later step (trained longer on
the same evidence).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.runner import EvalConfig, evaluate
from vla.utils.atomic import atomic_file

STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass
class SweepConfig(EvalConfig):
    run_dir: str = ""  # training output dir holding checkpoints/step_*
    out: str | None = None  # default RUN_DIR/eval_sweep/<suite>
    ema: bool = False  # score the EMA weights (step_*/ema) instead of the raw ones


def find_checkpoints(run_dir: str | Path, ema: bool = False) -> list[tuple[int, Path]]:
    """``[(step, path)]`` sorted by step; only complete checkpoints (``.partial`` dirs are skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: is {run_dir} a training output dir?")
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir():
            path = p / "ema" if ema else p
            if not (path / "model.safetensors").is_file():
                raise FileNotFoundError(f"{path} is not a policy checkpoint (no model.safetensors)")
            found.append((int(m.group(1)), path))
    if not found:
        raise FileNotFoundError(f"no checkpoints matching step_* under {root}")
    return sorted(found)


def sweep(cfg: SweepConfig) -> dict:
    if not cfg.run_dir:
        raise ValueError("eval-sweep needs the training run dir (vla eval-sweep RUN_DIR --suite NAME)")
    out = Path(cfg.out or Path(cfg.run_dir) / "eval_sweep" / cfg.suite)
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig)}
    rows = []
    for step, path in find_checkpoints(cfg.run_dir, cfg.ema):
        ecfg = EvalConfig(
            **(base | {"checkpoint": str(path), "policy": None, "server": None, "out": str(out / f"step_{step:07d}")})
        )
        res = evaluate(ecfg)
        rows.append(
            {
                "step": step,
                "checkpoint": str(path),
                "average_success": res["average_success"],
                "ci95": res["overall"]["ci95"],
                "episodes": res["overall"]["episodes"],
                "tasks": {n: t["success_rate"] for n, t in res["tasks"].items()},
            }
        )
    best = max(rows, key=lambda r: (r["average_success"], r["step"]))
    summary = {
        "run_dir": str(cfg.run_dir),
        "suite": cfg.suite,
        "episodes_per_task": cfg.episodes_per_task,
        "best": {"step": best["step"], "checkpoint": best["checkpoint"], "average_success": best["average_success"]},
        "checkpoints": rows,
    }
    _write(out, summary)
    return summary


def _write(out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = summary["checkpoints"]
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Checkpoint sweep: {summary['suite']}",
        "",
        f"Best: step {summary['best']['step']} ({summary['best']['checkpoint']}), "
        f"average success {summary['best']['average_success']:.3f}",
        "",
        "| step | average success | 95% CI (pooled) | episodes |",
        "|---:|---:|---|---:|",
    ]
    for r in rows:
        mark = " **best**" if r["step"] == summary["best"]["step"] else ""
        lines.append(
            f"| {r['step']} | {r['average_success']:.3f}{mark} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
            f"| {r['episodes']} |"
        )
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    steps = np.array([r["step"] for r in rows])
    avg = np.array([r["average_success"] for r in rows])
    lo, hi = np.array([r["ci95"][0] for r in rows]), np.array([r["ci95"][1] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, avg, marker="o")
    ax.fill_between(steps, lo, hi, alpha=0.2, label="95% CI (pooled episodes)")
    ax.axvline(summary["best"]["step"], color="gray", ls="--", lw=1, label="best")
    ax.set_xlabel("training step")
    ax.set_ylabel("average success")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{summary['suite']}: success vs step")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_file(out / "success_vs_step.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
