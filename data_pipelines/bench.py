"""Data loading throughput: our pipeline next to LeRobot's DataLoader, same run.

Both loaders read the same frames with the same delta timestamps (H actions per
sample), the same batch size, worker count, shuffling seed and loader options; ours reads
through data_pipelines/frame_reader.py (columns, open decoders, a batch's frames per file)
and our FeatureMap + collate, LeRobot's through ``LeRobotDataset.__getitem__``. The first
batches (worker start-up, first video open, what the workers prefetched meanwhile) are
excluded from the steady-state rate. ``profile_pieces`` says where a sample's time goes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data_pipelines.collate import collate
from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig, open_lerobot, worker_init_fn

# LeRobot's own training loader options (lerobot/configs/train.py: prefetch_factor=4, persistent_workers=True);
# ours are the same (vla/train/trainer.py _make_loader).
PREFETCH = 4


def _time_loader(loader: DataLoader, steps: int, warmup: int, min_s: float = 0.0) -> dict[str, float]:
    """Time ``steps`` batches, or more until ``min_s`` seconds passed, after ``warmup`` ones (worker start-up,
    first video opens, and the batches the workers prefetched meanwhile); the loader is re-iterated if it
    runs out."""
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_s = time.perf_counter() - t0
    batch_size = len(first["instruction"] if "instruction" in first else first["task"])

    def advance(k: int) -> int:
        nonlocal it
        n = 0
        while n < k:
            try:
                next(it)
            except StopIteration:
                it = iter(loader)
                continue
            n += 1
        return n

    advance(warmup)
    t1 = time.perf_counter()
    n = advance(steps)
    while time.perf_counter() - t1 < min_s:
        n += advance(1)
    elapsed = time.perf_counter() - t1
    if hasattr(it, "_shutdown_workers"):  # persistent workers would idle on beside the next loader's
        it._shutdown_workers()
    return {
        "first_batch_s": round(first_s, 4),
        "steady_s": round(elapsed, 4),
        "batches": n,
        "samples_per_s": round(n * batch_size / elapsed, 2) if elapsed > 0 else float("inf"),
    }


def _merge(rounds: list[dict]) -> dict:
    """Rounds of one loader: samples/s over all of them (total samples / total time), and each round's."""
    steady = sum(r["steady_s"] for r in rounds)
    samples = sum(r["samples_per_s"] * r["steady_s"] for r in rounds)
    return {
        "first_batch_s": rounds[0]["first_batch_s"],
        "steady_s": round(steady, 4),
        "batches": sum(r["batches"] for r in rounds),
        "samples_per_s": round(samples / steady, 2) if steady > 0 else float("inf"),
        "rounds_samples_per_s": [r["samples_per_s"] for r in rounds],
    }


def bench_dataloader(
    root: str | Path,
    batch_size: int = 8,
    workers: int = 2,
    steps: int = 20,
    chunk: int = 10,
    seed: int = 0,
    rounds: int = 1,
    min_s: float = 0.0,
) -> dict:
    """Samples/s of our pipeline and of LeRobot's ``LeRobotDataset`` + ``DataLoader``; JSON-serializable.

    Ours is the trainer's loader: ``ShardedStepSampler`` draws through ``NumberedDataset`` over
    ``LeRobotSource`` (data_pipelines/frame_reader.py under it), our collate, images as uint8 across the
    DataLoader (``TrainingData.to_device`` makes them floats on the device); ``ours_float_images`` is
    ``LeRobotSource`` alone in a shuffling DataLoader, images made float in the workers. LeRobot's is its dataset with the default collate and
    the loader options of its training script. ``rounds`` alternate the loaders, each with fresh workers, so
    that a change in the machine's load falls on all of them; the rate is over all rounds.
    """
    from vla.train.data import NumberedDataset
    from vla.train.sampler import ShardedStepSampler

    source = LeRobotSource(LeRobotSourceConfig(root=str(root), chunk=chunk))
    plain = open_lerobot(root, None, source.delta)

    def loader(ds, collate_fn=None, init_fn=None, sampler=None) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers > 0 else None,
            worker_init_fn=init_fn if workers > 0 else None,
        )

    def training_loader() -> DataLoader:
        """vla/train/trainer.py _make_loader's: the sampler's draws through NumberedDataset, uint8 images."""
        sampler = ShardedStepSampler(len(source), batch_size, total_micro_steps=10**6, seed=seed)
        return loader(NumberedDataset(source), collate, worker_init_fn, sampler)

    if len(source) < batch_size:
        raise ValueError(f"{root}: {len(source)} frames, fewer than one batch of {batch_size}")
    warmup = workers * PREFETCH if workers > 0 else 0
    ours, ours_float, baseline = [], [], []
    for _ in range(rounds):
        ours.append(_time_loader(training_loader(), steps, warmup, min_s))
        ours_float.append(_time_loader(loader(source, collate), steps, warmup, min_s))
        # lerobot's decoder cache breaks in forked workers once the parent decoded (see
        # reset_decoder_cache_after_fork); the baseline gets the same fix, or it would crash.
        baseline.append(_time_loader(loader(plain, init_fn=worker_init_fn), steps, warmup, min_s))
    ours_m, float_m, base_m = _merge(ours), _merge(ours_float), _merge(baseline)
    return {
        "root": str(root),
        "frames": len(source),
        "cameras": len(source.feature_map.cameras),
        "storage": "video" if source.meta.video_keys else "images",
        "batch_size": batch_size,
        "workers": workers,
        "chunk": chunk,
        "rounds": rounds,
        "min_s": min_s,
        "torch_threads": torch.get_num_threads(),
        "ours": ours_m,
        "ours_float_images": float_m,
        "lerobot": base_m,
        "ours_over_lerobot": round(ours_m["samples_per_s"] / base_m["samples_per_s"], 3),
        "ours_float_images_over_lerobot": round(float_m["samples_per_s"] / base_m["samples_per_s"], 3),
    }


