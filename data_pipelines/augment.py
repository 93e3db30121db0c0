"""Training-time image transforms on batched tensors, on whatever device they live.

They run after collation, on (B, N, 3, H, W) float images in [0, 1] (usually already
on the GPU), so augmentation costs one vectorized kernel per batch instead of
per-sample PIL work inside DataLoader workers. Each transform is a frozen dataclass:
``t(images, generator=None, train=True)``. Random draws come from ``generator``: one
``torch.Generator`` for the batch, or one per sample (the trainer's, keyed by the sample:
see vla.utils.sample_rng), in which case a sample's augmentation does not depend on the
other samples of its batch. Draws are made on the generator's device (the CPU) and moved
to the images', so a seeded generator gives the same result on any device. ``train=False``
makes every random transform the identity; ``Resize`` is not an augmentation and always
applies, so evaluation sees the model's resolution too.

Each camera of each sample gets its own random draw. ``AugmentConfig`` is the recipe's
``augment:`` section and builds the training pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from vla.shapes import check_shape
from vla.utils import sample_rng
from vla.utils.sample_rng import Generators


def _flat(images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, N, 3, H, W) -> ((B*N), 3, H, W), B."""
    dims = check_shape("images", images, "B N 3 H W")
    return rearrange(images, "b n c h w -> (b n) c h w"), dims["B"]


def _unflat(x: torch.Tensor, b: int) -> torch.Tensor:
    return rearrange(x, "(b n) c h w -> b n c h w", b=b)


def _uniform(x: torch.Tensor, b: int, lo: float, hi: float, generator: Generators) -> torch.Tensor:
    """((B*N),) uniform draws in [lo, hi] on x's device, one per image of the flat (B*N) batch ``x``;
    a per-sample generator draws its sample's N."""
    u = sample_rng.rand((b, x.shape[0] // b), generator, x.device)  # (B, N)
    return lo + (hi - lo) * u.flatten()


@dataclass(frozen=True)
class Resize:
    """Resize every camera to the model's (H, W); bilinear with antialiasing."""

    size: tuple[int, int] = (224, 224)

    def __call__(self, images: torch.Tensor, generator: Generators = None, train: bool = True):
        if tuple(images.shape[-2:]) == tuple(self.size):
            return images
        x, b = _flat(images)
        x = F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True)
        return _unflat(x, b)


@dataclass(frozen=True)
class RandomShift:
    """Translate by up to ``pad`` pixels, filling with the border (pad + random crop, DrQ style)."""

    pad: int = 4

    def __call__(self, images: torch.Tensor, generator: Generators = None, train: bool = True):
        if not train or self.pad == 0:
            return images
        x, b = _flat(images)
        n, _, h, w = x.shape
        # Integer shifts, so output pixels are exact copies of input pixels.
        dx = _uniform(x, b, -self.pad, self.pad, generator).round()
        dy = _uniform(x, b, -self.pad, self.pad, generator).round()
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = 1
        theta[:, 1, 1] = 1
        theta[:, 0, 2] = 2 * dx / w  # normalized coordinates span 2 over the width
        theta[:, 1, 2] = 2 * dy / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
        return _unflat(x, b)


@dataclass(frozen=True)
class RandomCrop:
    """Crop a random window of ``scale`` of the side and resize it back to the input size."""

    scale: float = 0.9

    def __call__(self, images: torch.Tensor, generator: Generators = None, train: bool = True):
        if not 0 < self.scale <= 1:
            raise ValueError(f"RandomCrop.scale must be in (0, 1], got {self.scale}")
        if not train or self.scale == 1:
            return images
        x, b = _flat(images)
        n = x.shape[0]
        # The window center may move by at most (1 - scale) of the half-extent in each axis.
        cx = _uniform(x, b, -(1 - self.scale), 1 - self.scale, generator)
        cy = _uniform(x, b, -(1 - self.scale), 1 - self.scale, generator)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = self.scale
        theta[:, 1, 1] = self.scale
        theta[:, 0, 2] = cx
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return _unflat(x, b)


@dataclass(frozen=True)
class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - a, 1 + a], then clamp to [0, 1]."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __call__(self, images: torch.Tensor, generator: Generators = None, train: bool = True):
        if not train:
            return images
        x, b = _flat(images)
        n = x.shape[0]

        def factor(a: float) -> torch.Tensor:  # (n, 1, 1, 1)
            return _uniform(x, b, 1 - a, 1 + a, generator).to(x.dtype).view(n, 1, 1, 1)

        # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
        luma = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = x * factor(self.brightness)
        gray_mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (n, 1, 1, 1)
        x = (x - gray_mean) * factor(self.contrast) + gray_mean
        gray = (x * luma).sum(1, keepdim=True)  # (n, 1, H, W)
        x = (x - gray) * factor(self.saturation) + gray
        return _unflat(x.clamp(0.0, 1.0), b)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order with one shared generator."""

    transforms: Sequence = field(default_factory=tuple)

    def __call__(self, images: torch.Tensor, generator: Generators = None, train: bool = True):
        for t in self.transforms:
            images = t(images, generator=generator, train=train)
        return images


@dataclass
class AugmentConfig:
    """The recipe's ``augment:`` section: crop/shift, then color jitter, applied on the device.

    No resize: the dataset (``dataset.image_size``) and the backbone set the resolution.
    """

    enabled: bool = True
    crop_scale: float = 0.95  # random crop of this fraction of each side, resized back (0 or 1 disables)
    shift_pad: int = 0  # random shift by up to this many pixels (0 disables)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self):
        if not 0 <= self.crop_scale <= 1:
            raise ValueError(f"augment.crop_scale must be in [0, 1] (0 or 1: no crop), got {self.crop_scale}")
        if self.shift_pad < 0:
            raise ValueError(f"augment.shift_pad must be >= 0, got {self.shift_pad}")

    def build(self) -> Compose | None:
        """The pipeline, or None when disabled or when every transform is off."""
        if not self.enabled:
            return None
        ts: list = []
        if 0 < self.crop_scale < 1:
            ts.append(RandomCrop(self.crop_scale))
        if self.shift_pad > 0:
            ts.append(RandomShift(self.shift_pad))
        if self.brightness or self.contrast or self.saturation:
            ts.append(ColorJitter(self.brightness, self.contrast, self.saturation))
        return Compose(tuple(ts)) if ts else None
