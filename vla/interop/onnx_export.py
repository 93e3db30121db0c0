"""``vla export CKPT --format onnx --out DIR``: a policy as ONNX graphs that ``onnxruntime`` and numpy run.

The whole inference path, split where a graph cannot hold it (the documented split):

- ``prefix.onnx`` (flow, diffusion): images (B, N, 3, Hi, Wi) in [0, 1], image mask (B, N), the tokenized
  instruction (B, T) and its mask, the raw state (B, S) -> the prefix tensors (last hidden states, mask, the
  normalized state and, for the flow head, every layer's keys/values). Inside: the state's normalization and
  padding, the images' resize (any Hi, Wi) and normalization, the VLM. Exactly ``Policy.model_inputs`` and
  ``backbone.encode``: the graph is traced from them.
- ``step.onnx``: one denoising step's network on the prefix tensors: the flow head's velocity (x_t, t[, r]) or
  the diffusion head's denoiser output (x_t, integer timestep). The loop around it lives in the runner
  (``vla/serve/onnx_runner.py``, numpy): a fixed number of Euler steps, or DDIM's update with the
  scheduler's own coefficients (``alphas_cumprod`` at each timestep) saved here as arrays, so the step
  count is a choice of export (``--inference-steps``), not of the runner.
- ``chunk.onnx`` (regression): the whole chunk in one graph (one pass, no loop).

Around the graphs, in numpy: tokenizing the instruction (the ``tokenizers`` package with ``tokenizer.json``
saved here; the prompt rendered as the backbone does), the initial noise, the loop, and the actions'
unnormalization (the normalizer's own offset and scale, saved in ``onnx_policy.json``).

Not exported, each refused with the option that causes it: token heads (``bins``, ``fast``, ``vq``: their
decoding runs the VLM's KV cache token by token or round by round), mixture of horizons, prompts that read
the state (``pi05``), and diffusion samplers other than DDIM (their update keeps a multistep history).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla import types as T
from vla.models.backbones.common import MAX_CHARS_PER_TOKEN
from vla.models.backbones.prompt import PROMPTS
from vla.models.policy import Policy
from vla.serve import onnx_runner
from vla.types import Prefix
from vla.utils.atomic import atomic_dir

OPSET = 18  # Resize with antialias (the images' bicubic resize) needs 18
EXPORTED_HEADS = ("flow", "diffusion", "regression")
PREFIX = "prefix."  # the prefix graph's outputs (the step graph's inputs) are named prefix.hidden, prefix.keys.0 ...
PREFIX_INPUTS = ["images", "image_mask", T.TEXT_IDS, T.TEXT_MASK, "state"]


class OnnxExportError(ValueError):
    """The policy uses something the ONNX export does not cover; the message names the option."""


def check_exportable(policy: Policy) -> None:
    """Raise ``OnnxExportError`` naming the option when the policy cannot be exported."""
    cfg = policy.config
    head = cfg.head.type
    if head not in EXPORTED_HEADS:
        raise OnnxExportError(
            f"policy.head.type={head}: not exported to ONNX. Token heads decode through the VLM's KV cache one "
            f"token (or one round of discrete diffusion) at a time, a data-dependent loop the exported runner does "
            "not reproduce; export a flow, diffusion or regression policy"
        )
    if getattr(policy.head, "moh", None) is not None:
        raise OnnxExportError(f"policy.head.moh.horizons: the {head} head's mixture of horizons is not exported")
    name = prompt_name(policy)
    if name not in onnx_runner.PROMPTS:
        raise OnnxExportError(
            f"policy.backbone.prompt={name!r}: the ONNX runner renders only the prompts {sorted(onnx_runner.PROMPTS)}"
            " (a prompt that reads the discretized state is not exported)"
        )
    if head == "diffusion" and cfg.head.sampler != "ddim":
        raise OnnxExportError(
            f"policy.head.sampler={cfg.head.sampler!r}: the ONNX runner runs DDIM's update only; the weights are the "
            "same for every sampler, so load the checkpoint with --policy.head.sampler=ddim (or set it in its config)"
        )


def prompt_name(policy: Policy) -> str:
    return next(name for name, fmt in PROMPTS.items() if fmt is policy.backbone.prompt)


def prefix_names(policy: Policy) -> list[str]:
    """The prefix tensors a step graph reads, in order (keys/values only for heads reading every layer)."""
    layers = policy.backbone.num_layers if policy.head.needs_kv else 0
    kv = [f"keys.{i}" for i in range(layers)] + [f"values.{i}" for i in range(layers)]
    return [PREFIX + n for n in ["hidden", "mask", *kv, "state", "state_mask", "next_pos"]]


def flatten_prefix(prefix: Prefix, names: list[str]) -> tuple[torch.Tensor, ...]:
    out = []
    for name in names:
        field, _, layer = name.removeprefix(PREFIX).partition(".")
        value = getattr(prefix, field)
        out.append(value[int(layer)] if layer else value)
    return tuple(out)


def unflatten_prefix(tensors: tuple[torch.Tensor, ...], names: list[str]) -> Prefix:
    by = {n.removeprefix(PREFIX): t for n, t in zip(names, tensors, strict=True)}
    layers = sum(n.startswith("keys.") for n in by)
    return Prefix(
        by["hidden"],
        by["mask"],
        [by[f"keys.{i}"] for i in range(layers)] or None,
        [by[f"values.{i}"] for i in range(layers)] or None,
        by["state"],
        by["state_mask"],
        next_pos=by["next_pos"],
    )


def _observation(images, image_mask, text_ids, text_mask, state) -> dict:
    return {"images": images, "image_mask": image_mask, T.TEXT_IDS: text_ids, T.TEXT_MASK: text_mask, "state": state}


class PrefixGraph(nn.Module):
    """Raw observation (tokenized) -> the prefix tensors, through ``Policy._prefix_fn`` itself."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy, self.names = policy, prefix_names(policy)

    def forward(self, images, image_mask, text_ids, text_mask, state):
        prefix_fn, _ = self.policy._prefix_fn(_observation(images, image_mask, text_ids, text_mask, state))
        return flatten_prefix(prefix_fn(), self.names)


