"""Are the normalization statistics right for this data? Checked before the first step.

Statistics from another dataset, a stale stats file or a fine-tuning base of another robot do not
crash anything: the run trains, converges in the wrong units and acts wrongly (openpi's users lost
runs this way). So before training, the trainer normalizes a sample of the data (the state and action
columns of up to ``SAMPLE_EPISODES`` episodes, read from parquet: no video is decoded) with the
policy's own normalizer, whatever the statistics' source (computed, ``dataset.stats``, a resumed
checkpoint), and looks at what the model will be fed, one dimension at a time:

- **width**: the statistics cover as many dimensions as the data (extra data dimensions would pass
  through unnormalized);
- **center**: the sample's median, in normalized units, lies within ``CENTER_LIMIT`` of 0 (mean_std:
  3 standard deviations; min_max / quantile: 3 half-ranges);
- **spread**: half the sample's 1-99 % range, in normalized units, lies in ``SPREAD_RANGE`` (units
  off by 10x or more: millimetres against metres, degrees against radians);
- **range** (a warning): no value beyond the statistics' min/max (min_max maps them to [-1, 1];
  token heads clip what falls outside).

A width, center or spread problem refuses the run (``dataset.check_stats=false`` trains anyway); the
per-dimension table is logged either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from data_pipelines.stats import read_columns
from vla.models.normalizer import Normalizer

SAMPLE_EPISODES = 64  # evenly spaced over the episodes trained on
CENTER_LIMIT = 3.0
SPREAD_RANGE = (0.05, 10.0)
ERROR, WARNING = "error", "warning"


@dataclass
class DimensionCheck:
    feature: str  # canonical name: state, actions, aux_target
    dim: int
    mode: str
    center: float  # median of the normalized sample
    spread: float  # half its 1-99 % range, normalized
    low: float  # normalized min and max
    high: float
    outside: float  # fraction of the sample beyond the statistics' [min, max]
    level: str = ""  # "", WARNING or ERROR
    problem: str = ""


@dataclass
class StatsCheck:
    source: str  # where the statistics came from, as the run describes it
    episodes: int
    frames: int
    dims: list[DimensionCheck] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (level, message) not tied to one dimension

    def messages(self, level: str) -> list[str]:
        per_dim = [f"{d.feature}[{d.dim}]: {d.problem}" for d in self.dims if d.level == level]
        return [m for lvl, m in self.problems if lvl == level] + per_dim

    def table(self) -> str:
        lines = [
            f"normalization check: statistics {self.source}; sample of {self.episodes} episodes, {self.frames} frames",
            f"  {'feature':<11}{'dim':>4}  {'mode':<9}{'center':>8}{'spread':>8}{'min':>9}{'max':>9}  verdict",
        ]
        for d in self.dims:
            verdict = f"{d.level}: {d.problem}" if d.level else "ok"
            lines.append(
                f"  {d.feature:<11}{d.dim:>4}  {d.mode:<9}{d.center:>+8.2f}{d.spread:>8.2f}{d.low:>+9.2f}"
                f"{d.high:>+9.2f}  {verdict}"
            )
        lines += [f"  {lvl}: {m}" for lvl, m in self.problems]
        return "\n".join(lines)


def sampled_episodes(episodes: list[int], n: int = SAMPLE_EPISODES) -> list[int]:
    """Up to ``n`` episodes spread evenly over ``episodes`` (the same ones on every run and rank)."""
    if len(episodes) <= n:
        return list(episodes)
    return [episodes[i] for i in np.linspace(0, len(episodes) - 1, n).round().astype(int)]


def read_sample(source) -> tuple[dict[str, np.ndarray], int]:
    """The normalized columns of a ``LeRobotSource``'s sampled episodes, by canonical name, and how many
    episodes that was."""
    fmap = source.feature_map
    episodes = sampled_episodes(source.episodes or list(range(source.meta.total_episodes)))
    columns = read_columns(source.root, list(fmap.normalized_columns.values()), episodes=episodes)
    return {name: columns[key] for name, key in fmap.normalized_columns.items()}, len(episodes)


def check_normalization(
    normalizer: Normalizer, stats: Mapping[str, Mapping], sample: Mapping[str, np.ndarray], source: str, episodes: int
) -> StatsCheck:
    """Judge ``normalizer`` (and the raw ``stats`` it was built from, for min/max) on ``sample``."""
    frames = len(next(iter(sample.values()))) if sample else 0
    report = StatsCheck(source=source, episodes=episodes, frames=frames)
    for name, feature in normalizer.features.items():
        if name not in sample:
            continue
        x = np.asarray(sample[name], dtype=np.float64)  # (N, D)
        width = feature.offset.numel()
        if width != x.shape[1]:
            report.problems.append(
                (
                    ERROR,
                    f"{name}: the statistics have {width} dimensions, the data {x.shape[1]}: statistics of "
                    "another robot or another feature",
                )
            )
            continue
        z = normalizer.normalize(name, torch.as_tensor(x, device=feature.offset.device)).cpu().numpy()  # (N, D)
        lo, hi = _bounds(stats.get(name, {}), width)
        for d in range(width):
            report.dims.append(_judge(name, d, feature.mode, x[:, d], z[:, d], lo[d], hi[d]))
    return report


def _bounds(stats: Mapping, width: int) -> tuple[np.ndarray, np.ndarray]:
    if "min" in stats and "max" in stats:
        return np.asarray(stats["min"], np.float64).reshape(-1), np.asarray(stats["max"], np.float64).reshape(-1)
    return np.full(width, -np.inf), np.full(width, np.inf)


def _judge(name: str, d: int, mode: str, raw: np.ndarray, z: np.ndarray, lo: float, hi: float) -> DimensionCheck:
    q01, q50, q99 = np.quantile(z, [0.01, 0.5, 0.99])
    tol = 1e-6 * (1.0 + abs(hi - lo)) if np.isfinite(hi - lo) else 0.0
    check = DimensionCheck(
        feature=name,
        dim=d,
        mode=mode,
        center=float(q50),
        spread=float((q99 - q01) / 2),
        low=float(z.min()),
        high=float(z.max()),
        outside=float(((raw < lo - tol) | (raw > hi + tol)).mean()),
    )
    if mode == "identity":
        return check
    raw_q01, raw_q99 = np.quantile(raw, [0.01, 0.99])
    varies = raw_q99 - raw_q01 > 1e-9 * (1.0 + abs(raw_q99))
    if abs(check.center) > CENTER_LIMIT:
        check.level, check.problem = (
            ERROR,
            (
                f"the data's median {float(np.median(raw)):.4g} lies {check.center:+.1f} normalized units from the "
                f"statistics' center ({mode}; within {CENTER_LIMIT:g} expected)"
            ),
        )
    elif varies and not SPREAD_RANGE[0] <= check.spread <= SPREAD_RANGE[1]:
        check.level, check.problem = (
            ERROR,
            (
                f"the data spread {check.spread:.3g} normalized units (half their 1-99% range, {(raw_q99 - raw_q01) / 2:.4g} "
                f"raw); {SPREAD_RANGE[0]:g}-{SPREAD_RANGE[1]:g} expected: units or scale differ"
            ),
        )
    elif check.outside > 0:
        worst = float(raw.min()) if raw.min() < lo else float(raw.max())
        check.level, check.problem = (
            WARNING,
            (
                f"{check.outside:.1%} of the sample lies outside the statistics' [min, max] = [{lo:.4g}, {hi:.4g}] "
                f"(up to {worst:.4g})"
            ),
        )
    return check


def check_training_statistics(data, policy, source: str | None = None) -> list[StatsCheck]:
    """One report per dataset the run reads (a mixture's members in order), against the normalizer that
    normalizes it. ``source`` overrides ``data.stats_source`` (a resumed checkpoint's statistics)."""
    members = policy.stats.get("members") or [policy.stats]
    reports = []
    for i, (dataset, normalizer) in enumerate(zip(data.sources, policy.normalizers, strict=True)):
        sample, episodes = read_sample(dataset)
        label = source or data.stats_source
        if len(data.sources) > 1:
            label += f", mixture member {i} ({dataset.root})"
        reports.append(check_normalization(normalizer, members[i], sample, label, episodes))
    return reports


def refuse_wrong_statistics(reports: list[StatsCheck], refuse: bool) -> None:
    """Raise on any error when ``refuse`` (dataset.check_stats), naming the feature, dimension and numbers."""
    errors = [m for r in reports for m in r.messages(ERROR)]
    if errors and refuse:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(
            f"the normalization statistics do not fit the data: {'; '.join(errors[:5])}{more}. The table above "
            "has every dimension; dataset.stats=null computes them from the data, dataset.check_stats=false "
            "trains anyway"
        )
