"""What the user sees: metrics.jsonl always, TensorBoard / W&B optionally, a loss curve and summary at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vla.utils.jsonl import read_records


def peak_memory_gb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def estimate_flops_per_sample(policy, batch: dict) -> float:
    """Training FLOPs per sample ~ (6 x trainable + 2 x frozen params) x tokens (PaLM appendix B style).

    Rough on purpose: tokens = the prefix the backbone really builds for ``batch`` (image
    placeholders + text + state token) plus the action chunk; frozen parameters still cost
    the forward (2 of the 6).
    """
    inputs = policy.model_inputs(batch)[0]
    tokens = inputs["input_ids"].shape[1] + policy.config.chunk_size
    trainable = sum(full_numel(p) for p in policy.parameters() if p.requires_grad)
    frozen = sum(full_numel(p) for p in policy.parameters() if not p.requires_grad)
    return float((6 * trainable + 2 * frozen) * tokens)


class MetricsLogger:
    def __init__(self, out: Path, enabled: bool, cfg, resume: bool, step: int):
        self.out, self.enabled, self.cfg = Path(out), enabled, cfg
        self.path = self.out / "metrics.jsonl"
        self.t0 = time.time()
        self.rows: list[dict] = []
        self.tb = self.wandb = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            # Keep what was logged up to the checkpoint; later rows are recomputed identically.
            self.rows = [r for r in read_records(self.path) if r.get("step", 0) <= step]  # a torn last line: dropped
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("wandb=true needs the wandb package: pip install wandb") from e
            from vla.config import to_dict

            self.wandb = wandb.init(project=cfg.wandb_project, config=to_dict(cfg), dir=str(self.out))

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: v for k, v in row.items() if v is not None}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        step = row.get("step", 0)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def finish(self, **extra) -> dict:
        if not self.enabled:
            return {}
        losses = [r for r in self.rows if "loss" in r]
        summary = {
            "steps": extra.get("steps"),
            "wall_time_s": round(time.time() - self.t0, 1),
            "first_loss": losses[0]["loss"] if losses else None,
            "final_loss": losses[-1]["loss"] if losses else None,
            "mean_samples_per_s": (sum(r["samples_per_s"] for r in losses) / len(losses)) if losses else None,
            "peak_mem_gb": peak_memory_gb(),
            **extra,
        }
        if losses:
            summary["loss_curve"] = str(plot_loss_curve(losses, self.out / "loss_curve.png"))
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        return summary


def plot_loss_curve(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log" if all(r["loss"] > 0 for r in rows) else "linear")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def full_numel(p: torch.Tensor) -> int:
    """Elements of the whole parameter, also under ZeRO-3 (whose ranks hold an empty placeholder)."""
    return int(getattr(p, "ds_numel", p.numel()))