class FlowStepGraph(nn.Module):
    """(x_t, t, r, prefix tensors) -> the flow head's velocity (B, H, D); r matters under ``mean_flow`` only."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.head, self.names = policy.head, prefix_names(policy)

    def forward(self, x, t, r, *prefix):
        r = r if self.head.cfg.mean_flow else None
        return self.head.velocity(unflatten_prefix(prefix, self.names), x, t, r)


class DiffusionStepGraph(nn.Module):
    """(x_t, integer timesteps (B,), prefix tensors) -> the denoiser's output (B, H, D)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.head, self.names = policy.head, prefix_names(policy)

    def forward(self, x, timestep, *prefix):
        return self.head.denoise(unflatten_prefix(prefix, self.names), x, timestep)


class ChunkGraph(nn.Module):
    """Regression: raw observation (tokenized) -> the normalized chunk (B, H, D) in one pass."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, images, image_mask, text_ids, text_mask, state):
        prefix_fn, _ = self.policy._prefix_fn(_observation(images, image_mask, text_ids, text_mask, state))
        return self.policy.head.sample(prefix_fn, {})


def example_inputs(policy: Policy, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random tokenized observation of ``batch`` samples at the model's image size (export and checks)."""
    g = torch.Generator().manual_seed(seed)
    cfg, bb = policy.config, policy.backbone
    size = bb.image_size
    ids, mask = bb.text_ids(bb.prompts(["pick up the red block"] * batch))
    return {
        "images": torch.rand(batch, len(cfg.cameras), 3, size + 8, size + 4, generator=g),
        "image_mask": torch.ones(batch, len(cfg.cameras), dtype=torch.bool),
        T.TEXT_IDS: torch.tensor(ids),
        T.TEXT_MASK: torch.tensor(mask),
        "state": torch.randn(batch, cfg.state_dim, generator=g),
    }


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str], dynamic):
    program = torch.onnx.export(
        module.eval(),
        args,
        dynamo=True,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic,
        opset_version=OPSET,
        optimize=True,
        verify=False,
        verbose=False,  # the exporter prints its progress to stdout otherwise, into `vla export`'s JSON report
    )
    program.save(str(path))


