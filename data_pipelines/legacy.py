"""LeRobot v2.0 / v2.1 datasets, read as v3: converted once, with LeRobot's own converter, into a cached copy.

LeRobot 0.6 reads only its v3 layout (a few large parquet/mp4 files, episodes metadata in parquet) and
refuses v2.x roots (one parquet and one mp4 per episode, metadata in JSON lines). Most published
datasets are v2.1, and v2.0 ones remain. Rather than a second reader, a legacy root is converted by
the pieces of ``lerobot/scripts/convert_dataset_v21_to_v30.py``: that script's own entry point works
in place (it renames the source to ``<root>_old``) and may download from the hub, so its steps are
called here on a local source and a fresh destination, and the source is never written to.

v2.0 differs from v2.1 only in its statistics (one ``meta/stats.json``; v2.1 added per-episode
``meta/episodes_stats.jsonl``, which the v3 converter needs); they are computed here the way LeRobot's
v2.0 -> v2.1 converter did (every numeric column, sampled frames of every camera).

Training (``vla train --dataset.root=V21_DIR``) reads the copy through :func:`readable_root`: it lives
under ``$VLA_CACHE_DIR/lerobot_v3`` and is keyed by the source's path and the size and mtime of its
files, so an edited source is converted again and an unchanged one only once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vla.utils.atomic import atomic_dir
from vla.utils.paths import user_cache_dir

log = logging.getLogger(__name__)

V3 = "v3.0"
LEGACY_VERSIONS = ("v2.0", "v2.1")  # what LeRobot's converters (v2.0 -> v2.1 -> v3.0) read
CONVERSION = 1  # bump when what convert_to_v3 writes changes: cached copies of the earlier kind are redone
CACHE_SUBDIR = "lerobot_v3"


# ── versions ──────────────────────────────────────────────────────────


def codebase_version(root: str | Path) -> str:
    """The ``codebase_version`` of ``root/meta/info.json``, with an error naming the file when it has none."""
    path = Path(root) / "meta" / "info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a LeRobot dataset")
    try:
        version = json.loads(path.read_text()).get("codebase_version")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path} is not a JSON object: {e}") from e
    if not isinstance(version, str) or not version:
        raise ValueError(f"{path} has no codebase_version: cannot tell which LeRobot format {root} is")
    return version


def is_v3(version: str) -> bool:
    return version.split(".")[0] == "v3"


def is_legacy(root: str | Path) -> bool:
    """True for a v2.0/v2.1 root (converted before reading); False for v3; an error for anything else."""
    version = codebase_version(root)
    if is_v3(version):
        return False
    if version in LEGACY_VERSIONS:
        return True
    raise ValueError(_unsupported(root, version))


def _unsupported(root: str | Path, version: str) -> str:
    return (
        f"{Path(root) / 'meta' / 'info.json'} says codebase_version {version!r}: this stack reads LeRobot v3.0 "
        f"and converts {' and '.join(LEGACY_VERSIONS)}; bring an older dataset to v2.0 with LeRobot's own "
        "converter of that release first (lerobot<=0.3)"
    )


# ── conversion ────────────────────────────────────────────────────────


def convert_to_v3(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the v3 form of the v2.0/v2.1 dataset ``src`` at ``out``; ``src`` is only read.

    Written to a hidden sibling and renamed into place (vla.utils.atomic), so a failed or killed
    conversion never leaves a folder that looks like a dataset.
    """
    src, out = Path(src).resolve(), Path(out)
    if not is_legacy(src):
        raise ValueError(f"{src} is already LeRobot {codebase_version(src)}; nothing to convert")
    if out.resolve() == src or out.resolve().is_relative_to(src):
        raise ValueError(f"the v3 copy of {src} must lie outside it, not at {out}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        try:
            _convert_into(src, tmp, codebase_version(src))
        except Exception as e:  # name the dataset: LeRobot's messages name neither it nor the step
            raise ValueError(f"cannot convert {src} to LeRobot v3: {type(e).__name__}: {e}") from e
    return out


def _convert_into(src: Path, dst: Path, version: str) -> None:
    """The steps of LeRobot's ``convert_dataset`` (convert_dataset_v21_to_v30.py), from ``src`` into ``dst``."""
    from lerobot.datasets.utils import DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB
    from lerobot.scripts import convert_dataset_v21_to_v30 as lerobot_v30

    with _lerobot_quiet():  # videos are stream-copied (concatenated), never encoded
        lerobot_v30.convert_info(src, dst, DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB)
        lerobot_v30.convert_tasks(src, dst)
        episodes = lerobot_v30.convert_data(src, dst, DEFAULT_DATA_FILE_SIZE_IN_MB)
        videos = lerobot_v30.convert_videos(src, dst, DEFAULT_VIDEO_FILE_SIZE_IN_MB)
        stats = lerobot_v30.legacy_load_episodes_stats(src) if version == "v2.1" else episode_stats_v20(src)
        _write_episodes(src, dst, episodes, videos, stats)


def _write_episodes(src: Path, dst: Path, episodes: list[dict], videos: list[dict] | None, stats: dict) -> None:
    """LeRobot's ``convert_episodes_metadata`` with the per-episode statistics passed in (v2.0 has none on disk).

    Its rows come from LeRobot's ``generate_episode_metadata_dict``; ``Dataset.from_list`` replaces its
    ``Dataset.from_generator``, which caches under ~/.cache/huggingface keyed by a hash of the generator.
    """
    from datasets import Dataset
    from lerobot.datasets.compute_stats import aggregate_stats
    from lerobot.datasets.io_utils import write_episodes, write_stats
    from lerobot.scripts import convert_dataset_v21_to_v30 as lerobot_v30

    legacy = lerobot_v30.legacy_load_episodes(src)
    counts = {len(legacy), len(episodes), len(stats), *([len(videos)] if videos is not None else [])}
    if len(counts) != 1:
        raise ValueError(
            f"meta/episodes.jsonl lists {len(legacy)} episodes, data/ holds {len(episodes)} files, the statistics "
            f"cover {len(stats)}" + (f", each camera has {len(videos)} videos" if videos is not None else "")
        )
    rows = list(lerobot_v30.generate_episode_metadata_dict(legacy, episodes, stats, videos))
    write_episodes(Dataset.from_list(rows), dst)
    write_stats(aggregate_stats(list(stats.values())), dst)


def episode_stats_v20(src: Path) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Per-episode statistics of a v2.0 dataset, as LeRobot's v2.0 -> v2.1 converter (lerobot<=0.3,
    datasets/v21/convert_stats.py) made them: every row of a numeric column, and for cameras the frames
    at ``sample_indices(length)``, per channel in [0, 1]. LeRobot 0.6 ships no v2.0 converter."""
    import pyarrow.parquet as pq
    from lerobot.datasets.compute_stats import get_feature_stats, sample_indices

    info = json.loads((src / "meta" / "info.json").read_text())
    out = {}
    for path in sorted((src / "data").glob("*/*.parquet")):  # the order LeRobot's convert_data reads
        table = pq.read_table(path)
        episode = int(table.column("episode_index")[0].as_py())
        stats = {}
        for key, ft in info["features"].items():
            if ft["dtype"] in ("video", "image"):
                picks = sample_indices(table.num_rows)
                frames = _video_frames(src, info, key, episode, picks) if ft["dtype"] == "video" else None
                frames = _image_frames(table, key, picks) if frames is None else frames  # (N, C, H, W) uint8
                s = get_feature_stats(frames, axis=(0, 2, 3), keepdims=True)
                stats[key] = {k: v if k == "count" else np.squeeze(v / 255.0, axis=0) for k, v in s.items()}
            elif ft["dtype"] not in ("string", "language") and key in table.column_names:
                values = np.asarray(table.column(key).to_pylist())
                stats[key] = get_feature_stats(values, axis=0, keepdims=values.ndim == 1)
        out[episode] = stats
    return out


def _video_frames(src: Path, info: dict, key: str, episode: int, picks: list[int]) -> np.ndarray:
    """Frames ``picks`` of one episode's mp4 (v2.x: one file per episode and camera), (N, 3, H, W) uint8."""
    import av

    chunk = episode // int(info.get("chunks_size") or 1000)
    path = src / info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=episode)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no frames")
    return np.stack([frames[min(i, len(frames) - 1)] for i in picks]).transpose(0, 3, 1, 2)


