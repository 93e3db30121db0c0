"""LIBERO-plus's ``noise`` perturbations: the five image corruptions it applies to the agent view.

LIBERO-plus names a task ``..._noise_N`` (N in 1..50) and, in its env wrapper
(``liberoplus/envs/env_wrapper.py``, ``ControlEnv.reset``/``step``), corrupts the ``agentview_image`` after every
reset and step: N 1-10 is motion blur of severity N, 11-20 Gaussian blur N-10, 21-30 zoom blur N-20, 31-40 fog
N-30, 41-50 glass blur N-40 (the wrist camera is left clean). The corruptions are ImageNet-C's (Hendrycks & Dietterich, 2019) with LIBERO-plus's
own 10-level parameter tables. We reimplement them here (same libraries: ImageMagick through Wand,
``skimage.filters.gaussian``, ``scipy.ndimage.zoom``) rather than import LIBERO-plus, whose package writes files
and pulls gym when imported.

**Parity.** :func:`corrupt` draws its randomness from the ``rng`` it is given, with the same calls in the same
order as LIBERO-plus draws from the global ``np.random``, so ``corrupt(img, N, np.random.RandomState(s))`` equals
LIBERO-plus's output (cast to uint8 as its wrapper does) after ``np.random.seed(s)``
(tests/eval/test_image_corruptions.py checks every kind bit for bit).

**Where ours differs: only at image sizes LIBERO-plus cannot handle.**

* Glass blur: LIBERO-plus shuffles pixels over a hard-coded 224-px range, so it raises IndexError on smaller
  images and leaves the border of larger ones unshuffled. We use the image's own height and width, which is the
  same at 224 px.
* Fog: LIBERO-plus adds a fixed 256x256 plasma map, which only broadcasts onto 256-px images. We build the map at
  the next power of two >= the image's longer side (the diamond-square algorithm needs a power of two) and crop
  it to the image, which is the same at 256 px.
* Zoom blur: LIBERO-plus crops and trims both axes by the height, so only square images work. We use each axis's
  own size, the same on square images.
* Motion blur: LIBERO-plus round-trips through PNG and OpenCV, and expects a single-channel decode (ImageMagick
  writes a grey PNG when R = G = B everywhere) only at 224x224: at any other size such an image comes back with
  shape (H, 3). We hand ImageMagick the pixels and read RGB back, the same uint8 values for colour images.

Kept as LIBERO-plus has them (ImageNet-C's behaviour, so results stay comparable): glass blur's "swap"
``x[a], x[b] = x[b], x[a]`` on numpy views copies pixel ``b`` into ``a`` and leaves ``b`` unchanged; its shifts
come from ``randint(-d, d)``, i.e. -d..d-1; each blur's float result is truncated (not rounded) to uint8; the
zoom and Gaussian blurs draw nothing from ``rng``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import zoom as scipy_zoom
from skimage.filters import gaussian

NOISE_KINDS = ("motion_blur", "gaussian_blur", "zoom_blur", "fog", "glass_blur")
SEVERITIES = 10  # LIBERO-plus's levels per kind: noise index = 10 * kind_index + severity

# LIBERO-plus's parameter tables, one value per severity (index = severity - 1)
MOTION_BLUR_RADIUS = (5, 8, 10, 12, 15, 18, 20, 25, 30, 35)  # ImageMagick MotionBlur's radius and sigma
MOTION_BLUR_SIGMA = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
GAUSSIAN_SIGMA = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
# zoom factors np.arange(1, stop, step), called exactly as LIBERO-plus calls it so the float factors match
ZOOM_STOP = (1.11, 1.16, 1.21, 1.26, 1.31, 1.36, 1.41, 1.46, 1.51, 1.56)
ZOOM_STEP = (0.01, 0.01, 0.02, 0.02, 0.03, 0.01, 0.01, 0.02, 0.02, 0.03)
FOG_STRENGTH = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
FOG_DECAY = (3, 2.8, 2.5, 2.2, 2.0, 1.8, 1.6, 1.5, 1.4, 1.3)  # plasma noise decay per level: higher = smoother
GLASS_SIGMA = (0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.5, 1.8, 2.2, 2.5)
GLASS_SHIFT = (1, 1, 2, 2, 3, 3, 4, 4, 5, 5)  # largest pixel jitter
GLASS_PASSES = (3, 3, 3, 2, 2, 2, 2, 2, 1, 1)


def noise_kind(level: int) -> tuple[str, int]:
    """LIBERO-plus's noise index (1..50, the N of ``_noise_N``) -> (kind, severity 1..10)."""
    if not 1 <= level <= SEVERITIES * len(NOISE_KINDS):
        raise ValueError(f"noise level {level} is outside LIBERO-plus's 1..{SEVERITIES * len(NOISE_KINDS)}")
    kind_index, severity_index = divmod(level - 1, SEVERITIES)
    return NOISE_KINDS[kind_index], severity_index + 1