def _dims():
    batch = torch.export.Dim("batch", min=1, max=1024)
    height, width = torch.export.Dim("height", min=8, max=4096), torch.export.Dim("width", min=8, max=4096)
    return batch, height, width


def _observation_shapes(batch, height, width) -> tuple:
    return ({0: batch, 3: height, 4: width}, {0: batch}, {0: batch}, {0: batch}, {0: batch})


def export_onnx(
    checkpoint: str | Path, out: str | Path, inference_steps: int | None = None, verify: bool = True
) -> dict:
    """Write the ONNX policy of ``checkpoint`` to ``out``; return a report (graphs, steps, parity on a random
    observation when ``verify``: max |ONNX - PyTorch| over the chunk, same noise)."""
    policy = Policy.load(checkpoint, "cpu")
    return export_policy(policy, out, inference_steps, verify, source=Path(checkpoint))


@torch.no_grad()
def export_policy(
    policy: Policy,
    out: str | Path,
    inference_steps: int | None = None,
    verify: bool = True,
    source: Path | None = None,
) -> dict:
    """Export ``policy`` (cast to fp32 in place: the parity target is fp32) to ``out``; see ``export_onnx``."""
    check_exportable(policy)
    policy = policy.float().eval()
    cfg, bb = policy.config, policy.backbone
    head = cfg.head.type
    default_steps = cfg.head.num_inference_steps if head == "diffusion" else getattr(cfg.head, "num_steps", None)
    steps = inference_steps or cfg.inference_steps or default_steps  # as predict_chunk and the head pick them
    obs = example_inputs(policy)
    args = tuple(obs[k] for k in PREFIX_INPUTS)
    batch, height, width = _dims()
    obs_shapes = _observation_shapes(batch, height, width)
    names = prefix_names(policy)
    loop: dict = {"kind": "none"}
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        if head == "regression":
            _export(ChunkGraph(policy), args, tmp / onnx_runner.CHUNK_GRAPH, PREFIX_INPUTS, ["chunk"], obs_shapes)
        else:
            prefix_graph = PrefixGraph(policy)
            _export(prefix_graph, args, tmp / onnx_runner.PREFIX_GRAPH, PREFIX_INPUTS, names, obs_shapes)
            prefix = prefix_graph(*args)
            b = args[0].shape[0]
            x = torch.randn(b, cfg.chunk_size, cfg.model_action_dim)
            prefix_shapes = tuple({0: batch} for _ in names)
            chunk_shape = {0: batch}
            if head == "flow":
                t = torch.full((b,), 0.5)
                _export(
                    FlowStepGraph(policy),
                    (x, t, t * 0.5, *prefix),
                    tmp / onnx_runner.STEP_GRAPH,
                    ["x", "t", "r", *names],
                    ["velocity"],
                    (chunk_shape, {0: batch}, {0: batch}, prefix_shapes),  # *prefix: one nested tuple
                )
                loop = {"kind": "euler", "num_steps": int(steps), "mean_flow": bool(cfg.head.mean_flow)}
            else:
                _export(
                    DiffusionStepGraph(policy),
                    (x, torch.full((b,), 3, dtype=torch.long), *prefix),
                    tmp / onnx_runner.STEP_GRAPH,
                    ["x", "timestep", *names],
                    ["model_output"],
                    (chunk_shape, {0: batch}, prefix_shapes),
                )
                loop = ddim_loop(cfg.head, int(steps))
        bb.tokenizer.backend_tokenizer.save(str(tmp / onnx_runner.TOKENIZER_FILE))
        actions = policy.normalizers[0].features["actions"]
        meta = {
            "format_version": onnx_runner.FORMAT_VERSION,
            "head": head,
            "cameras": list(cfg.cameras),
            "state_dim": cfg.state_dim,
            "action_dim": cfg.action_dim,
            "model_action_dim": cfg.model_action_dim,
            "chunk_size": cfg.chunk_size,
            "n_action_steps": cfg.n_action_steps,
            "temporal_ensemble_coeff": cfg.temporal_ensemble_coeff,
            "adaptive_ensemble_alpha": cfg.adaptive_ensemble_alpha,
            "fps": cfg.fps,
            "image_size": bb.image_size,
            "text": {
                "prompt": prompt_name(policy),
                "max_text_tokens": bb.cfg.max_text_tokens,
                "max_chars": MAX_CHARS_PER_TOKEN * bb.cfg.max_text_tokens,
                "prefix_ids": list(bb.text_prefix_ids),
                "pad_id": int(bb.pad_id),
            },
            "prefix_outputs": names if head != "regression" else [],
            "loop": loop,
            # the normalizer's own float32 values: chunk * scale + offset is its unnormalize, bit for bit
            "actions_unnormalize": {"scale": actions.scale.tolist(), "offset": actions.offset.tolist()},
        }
        (tmp / onnx_runner.META_FILE).write_text(json.dumps(meta, indent=2))
        shutil.copy(onnx_runner.__file__, tmp / "onnx_runner.py")  # DIR runs on its own: no vla package needed
        if source is not None and (source / "obs_map.json").is_file():
            shutil.copy(source / "obs_map.json", tmp / "obs_map.json")
    report = {"out": str(out), "head": head, "graphs": sorted(p.name for p in Path(out).glob("*.onnx"))}
    report["loop"] = {k: v for k, v in loop.items() if k in ("kind", "num_steps", "mean_flow")}
    if verify:
        report["max_abs_diff"] = parity(policy, out, steps)
    return report


