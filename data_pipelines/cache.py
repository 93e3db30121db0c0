"""Decode a dataset once and keep its canonical samples in memory.

LeRobotDataset decodes every image and queries every action chunk on each access
(~20 ms per sample on one CPU core here), which starves a small model: a tiny VLA
trains faster than one core can decode. For datasets that fit in memory, decoding
once (in parallel, with a progress bar) and indexing tensors afterwards removes the
data loader from the critical path. Images are kept as uint8 (4x smaller than float).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data_pipelines.lerobot_source import worker_init_fn

log = logging.getLogger(__name__)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class InMemoryDataset(Dataset):
    """Every sample of ``source`` decoded once; images stored as uint8 and returned as float in [0, 1]."""

    def __init__(self, source: Dataset, max_gb: float = 8.0, workers: int = 2, desc: str = "caching dataset"):
        self.source = source
        n = len(source)
        first = source[0]
        self.image_keys = [
            k for k, v in first.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim >= 3
        ]
        per_sample = sum(
            v.numel() * (1 if k in self.image_keys else v.element_size())
            for k, v in first.items()
            if isinstance(v, torch.Tensor)
        )
        need_gb = per_sample * n / 2**30
        if need_gb > max_gb:
            raise MemoryError(
                f"caching {n} samples needs about {need_gb:.1f} GB (> dataset.cache_max_gb={max_gb}); "
                "set dataset.cache=false or raise dataset.cache_max_gb"
            )
        loader = DataLoader(source, batch_size=None, num_workers=workers, worker_init_fn=worker_init_fn)
        self.samples: list[dict] = []
        for sample in tqdm(loader, total=n, desc=desc, dynamic_ncols=True):
            # clone(): tensors from workers live in shared memory, one open file each; keep private copies
            self.samples.append(
                {
                    k: _to_uint8(v) if k in self.image_keys else (v.clone() if isinstance(v, torch.Tensor) else v)
                    for k, v in sample.items()
                }
            )
        log.info("cached %d samples (%.2f GB)", n, need_gb)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        return {k: (v.float() / 255.0 if k in self.image_keys else v) for k, v in s.items()}

    def __getattr__(self, name):  # feature_map, root, fps ... of the source
        if name in ("source", "samples", "image_keys"):
            raise AttributeError(name)
        return getattr(self.source, name)
