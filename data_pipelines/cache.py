"""Decode a dataset once, keep its canonical samples in memory, and keep them on disk for the next run.

LeRobotDataset decodes every image and queries every action chunk on each access
(~20 ms per sample on one CPU core here), which starves a small model: a tiny VLA
trains faster than one core can decode. For datasets that fit in memory, decoding
once (in parallel, with a progress bar) and indexing tensors afterwards removes the
data loader from the critical path.

Decoding itself is slow too (about 11 minutes for mw10's 42k frames on 2 cores), and a
sweep over heads or learning rates decodes the same samples every run. So the decoded
columns are also written to a file keyed by a fingerprint of the dataset's files and of
everything that shapes a sample (chunk length, feature map, episode subset); the next
run memory-maps that file in about a second. Images are stored as uint8 (4x smaller
than float).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data_pipelines.lerobot_source import worker_init_fn
from vla.utils.atomic import atomic_file
from vla.utils.paths import user_cache_dir

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored layout or the canonical sample changes
KEEP_FILES = 4  # cached datasets kept on disk; the least recently used beyond this are deleted


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def fingerprint(source: Dataset) -> str | None:
    """A key that changes when the dataset's files or the way samples are cut from them change.

    Returns None for sources it cannot describe (anything without ``root`` and ``cfg``),
    which are then decoded every run rather than risk serving stale samples.
    """
    root, cfg = getattr(source, "root", None), getattr(source, "cfg", None)
    if root is None or not dataclasses.is_dataclass(cfg):
        return None
    root = Path(root).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    listing = [(str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    described = dataclasses.asdict(cfg)
    fmap = described.get("feature_map")
    if isinstance(fmap, dict) and not fmap.get("auxiliary"):  # the option off: keys of earlier runs stay valid
        fmap.pop("auxiliary", None)
    blob = json.dumps(
        {"format": FORMAT, "root": str(root), "files": listing, "cfg": described},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class InMemoryDataset(Dataset):
    """Every sample of ``source`` decoded once; images stored as uint8 and returned as float in [0, 1].

    Samples are stored column-wise: one tensor of shape ``(n, ...)`` per tensor key, one list per
    other key (the instruction). ``store_dir`` (None: no file) holds the decoded columns between runs.
    """

    def __init__(
        self,
        source: Dataset,
        max_gb: float = 8.0,
        workers: int = 2,
        desc: str = "caching dataset",
        store_dir: str | Path | None = None,
    ):
        self.source = source
        key = fingerprint(source) if store_dir is not None else None
        path = Path(store_dir) / f"{key}.pt" if key else None
        if path is not None and path.is_file():
            self._load(path)
            return
        self._decode(source, max_gb, workers, desc)
        if path is not None:
            self._save(path)

    def _decode(self, source: Dataset, max_gb: float, workers: int, desc: str) -> None:
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
        self.tensors = {
            k: torch.empty((n, *v.shape), dtype=torch.uint8 if k in self.image_keys else v.dtype)
            for k, v in first.items()
            if isinstance(v, torch.Tensor)
        }
        self.values: dict[str, list] = {k: [] for k, v in first.items() if not isinstance(v, torch.Tensor)}
        loader = DataLoader(source, batch_size=None, num_workers=workers, worker_init_fn=worker_init_fn)
        for i, sample in enumerate(tqdm(loader, total=n, desc=desc, dynamic_ncols=True)):
            for k, column in self.tensors.items():
                v = sample[k]
                if v.shape != column.shape[1:]:
                    raise ValueError(
                        f"sample {i}: {k} has shape {tuple(v.shape)} but sample 0 had {tuple(column.shape[1:])}; "
                        "the in-memory cache needs fixed shapes (set dataset.image_size, or dataset.cache=false)"
                    )
                column[i] = _to_uint8(v) if k in self.image_keys else v
            for k, column in self.values.items():
                column.append(sample[k])
        log.info("cached %d samples (%.2f GB)", n, need_gb)

    def _save(self, path: Path) -> None:
        """Write, then rename: a run killed mid-write leaves no file that looks like a finished cache."""
        state = {"format": FORMAT, "image_keys": self.image_keys, "tensors": self.tensors, "values": self.values}
        try:
            with atomic_file(path) as tmp:
                torch.save(state, tmp)
        except OSError as e:  # a full or read-only disk costs the next run a decode, nothing more
            log.warning("could not keep the decoded dataset at %s: %s", path, e)
            return
        log.info(
            "kept the decoded dataset at %s (%.2f GB); the next run with it loads in seconds",
            path,
            path.stat().st_size / 2**30,
        )
        _evict_old(path.parent, keep=KEEP_FILES)

    def _load(self, path: Path) -> None:
        state = torch.load(path, mmap=True, weights_only=True)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: cache format {state.get('format')} != {FORMAT}; delete the file")
        self.image_keys, self.tensors, self.values = state["image_keys"], state["tensors"], state["values"]
        os.utime(path)  # most recently used: the last to be evicted
        log.info("loaded the decoded dataset from %s (%d samples)", path, len(self))

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: (v[idx].float() / 255.0 if k in self.image_keys else v[idx]) for k, v in self.tensors.items()
        }
        out.update({k: v[idx] for k, v in self.values.items()})
        return out

    def __getattr__(self, name):  # feature_map, root, fps ... of the source
        # Not its readers: a DataLoader finding the source's __getitems__ here would decode, not index.
        if name in ("source", "tensors", "values", "image_keys", "read_batch") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.source, name)


def _evict_old(folder: Path, keep: int) -> None:
    files = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in files[keep:]:
        stale.unlink(missing_ok=True)
        log.info("deleted the least recently used decoded dataset %s", stale)


def default_store_dir() -> Path:
    return user_cache_dir("samples")
