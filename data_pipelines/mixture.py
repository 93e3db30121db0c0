"""Several datasets (embodiments) as one training set with sampling weights.

Members may differ in cameras, state width and action width. Every sample is padded
to the mixture's common layout and the padding is marked, so nothing downstream
needs to know which member a sample came from:

- cameras: ``camera_layout="union"`` gives one slot per distinct canonical camera
  name over all members (a member's missing cameras are zero images with
  ``image_mask`` False); ``"max"`` packs each member's cameras into the first slots
  of max-N slots (use it when names differ but the roles are interchangeable);
- state (S_max,) and actions (H, D_max): real dims first, zeros after, with
  ``state_mask`` / ``action_dim_mask`` True on the real dims;
- ``dataset_index``: which member, as a long scalar.

Samples stay in raw robot units: the policy normalizes each sample with its own
member's statistics (selected by ``dataset_index``) and keeps them in its checkpoint,
so each embodiment's joints keep their own units and a served policy unnormalizes
exactly as it trained.

Weighted sampling is left to the one training sampler
(``vla.train.sampler.ShardedStepSampler``) rather than a sampling ``__getitem__``, so
the mixture stays a plain map-style dataset: ``sample_weights()`` tells that sampler
each member's size and weight (a member by its weight, then a frame of it uniformly),
without a weight per frame.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from data_pipelines.lerobot_source import LeRobotSource, LeRobotSourceConfig
from vla import types as T
from vla.train.sampler import SampleWeights


@dataclass
class MixtureMemberConfig:
    source: LeRobotSourceConfig = field(default_factory=LeRobotSourceConfig)
    weight: float = 1.0


@dataclass
class MixtureConfig:
    members: list[MixtureMemberConfig] = field(default_factory=list)
    camera_layout: Literal["union", "max"] = "union"

    def build(self) -> MixtureDataset:
        if not self.members:
            raise ValueError("MixtureConfig: no members")
        sources = [LeRobotSource(m.source) for m in self.members]
        return MixtureDataset(sources, [m.weight for m in self.members], self.camera_layout)


class MixtureDataset(Dataset):
    """Concatenation of canonical sources, padded to one layout (see module docstring)."""

    def __init__(
        self,
        sources: Sequence[LeRobotSource],
        weights: Sequence[float],
        camera_layout: Literal["union", "max"] = "union",
    ):
        if len(sources) != len(weights):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self.sources = list(sources)
        self.weights = [w / sum(weights) for w in weights]
        self.camera_layout = camera_layout
        maps = [s.feature_map for s in self.sources]

        chunks = {s.cfg.chunk for s in self.sources}
        if len(chunks) > 1:
            raise ValueError(f"mixture members have different chunk lengths {sorted(chunks)}; use one H")
        sizes = {m.image_size for m in maps if m.cameras}
        if len(sizes) > 1:
            raise ValueError(f"mixture members have different image sizes {sorted(sizes)}; set feature_map.image_size")
        self.image_size = next(iter(sizes), None)
        if camera_layout == "union":
            self.camera_names = list(dict.fromkeys(n for m in maps for n in m.camera_names))
            self.slots = [[self.camera_names.index(n) for n in m.camera_names] for m in maps]
        elif camera_layout == "max":
            n_max = max(len(m.cameras) for m in maps)
            self.camera_names = [f"camera{i}" for i in range(n_max)]
            self.slots = [list(range(len(m.cameras))) for m in maps]
        else:
            raise ValueError(f"camera_layout must be 'union' or 'max', got {camera_layout!r}")
        self.state_dim = max(m.state_dim for m in maps)
        self.action_dim = max(m.action_dim for m in maps)
        self.offsets = [0]
        for s in self.sources:
            self.offsets.append(self.offsets[-1] + len(s))

    def __len__(self) -> int:
        return self.offsets[-1]

    def sample_weights(self) -> SampleWeights:
        """Each member drawn by its weight, then one of its frames uniformly (for the training sampler)."""
        return SampleWeights(sizes=[len(s) for s in self.sources], weights=self.weights)

    def locate(self, idx: int) -> tuple[int, int]:
        """Global index -> (member, index within the member)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"mixture index {idx} out of range [0, {len(self)})")
        m = bisect.bisect_right(self.offsets, idx) - 1
        return m, idx - self.offsets[m]

    def _pad_last(self, x: torch.Tensor, size: int) -> torch.Tensor:
        pad = torch.zeros(*x.shape[:-1], size - x.shape[-1], dtype=x.dtype)
        return torch.cat([x, pad], dim=-1)

    def _place_cameras(self, imgs: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """(n, 3, Hi, Wi) -> (N, 3, Hi, Wi) with the member's cameras at their slots."""
        out = imgs.new_zeros(len(self.camera_names), *imgs.shape[-3:])
        out[slots] = imgs
        return out

    def __getitem__(self, idx: int) -> dict[str, Any]:
        m, local = self.locate(idx)
        s = self.sources[m][local]
        slots = self.slots[m]
        image_mask = torch.zeros(len(self.camera_names), dtype=torch.bool)
        image_mask[slots] = True
        return {
            T.IMAGES: self._place_cameras(s[T.IMAGES], slots),  # (N, 3, Hi, Wi)
            T.IMAGE_MASK: image_mask,
            T.STATE: self._pad_last(s[T.STATE], self.state_dim),  # (S_max,)
            T.STATE_MASK: self._pad_last(s[T.STATE_MASK], self.state_dim),
            T.ACTIONS: self._pad_last(s[T.ACTIONS], self.action_dim),  # (H, D_max)
            T.ACTION_PAD: s[T.ACTION_PAD],
            T.ACTION_DIM_MASK: self._pad_last(s[T.ACTION_DIM_MASK], self.action_dim),
            T.INSTRUCTION: s[T.INSTRUCTION],
            T.DATASET_INDEX: torch.tensor(m, dtype=torch.long),
        }
