"""Run an exported ONNX policy (``vla export CKPT --format onnx --out DIR``) with onnxruntime and numpy only.

No torch and no vla import: ``vla export`` copies this file into DIR, so a robot computer runs a policy with
``pip install onnxruntime numpy tokenizers`` and the folder alone::

    import sys; sys.path.insert(0, "DIR")
    from onnx_runner import OnnxPolicy
    policy = OnnxPolicy("DIR")
    chunk = policy.predict_chunk({"images": images, "state": state, "instruction": ["put the bowl on the plate"]})
    # images (B, N, 3, Hi, Wi) uint8 or float in [0, 1], cameras in policy.config.cameras order; state (B, S)
    # raw robot units; chunk (B, H, D) raw robot units

or ``python DIR/onnx_runner.py DIR`` for a smoke run on a random observation. ``tokenizers`` (a Rust wheel of a
few MB, no torch) turns the instruction into the backbone's token ids with the ``tokenizer.json`` saved in DIR;
callers that tokenize elsewhere pass ``text_ids``/``text_mask`` in the observation instead of ``instruction``.

What runs where (see ``vla/interop/onnx_export.py``): ``prefix.onnx`` (state normalization, image resize and
normalization, the VLM), ``step.onnx`` once per step of a fixed-length loop here (flow: Euler from t = 1 to 0;
diffusion: DDIM's update with the scheduler's coefficients saved in ``onnx_policy.json``), or ``chunk.onnx``
alone (regression); then the actions' unnormalization (the normalizer's offset and scale) here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META_FILE = "onnx_policy.json"
TOKENIZER_FILE = "tokenizer.json"
PREFIX_GRAPH, STEP_GRAPH, CHUNK_GRAPH = "prefix.onnx", "step.onnx", "chunk.onnx"

# The backbone's prompt formats (vla/models/backbones/prompt.py) that do not read the state, by name.
PROMPTS = {
    "task": lambda task: task,
    "newline": lambda task: task if task.endswith("\n") else task + "\n",
}


@dataclass(frozen=True)
class OnnxPolicyConfig:
    """What a server or an action queue needs to know of the exported policy (names as in PolicyConfig)."""

    head: str
    cameras: list[str]
    state_dim: int
    action_dim: int
    model_action_dim: int
    chunk_size: int
    n_action_steps: int
    fps: float
    image_size: int
    inference_steps: int | None
    temporal_ensemble_coeff: float | None = None
    adaptive_ensemble_alpha: float | None = None


class OnnxPolicy:
    """The exported graphs and the numpy around them: ``predict_chunk`` as ``Policy.predict_chunk`` does it."""

    supports_rtc = False  # guided RTC needs a backward pass through the head; the export has none

    def __init__(self, directory: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.directory} is not an ONNX policy: no {META_FILE} (vla export --format onnx)"
            )
        self.meta = meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')}, this runner reads {FORMAT_VERSION}"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        graphs = [CHUNK_GRAPH] if meta["head"] == "regression" else [PREFIX_GRAPH, STEP_GRAPH]
        self.sessions = {g: ort.InferenceSession(str(self.directory / g), options, providers=providers) for g in graphs}
        self.inputs = {g: [i.name for i in s.get_inputs()] for g, s in self.sessions.items()}
        self.loop = meta["loop"]
        self.config = OnnxPolicyConfig(
            head=meta["head"],
            cameras=list(meta["cameras"]),
            state_dim=meta["state_dim"],
            action_dim=meta["action_dim"],
            model_action_dim=meta["model_action_dim"],
            chunk_size=meta["chunk_size"],
            n_action_steps=meta["n_action_steps"],
            fps=meta["fps"],
            image_size=meta["image_size"],
            inference_steps=self.loop.get("num_steps"),
            temporal_ensemble_coeff=meta["temporal_ensemble_coeff"],
            adaptive_ensemble_alpha=meta["adaptive_ensemble_alpha"],
        )
        unnorm = meta["actions_unnormalize"]
        self.scale = np.asarray(unnorm["scale"], np.float32)
        self.offset = np.asarray(unnorm["offset"], np.float32)
        self._tokenizer = None

    # ---- the instruction ---------------------------------------------------------------------------
    def tokenize(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Instructions -> (B, T) int64 ids and (B, T) bool mask, as the backbone's ``text_ids`` makes them."""
        text = self.meta["text"]
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
            self._tokenizer.encode_special_tokens = True  # "<image>" typed in an instruction is text
        render = PROMPTS[text["prompt"]]
        prompts = [render(task[: text["max_chars"]]) for task in instructions]
        width = text["max_text_tokens"]
        ids = np.full((len(prompts), width), text["pad_id"], np.int64)
        mask = np.zeros((len(prompts), width), bool)
        for i, enc in enumerate(self._tokenizer.encode_batch(prompts, add_special_tokens=False)):
            row = (text["prefix_ids"] + enc.ids)[:width]
            ids[i, : len(row)], mask[i, : len(row)] = row, True
        return ids, mask

    # ---- inference ---------------------------------------------------------------------------------
    def predict_chunk(self, observation: dict, seed: int | None = None, noise: np.ndarray | None = None) -> np.ndarray:
        """Observation (images (B, N, 3, Hi, Wi) uint8 or float in [0, 1], state (B, S) raw, instruction list of
        B strings or text_ids/text_mask) -> chunk (B, H, D) float32 raw units.

        ``noise`` (B, H, model_action_dim) is the initial noise (the same as PyTorch's to compare chunks); else
        it is drawn from numpy's generator seeded with ``seed`` (not torch's stream: a seed gives a
        reproducible chunk here, not PyTorch's chunk for that seed)."""
        feeds = self._observation_feeds(observation)
        b = feeds["state"].shape[0]
        if self.config.head == "regression":
            chunk = self._run(CHUNK_GRAPH, feeds)[0]
        else:
            shape = (b, self.config.chunk_size, self.config.model_action_dim)
            if noise is None:
                noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
            noise = np.asarray(noise, np.float32)
            if noise.shape != shape:
                raise ValueError(f"noise: expected shape {shape}, got {noise.shape}")
            prefix = dict(zip(self.meta["prefix_outputs"], self._run(PREFIX_GRAPH, feeds), strict=True))
            chunk = self._euler(noise, prefix) if self.loop["kind"] == "euler" else self._ddim(noise, prefix)
        chunk = np.asarray(chunk, np.float32)[..., : self.config.action_dim]  # padded dims are not the robot's
        return chunk * self.scale + self.offset

    def _observation_feeds(self, observation: dict) -> dict[str, np.ndarray]:
        images = np.asarray(observation["images"])
        images = (
            images.astype(np.float32) / np.float32(255.0) if images.dtype == np.uint8 else images.astype(np.float32)
        )
        if images.ndim != 5 or images.shape[1:3] != (len(self.config.cameras), 3):
            raise ValueError(
                f"images: expected (B, {len(self.config.cameras)}, 3, Hi, Wi) for cameras {self.config.cameras}, "
                f"got {images.shape}"
            )
        state = np.asarray(observation["state"], np.float32)
        if state.shape != (images.shape[0], self.config.state_dim):
            raise ValueError(f"state: expected ({images.shape[0]}, {self.config.state_dim}), got {state.shape}")
        if "text_ids" in observation:
            ids, mask = np.asarray(observation["text_ids"], np.int64), np.asarray(observation["text_mask"], bool)
        else:
            if len(observation["instruction"]) != images.shape[0]:
                raise ValueError(
                    f"instruction: expected {images.shape[0]} strings, got {len(observation['instruction'])}"
                )
            ids, mask = self.tokenize(list(observation["instruction"]))
        image_mask = observation.get("image_mask")
        image_mask = np.ones(images.shape[:2], bool) if image_mask is None else np.asarray(image_mask, bool)
        return {"images": images, "image_mask": image_mask, "text_ids": ids, "text_mask": mask, "state": state}

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, {k: feeds[k] for k in self.inputs[graph]})

    def _euler(self, x: np.ndarray, prefix: dict) -> np.ndarray:
        """The flow head's ``sample``: Euler from t = 1 (noise) to t = 0 with dt = -1/steps, float32 like torch."""
        steps, b = self.loop["num_steps"], x.shape[0]
        dt = -1.0 / steps
        for i in range(steps):
            t = np.full(b, 1.0 + i * dt, np.float32)
            r = np.full(b, max(1.0 + (i + 1) * dt, 0.0), np.float32)  # MeanFlow's jump end (unused otherwise)
            v = self._run(STEP_GRAPH, {**prefix, "x": x, "t": t, "r": r})[0]
            x = x + np.float32(dt) * v
        return x

    def _ddim(self, x: np.ndarray, prefix: dict) -> np.ndarray:
        """diffusers' ``DDIMScheduler.step`` (eta = 0) with its alphas_cumprod, operation for operation in float32."""
        loop, b = self.loop, x.shape[0]
        bound = np.float32(loop["clip_sample_range"])
        for t, a, a_prev in zip(loop["timesteps"], loop["alpha_prod"], loop["alpha_prod_prev"], strict=True):
            out = self._run(STEP_GRAPH, {**prefix, "x": x, "timestep": np.full(b, t, np.int64)})[0]
            a, a_prev = np.float32(a), np.float32(a_prev)
            beta = np.float32(1) - a
            if loop["prediction_type"] == "epsilon":
                x0, eps = (x - beta**0.5 * out) / a**0.5, out
            elif loop["prediction_type"] == "sample":
                x0 = out
                eps = (x - a**0.5 * x0) / beta**0.5
            else:  # v_prediction
                x0 = a**0.5 * x - beta**0.5 * out
                eps = a**0.5 * out + beta**0.5 * x
            if loop["clip_sample"]:
                x0 = np.clip(x0, -bound, bound)
            x = a_prev**0.5 * x0 + (np.float32(1) - a_prev - np.float32(0)) ** 0.5 * eps
        return x

    # ---- what the server and the action queue read --------------------------------------------------
    def use_ensembling(self, temporal_coeff: float | None = None, adaptive_alpha: float | None = None) -> None:
        """Advertise ensembled play (a new chunk every step), as ``Policy.use_ensembling``."""
        self.config = dataclasses.replace(
            self.config,
            n_action_steps=1,
            temporal_ensemble_coeff=temporal_coeff,
            adaptive_ensemble_alpha=adaptive_alpha,
        )


def main(argv: list[str]) -> int:
    """``python onnx_runner.py DIR [--iters N]``: one chunk on a random observation, and its latency."""
    import argparse
    import time

    p = argparse.ArgumentParser(prog="onnx_runner", description=main.__doc__)
    p.add_argument("directory")
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args(argv)
    policy = OnnxPolicy(a.directory)
    cfg = policy.config
    rng = np.random.default_rng(0)
    obs = {
        "images": rng.integers(0, 256, (1, len(cfg.cameras), 3, cfg.image_size, cfg.image_size), dtype=np.uint8),
        "state": rng.standard_normal((1, cfg.state_dim), dtype=np.float32),
        "instruction": ["pick up the red block"],
    }
    times = []
    for i in range(a.iters):
        start = time.perf_counter()
        chunk = policy.predict_chunk(obs, seed=i)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "chunk_shape": list(chunk.shape),
                "median_ms": 1000 * float(np.median(times)),
                "first": chunk[0, 0].tolist(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
