"""Evaluate every checkpoint of a training run on one suite, choose the best, and report it fairly.

    vla eval-sweep outputs/run --suite mw10 --episodes-per-task 10 --num-envs 2

Choosing the best of many checkpoints on some episodes and reporting its success on the
same episodes overstates it (the maximum of noisy scores is biased upwards). So the sweep
uses two disjoint blocks of each task's fixed init states:

* **selection**: every checkpoint ``RUN/checkpoints/step_*`` plays the
  ``selection_episodes_per_task`` init states that follow the held-out ones, into
  ``OUT/selection/step_*``; the best is the one with the highest average success there
  (ties go to the later step: trained longer on the same evidence);
* **held-out**: the chosen checkpoint alone plays init states ``first_episode ..
  first_episode + episodes_per_task - 1`` (by default the very episodes ``vla eval
  --episodes-per-task N`` plays, so the number compares with any other evaluation), into
  ``OUT/held_out/step_*``. This is the number to report.

Each evaluation resumes on its own, so an interrupted sweep redoes no finished episode;
``OUT`` defaults to ``RUN/eval_sweep/<suite>``. The sweep writes ``sweep.json``,
``sweep.md`` and ``success_vs_step.png``, each naming the block every number comes from.
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
    selection_episodes_per_task: int | None = None  # init states per task to choose on (default: episodes_per_task)


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


def split_episodes(cfg: SweepConfig) -> tuple[EvalConfig, EvalConfig]:
    """(selection, held-out) evaluation settings: two disjoint blocks of init states, the selection
    block right after the held-out one."""
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig)}
    base |= {"policy": None, "server": None}
    n_select = cfg.selection_episodes_per_task or cfg.episodes_per_task
    if n_select < 1:
        raise ValueError(f"--selection-episodes-per-task must be >= 1; got {n_select}")
    held_out = EvalConfig(**base)
    selection = EvalConfig(**(base | {"first_episode": held_out.episodes.stop, "episodes_per_task": n_select}))
    return selection, held_out


def _scores(res: dict) -> dict:
    """What the sweep keeps of one evaluation."""
    return {
        "average_success": res["average_success"],
        "ci95": res["overall"]["ci95"],
        "episodes": res["overall"]["episodes"],
        "tasks": {n: t["success_rate"] for n, t in res["tasks"].items()},
    }


def sweep(cfg: SweepConfig) -> dict:
    if not cfg.run_dir:
        raise ValueError("eval-sweep needs the training run dir (vla eval-sweep RUN_DIR --suite NAME)")
    out = Path(cfg.out or Path(cfg.run_dir) / "eval_sweep" / cfg.suite)
    selection, held_out = split_episodes(cfg)
    rows = []
    for step, path in find_checkpoints(cfg.run_dir, cfg.ema):
        where = str(out / "selection" / f"step_{step:07d}")
        res = evaluate(dataclasses.replace(selection, checkpoint=str(path), out=where))
        rows.append({"step": step, "checkpoint": str(path)} | _scores(res))
    best = max(rows, key=lambda r: (r["average_success"], r["step"]))
    where = str(out / "held_out" / f"step_{best['step']:07d}")
    held = evaluate(dataclasses.replace(held_out, checkpoint=best["checkpoint"], out=where))
    summary = {
        "run_dir": str(cfg.run_dir),
        "suite": cfg.suite,
        "best": {
            "step": best["step"],
            "checkpoint": best["checkpoint"],
            "held_out_success": held["average_success"],  # the number to report
            "selection_success": best["average_success"],  # biased upwards: the maximum over checkpoints
        },
        "selection": {
            "about": "every checkpoint on these init states; the best one is chosen here",
            "init_state_indices": list(selection.episodes),
            "checkpoints": rows,
        },
        "held_out": {
            "about": "the chosen checkpoint alone on these init states, which played no part in choosing it",
            "init_state_indices": list(held_out.episodes),
            "step": best["step"],
        }
        | _scores(held),
    }
    _write(out, summary)
    return summary


def _span(indices: list[int]) -> str:
    return f"{indices[0]}-{indices[-1]}" if len(indices) > 1 else str(indices[0])


def _write(out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    best, held = summary["best"], summary["held_out"]
    rows = summary["selection"]["checkpoints"]
    sel_span, held_span = _span(summary["selection"]["init_state_indices"]), _span(held["init_state_indices"])
    with atomic_file(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Checkpoint sweep: {summary['suite']}",
        "",
        f"Chosen: step {best['step']} ({best['checkpoint']}). **held-out** average success "
        f"**{held['average_success']:.3f}**, 95% CI (pooled) [{held['ci95'][0]:.3f}, {held['ci95'][1]:.3f}], "
        f"{held['episodes']} episodes on init states {held_span} of each task: these played no part in the "
        "choice; report this number.",
        "",
        f"Every checkpoint on the **selection** episodes (init states {sel_span} of each task), where the best "
        "was chosen (its selection score is biased upwards by the choice):",
        "",
        "| step | selection success | 95% CI (pooled, selection) | selection episodes |",
        "|---:|---:|---|---:|",
    ]
    for r in rows:
        mark = " **best**" if r["step"] == best["step"] else ""
        lines.append(
            f"| {r['step']} | {r['average_success']:.3f}{mark} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
            f"| {r['episodes']} |"
        )
    with atomic_file(out / "sweep.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    steps = np.array([r["step"] for r in rows])
    avg = np.array([r["average_success"] for r in rows])
    lo, hi = np.array([r["ci95"][0] for r in rows]), np.array([r["ci95"][1] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, avg, marker="o", label=f"selection (init states {sel_span})")
    ax.fill_between(steps, lo, hi, alpha=0.2, label="95% CI, selection (pooled episodes)")
    ax.errorbar(
        [best["step"]],
        [held["average_success"]],
        yerr=[[held["average_success"] - held["ci95"][0]], [held["ci95"][1] - held["average_success"]]],
        fmt="*",
        color="tab:red",
        markersize=12,
        capsize=4,
        label=f"held-out, chosen step (init states {held_span})",
    )
    ax.axvline(best["step"], color="gray", ls="--", lw=1, label="chosen")
    ax.set_xlabel("training step")
    ax.set_ylabel("average success")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{summary['suite']}: success vs step")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_file(out / "success_vs_step.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
