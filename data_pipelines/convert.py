"""Convert a folder of raw per-episode files into a LeRobot v3 dataset.

Raw format (one file per episode; files are taken in sorted name order, so name them
``episode_000.npz``, ``episode_001.npz``, ...; ``.npz``, ``.hdf5`` and ``.h5`` may be mixed):

=======================  ===============  =============================================
key                      shape / type     meaning
=======================  ===============  =============================================
``images/<cam>``         (T, H, W, 3)     uint8 RGB frames of camera ``<cam>``
``state``                (T, S) float     proprioceptive state (optional)
``action``               (T, D) float     action taken at each frame
``instruction``          str              the task in words
=======================  ===============  =============================================

In an ``.npz`` the keys are the archive member names (``np.savez(path, **{"images/top":
frames, "state": s, "action": a, "instruction": "pick up the cube"})``). In HDF5,
``images`` is a group with one dataset per camera, ``state``/``action`` are datasets
and ``instruction`` is a string dataset or a root attribute.

Every episode must have the same cameras, image sizes, state and action widths as the
first one; the first mismatch is reported with its file. The output is written through
``DatasetWriter``, so a failed conversion leaves no half-written dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.writer import DatasetWriter, make_features

RAW_SUFFIXES = (".npz", ".hdf5", ".h5")


def _to_str(x) -> str:
    x = np.asarray(x).reshape(-1)[0] if np.ndim(x) else np.asarray(x).item()
    return x.decode() if isinstance(x, bytes) else str(x)


def read_raw_episode(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """-> (images by camera name, {"state"?, "action"} arrays, instruction)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            images = {k.split("/", 1)[1]: z[k] for k in keys if k.startswith("images/")}
            arrays = {k: z[k] for k in ("state", "action") if k in keys}
            instruction = _to_str(z["instruction"]) if "instruction" in keys else None
    elif path.suffix in (".hdf5", ".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            images = {name: f["images"][name][()] for name in f["images"]} if "images" in f else {}
            arrays = {k: f[k][()] for k in ("state", "action") if k in f}
            if "instruction" in f:
                instruction = _to_str(f["instruction"][()])
            elif "instruction" in f.attrs:
                instruction = _to_str(f.attrs["instruction"])
            else:
                instruction = None
    else:
        raise ValueError(f"{path}: unsupported raw episode type {path.suffix!r}; expected one of {RAW_SUFFIXES}")
    if "action" not in arrays:
        raise KeyError(f"{path}: missing 'action'")
    if not instruction:
        raise KeyError(f"{path}: missing 'instruction' string")
    for cam, img in images.items():
        if img.ndim != 4 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{path}: images/{cam} must be (T, H, W, 3) uint8, got {img.shape} {img.dtype}")
    for key, arr in arrays.items():
        if arr.ndim != 2:
            raise ValueError(f"{path}: {key} must be (T, dim), got shape {arr.shape}")
    return images, arrays, instruction


def raw_files(src: str | Path) -> list[Path]:
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"raw dataset folder {src} does not exist")
    files = sorted(p for p in src.iterdir() if p.suffix in RAW_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{src} holds no {'/'.join(RAW_SUFFIXES)} episode files")
    return files


def convert(
    src: str | Path,
    out: str | Path,
    fps: int = 10,
    robot_type: str = "unknown",
    use_videos: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert every episode file under ``src`` into the LeRobot dataset ``out``."""
    files = raw_files(src)
    images, arrays, _ = read_raw_episode(files[0])
    cameras = {cam: img.shape[1:3] for cam, img in images.items()}
    state_dim = arrays["state"].shape[1] if "state" in arrays else 0
    features = make_features(cameras, state_dim, arrays["action"].shape[1], use_videos=use_videos)
    with DatasetWriter(out, fps, features, robot_type, use_videos=use_videos, overwrite=overwrite) as writer:
        for path in files:
            images, arrays, instruction = read_raw_episode(path)
            layout = ({c: i.shape[1:3] for c, i in images.items()}, {k: a.shape[1] for k, a in arrays.items()})
            want = (cameras, {"action": features["action"]["shape"][0], **({"state": state_dim} if state_dim else {})})
            if layout != want:
                raise ValueError(f"{path}: layout {layout} differs from the first episode's {want}")
            frames = {f"observation.images.{c}": i for c, i in images.items()}
            if state_dim:
                frames["observation.state"] = arrays["state"]
            frames["action"] = arrays["action"]
            try:
                writer.add_episode(frames, task=instruction)
            except (KeyError, ValueError, TypeError) as e:
                raise type(e)(f"{path}: {e}") from e
    return Path(out)