def ddim_loop(head_cfg, steps: int) -> dict:
    """DDIM's timesteps and the ``alphas_cumprod`` its update reads at each (diffusers' own values, float32)."""
    scheduler = head_cfg.make_scheduler("ddim")
    if scheduler.init_noise_sigma != 1.0:
        raise OnnxExportError(f"DDIM with init_noise_sigma={scheduler.init_noise_sigma}: not exported")
    scheduler.set_timesteps(steps)
    jump = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    timesteps = [int(t) for t in scheduler.timesteps]
    alphas = scheduler.alphas_cumprod
    prev = [alphas[t - jump] if t - jump >= 0 else scheduler.final_alpha_cumprod for t in timesteps]
    return {
        "kind": "ddim",
        "num_steps": steps,
        "timesteps": timesteps,
        "alpha_prod": [float(alphas[t]) for t in timesteps],
        "alpha_prod_prev": [float(a) for a in prev],
        "prediction_type": head_cfg.prediction_type,
        "clip_sample": bool(head_cfg.clip_sample),
        "clip_sample_range": float(head_cfg.clip_sample_range),
    }


def parity(policy: Policy, directory: str | Path, steps: int | None, seed: int = 0) -> float:
    """max |ONNX runner - Policy.predict_chunk| on a random observation with the same noise (raw units)."""
    runner = onnx_runner.OnnxPolicy(directory)
    g = torch.Generator().manual_seed(seed)
    cfg = policy.config
    images = torch.rand(2, len(cfg.cameras), 3, policy.backbone.image_size, policy.backbone.image_size, generator=g)
    state = torch.randn(2, cfg.state_dim, generator=g)
    noise = torch.randn(2, cfg.chunk_size, cfg.model_action_dim, generator=g)
    instruction = ["put the bowl on the plate", "open the drawer"]
    expected = policy.predict_chunk(
        {"images": images, "state": state, "instruction": instruction}, num_steps=steps, noise=noise
    )
    got = runner.predict_chunk(
        {"images": images.numpy(), "state": state.numpy(), "instruction": instruction}, noise=noise.numpy()
    )
    return float(np.abs(got - expected.numpy()).max())
