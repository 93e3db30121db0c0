"""The trainer's side of ``dataset.streaming``: this rank's batches read incrementally, and their place in checkpoints.

``data_pipelines.streaming.StreamSource`` gives rank r an endless stream of frames, a function of the
seed and of the sample count alone. Micro-step s of the run takes samples [s B, (s+1) B) of it (B: the
per-rank batch) and numbers them as ``ShardedStepSampler`` numbers its draws, s G + r B + i (G = B x
world size): every sample's augmentation, noise and time are keyed as on the map-style path
(``TrainingData.to_device``). DataLoader workers take whole batches in turn (worker w: batches w,
w + n, ..., the order the DataLoader returns them in); each walks the rank's stream, whose rows are
small, and decodes only its own batches, the costly part, so the batches do not depend on
``train.num_workers``.

Each checkpoint records, in ``stream_state.json``, every rank's sample count with the pass and offset it
means, and what the order depends on (seed, world size, shuffle buffer, frames). ``--resume=true``
starts every rank at its count, so the resumed run trains on exactly the samples of the uninterrupted
one, in the same batches with the same numbers. A resume with another world size, buffer, seed or
dataset cannot continue that order: each rank starts the pass after the furthest recorded one, and the
log says so.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.streaming import StreamSource
from vla import types as T

log = logging.getLogger(__name__)

STATE_FILE = "stream_state.json"


class StreamBatches(IterableDataset):
    """Rank ``rank``'s collated batches of micro-steps [start_micro, total_micro), from its sample ``first_sample``."""

    def __init__(
        self,
        source: StreamSource,
        collate: Callable[[list[dict]], dict],
        batch_size: int,
        rank: int,
        world: int,
        start_micro: int,
        total_micro: int,
        first_sample: int,
    ):
        self.source, self.collate = source, collate
        self.b, self.rank, self.world = batch_size, rank, world
        self.start, self.total, self.first_sample = start_micro, total_micro, first_sample

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        frames = self.source.entries(self.rank, self.world, start=self.first_sample)
        for j, micro in enumerate(range(self.start, self.total)):
            rows = list(itertools.islice(frames, self.b))
            if j % workers != worker:
                continue
            first = micro * self.b * self.world + self.rank * self.b
            samples = [{**self.source.decode(row), T.SAMPLE_NUMBER: first + i} for i, (_, row) in enumerate(rows)]
            yield self.collate(samples)


def order_key(source: StreamSource, world: int) -> dict:
    """What a rank's stream is a function of, besides its sample count."""
    return {
        "seed": source.plan.seed,
        "world_size": world,
        "shuffle_buffer": source.shuffle_buffer,
        "frames": len(source),
        "episodes": len(source.plan.episodes),
    }


def position(source: StreamSource, rank: int, world: int, samples: int) -> dict:
    """Where rank ``rank`` is after ``samples`` samples: its pass and the offset in it."""
    pass_, offset = divmod(samples, source.share_size(rank, world))
    return {"rank": rank, "samples": samples, "pass": pass_, "offset": offset}


def first_samples(record: dict | None, source: StreamSource, world: int, start_step: int, per_step: int) -> list[int]:
    """Each rank's first sample: 0 on a new run; a resumed run's recorded counts (the step's count where the
    checkpoint has no record); the start of the next pass where the record's order differs from this run's."""
    if start_step == 0:
        return [0] * world
    if record is None:
        log.warning("dataset.streaming: the checkpoint records no stream position; continuing at step %d's", start_step)
        return [start_step * per_step] * world
    saved = {k: record.get(k) for k in order_key(source, world)}
    if saved != order_key(source, world):
        next_pass = max(r["pass"] for r in record["ranks"]) + 1
        log.warning(
            "dataset.streaming: the checkpoint's stream order was %s, this run's is %s; it cannot be continued, "
            "each rank starts pass %d",
            saved,
            order_key(source, world),
            next_pass,
        )
        return [next_pass * source.share_size(r, world) for r in range(world)]
    return [int(r["samples"]) for r in sorted(record["ranks"], key=lambda r: r["rank"])]


def stream_loader(data, cfg, acc, start_step: int, ckpt) -> DataLoader:
    """The DataLoader of a streamed dataset from ``start_step`` on, and its position recorded in every checkpoint
    (``ckpt.extra_state``)."""
    from data_pipelines.lerobot_source import worker_init_fn

    source, world, rank = data.dataset, acc.num_processes, acc.process_index
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    record = ckpt.read_extra(STATE_FILE) if start_step else None
    first = first_samples(record, source, world, start_step, per_step)

    def state(step: int) -> dict:
        done = (step - start_step) * per_step
        ranks = [position(source, r, world, first[r] + done) for r in range(world)]
        return {**order_key(source, world), "step": step, "ranks": ranks}

    ckpt.extra_state[STATE_FILE] = state
    if start_step and acc.is_main_process:
        log.info("dataset.streaming: rank 0 continues at %s", position(source, 0, world, first[0]))
    batches = StreamBatches(
        source,
        data.collate,
        cfg.train.batch_size,
        rank,
        world,
        start_micro=start_step * cfg.train.grad_accum,
        total_micro=cfg.train.steps * cfg.train.grad_accum,
        first_sample=first[rank],
    )
    workers = cfg.train.num_workers
    return DataLoader(
        batches,
        batch_size=None,  # StreamBatches yields whole batches
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # Its own generator, as on the map-style path: creating the iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(cfg.train.seed),
        prefetch_factor=4 if workers > 0 else None,
    )