def corrupt(image: np.ndarray, level: int, rng: np.random.RandomState) -> np.ndarray:
    """Corrupt a uint8 (H, W, 3) image with LIBERO-plus noise ``level``; uint8 (H, W, 3) out.

    ``rng`` is a legacy ``RandomState`` because LIBERO-plus draws from the global one: the same seed gives the
    same stream, hence the same image.
    """
    kind, severity = noise_kind(level)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"corrupt expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return CORRUPTIONS[kind](image, severity, rng)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 the way LIBERO-plus does it: clip, scale by 255, truncate."""
    return (np.clip(unit, 0, 1) * 255).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Per-channel Gaussian blur of a uint8 image, as floats in [0, 1]."""
    return gaussian(image / 255.0, sigma=sigma, channel_axis=-1)


def motion_blur(image: np.ndarray, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """ImageMagick's MotionBlur along one random angle in [-45, 45) degrees (one ``rng.uniform`` draw).

    We read the result as 16-bit and truncate to 8 bits (``// 257``): LIBERO-plus gets its pixels through
    ImageMagick's PNG writer, which truncates, while an 8-bit ``export_pixels`` rounds (1 level off on half the
    pixels).
    """
    from wand.image import Image  # lazy: Wand loads libMagickWand, which only this corruption needs

    radius, sigma = MOTION_BLUR_RADIUS[severity - 1], MOTION_BLUR_SIGMA[severity - 1]
    with Image.from_array(image) as picture:
        picture.motion_blur(radius=radius, sigma=sigma, angle=rng.uniform(-45, 45))
        pixels = picture.export_pixels(channel_map="RGB", storage="short")
    return (np.asarray(pixels, dtype=np.uint16) // 257).astype(np.uint8).reshape(image.shape)


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """Gaussian blur with sigma = severity pixels; deterministic (``rng`` unused)."""
    return _to_uint8(_blur(image, GAUSSIAN_SIGMA[severity - 1]))


def _zoom_center(image: np.ndarray, factor: float) -> np.ndarray:
    """Magnify the centre of ``image`` by ``factor`` (bilinear) and crop back to its size."""
    height, width = image.shape[:2]
    crop_h, crop_w = int(np.ceil(height / factor)), int(np.ceil(width / factor))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    zoomed = scipy_zoom(image[top : top + crop_h, left : left + crop_w], (factor, factor, 1), order=1)
    top, left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[top : top + height, left : left + width]


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """Average of the image and its centre zooms over a range of factors; deterministic (``rng`` unused).

    Accumulates in float32 as LIBERO-plus does, so the truncation to uint8 lands on the same values.
    """
    factors = np.arange(1, ZOOM_STOP[severity - 1], ZOOM_STEP[severity - 1])
    unit = (image / 255.0).astype(np.float32)
    total = np.zeros_like(unit)
    for factor in factors:
        total += _zoom_center(unit, factor)
    return _to_uint8((unit + total) / (len(factors) + 1))


def plasma_fractal(size: int, decay: float, rng: np.random.RandomState) -> np.ndarray:
    """A (size, size) diamond-square height map in [0, 1]; ``size`` must be a power of two.

    Each halving of the grid step draws three ``rng.uniform`` arrays, in this order: square centres, then
    the midpoints of the horizontal edges, then of the vertical edges. The noise amplitude starts at 100 and is
    divided by ``decay`` per level (a larger decay gives a smoother fog).
    """
    if size < 1 or size & (size - 1):
        raise ValueError(f"plasma map size {size} is not a power of two")
    heights = np.zeros((size, size))
    step, amplitude = size, 100.0

    def noisy_mean(corner_sum: np.ndarray) -> np.ndarray:
        return corner_sum / 4 + amplitude * rng.uniform(-amplitude, amplitude, corner_sum.shape)

    while step >= 2:
        half = step // 2
        corners = heights[::step, ::step]  # the known grid; it wraps around (np.roll)
        square_sum = corners + np.roll(corners, -1, axis=0)
        square_sum += np.roll(square_sum, -1, axis=1)
        heights[half::step, half::step] = noisy_mean(square_sum)
        centres = heights[half::step, half::step]
        # a diamond point's four neighbours: two corners and two centres
        top_sum = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        heights[::step, half::step] = noisy_mean(top_sum)
        left_sum = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        heights[half::step, ::step] = noisy_mean(left_sum)
        step //= 2
        amplitude /= decay
    heights -= heights.min()
    return heights / heights.max()


def fog(image: np.ndarray, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """Add a plasma-fractal haze, then rescale so the image's brightest value stays where it was."""
    strength, decay = FOG_STRENGTH[severity - 1], FOG_DECAY[severity - 1]
    height, width = image.shape[:2]
    size = 1 << (max(height, width) - 1).bit_length()  # next power of two >= the longer side
    haze = plasma_fractal(size, decay, rng)[:height, :width, None]
    unit = image / 255.0
    brightest = unit.max()
    return _to_uint8((unit + strength * haze) * brightest / (brightest + strength))


