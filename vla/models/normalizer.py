"""State/action normalization kept inside every checkpoint.

The statistics live in buffers, so ``state_dict`` carries them and a served policy
unnormalizes exactly as it was trained. Every mode is an affine map
``y = (x - offset) / scale``, which makes ``unnormalize(normalize(x)) == x`` up to
float rounding:

- ``mean_std``: offset = mean, scale = std;
- ``min_max``: [min, max] -> [-1, 1];
- ``quantile``: [q01, q99] -> [-1, 1] (robust to outliers; values outside are not
  clipped, clipping would break the round trip);
- ``identity``.

A dimension whose spread is below ``eps`` (a gripper that never moved, a padded dim)
gets scale 1, i.e. it is only shifted, so it never produces NaN or inf.

Mixed-embodiment batches pad state/action dims (``state_mask``/``action_dim_mask``):
dims where the mask is False, and trailing dims beyond the statistics' width, pass
through untouched. This module takes plain dicts of arrays; it must not import
``data_pipelines`` (``FeatureMap.stats_for`` produces the dict it wants).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Mode = Literal["mean_std", "min_max", "quantile", "identity"]
MODES = ("mean_std", "min_max", "quantile", "identity")
NEEDED = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99"), "identity": ()}


@dataclass
class NormalizerConfig:
    """Mode per canonical feature name (``state``, ``actions``)."""

    modes: dict[str, str] = field(default_factory=lambda: {"state": "mean_std", "actions": "mean_std"})
    eps: float = 1e-6


def affine_from_stats(stats: Mapping, mode: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale), each (D,), for one feature."""
    if mode not in MODES:
        raise ValueError(f"unknown normalization mode {mode!r}; known: {', '.join(MODES)}")
    missing = [s for s in NEEDED[mode] if s not in stats]
    if missing:
        raise KeyError(f"mode {mode!r} needs stats {list(NEEDED[mode])}, missing {missing}; have {sorted(stats)}")

    def get(name: str) -> torch.Tensor:
        return torch.as_tensor(stats[name], dtype=torch.float64).reshape(-1)

    if mode == "identity":
        dim = next((get(k).numel() for k in ("mean", "min", "q01", "max") if k in stats), None)
        if dim is None:
            raise KeyError(f"mode 'identity' still needs one of mean/min/q01 to know the width; have {sorted(stats)}")
        offset, scale = torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)
    elif mode == "mean_std":
        offset, scale = get("mean"), get("std")
    else:
        lo, hi = (get("min"), get("max")) if mode == "min_max" else (get("q01"), get("q99"))
        offset, scale = (hi + lo) / 2, (hi - lo) / 2
    scale = torch.where(scale.abs() < eps, torch.ones_like(scale), scale)
    if not (torch.isfinite(offset).all() and torch.isfinite(scale).all()):
        raise ValueError(f"non-finite statistics for mode {mode!r}: offset {offset.tolist()}, scale {scale.tolist()}")
    return offset.float(), scale.float()


class FeatureNorm(nn.Module):
    """Offset and scale of one feature, as buffers (they go into the state_dict)."""

    def __init__(self, offset: torch.Tensor, scale: torch.Tensor, mode: str):
        super().__init__()
        self.mode = mode
        self.register_buffer("offset", offset.clone())  # (D,)
        self.register_buffer("scale", scale.clone())  # (D,)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, dim={self.offset.numel()}"


class Normalizer(nn.Module):
    """``normalize(name, x, mask=None)`` / ``unnormalize(...)`` over the last dim of ``x``."""

    def __init__(self, stats: Mapping[str, Mapping], modes: Mapping[str, str], eps: float = 1e-6):
        super().__init__()
        unknown = [n for n in modes if n not in stats]
        if unknown:
            raise KeyError(f"Normalizer: modes given for {unknown} but no stats; stats have {sorted(stats)}")
        self.features = nn.ModuleDict(
            {name: FeatureNorm(*affine_from_stats(stats[name], mode, eps), mode) for name, mode in modes.items()}
        )

    @classmethod
    def from_config(cls, cfg: NormalizerConfig, stats: Mapping[str, Mapping]) -> Normalizer:
        return cls(stats, cfg.modes, cfg.eps)

    @classmethod
    def empty(cls, dims: Mapping[str, int], modes: Mapping[str, str]) -> Normalizer:
        """Right-shaped placeholder to ``load_state_dict`` a saved normalizer into."""
        stats = {n: {"mean": [0.0] * d, "std": [1.0] * d} for n, d in dims.items()}
        norm = cls(stats, {n: "mean_std" for n in dims})
        for name, mode in modes.items():
            norm.features[name].mode = mode
        return norm

    def _affine(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        if name not in self.features:
            raise KeyError(f"Normalizer has no statistics for {name!r}; it has {sorted(self.features)}")
        f = self.features[name]
        d = f.offset.numel()
        if x.shape[-1] < d:
            raise ValueError(f"{name}: expected last dim >= {d} (the statistics' width), got shape {tuple(x.shape)}")
        return f.offset.to(x.dtype), f.scale.to(x.dtype), d

    def _transform(self, name: str, x: torch.Tensor, mask: torch.Tensor | None, forward: bool) -> torch.Tensor:
        offset, scale, d = self._affine(name, x)
        head = x[..., :d]  # (..., D) real dims; anything after is padding and passes through
        y = (head - offset) / scale if forward else head * scale + offset
        if x.shape[-1] > d:
            y = torch.cat([y, x[..., d:]], dim=-1)
        if mask is not None:
            if mask.shape[-1] != x.shape[-1]:
                raise ValueError(f"{name}: mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}")
            # mask is (B, D) while actions are (B, H, D): broadcast over the horizon.
            while mask.ndim < x.ndim:
                mask = mask.unsqueeze(-2)
            y = torch.where(mask.bool(), y, x)
        return y

    def normalize(self, name: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._transform(name, x, mask, forward=True)

    def unnormalize(self, name: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._transform(name, x, mask, forward=False)

    def modes(self) -> dict[str, str]:
        return {n: f.mode for n, f in self.features.items()}
