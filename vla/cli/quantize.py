"""`vla quantize CKPT --out OUT --scheme int8-weight|int8-dynamic|fp8 [--dataset DIR]`: a quantized policy checkpoint.

Post-training quantization with torchao (vla/models/quantize.py): the VLM's language-model and vision
linear layers and the action head's MLPs are quantized; the head's attention projections stay in
floating point unless --head-attention (QuantVLA: quantizing the whole head breaks long tasks).
OUT is a normal checkpoint: `vla eval --checkpoint OUT`, `vla serve --checkpoint OUT` and
`vla bench infer --weights OUT` load it. The schemes scale activations dynamically (or not at all),
so there is no calibration pass.

The report (printed, and OUT/quantization_report.json): the layers quantized, the sizes (the weights
file on disk, float and quantized; the model in memory, float and quantized), the schemes that cannot
run on this device and why, and with --dataset the mean absolute action error of the quantized policy
against the float one on the frames `vla eval --dataset` scores (same frames, same noise), in robot
units, beside both policies' error against the recorded actions.

A scheme that cannot run here (fp8 on a CPU) is refused with the reason, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vla.cli.common import friendly_errors

REPORT_FILE = "quantization_report.json"


def _mb(n: int) -> float:
    return round(n / 2**20, 3)


def chunk_error(reference: dict, candidate: dict) -> dict:
    """Masked action errors between two ``predict_frames`` results (same frames), robot units."""
    w = reference["mask"]
    diff = (candidate["pred"] - reference["pred"]).abs() * w
    return {
        "frames": len(reference["frames"]),
        "mae_vs_float": float(diff.sum() / w.sum()),
        "max_abs_vs_float": float(diff.max()),
        "mae_float_vs_data": float(((reference["pred"] - reference["target"]).abs() * w).sum() / w.sum()),
        "mae_quantized_vs_data": float(((candidate["pred"] - candidate["target"]).abs() * w).sum() / w.sum()),
    }


def quantize_checkpoint(
    checkpoint: Path,
    out: Path,
    cfg,
    dataset: str | None = None,
    frames: int = 64,
    device: str = "cpu",
) -> dict:
    """Quantize ``checkpoint`` into ``out``; the report (see the module docstring)."""
    import torch

    from vla.config import to_dict
    from vla.models.policy import WEIGHTS_FILE, Policy
    from vla.models.quantize import known_schemes, model_bytes, quantize_policy, save_quantized, scheme
    from vla.utils.device import resolve_device

    dev = resolve_device(device)
    unavailable = {name: r for name in known_schemes() if (r := scheme(name).unavailable(dev))}
    policy = Policy.load(checkpoint, device=dev)
    memory_float = model_bytes(policy)
    reference = None
    if dataset:
        from eval.offline import predict_frames

        reference = predict_frames(policy, dataset, frames)
    layers = quantize_policy(policy, cfg)
    out = save_quantized(policy, cfg, layers, out)
    reloaded = Policy.load(out, device=dev)  # what `vla eval` / `vla serve` will run
    report = {
        "checkpoint": str(checkpoint),
        "out": str(out),
        "scheme": cfg.scheme.type,
        "config": to_dict(cfg),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "quantized_layers": len(layers),
        "calibration": "none: every scheme here computes activation scales at each call or keeps activations float",
        "size_mb": {
            "disk_float": _mb((Path(checkpoint) / WEIGHTS_FILE).stat().st_size),
            "disk_quantized": _mb((out / WEIGHTS_FILE).stat().st_size),
            "memory_float": _mb(memory_float),
            "memory_quantized": _mb(model_bytes(reloaded)),
        },
        "unavailable_here": unavailable,
    }
    if reference is not None:
        from eval.offline import predict_frames

        report["action_error"] = {
            "dataset": str(dataset),
            **chunk_error(reference, predict_frames(reloaded, dataset, frames)),
        }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str]) -> int:
    from vla.models.quantize import QuantizeConfig, SchemeUnavailable, known_schemes, scheme

    p = argparse.ArgumentParser(prog="vla quantize", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a policy checkpoint (float)")
    p.add_argument("--out", type=Path, required=True, help="where to write the quantized checkpoint")
    p.add_argument("--scheme", required=True, choices=known_schemes())
    groups = QuantizeConfig()
    for name, what in (
        ("lm", "the language model's linear layers"),
        ("vision", "the vision tower's and projector's linear layers"),
        ("head-mlp", "the action head's MLPs"),
        ("head-attention", "the action head's attention projections (QuantVLA keeps them float)"),
    ):
        default = getattr(groups, name.replace("-", "_"))
        p.add_argument(
            f"--{name}",
            action=argparse.BooleanOptionalAction,
            default=default,
            help=f"quantize {what} (default: {'on' if default else 'off'})",
        )
    p.add_argument("--dataset", default=None, help="a LeRobot dataset: action error vs the float policy on its frames")
    p.add_argument("--frames", type=int, default=64, help="with --dataset: frames scored (evenly spaced)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (fp8 needs a GPU with compute capability 8.9+)")
    a = p.parse_args(argv)
    cfg = QuantizeConfig(
        scheme=scheme(a.scheme), lm=a.lm, vision=a.vision, head_mlp=a.head_mlp, head_attention=a.head_attention
    )
    if not cfg.groups():
        p.error("nothing to quantize: every group is off")
    with friendly_errors("quantize"):
        try:
            report = quantize_checkpoint(a.checkpoint, a.out, cfg, a.dataset, a.frames, a.device)
        except SchemeUnavailable as e:
            print(f"vla quantize: skipped: {e}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
        print(f"quantized {a.checkpoint} -> {a.out} ({report['quantized_layers']} layers, {a.scheme})")
    return 0
