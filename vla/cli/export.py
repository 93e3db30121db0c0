"""`vla export CKPT --out DIR [--ema] [--from-zero] [--format vla|lerobot]`: a plain, self-contained policy checkpoint.

A training checkpoint (OUT/checkpoints/step_*/ or last/) already holds the consolidated
policy weights. ``--from-zero`` rebuilds them instead from the DeepSpeed ZeRO-2/3 shards
in ``training_state/`` (fp32 master weights), e.g. when only the shards survived.
``--ema`` exports the EMA weights (saved when train.ema_decay was set).
``--format lerobot`` writes a pi0, pi0.5 or SmolVLA policy as LeRobot 0.6.1 saves one (config.json,
model.safetensors, pre/post-processors with the statistics): ``PI0Policy.from_pretrained(DIR)`` loads it.
The policy must be one of those three (the recipes configs/experiments/*_finetune.yaml, or an import).
``--format onnx`` writes ONNX graphs and the numpy runner that runs them with onnxruntime alone
(vla/interop/onnx_export.py: flow, diffusion and regression heads; ``vla serve --onnx DIR`` serves them),
checked against the PyTorch policy on a random observation with the same noise (max_abs_diff in the report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vla.cli.common import friendly_errors


def export_checkpoint(ckpt: Path, out: Path, ema: bool = False, from_zero: bool = False) -> Path:
    from vla.models.policy import Policy, architecture_of

    ckpt = Path(ckpt).resolve()
    if ema:
        if not (ckpt / "ema").is_dir():
            raise FileNotFoundError(f"{ckpt} has no ema/ (train with --train.ema_decay=0.999 to keep EMA weights)")
        ckpt = ckpt / "ema"
    if not from_zero:
        policy = Policy.load(ckpt)
    else:
        import json

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state_dir = ckpt / "training_state"
        zero_dirs = [p for p in state_dir.glob("*") if p.is_dir() and any(p.glob("*optim_states.pt"))]
        if not zero_dirs:
            raise FileNotFoundError(f"{state_dir} holds no DeepSpeed ZeRO shards (*optim_states.pt)")
        sd = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=zero_dirs[0].name)
        config = Policy.load_config(ckpt)
        stats = json.loads((ckpt / "stats.json").read_text())
        policy = Policy(config, stats, architecture=architecture_of(ckpt))
        policy.load_weights(sd, source=state_dir, strict=True)
    return policy.save(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vla export", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a training checkpoint directory (step_* or last)")
    p.add_argument("--out", type=Path, required=True, help="where to write the plain policy checkpoint")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--from-zero", action="store_true", help="consolidate from the DeepSpeed ZeRO shards")
    p.add_argument(
        "--format", choices=["vla", "lerobot", "onnx"], default="vla", help="ours (default), LeRobot's, ONNX"
    )
    p.add_argument("--inference-steps", type=int, default=None, help="onnx: the fixed sampling steps (the config's)")
    p.add_argument("--no-verify", action="store_true", help="onnx: skip the parity check against PyTorch")
    p.add_argument("--vlm-model-name", default=None, help="lerobot, SmolVLA: the VLM LeRobot builds it on")
    a = p.parse_args(argv)
    with friendly_errors("export"):
        if a.format == "onnx":
            import json
            import tempfile

            from vla.interop.onnx_export import export_onnx

            with tempfile.TemporaryDirectory() as tmp:
                source = a.checkpoint
                if a.ema or a.from_zero:  # consolidate first, then convert
                    source = export_checkpoint(a.checkpoint, Path(tmp) / "policy", a.ema, a.from_zero)
                report = export_onnx(source, a.out, a.inference_steps, verify=not a.no_verify)
            print(json.dumps(report))
            return 0
        if a.format == "lerobot":
            import json
            import tempfile

            from vla.interop.lerobot_export import export_lerobot

            with tempfile.TemporaryDirectory() as tmp:
                source = a.checkpoint
                if a.ema or a.from_zero:  # consolidate first, then convert
                    source = export_checkpoint(a.checkpoint, Path(tmp) / "policy", a.ema, a.from_zero)
                report = export_lerobot(source, a.out, a.vlm_model_name)
            print(json.dumps(report))
            return 0
        path = export_checkpoint(a.checkpoint, a.out, a.ema, a.from_zero)
        print(f"exported {a.checkpoint} -> {path}")
    return 0
