"""Dataset keys -> canonical sample: the only module that knows a dataset's key names.

A ``FeatureMapConfig`` is declarative (YAML / draccus): which dataset keys are the
cameras, the state, the action and the instruction. ``build(meta)`` resolves it
against a dataset's features (filling defaults, checking that every named key exists,
reading dimensions) into a frozen ``FeatureMap``, whose ``__call__`` turns one
lerobot sample into the canonical dict of ``vla/types.py``:

    images          (N, 3, Hi, Wi) float32 in [0, 1]
    image_mask      (N,) bool
    state           (S,) float32 (S = 0 when the dataset has no state)
    state_mask      (S,) bool
    actions         (H, D) float32
    action_pad      (H,) bool, True past the episode end
    action_dim_mask (D,) bool
    instruction     str
    aux_target      (A,) float32, only with ``auxiliary`` set (a training-only target, never an input)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vla import types as T
from vla.shapes import check_keys, check_shape

IMAGE_PREFIX = "observation.images."


def _features_of(meta: Any) -> dict[str, dict]:
    """Accept lerobot metadata, a LeRobotDataset or a plain features dict."""
    if isinstance(meta, Mapping):
        return dict(meta)
    feats = getattr(meta, "features", None)
    if feats is None:
        raise TypeError(f"cannot read features from {type(meta).__name__}; pass lerobot metadata or a features dict")
    return dict(feats)


def float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1], as LeRobot scales them (``/ 255``); floats pass through.
    Where a loader kept images uint8 (``FeatureMap(..., uint8_images=True)``), this runs on the device."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def camera_name(key: str) -> str:
    """Canonical camera name of a dataset key: the part after ``observation.images.``."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key


@dataclass
class FeatureMapConfig:
    """Which dataset keys feed which canonical field.

    ``cameras``: canonical camera name -> dataset key; empty means every
    ``observation.images.*`` key in the dataset's order, named by its suffix.
    ``camera_keys`` is the list form (names are the suffixes); give one or the other.
    ``state``: dataset key of the proprioceptive state, or "" for none.
    ``image_size``: (Hi, Wi) every camera is resized to; empty keeps the native size,
    which must then be the same for all cameras (they are stacked).
    ``auxiliary``: dataset key of a training-only target (``policy.auxiliary.key``), or "" for none.
    """

    cameras: dict[str, str] = field(default_factory=dict)
    camera_keys: list[str] = field(default_factory=list)
    state: str = "observation.state"
    action: str = "action"
    instruction: str = "task"
    image_size: list[int] = field(default_factory=list)
    auxiliary: str = ""

    def build(self, meta: Any) -> FeatureMap:
        features = _features_of(meta)
        if self.cameras and self.camera_keys:
            raise ValueError("FeatureMapConfig: give either cameras (dict) or camera_keys (list), not both")
        if self.cameras:
            cams = tuple(self.cameras.items())
        elif self.camera_keys:
            cams = tuple((camera_name(k), k) for k in self.camera_keys)
        else:
            cams = tuple(
                (camera_name(k), k)
                for k, v in features.items()
                if k.startswith(IMAGE_PREFIX) and v.get("dtype") in ("video", "image")
            )
        required = [k for _, k in cams] + [self.action] + ([self.state] if self.state else [])
        if self.auxiliary:
            check_auxiliary(self.auxiliary, features, meta)
        check_keys("dataset features (meta/info.json)", features, required)
        for _, key in cams:
            if features[key].get("dtype") not in ("video", "image"):
                raise ValueError(f"camera {key!r} has dtype {features[key].get('dtype')!r}, expected video or image")
        shapes = {k: tuple(features[k]["shape"]) for k in required}
        if self.image_size:
            if len(self.image_size) != 2:
                raise ValueError(f"image_size must be [H, W], got {self.image_size}")
            size = (int(self.image_size[0]), int(self.image_size[1]))
        elif cams:
            sizes = {k: shapes[k][:2] for _, k in cams}
            if len(set(sizes.values())) > 1:
                raise ValueError(f"cameras have different sizes {sizes}; set image_size to resize them to one")
            size = next(iter(sizes.values()))
        else:
            size = None
        for key in [self.action] + ([self.state] if self.state else []):
            if len(shapes[key]) != 1:
                raise ValueError(f"{key}: expected a 1-D feature, info.json says shape {shapes[key]}")
        return FeatureMap(
            cameras=cams,
            state=self.state or None,
            action=self.action,
            instruction=self.instruction,
            state_dim=shapes[self.state][0] if self.state else 0,
            action_dim=shapes[self.action][0],
            image_size=size,
            native_sizes=tuple(tuple(shapes[k][:2]) for _, k in cams),
            auxiliary=self.auxiliary or None,
            auxiliary_dim=int(features[self.auxiliary]["shape"][0]) if self.auxiliary else 0,
        )


def check_auxiliary(key: str, features: dict[str, dict], meta: Any) -> None:
    """The auxiliary target must be a 1-D float feature of the dataset; the error names the key and the dataset."""
    where = getattr(meta, "root", None) or getattr(meta, "repo_id", None) or "the dataset"
    numeric = sorted(
        k for k, v in features.items() if str(v.get("dtype", "")).startswith("float") and len(v.get("shape", ())) == 1
    )
    if key not in features:
        raise KeyError(
            f"policy.auxiliary.key={key!r}: {where} has no feature {key!r} (meta/info.json); "
            f"its 1-D float features are {numeric}"
        )
    if key not in numeric:
        spec = features[key]
        raise ValueError(
            f"policy.auxiliary.key={key!r}: in {where} it has dtype {spec.get('dtype')!r} and shape "
            f"{spec.get('shape')}; an auxiliary target must be a 1-D float feature, one of {numeric}"
        )


