"""What an evaluation leaves behind: episodes.jsonl, results.json, results.md, a bar chart, videos.

``episodes.jsonl`` is the source of truth: one line per finished episode, appended and
flushed as each one ends, so an interrupted run resumes without redoing finished
episodes. ``results.json`` / ``results.md`` / ``success.png`` are derived from it and
written write-then-rename, so a crash never leaves a report that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from eval.stats import wilson_interval
from vla.utils.atomic import atomic_file
from vla.utils.jsonl import read_records

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
PROTOCOL_FILE = "protocol.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CHART_FILE = "success.png"
VIDEO_DIR = "videos"


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


# ---- the episode log (resume) ---------------------------------------------------------------
def _identity(protocol: dict) -> dict:
    """What makes two protocols the same evaluation: everything but when it ran and, for a policy known by
    the hash of its weights, the path it was given as (``outputs/x/last`` and ``/work/outputs/x/last``, or
    a moved checkpoint, are the same policy)."""
    out = {k: v for k, v in protocol.items() if k != "timestamp"}
    policy = out.get("policy")
    if isinstance(policy, dict) and policy.get("checkpoint_hash"):
        out["policy"] = {k: v for k, v in policy.items() if k != "name"}
    return out


class EpisodeLog:
    """Append-only record of finished episodes, tied to one protocol.

    On open, an existing log is accepted only if ``DIR/protocol.json`` matches the new
    protocol (timestamp aside): mixing episodes of two protocols would report a number
    that belongs to neither.
    """

    def __init__(self, out_dir: str | Path, protocol: dict) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / EPISODES_FILE
        self.records: dict[tuple[int, int], dict] = {}
        proto_path = self.out_dir / PROTOCOL_FILE
        if self.path.exists() and proto_path.exists():
            old, new = _identity(json.loads(proto_path.read_text())), _identity(protocol)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise ValueError(
                    f"{self.out_dir} holds episodes of a different evaluation protocol (differs in: {', '.join(diff)}); "
                    "use another --out directory, or delete it to start over"
                )
            self._load()
        elif self.path.exists():
            raise ValueError(f"{self.path} exists without {PROTOCOL_FILE}; cannot tell its protocol, refusing to mix")
        _write_text_atomic(proto_path, json.dumps(protocol, indent=2))

    def _load(self) -> None:
        records = read_records(self.path, check=_episode_key)
        self.records = {_episode_key(r): r for r in records}
        if len(records) != len([line for line in self.path.read_text().splitlines() if line.strip()]):
            _write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def done(self, task_index: int, episode_index: int) -> bool:
        return (task_index, episode_index) in self.records

    def append(self, record: dict) -> None:
        key = _episode_key(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = record


def _episode_key(record: dict) -> tuple[int, int]:
    return int(record["task_index"]), int(record["episode_index"])


# ---- summaries -------------------------------------------------------------------------------
def summarize(records: Iterable[dict], task_names: Sequence[str], confidence: float = 0.95) -> dict:
    """Per-task success rate, Wilson CI, episode count and mean length; averages over tasks.

    ``average_success`` is the mean of the per-task rates (each task weighs the same, as
    MetaWorld and LIBERO report it); ``overall`` pools all episodes.
    """
    by_task: dict[int, list[dict]] = {}
    for r in records:
        by_task.setdefault(int(r["task_index"]), []).append(r)
    tasks = {}
    for ti in sorted(by_task):
        eps = sorted(by_task[ti], key=lambda r: r["episode_index"])
        k, n = sum(bool(r["success"]) for r in eps), len(eps)
        lo, hi = wilson_interval(k, n, confidence)
        tasks[task_names[ti]] = {
            "task_index": ti,
            "success_rate": k / n,
            "ci95": [lo, hi],
            "successes": k,
            "episodes": n,
            "mean_length": float(np.mean([r["length"] for r in eps])),
            "mean_length_success": float(np.mean([r["length"] for r in eps if r["success"]])) if k else None,
        }
    total_k = sum(t["successes"] for t in tasks.values())
    total_n = sum(t["episodes"] for t in tasks.values())
    return {
        "average_success": float(np.mean([t["success_rate"] for t in tasks.values()])) if tasks else 0.0,
        "overall": {"successes": total_k, "episodes": total_n, "ci95": list(wilson_interval(total_k, total_n))},
        "tasks": tasks,
    }


def markdown_table(results: dict) -> str:
    proto = results.get("protocol", {})
    lines = [
        f"# Evaluation: {proto.get('suite', '?')} ({proto.get('policy', {}).get('name', '?')})",
        "",
        f"Average success: **{results['average_success']:.3f}** over {len(results['tasks'])} tasks "
        f"({results['overall']['episodes']} episodes).",
        "",
        "| task | success | 95% CI | episodes | mean length |",
        "|---|---:|---|---:|---:|",
    ]
    for name, t in results["tasks"].items():
        lo, hi = t["ci95"]
        lines.append(
            f"| {name} | {t['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {t['episodes']} | {t['mean_length']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
    """Per-task success rates with asymmetric Wilson error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tasks"])
    rates = np.array([results["tasks"][n]["success_rate"] for n in names])
    lo = np.array([results["tasks"][n]["ci95"][0] for n in names])
    hi = np.array([results["tasks"][n]["ci95"][1] for n in names])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 4))
    x = np.arange(len(names))
    ax.bar(x, rates, color="tab:blue", alpha=0.8)
    ax.errorbar(x, rates, yerr=np.vstack([rates - lo, hi - rates]), fmt="none", ecolor="black", capsize=4)
    ax.set_xticks(x, [n if len(n) <= 28 else n[:25] + "..." for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(f"{results.get('protocol', {}).get('suite', '')}: average {results['average_success']:.3f}")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_results(out_dir: str | Path, results: dict) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / RESULTS_JSON, "md": out / RESULTS_MD, "chart": out / CHART_FILE}
    _write_text_atomic(paths["json"], json.dumps(results, indent=2))
    _write_text_atomic(paths["md"], markdown_table(results))
    bar_chart(results, paths["chart"])
    return paths


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """H.264 mp4 through imageio's bundled ffmpeg; frames are (H, W, 3) uint8."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1: keep the exact size (256-px pairs are fine, odd sizes would be padded)
    with (
        atomic_file(path) as tmp,
        imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7) as w,
    ):
        for f in frames:
            w.append_data(np.asarray(f, dtype=np.uint8))
    return path