def glass_blur(image: np.ndarray, severity: int, rng: np.random.RandomState) -> np.ndarray:
    """Blur, jitter pixels locally, blur again (frosted glass).

    The jitter visits rows and columns d+1 .. size-d (d = max shift), bottom-right to top-left, and copies into
    each pixel the one at a random offset (dx, dy) in [-d, d) (one ``rng.randint(-d, d, size=2)`` per pixel,
    drawn here for a whole pass at once: the same stream). Later copies read earlier ones, so we follow the
    copies on an index map in that order, then gather the pixels once.
    """
    sigma, shift, passes = GLASS_SIGMA[severity - 1], GLASS_SHIFT[severity - 1], GLASS_PASSES[severity - 1]
    height, width = image.shape[:2]
    blurred = (_blur(image, sigma) * 255).astype(np.uint8)
    rows, cols = np.meshgrid(np.arange(height - shift, shift, -1), np.arange(width - shift, shift, -1), indexing="ij")
    targets = (rows * width + cols).ravel()
    source = list(range(height * width))  # source[p]: which blurred pixel ends up at flat position p
    for _ in range(passes):
        dx, dy = rng.randint(-shift, shift, size=(targets.size, 2)).T
        for target, read in zip(targets.tolist(), (targets + dy * width + dx).tolist(), strict=True):
            source[target] = source[read]
    jittered = blurred.reshape(-1, 3)[source].reshape(image.shape)
    return _to_uint8(_blur(jittered, sigma))


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.RandomState], np.ndarray]] = {
    "motion_blur": motion_blur,
    "gaussian_blur": gaussian_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "glass_blur": glass_blur,
}