@dataclass(frozen=True)
class FeatureMap:
    """A FeatureMapConfig resolved against one dataset; maps lerobot samples to canonical dicts."""

    cameras: tuple[tuple[str, str], ...]  # (canonical name, dataset key), in image order N
    state: str | None
    action: str
    instruction: str
    state_dim: int
    action_dim: int
    image_size: tuple[int, int] | None
    native_sizes: tuple[tuple[int, int], ...] = ()
    auxiliary: str | None = None  # dataset key of the training-only target (not an observation key)
    auxiliary_dim: int = 0

    @classmethod
    def infer(cls, meta: Any) -> FeatureMap:
        """Default mapping: every ``observation.images.*`` camera, ``observation.state``, ``action``."""
        features = _features_of(meta)
        state = "observation.state" if "observation.state" in features else ""
        return FeatureMapConfig(state=state).build(features)

    @property
    def camera_names(self) -> list[str]:
        return [name for name, _ in self.cameras]

    @property
    def observation_keys(self) -> list[str]:
        """Dataset keys of the observation: the cameras and the state."""
        return [k for _, k in self.cameras] + ([self.state] if self.state else [])

    @property
    def stats_keys(self) -> list[str]:
        """The dataset columns normalization needs statistics of: action, state, auxiliary target."""
        return list(self.normalized_columns.values())

    @property
    def normalized_columns(self) -> dict[str, str]:
        """Canonical name the Normalizer knows -> the dataset column it normalizes."""
        out = {T.ACTIONS: self.action}
        if self.state:
            out[T.STATE] = self.state
        if self.auxiliary:
            out[T.AUX_TARGET] = self.auxiliary
        return out

    def stats_for(self, stats: Mapping[str, Mapping]) -> dict[str, dict]:
        """Dataset-keyed statistics -> canonical ``{"state": ..., "actions": ...}`` for the Normalizer."""
        out = {name: dict(stats[key]) for name, key in self.normalized_columns.items() if key in stats}
        missing = [k for k in self.stats_keys if k not in stats]
        if missing:
            raise KeyError(f"stats have no entry for {missing}; present: {sorted(stats)}")
        return out

    # ── the mapping itself ─────────────────────────────────────────────

    def _image(self, key: str, x: torch.Tensor, uint8: bool = False) -> torch.Tensor:
        """One camera -> (3, Hi, Wi) float in [0, 1] at ``image_size`` (``uint8``: a uint8 frame at its size
        stays uint8, for ``float_images`` on the device)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{key}: expected a decoded image tensor, got {type(x).__name__}")
        check_shape(key, x, "3 Hi Wi")
        resize = self.image_size is not None and tuple(x.shape[-2:]) != self.image_size
        if x.dtype == torch.uint8:
            if uint8 and not resize:
                return x
            x = float_images(x)
            if not resize:
                return x  # in [0, 1] already
        x = x.float()
        if resize:
            x = F.interpolate(x[None], size=self.image_size, mode="bilinear", align_corners=False, antialias=True)[0]
        return x.clamp_(0.0, 1.0)

    def __call__(self, sample: Mapping[str, Any], uint8_images: bool = False) -> dict[str, Any]:
        """``uint8_images``: images stay uint8 (0..255) where every camera's frame is uint8 at its size, so that
        a DataLoader moves a quarter of the bytes; ``float_images`` on the device then gives the floats this
        would have given, bit for bit."""
        aux = [self.auxiliary] if self.auxiliary else []
        check_keys("dataset sample", sample, [self.action, self.instruction] + self.observation_keys + aux)
        actions = torch.as_tensor(sample[self.action], dtype=torch.float32)
        if actions.ndim == 1:  # no delta timestamps: a chunk of one step
            actions = actions[None]
        dims = check_shape(self.action, actions, "H D", D=self.action_dim)
        pad_key = f"{self.action}_is_pad"
        if pad_key in sample:
            action_pad = torch.as_tensor(sample[pad_key], dtype=torch.bool)
            check_shape(pad_key, action_pad, "H", H=dims["H"])
        else:
            action_pad = torch.zeros(dims["H"], dtype=torch.bool)

        if self.cameras:
            frames = [self._image(key, sample[key], uint8_images) for _, key in self.cameras]
            if any(x.dtype != frames[0].dtype for x in frames):
                frames = [float_images(x) for x in frames]
            images = torch.stack(frames)  # (N, 3, Hi, Wi)
        else:
            h, w = self.image_size or (1, 1)
            images = torch.zeros(0, 3, h, w)
        if self.state:
            state = torch.as_tensor(sample[self.state], dtype=torch.float32)
            check_shape(self.state, state, "S", S=self.state_dim)
        else:
            state = torch.zeros(0)
        instruction = sample[self.instruction]
        if not isinstance(instruction, str):
            raise TypeError(f"{self.instruction}: expected an instruction string, got {type(instruction).__name__}")

        out = {
            T.IMAGES: images,  # (N, 3, Hi, Wi)
            T.IMAGE_MASK: torch.ones(len(self.cameras), dtype=torch.bool),
            T.STATE: state,  # (S,)
            T.STATE_MASK: torch.ones(self.state_dim, dtype=torch.bool),
            T.ACTIONS: actions,  # (H, D)
            T.ACTION_PAD: action_pad,  # (H,)
            T.ACTION_DIM_MASK: torch.ones(self.action_dim, dtype=torch.bool),
            T.INSTRUCTION: instruction,
        }
        if self.auxiliary:  # a training-only target: the current frame's value, never an observation
            out[T.AUX_TARGET] = torch.as_tensor(sample[self.auxiliary], dtype=torch.float32)
            check_shape(self.auxiliary, out[T.AUX_TARGET], "A", A=self.auxiliary_dim)
        return out
