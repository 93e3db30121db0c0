"""Training data: the dataset (or mixture), its statistics, and on-device augmentation.

This is the trainer's only door into ``data_pipelines``; it returns canonical batches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.augment import Compose
from data_pipelines.cache import InMemoryDataset, default_store_dir
from data_pipelines.collate import collate
from data_pipelines.feature_map import FeatureMapConfig, float_images
from data_pipelines.frame_reader import read_draws
from data_pipelines.legacy import readable_root
from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig
from data_pipelines.stats import compute_stats, is_url, load_stats, read_columns
from data_pipelines.streaming import StreamSource, StreamSourceConfig, local_meta
from vla import types as T
from vla.models.policy import STATS_FILE, WEIGHTS_FILE
from vla.train.sampler import Draw, SampleWeights
from vla.utils.sample_rng import keyed_generators

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    dataset: torch.utils.data.Dataset
    cameras: list[str]
    state_dim: int
    action_dim: int
    fps: float
    stats: dict  # canonical {"state": {...}, "actions": {...}} (+ "aux_target" when set) for the Normalizer
    sample_weights: SampleWeights | None = None  # how the sampler draws (mixtures); None: epochs of permutations
    augment: Compose | None = None  # data_pipelines.augment transform, applied on the device
    seed: int = 0  # with the step and the sample's stream number, the key of every random draw of a sample
    image_size: int = 0  # square side of the images the policy sees (0: not square, or a mixture)
    aux_dim: int = 0  # width of the training-only auxiliary target (policy.auxiliary.key; 0: none)
    sources: list[LeRobotSource] = field(default_factory=list)  # the datasets read, mixture members in order
    stats_source: str = "computed from the data"  # where ``stats`` came from (dataset.stats), for the logs

    @staticmethod
    def collate(samples: list[dict]) -> dict:
        return collate(samples)

    @property
    def streaming(self) -> bool:
        """dataset.streaming: batches come from each rank's stream (vla.train.streaming), not from a sampler."""
        return isinstance(self.dataset, StreamSource)

    @property
    def numbered(self) -> NumberedDataset:
        """What the trainer loads batches from: indexed by the sampler's draws, samples carry their number."""
        return NumberedDataset(self.dataset)

    def to_device(self, batch: dict[str, Any], device, step: int) -> dict[str, Any]:
        """Move to the device, give each sample its random stream, and augment there.

        Sample i's generator is keyed by (seed, step, its stream number) (vla.utils.sample_rng,
        vla.train.sampler.Draw): its augmentation is drawn first, then the head draws its noise and
        time from the same generator (``batch["generators"]``). ``step`` is the optimizer step and the
        number does not depend on how the step's samples are split, so the micro-steps of gradient
        accumulation, the ranks of DDP and one large batch all give a sample the same draws, and a
        frame drawn twice in a step (weighted sampling) gets two different ones.
        """
        if T.SAMPLE_NUMBER not in batch:
            raise KeyError(
                f"batch has no {T.SAMPLE_NUMBER!r}: load training batches from TrainingData.numbered, "
                "whose samples carry the number that keys their random draws"
            )
        gens = keyed_generators(self.seed, step, batch[T.SAMPLE_NUMBER].tolist())
        out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if T.IMAGES in out:  # the loader's uint8 images (NumberedDataset) become floats here, on the device
            out[T.IMAGES] = float_images(out[T.IMAGES])
        if self.augment is not None:
            out[T.IMAGES] = self.augment(out[T.IMAGES], generator=gens)
        out[T.GENERATORS] = gens
        return out


