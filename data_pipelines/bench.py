"""Data loading throughput: our pipeline next to a plain LeRobot DataLoader, same run.

Both loaders read the same frames with the same delta timestamps (H actions per
sample), the same batch size, worker count and shuffling seed; the difference is our
FeatureMap + collate on top of lerobot's decoding. The first batch (worker start-up,
first video open) is timed separately and excluded from the steady-state rate.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data_pipelines.collate import collate
from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig, open_lerobot, worker_init_fn


def _time_loader(loader: DataLoader, steps: int) -> dict[str, float]:
    """Time ``steps`` batches after the first; the loader is re-iterated if it runs out."""
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_s = time.perf_counter() - t0
    batch_size = len(first["instruction"] if "instruction" in first else first["task"])
    n = 0
    t1 = time.perf_counter()
    while n < steps:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
    elapsed = time.perf_counter() - t1
    return {
        "first_batch_s": round(first_s, 4),
        "steady_s": round(elapsed, 4),
        "batches": n,
        "samples_per_s": round(n * batch_size / elapsed, 2) if elapsed > 0 else float("inf"),
    }


def bench_dataloader(
    root: str | Path, batch_size: int = 8, workers: int = 2, steps: int = 20, chunk: int = 10, seed: int = 0
) -> dict:
    """Samples/s of our pipeline and of plain ``LeRobotDataset`` + ``DataLoader``; JSON-serializable."""
    source = LeRobotSource(LeRobotSourceConfig(root=str(root), chunk=chunk))
    plain = open_lerobot(root, None, source.delta)

    def loader(ds, collate_fn=None, init_fn=None) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
            worker_init_fn=init_fn if workers > 0 else None,
        )

    if len(source) < batch_size:
        raise ValueError(f"{root}: {len(source)} frames, fewer than one batch of {batch_size}")
    ours = _time_loader(loader(source, collate), steps)
    # lerobot's decoder cache breaks in forked workers once the parent decoded (see
    # reset_decoder_cache_after_fork); the baseline gets the same fix, or it would crash.
    baseline = _time_loader(loader(plain, init_fn=worker_init_fn), steps)
    return {
        "root": str(root),
        "frames": len(source),
        "cameras": len(source.feature_map.cameras),
        "batch_size": batch_size,
        "workers": workers,
        "chunk": chunk,
        "torch_threads": torch.get_num_threads(),
        "ours": ours,
        "lerobot": baseline,
        "ours_over_lerobot": round(ours["samples_per_s"] / baseline["samples_per_s"], 3),
    }
