"""Client observation keys -> the policy's canonical observation, checked at the server boundary.

The server accepts LeRobot-style keys (``observation.images.<camera>``,
``observation.state``, ``prompt``) and, through an ``ObsMapping``, whatever keys a
robot's client already sends. openpi's LIBERO example, for instance, sends
``observation/image``, ``observation/wrist_image``, ``observation/state`` and
``prompt``; its mapping file reads::

    {"observation/image": "observation.images.image",
     "observation/wrist_image": "observation.images.wrist",
     "observation/state": "observation.state"}

Nested client dicts (openpi's ALOHA client sends ``{"images": {"cam_high": ...}}``) are
flattened with ``/`` first, so ``"images/cam_high"`` can be mapped too. Keys the mapping
and the policy do not know are ignored (robots send extras).

Images come channel-last (Hi, Wi, 3) or channel-first (3, Hi, Wi) (openpi's ALOHA client
sends (3, 224, 224)): the axis of size 3 tells which, and a shape with 3 at both ends is
refused as ambiguous. uint8, or float in [0, 1] (LeRobot's range), rounded to uint8.

A simulator whose cameras other stacks name differently states those names as an
``ObsMapping`` too, and looks a policy's camera up with :meth:`ObsMapping.camera`
(eval/suites/libero.py: LeRobot's ``image2`` is its ``wrist``).

The mapping is stored with the checkpoint (``obs_map.json``) or given on the command line
(``--obs-map FILE``, JSON or YAML); the command line wins. No torch import here: the
checks run on numpy arrays before anything reaches the batcher.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.serve.protocol import INFERENCE_DELAY, PREV_CHUNK, SEED

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
PROMPT_KEY = "prompt"
OBS_MAP_FILE = "obs_map.json"  # inside a checkpoint directory
IMAGE_LAYOUT = "(Hi, Wi, 3) or (3, Hi, Wi), uint8 or float in [0, 1]"  # what an image may be, as clients read it
# An instruction is a sentence, and the backbone reads its first 48 tokens or so: a longer one is refused before
# anything tokenizes it, so that one client's 16 MiB string cannot stall the batch every other client waits on.
MAX_PROMPT_BYTES = 4096


class ObservationError(ValueError):
    """A request whose keys, shapes or dtypes do not fit the policy; the message names the key."""


@dataclass(frozen=True)
class CanonicalObs:
    """One checked request, ready for batching."""

    images: list[np.ndarray]  # N x (Hi, Wi, 3) uint8, in the policy's camera order
    state: np.ndarray  # (S,) float32
    instruction: str
    seed: int | None = None
    prev_chunk: np.ndarray | None = None  # (K, D) float32: real-time chunking's previous remainder, raw units
    inference_delay: int = 0  # its leading actions played while this request is served

    @property
    def image_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(im.shape for im in self.images)


def flatten(obs: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """``{"images": {"top": x}}`` -> ``{"images/top": x}``; bytes keys become str."""
    out: dict[str, Any] = {}
    for k, v in obs.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if isinstance(v, Mapping):
            for kk, vv in flatten(v, sep).items():
                out[f"{key}{sep}{kk}"] = vv
        else:
            out[key] = v
    return out


@dataclass
class ObsMapping:
    """client key -> canonical key; canonical keys are also always accepted as they are."""

    keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        bad = {c: k for c, k in self.keys.items() if not _is_canonical(k)}
        if bad:
            raise ValueError(
                f"obs map: targets must be '{IMAGE_PREFIX}<camera>', '{STATE_KEY}' or '{PROMPT_KEY}'; got {bad}"
            )

    @classmethod
    def load(cls, path: str | Path) -> ObsMapping:
        """JSON or YAML file holding a flat ``{client_key: canonical_key}`` dict."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"obs map {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"obs map {path}: expected a flat mapping of client key -> canonical key, got {data!r}")
        return cls({str(k): v for k, v in data.items()})

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path | None, override: str | Path | None = None) -> ObsMapping:
        """The command-line file if given, else the checkpoint's ``obs_map.json``, else identity."""
        if override:
            return cls.load(override)
        if checkpoint and (Path(checkpoint) / OBS_MAP_FILE).is_file():
            return cls.load(Path(checkpoint) / OBS_MAP_FILE)
        return cls()

    @classmethod
    def from_dataset(cls, cameras: Iterable[tuple[str, str]], state_key: str | None) -> ObsMapping:
        """Dataset key -> canonical key, so a robot client that sends the training dataset's own keys
        (``observation.environment_state``, a camera stored under another name) is understood as is."""
        keys = {key: IMAGE_PREFIX + name for name, key in cameras if key != IMAGE_PREFIX + name}
        if state_key and state_key != STATE_KEY:
            keys[state_key] = STATE_KEY
        return cls(keys)

    def save(self, checkpoint: str | Path) -> Path:
        out = Path(checkpoint) / OBS_MAP_FILE
        out.write_text(json.dumps(self.keys, indent=2))
        return out

    def camera(self, name: str) -> str:
        """The canonical camera that a client's camera ``name`` stands for (``name`` itself when unmapped)."""
        target = self.keys.get(IMAGE_PREFIX + name, IMAGE_PREFIX + name)
        if not target.startswith(IMAGE_PREFIX):
            raise ValueError(f"obs map: camera {IMAGE_PREFIX + name!r} maps onto {target!r}, not a camera")
        return target[len(IMAGE_PREFIX) :]

    def client_key(self, canonical: str) -> str:
        """The client key that maps onto ``canonical`` (for error messages)."""
        return next((c for c, k in self.keys.items() if k == canonical), canonical)

    def to_canonical(
        self, obs: Any, cameras: list[str], state_dim: int, chunk: tuple[int, int] | None = None
    ) -> CanonicalObs:
        """Rename, then check every key, shape and dtype; raise ObservationError naming the key.

        ``chunk``: the policy's (H, D), against which the optional real-time chunking keys are checked."""
        if not isinstance(obs, Mapping):
            raise ObservationError(f"request: expected a dict (msgpack map) of observations, got {type(obs).__name__}")
        flat = flatten(obs)
        renamed = {self.keys.get(k, k): v for k, v in flat.items()}
        want = [IMAGE_PREFIX + c for c in cameras] + [STATE_KEY, PROMPT_KEY]
        missing = [k for k in want if k not in renamed]
        if missing:
            named = [k if self.client_key(k) == k else f"{self.client_key(k)} (-> {k})" for k in missing]
            raise ObservationError(f"missing key(s) {named}; received {sorted(flat)}")
        images = [self._image(renamed[IMAGE_PREFIX + c], IMAGE_PREFIX + c) for c in cameras]
        state = self._state(renamed[STATE_KEY], state_dim)
        prompt = self._prompt(renamed[PROMPT_KEY])
        seed = flat.get(SEED)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
                raise ObservationError(f"{SEED}: expected an integer, got {type(seed).__name__} {seed!r}")
            seed = int(seed)
        prev, delay = _rtc_inputs(flat, chunk)
        return CanonicalObs(
            images=images, state=state, instruction=prompt, seed=seed, prev_chunk=prev, inference_delay=delay
        )

    def _prompt(self, prompt: Any) -> str:
        if isinstance(prompt, np.ndarray) and prompt.dtype.kind == "U" and prompt.size == 1:
            prompt = str(prompt.item())
        if not isinstance(prompt, str | bytes):
            raise ObservationError(f"{self._name(PROMPT_KEY)}: expected a string, got {type(prompt).__name__}")
        size = len(prompt) if isinstance(prompt, bytes) else len(prompt.encode(errors="replace"))
        if size > MAX_PROMPT_BYTES:
            raise ObservationError(
                f"{self._name(PROMPT_KEY)}: {size} bytes exceeds the limit of {MAX_PROMPT_BYTES} bytes for an instruction"
            )
        return prompt.decode(errors="replace") if isinstance(prompt, bytes) else prompt

    def _name(self, canonical: str) -> str:
        client = self.client_key(canonical)
        return canonical if client == canonical else f"{client} (-> {canonical})"

    def _image(self, x: Any, key: str) -> np.ndarray:
        """One camera as a client sent it -> (Hi, Wi, 3) uint8; see the module docstring for what is accepted."""
        name = self._name(key)
        if not isinstance(x, np.ndarray):
            raise ObservationError(f"{name}: expected a numpy array {IMAGE_LAYOUT}, got {type(x).__name__}")
        x = _channels_last(x, name)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ObservationError(f"{name}: empty image, shape {x.shape} (as Hi, Wi, 3)")
        if x.dtype == np.uint8:
            return x
        if x.dtype.kind != "f":
            raise ObservationError(f"{name}: expected dtype uint8 or float in [0, 1], got {x.dtype.str} ({x.dtype})")
        if not np.isfinite(x).all():
            raise ObservationError(f"{name}: float image contains NaN or inf")
        if x.min() < 0.0 or x.max() > 1.0:
            raise ObservationError(
                f"{name}: float image values must lie in [0, 1], got values in [{x.min():.4g}, {x.max():.4g}]"
            )
        return np.round(x * 255.0).astype(np.uint8)

    def _state(self, x: Any, state_dim: int) -> np.ndarray:
        name = self._name(STATE_KEY)
        if isinstance(x, list | tuple):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise ObservationError(f"{name}: expected a numpy array (S={state_dim},), got {type(x).__name__}")
        if x.dtype.kind not in "fiu":
            raise ObservationError(
                f"{name}: expected a real numeric dtype (float or int), got {x.dtype.str} ({x.dtype})"
            )
        if x.shape != (state_dim,):
            raise ObservationError(f"{name}: expected (S={state_dim},), got {x.shape}")
        state = x.astype(np.float32)
        if not np.isfinite(state).all():
            raise ObservationError(f"{name}: contains NaN or inf: {state.tolist()}")
        return state


