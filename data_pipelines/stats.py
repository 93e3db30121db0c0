"""Normalization statistics over a dataset (or the episodes a run trains on), read straight from its parquet files.

Going through ``LeRobotDataset.__getitem__`` would decode every video frame just to
read two float columns; here each numeric column is read once with pyarrow and
reduced with numpy, which takes seconds even for millions of frames. Quantiles are
exact (lerobot's own ``meta/stats.json`` averages per-episode quantiles, which is only
an approximation, and lerobot's aggregation of a subset's per-episode statistics would be
one too). A training subset (``dataset.episodes``) gets statistics of its own frames only,
so held-out episodes never leak into normalization.

The file format is lerobot's ``meta/stats.json`` schema: ``{dataset_key: {stat: list}}``
with stats ``mean std min max q01 q10 q50 q90 q99 count``. ``save_stats`` merges into an
existing file, so writing to ``meta/stats.json`` keeps lerobot's image statistics and
lerobot can still load the dataset. ``FeatureMap.stats_for`` maps these dataset keys to
the canonical ``state``/``actions`` that ``vla.models.normalizer.Normalizer`` takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla.utils.atomic import atomic_file

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# lerobot bookkeeping columns: numeric but meaningless to normalize.
BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
EPISODE = "episode_index"


def numeric_keys(info: dict) -> list[str]:
    """Float features with a 1-D shape (state, action, environment state, ...)."""
    return [
        k
        for k, v in info["features"].items()
        if k not in BOOKKEEPING and str(v.get("dtype", "")).startswith("float") and len(v.get("shape", ())) == 1
    ]


def data_files(root: Path) -> list[Path]:
    files = sorted((Path(root) / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}/data has no parquet files")
    return files


def is_url(root: str | Path) -> bool:
    """A dataset location given as a URL (``s3://``, ``file://``, ``hf://``: read through fsspec), not a path."""
    return "://" in str(root)


def open_root(root: str | Path) -> tuple[Any, str | Path]:
    """(fsspec filesystem, path in it) for a URL (``s3://``, ``file://``, ``hf://``: a streamed dataset,
    data_pipelines.streaming), else (None, Path): a local path keeps pyarrow's own file reading."""
    if is_url(root):
        import fsspec

        return fsspec.core.url_to_fs(str(root))
    return None, Path(root)


def column_to_numpy(column: pa.ChunkedArray, key: str, dim: int) -> np.ndarray:
    """A list<float> parquet column -> (N, dim) float64, without a Python loop over rows."""
    arr = column.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
    else:
        flat = arr.to_numpy(zero_copy_only=False)
    if flat.size != len(arr) * dim:
        raise ValueError(f"{key}: column holds {flat.size} values for {len(arr)} rows, expected {dim} per row")
    return flat.astype(np.float64).reshape(len(arr), dim)  # (N, dim)


def read_columns(
    root: str | Path, keys: Iterable[str] | None = None, episodes: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Concatenate the given numeric columns over every data file: key -> (N, dim).

    ``episodes`` keeps only the rows of those episodes (a training subset); pyarrow drops the
    others while reading, so held-out frames are never loaded.
    """
    fs, base = open_root(root)
    if fs is None:
        info = json.loads((base / "meta" / "info.json").read_text())
        files = data_files(base)
    else:  # a streamed dataset's URL: only the requested columns travel
        info = json.loads(fs.cat_file(f"{base}/meta/info.json"))
        files = sorted(fs.glob(f"{base}/data/*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"{root}/data has no parquet files")
    keys = list(keys) if keys is not None else numeric_keys(info)
    wanted = None if episodes is None else sorted({int(e) for e in episodes})
    read = keys if wanted is None or EPISODE in keys else [*keys, EPISODE]
    shape = {k: int(info["features"][k]["shape"][0]) for k in read}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in read}
    for f in files:
        where = None if wanted is None else [(EPISODE, "in", wanted)]
        table = pq.read_table(f, columns=read, filters=where, filesystem=fs)
        for k in read:
            parts[k].append(column_to_numpy(table.column(k), k, shape[k]))
    columns = {k: np.concatenate(v) for k, v in parts.items()}
    if wanted is not None:
        missing = sorted(set(wanted) - set(np.unique(columns[EPISODE]).astype(int).tolist()))
        if missing:
            raise ValueError(f"episodes {missing} are not in {root} (it has {info.get('total_episodes')} episodes)")
    return {k: columns[k] for k in keys}


def summarize(x: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Per-dimension statistics of (N, dim) values."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need (N, dim) values with N > 0, got shape {x.shape}")
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)  # (Q, dim)
    out: dict = {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }
    out.update({name: q.tolist() for name, q in zip(QUANTILES, qs, strict=True)})
    out["count"] = [int(x.shape[0])]
    return out


def compute_stats(
    root: str | Path, keys: Iterable[str] | None = None, episodes: Sequence[int] | None = None
) -> dict[str, dict]:
    """Exact statistics of every numeric feature (or ``keys``) over the frames of ``episodes`` (None: all)."""
    columns = read_columns(root, keys, episodes)
    bad = {k: int((~np.isfinite(v)).sum()) for k, v in columns.items() if not np.isfinite(v).all()}
    if bad:
        raise ValueError(f"{root}: non-finite values in {bad}; run `vla data validate {root}` to locate them")
    return {k: summarize(v) for k, v in columns.items()}


def save_stats(stats: dict[str, dict], path: str | Path) -> Path:
    """Merge ``stats`` into the JSON file at ``path`` (write, then rename)."""
    path = Path(path)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(stats)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(merged, indent=2))
    return path


def load_stats(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Load a stats file; a dataset root means its ``meta/stats.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "meta" / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"no stats file at {path}; run `vla data stats` first")
    raw = json.loads(path.read_text())
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in raw.items() if isinstance(d, dict)}