class _Timer:
    """Accumulates the wall time of wrapped callables by name; ``undo`` restores what it wrapped."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self._undo: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)
        self._undo.append((owner, attr, owner.__dict__.get(attr, _MISSING) if hasattr(owner, "__dict__") else fn))

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t

        setattr(owner, attr, timed)

    def undo(self) -> None:
        for owner, attr, old in reversed(self._undo):
            if old is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)
        self._undo.clear()


_MISSING = object()


def profile_pieces(root: str | Path, chunk: int = 10, samples: int = 320, batch_size: int = 16, seed: int = 0) -> dict:
    """Where a sample's time goes, in ms per sample, both loaders in this process (no workers).

    LeRobot's ``__getitem__``: the row read (``hf_dataset[i]``, PNG decode on image datasets, the task), the
    action chunk (``_get_query_indices`` + ``_query_hf_dataset``: H rows queried, read whole), the video
    frames (``_query_videos``, with the thread pool it starts per sample; ``decode`` is the time inside
    ``decode_video_frames``, in those threads), then the default collate. Ours: the columns (index, chunk
    slice, padding, state, task), the image decode, the video decode (one call per file and batch), the
    FeatureMap and our collate. The same shuffled frames for both.
    """
    from lerobot.datasets import dataset_reader
    from torch.utils.data import default_collate

    source = LeRobotSource(LeRobotSourceConfig(root=str(root), chunk=chunk))
    plain = source.dataset  # LeRobot's own dataset, as the baseline loader reads it
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    source.__getitems__(batches[0][:2])  # open files, warm caches
    plain[batches[0][0]]
    out: dict[str, dict[str, float]] = {}

    timer = _Timer()
    reader_cls = dataset_reader.DatasetReader
    for attr, name in [
        ("get_item", "total __getitem__"),
        ("_get_query_indices", "chunk: query indices"),
        ("_query_hf_dataset", "chunk: hf_dataset rows"),
        ("_query_videos", "video: _query_videos (thread pool + decode)"),
    ]:
        timer.wrap(reader_cls, attr, name)
    timer.wrap(dataset_reader, "decode_video_frames", "video: decode (inside its threads)")
    try:
        t0 = time.perf_counter()
        for b in batches:
            items = [plain[i] for i in b]
            t = time.perf_counter()
            default_collate(items)
            timer.total["collate (default_collate)"] = timer.total.get("collate (default_collate)", 0.0)
            timer.total["collate (default_collate)"] += time.perf_counter() - t
        wall = time.perf_counter() - t0
    finally:
        timer.undo()
    lr = timer.total
    chunk_s = lr.get("chunk: query indices", 0.0) + lr.get("chunk: hf_dataset rows", 0.0)
    video_s = lr.get("video: _query_videos (thread pool + decode)", 0.0)
    lr["row read (hf_dataset[i], PNG decode, task)"] = lr.get("total __getitem__", 0.0) - chunk_s - video_s
    lr["total with collate"] = wall
    out["lerobot"] = lr

    reader = source.reader
    timer = _Timer()
    if reader is not None:
        timer.wrap(reader, "_numeric_part", "columns: chunk, padding, state, task")
        timer.wrap(reader, "_image", "images: PNG decode")
        timer.wrap(reader, "_decode", "video: decode (open decoders, per file and batch)")
    timer.wrap(source, "feature_map", "FeatureMap")
    try:
        t0 = time.perf_counter()
        for b in batches:
            items = source.__getitems__(b)
            t = time.perf_counter()
            collate(items)
            timer.total["collate (ours)"] = timer.total.get("collate (ours)", 0.0) + time.perf_counter() - t
        timer.total["total with collate"] = time.perf_counter() - t0
    finally:
        timer.undo()
    out["ours"] = timer.total
    n = sum(len(b) for b in batches)
    return {side: {k: round(v / n * 1e3, 3) for k, v in sorted(d.items())} for side, d in out.items()}