class NumberedDataset(torch.utils.data.Dataset):
    """``numbered[index, number]`` is ``dataset[index]`` plus ``sample_number = number`` (a sampler's
    ``Draw``), the key of that draw's random numbers in training. A DataLoader reads a batch's draws
    together (``__getitems__``: each video file decoded once), images as uint8 where the source keeps them
    so (a quarter of the bytes between processes; ``TrainingData.to_device`` makes them floats)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: Draw | tuple[int, int]) -> dict[str, Any]:
        return read_draws(self.dataset, [draw], uint8_images=True)[0]

    def __getitems__(self, draws: list[Draw]) -> list[dict[str, Any]]:
        return read_draws(self.dataset, draws, uint8_images=True)


def _source(
    root: str | None,
    repo_id: str | None,
    dcfg,
    chunk: int,
    primary: bool = True,
    auxiliary: str | None = None,
    seed: int = 0,
) -> LeRobotSource | StreamSource:
    """``dataset.episodes`` selects episodes of the primary dataset (``dataset.root``) only: the other
    members of a mixture are other datasets, whose episode numbers mean something else. ``auxiliary``:
    the dataset key of a training-only target (``policy.auxiliary.key``), carried as ``aux_target``.
    ``dataset.streaming``: a ``StreamSource`` (its order keyed by ``seed``); a URL root is streamed only."""
    fmap = FeatureMapConfig(
        camera_keys=list(dcfg.cameras or []),
        state=dcfg.state_key,
        action=dcfg.action_key,
        image_size=[dcfg.image_size, dcfg.image_size] if dcfg.image_size else [],
        auxiliary=auxiliary or "",
    )
    url = root is not None and is_url(root)
    if url and not dcfg.streaming:
        raise ValueError(f"dataset.root={root} is a URL: it is read incrementally, add --dataset.streaming=true")
    if url and dcfg.validate:
        log.info("dataset %s: vla data validate's checks read local files; skipped for a URL", root)
    if root is not None and not url and not Path(root).exists():
        raise FileNotFoundError(
            f"dataset.root={root} does not exist. Generate one with `vla data generate --suite mw-easy "
            f"--episodes-per-task 5 --out {root}` or point dataset.root at a LeRobot dataset (v3.0, v2.1 or v2.0)."
        )
    if root is not None and not url and (Path(root) / "meta" / "info.json").is_file():
        root = str(readable_root(root))  # v2.0/v2.1: its cached v3 copy, converted on first use
    if root is not None and not url and dcfg.validate:
        refuse_unsound(root, dcfg.episodes if primary else None)
    if dcfg.streaming:
        return StreamSource(
            StreamSourceConfig(
                root=root,
                repo_id=repo_id,
                chunk=chunk,
                episodes=dcfg.episodes,
                feature_map=fmap,
                shuffle_buffer=dcfg.shuffle_buffer,
                seed=seed,
            )
        )
    return LeRobotSourceConfig(
        root=root, repo_id=repo_id, chunk=chunk, episodes=dcfg.episodes if primary else None, feature_map=fmap
    ).build()


def refuse_unsound(root: str, episodes: list[int] | None = None) -> None:
    """The fast checks of `vla data validate` (metadata and parquet columns, no decoding), before the first
    step: data that would train wrong (frames paired with the wrong time, a task that does not exist) stops
    the run here, not hours in or never. Only problems of the episodes the run reads refuse it (``episodes``:
    a subset, None: all); warnings, and a check that itself failed (``internal``), are logged.
    ``dataset.validate=false`` skips this."""
    from data_pipelines.validate import ERROR, validate_dataset

    def refuses(p) -> bool:
        if p.level != ERROR or p.kind == "internal":
            return False
        episode = p.where.removeprefix("episode ")
        return episodes is None or not episode.isdigit() or int(episode) in episodes

    problems = validate_dataset(root, decode_videos=False)
    for p in problems:
        if not refuses(p):
            log.warning("dataset %s: %s", root, p)
    errors = [str(p) for p in problems if refuses(p)]
    if errors:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(
            f"dataset {root} would train wrong: {'; '.join(errors[:5])}{more}. `vla data validate {root}` lists "
            "every problem (dataset.validate=false trains anyway)"
        )


def build_training_data(dcfg, pcfg, acfg, seed: int = 0) -> TrainingData:
    """One dataset, or a weighted mixture when ``dataset.mixture`` lists more."""
    if dcfg.root is None and dcfg.repo_id is None:
        raise ValueError("no dataset: set dataset.root=DIR (a LeRobot v3 dataset) or dataset.repo_id=ID")
    augment = acfg.build()
    auxiliary = pcfg.auxiliary.key
    if dcfg.streaming and (dcfg.mixture or dcfg.cache):
        other = "dataset.mixture (members are sampled by weight, not streamed)" if dcfg.mixture else "dataset.cache"
        raise ValueError(f"dataset.streaming=true with {other}: choose one")
    if dcfg.mixture:
        if auxiliary:
            raise ValueError(
                f"policy.auxiliary.key={auxiliary!r} with dataset.mixture: an auxiliary target is supported on "
                "one dataset only (mixture members need not share the feature); drop one of the two"
            )
        from data_pipelines.mixture import MixtureDataset

        members = [(dcfg.root, dcfg.weight)] + [_parse_member(m) for m in dcfg.mixture]
        sources = [_source(r, None, dcfg, pcfg.chunk_size, primary=i == 0) for i, (r, _) in enumerate(members)]
        mix = MixtureDataset(sources, [w for _, w in members], camera_layout=dcfg.camera_layout)
        # Each member keeps its own statistics; the policy normalizes each sample with its member's
        # (by dataset_index) and serves the primary member's robot (dataset.root) by default.
        if dcfg.stats:
            raise ValueError(
                f"dataset.stats={dcfg.stats} with dataset.mixture: each member is normalized with its own statistics, "
                "which one file cannot give; leave dataset.stats unset (computed per member)"
            )
        member_stats = [_stats(src) for src in sources]
        return TrainingData(
            dataset=mix,
            cameras=list(mix.camera_names),
            state_dim=mix.state_dim,
            action_dim=mix.action_dim,
            fps=float(sources[0].fps),
            stats={"members": member_stats},
            sample_weights=mix.sample_weights(),
            augment=augment,
            seed=seed,
            sources=sources,
        )
    src = _source(dcfg.root, dcfg.repo_id, dcfg, pcfg.chunk_size, auxiliary=auxiliary, seed=seed)
    fmap = src.feature_map
    dataset = src
    if dcfg.cache:
        store = (dcfg.cache_dir or default_store_dir()) if dcfg.cache_persist else None
        dataset = InMemoryDataset(src, max_gb=dcfg.cache_max_gb, store_dir=store)
    return TrainingData(
        dataset=dataset,
        cameras=fmap.camera_names,
        state_dim=fmap.state_dim,
        action_dim=fmap.action_dim,
        fps=float(src.fps),
        stats=_stats(src, dcfg.stats),
        augment=augment,
        seed=seed,
        image_size=square_side(fmap.image_size or next(iter(fmap.native_sizes), None)),
        aux_dim=fmap.auxiliary_dim,
        sources=[src],
        stats_source=f"from {dcfg.stats}" if dcfg.stats else "computed from the data",
    )


def square_side(size: tuple[int, int] | None) -> int:
    return int(size[0]) if size and size[0] == size[1] else 0


def _stats(src: LeRobotSource | StreamSource, path: str | None = None) -> dict:
    """Statistics of the state and action columns (and the auxiliary target's), in canonical names.

    None: exact, over the episodes the run trains on (``dataset.episodes``: held-out ones must not shape
    normalization). A path (``dataset.stats``): a checkpoint folder's stats.json (canonical names already), or a
    stats file in LeRobot's schema (a dataset root means its meta/stats.json), mapped by the feature map.
    """
    fmap = src.feature_map
    if path is None:
        return fmap.stats_for(compute_stats(src.root, fmap.stats_keys, episodes=src.episodes))
    # A streamed dataset's URL: its meta/stats.json, through the local copy of its metadata.
    folder = local_meta(path) if is_url(path) else Path(path)
    if (folder / WEIGHTS_FILE).is_file():
        saved = json.loads((folder / STATS_FILE).read_text())
        stats = saved["members"][0] if "members" in saved else saved  # a mixture's: its primary robot
        missing = [name for name in fmap.normalized_columns if name not in stats]
        if missing:
            raise KeyError(
                f"dataset.stats={path}: the checkpoint has no statistics for {missing}; it has {sorted(stats)}"
            )
        return {name: stats[name] for name in fmap.normalized_columns}
    try:
        return fmap.stats_for(load_stats(folder))
    except KeyError as e:
        raise KeyError(f"dataset.stats={path}: {e.args[0]}") from None


def _parse_member(spec: str) -> tuple[str, float]:
    root, _, weight = spec.partition(":")
    try:
        return root, float(weight) if weight else 1.0
    except ValueError as e:
        raise ValueError(f"dataset.mixture entry {spec!r}: expected 'ROOT' or 'ROOT:WEIGHT'") from e


def normalized_action_chunks(data: TrainingData, policy, max_chunks: int = 20000) -> np.ndarray:
    """Every length-H window of actions inside an episode, normalized as the policy does: (N, H, D).

    Used to fit the FAST tokenizer before training (windows never cross episode ends; only the
    episodes the run trains on).
    """
    src = data.sources[0]
    fmap = src.feature_map
    cols = read_columns(src.root, [fmap.action, "episode_index"], episodes=src.episodes)
    actions = torch.as_tensor(cols[fmap.action], dtype=torch.float32)  # (N, D)
    episodes = cols["episode_index"].reshape(-1)
    h = policy.config.chunk_size
    windows = []
    for ep in np.unique(episodes):
        a = actions[episodes == ep]
        if len(a) >= h:
            windows.append(a.unfold(0, h, 1).permute(0, 2, 1))  # (n, H, D)
    if not windows:
        raise ValueError(f"no episode of {src.root} is as long as the chunk ({h} steps)")
    chunks = torch.cat(windows)
    if len(chunks) > max_chunks:
        chunks = chunks[torch.randperm(len(chunks), generator=torch.Generator().manual_seed(0))[:max_chunks]]
    device = next(policy.parameters()).device  # the policy may already sit on its GPU
    with torch.no_grad():
        chunks = policy.normalizers[0].normalize("actions", chunks.to(device))
    return chunks.cpu().numpy()
