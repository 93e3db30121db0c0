"""Canonical samples -> canonical batch.

Every sample must carry the same keys with the same shapes: a mismatch here means a
FeatureMap or mixture bug upstream, so the error names the key and the sample index
rather than letting ``torch.stack`` report two anonymous shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vla import types as T


def _shared_out(values: list[torch.Tensor]) -> torch.Tensor | None:
    """In a DataLoader worker, the batch is stacked straight into shared memory (as torch's default_collate
    does): sending it to the main process then moves no bytes, where a plain tensor is copied there first."""
    if torch.utils.data.get_worker_info() is None:
        return None
    v = values[0]
    storage = v._typed_storage()._new_shared(len(values) * v.numel(), device=v.device)
    return v.new(storage).resize_(len(values), *v.shape)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors on a new leading batch axis B; strings (the instruction) become a list."""
    if len(samples) == 0:
        raise ValueError("collate: empty list of samples")
    first = samples[0]
    keys = list(first)
    for i, s in enumerate(samples):
        if set(s) != set(keys):
            raise KeyError(
                f"collate: sample {i} has keys {sorted(s)} but sample 0 has {sorted(keys)} "
                f"(missing {sorted(set(keys) - set(s))}, extra {sorted(set(s) - set(keys))})"
            )
    batch: dict[str, Any] = {}
    for key in keys:
        v0 = first[key]
        if isinstance(v0, str):
            bad = [i for i, s in enumerate(samples) if not isinstance(s[key], str)]
            if bad:
                raise TypeError(f"collate: {key} of sample {bad[0]} is {type(samples[bad[0]][key]).__name__}, not str")
            batch[key] = [s[key] for s in samples]
            continue
        values = [torch.as_tensor(s[key]) for s in samples]
        for i, v in enumerate(values):
            if v.shape != values[0].shape:
                raise ValueError(
                    f"collate: {key} of sample {i} has shape {tuple(v.shape)}, sample 0 has {tuple(values[0].shape)}"
                )
            if v.dtype != values[0].dtype:
                raise TypeError(f"collate: {key} of sample {i} has dtype {v.dtype}, sample 0 has {values[0].dtype}")
        batch[key] = torch.stack(values, out=_shared_out(values))  # (B, ...)
    if T.INSTRUCTION in batch and not isinstance(batch[T.INSTRUCTION], list):
        raise TypeError(f"collate: {T.INSTRUCTION} must be a string per sample")
    return batch