def _image_frames(table, key: str, picks: list[int]) -> np.ndarray:
    """Frames ``picks`` of an image column (PNG bytes in parquet), (N, 3, H, W) uint8."""
    from PIL import Image

    column = table.column(key)
    images = [Image.open(io.BytesIO(column[i].as_py()["bytes"])).convert("RGB") for i in picks]
    return np.stack([np.asarray(im) for im in images]).transpose(0, 3, 1, 2)


@contextlib.contextmanager
def _lerobot_quiet() -> Iterator[None]:
    """LeRobot's converter logs every step on the root logger, and warns that the v2.1 info.json it
    reads has v2.1 fields; one line of ours says what happened instead. Its progress bars stay."""
    root, datasets_utils = logging.getLogger(), logging.getLogger("lerobot.datasets.utils")
    levels = root.level, datasets_utils.level
    root.setLevel(max(root.level, logging.WARNING))
    datasets_utils.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(levels[0])
        datasets_utils.setLevel(levels[1])


# ── the cached copy ───────────────────────────────────────────────────


def cache_dir() -> Path:
    return user_cache_dir(CACHE_SUBDIR)


def source_key(src: Path) -> tuple[str, str]:
    """(a key of the source's location, a key of its files' names, sizes and mtimes, and of this converter).

    Sizes and mtimes rather than content: hashing a dataset of videos would cost minutes per run.
    """
    from importlib.metadata import version

    src = src.resolve()
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    listing = [(str(p.relative_to(src)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    blob = json.dumps({"conversion": CONVERSION, "lerobot": version("lerobot"), "files": listing})
    return hashlib.sha256(str(src).encode()).hexdigest()[:8], hashlib.sha256(blob.encode()).hexdigest()[:12]


def v3_copy(src: str | Path, cache: str | Path | None = None) -> tuple[Path, bool]:
    """(the cached v3 copy of the legacy dataset ``src``, whether it was converted now).

    A lock per copy lets ranks of one run, or runs started together, convert once: the others wait
    and find it done. A new copy replaces earlier ones of the same source (its files changed since).
    """
    src = Path(src).resolve()
    where, files = source_key(src)
    cache = Path(cache) if cache is not None else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{src.name}-{where}-{files}"
    with _locked(cache / f".{out.name}.lock"):
        if _complete(out):
            return out, False
        for partial in _named(cache, f".{out.name}.", ".partial"):  # a conversion killed before its rename
            shutil.rmtree(partial, ignore_errors=True)
        convert_to_v3(src, out, overwrite=True)  # a folder there without a v3 info.json is not ours to keep
    for stale in _named(cache, f"{src.name}-{where}-", ""):
        if stale != out and stale.is_dir():
            log.info("removing %s, the v3 copy of an earlier state of %s", stale, src)
            shutil.rmtree(stale, ignore_errors=True)
            (cache / f".{stale.name}.lock").unlink(missing_ok=True)
    return out, True


def _named(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """Entries of ``folder`` named prefix...suffix (not a glob: a dataset's name may hold ``[``)."""
    return [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]


def _complete(out: Path) -> bool:
    try:
        return is_v3(codebase_version(out))
    except (FileNotFoundError, ValueError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def readable_root(root: str | Path, cache: str | Path | None = None) -> Path:
    """The root LeRobot 0.6 can read for ``root``: itself when v3, else its cached v3 copy (converted on
    first use). Logs one line when it is a copy, so a run's log says which files it trained on."""
    root = Path(root)
    if not is_legacy(root):
        return root
    version = codebase_version(root)
    start = time.monotonic()
    copy, converted = v3_copy(root, cache)
    how = f"converted now in {time.monotonic() - start:.1f} s" if converted else "converted earlier, reused"
    log.info("%s is LeRobot %s: reading its v3 copy %s (%s)", root, version, copy, how)
    return copy


def legacy_hint(root: str | Path) -> str | None:
    """What to do with a root LeRobot 0.6 cannot open (v2.0/v2.1: convert it; older: not supported); None
    for v3, and for an info.json without a version, which LeRobot's own error describes."""
    try:
        version = codebase_version(root)
    except (FileNotFoundError, ValueError):
        return None
    if is_v3(version):
        return None
    if version not in LEGACY_VERSIONS:
        return _unsupported(root, version)
    return (
        f"{root} is LeRobot {version}: `vla train --dataset.root={root}` reads it directly (through a cached "
        f"v3 copy); for the other tools convert it once: `vla data convert {root} --out DIR`"
    )
