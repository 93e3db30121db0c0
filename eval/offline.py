"""Open-loop evaluation on recorded episodes: how far a policy's chunks are from the demonstrated ones.

For a robot with no simulator (a bimanual arm, your own cell) the first check of a fine-tune is
open loop: at fixed frames of held-out episodes, predict a chunk from the recorded observation and
compare it with the recorded actions. ``vla eval --checkpoint CKPT --dataset DIR`` reports the
mean absolute error in robot units (per dim and over the chunk), the same in normalized units
(comparable across dims), and the error of the dataset-mean predictor on the same frames, so a
number means something: a policy that learned nothing is no better than the mean.

Frames are evenly spaced over the dataset and chunks are sampled with per-frame seeds, so the same
command gives the same numbers. Padded steps (past an episode's end) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vla.utils.atomic import atomic_file


def evaluate_offline(
    policy, dataset_root: str | Path, out: str | Path, frames: int = 64, batch_size: int = 8, seed: int = 0
) -> dict:
    """Chunk errors of ``policy`` on ``frames`` frames of the LeRobot dataset at ``dataset_root``."""
    stats = policy.stats.get("members", [policy.stats])[0].get("actions", {})
    if "mean" not in stats:
        raise KeyError(
            f"the policy's action statistics have no mean (they have {sorted(stats)}): no baseline to report"
        )
    chunks = predict_frames(policy, dataset_root, frames, batch_size, seed)
    pred, target, w = chunks["pred"], chunks["target"], chunks["mask"]
    norm, device = policy.normalizers[0], next(policy.parameters()).device
    mean = torch.tensor(stats["mean"], dtype=torch.float32)  # the dataset-mean predictor
    err = (pred - target).abs() * w
    base = (mean.expand_as(target) - target).abs() * w
    errn = (norm.normalize("actions", pred.to(device)) - norm.normalize("actions", target.to(device))).abs().cpu() * w
    count = w.sum(dim=(0, 1)).clamp(min=1)
    results = {
        "frames": len(chunks["frames"]),
        "dataset": str(dataset_root),
        "mae": float(err.sum() / w.sum()),
        "mae_per_dim": (err.sum(dim=(0, 1)) / count).tolist(),
        "mae_first_step": float(err[:, 0].sum() / w[:, 0].sum()),
        "mae_normalized": float(errn.sum() / w.sum()),
        "mean_baseline_mae": float(base.sum() / w.sum()),
        "seed": seed,
    }
    write(Path(out), results)
    return results


def predict_frames(
    policy, dataset_root: str | Path, frames: int = 64, batch_size: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The policy's chunks at ``frames`` evenly spaced frames of the dataset, with per-frame seeds: two
    policies (a float one and its quantized copy) get the same frames and the same initial noise.

    Returns CPU tensors: ``pred`` and ``target`` (N, H, D) raw units, ``mask`` (N, H, D) 1 where the
    recorded step is real (not padding past an episode's end), ``frames`` (N,) the dataset indices."""
    from data_pipelines.collate import collate
    from vla.train.config import DatasetConfig
    from vla.train.data import _source

    cfg = policy.config
    src = _source(
        str(dataset_root), None, DatasetConfig(root=str(dataset_root), state_key=cfg.state_key), cfg.chunk_size
    )
    names = src.feature_map.camera_names
    if names != list(cfg.cameras) or src.feature_map.action_dim != cfg.action_dim:
        raise ValueError(
            f"{dataset_root}: cameras {names} and {src.feature_map.action_dim}-dim actions; the policy wants "
            f"cameras {list(cfg.cameras)} and {cfg.action_dim}-dim actions"
        )
    device = next(policy.parameters()).device
    picks = np.unique(np.linspace(0, len(src) - 1, min(frames, len(src))).round().astype(int))
    preds, targets, masks = [], [], []
    for start in range(0, len(picks), batch_size):
        idx = picks[start : start + batch_size]
        batch = collate([src[int(i)] for i in idx])
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        pred = policy.predict_chunk(batch, seed=[seed * 1_000_003 + int(i) for i in idx])  # (B, H, D)
        target = batch["actions"].float()
        preds.append(pred.float().cpu())
        targets.append(target.cpu())
        masks.append((~batch["action_pad"].bool()).float()[..., None].expand_as(target).cpu())  # (B, H, D)
    return {
        "pred": torch.cat(preds),
        "target": torch.cat(targets),
        "mask": torch.cat(masks),
        "frames": torch.as_tensor(picks),
    }


def write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    lines = [
        f"# Open-loop evaluation on {results['dataset']} ({results['frames']} frames)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| chunk MAE (robot units) | {results['mae']:.4f} |",
        f"| first-step MAE | {results['mae_first_step']:.4f} |",
        f"| chunk MAE (normalized) | {results['mae_normalized']:.4f} |",
        f"| dataset-mean predictor MAE | {results['mean_baseline_mae']:.4f} |",
    ]
    with atomic_file(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