def _rtc_inputs(flat: dict, chunk: tuple[int, int] | None) -> tuple[np.ndarray | None, int]:
    """The optional real-time chunking keys, checked: (previous remainder (K, D) float32 or None, delay)."""
    prev, delay = flat.get(PREV_CHUNK), flat.get(INFERENCE_DELAY)
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | np.integer):
            raise ObservationError(f"{INFERENCE_DELAY}: expected an integer, got {type(delay).__name__} {delay!r}")
        if prev is None:
            raise ObservationError(f"{INFERENCE_DELAY} needs {PREV_CHUNK} (the previous chunk's unexecuted remainder)")
    if prev is None:
        return None, 0
    if chunk is None:
        raise ObservationError(
            f"{PREV_CHUNK}: the served policy cannot use real-time chunking (flow and diffusion heads only)"
        )
    horizon, action_dim = chunk
    if isinstance(prev, list | tuple):
        prev = np.asarray(prev)
    if not isinstance(prev, np.ndarray) or prev.dtype.kind not in "fiu":
        raise ObservationError(
            f"{PREV_CHUNK}: expected a numeric array (K <= {horizon}, D={action_dim}), got {prev!r:.80}"
        )
    if prev.ndim != 2 or prev.shape[1] != action_dim or prev.shape[0] > horizon:
        raise ObservationError(f"{PREV_CHUNK}: expected (K <= {horizon}, D={action_dim}), got {prev.shape}")
    prev = prev.astype(np.float32)
    if not np.isfinite(prev).all():
        raise ObservationError(f"{PREV_CHUNK}: contains NaN or inf")
    delay = 0 if delay is None else int(delay)
    if not 0 <= delay <= prev.shape[0]:
        raise ObservationError(
            f"{INFERENCE_DELAY}: expected 0..{prev.shape[0]} (the actions sent in {PREV_CHUNK}), got {delay}"
        )
    return prev, delay


def _channels_last(x: np.ndarray, name: str) -> np.ndarray:
    """(Hi, Wi, 3) as is, (3, Hi, Wi) transposed; the axis of size 3 decides, and must be only one end."""
    first, last = x.ndim == 3 and x.shape[0] == 3, x.ndim == 3 and x.shape[-1] == 3
    if first and last:
        raise ObservationError(
            f"{name}: ambiguous image shape {x.shape}: both the first and the last axis have size 3, so channels-first "
            "and channels-last cannot be told apart; send (Hi, Wi, 3) or (3, Hi, Wi) with Hi, Wi other than 3"
        )
    if not (first or last):
        raise ObservationError(f"{name}: expected 3 channels first or last, {IMAGE_LAYOUT}, got {x.shape}")
    return x.transpose(1, 2, 0) if first else x


def _is_canonical(key: str) -> bool:
    return key in (STATE_KEY, PROMPT_KEY) or (key.startswith(IMAGE_PREFIX) and len(key) > len(IMAGE_PREFIX))
