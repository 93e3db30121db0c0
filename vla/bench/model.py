"""Training throughput and inference latency of a policy configuration, on synthetic inputs.

The inputs match the peer benchmark (scripts/peers/lerobot_bench.py): N cameras at
224 px, an 8-dim state, a 7-dim action, 50-step chunks, 48 language tokens, bf16.
``pi0``, ``pi05`` and ``smolvla`` build those exact architectures at full size (the policy
section of ``configs/experiments/<scale>_finetune.yaml``), with random weights; ``weights``
starts from a checkpoint instead (ours, or LeRobot's, imported on the fly), so that with
``--same-weights`` the peer and we time one model with the same numbers in two stacks.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import torch
import yaml

import vla.models.backbones  # noqa: F401
import vla.models.heads  # noqa: F401
from vla.models.backbones.base import BackboneConfig
from vla.models.compile import compile_for_inference, compile_regions
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig
from vla.models.quantize import model_bytes
from vla.utils.device import resolve_device

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "experiments"
SCALES = ("tiny", "pi0", "pi05", "smolvla")  # tiny: a tiny SmolVLM with the flow head; others: *_finetune.yaml


@dataclass
class ModelBenchConfig:
    scale: str = "tiny"  # tiny | pi0 | pi05 | smolvla
    head: str | None = None  # override the scale's head type
    head_options: dict[str, str] = field(default_factory=dict)  # head config fields, e.g. {"decoding": "diffusion"}
    weights: str | None = None  # start from this checkpoint (ours, or a LeRobot pi0/pi0.5/SmolVLA folder)
    quantize: str | None = None  # then quantize it with this scheme (vla/models/quantize.py, its default layers)
    processor: str | None = None  # weights from LeRobot: the VLM's processor folder (default: a synthetic one)
    cameras: int = 2
    image_size: int = 224
    text_tokens: int = 48
    chunk: int = 50
    state_dim: int = 8
    action_dim: int = 7
    dtype: str = "auto"  # bf16 | fp32 | auto (bf16 on a GPU, fp32 on CPU)
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    steps: int = 10
    warmup: int = 3
    inference_steps: int = 10
    infer_iters: int = 20
    gradient_checkpointing: bool = False
    compile: bool = False
    device: str = "auto"


def scale_config(cfg: ModelBenchConfig, dtype: torch.dtype) -> PolicyConfig:
    """The policy of a scale: its recipe's architecture, the benchmark's robot (cameras, dims, chunk)."""
    dtype_name = str(dtype).removeprefix("torch.")  # created in its dtype: no fp32 copy of 3B weights first
    if cfg.scale == "tiny":
        backbone = BackboneConfig.get_choice_class("smolvlm")(preset="tiny", max_text_tokens=cfg.text_tokens)
        pcfg = PolicyConfig(backbone=backbone, head=HeadConfig.get_choice_class("flow")())
    elif cfg.scale in SCALES:
        from vla.config import parse_config
        from vla.train.config import TrainConfig

        pcfg = parse_config(TrainConfig, ["--config", str(RECIPES / f"{cfg.scale}_finetune.yaml")]).policy
    else:
        raise KeyError(f"unknown scale {cfg.scale!r}; known: {', '.join(SCALES)}")
    if cfg.head:
        pcfg.head = HeadConfig.get_choice_class(cfg.head)()
    pcfg.head = with_head_options(pcfg.head, cfg.head_options)
    pcfg.backbone.dtype = dtype_name
    pcfg.backbone.gradient_checkpointing = cfg.gradient_checkpointing
    pcfg.chunk_size = pcfg.n_action_steps = cfg.chunk
    pcfg.inference_steps = cfg.inference_steps
    pcfg.cameras = [f"cam{i}" for i in range(cfg.cameras)]
    pcfg.state_dim, pcfg.action_dim = cfg.state_dim, cfg.action_dim
    return pcfg


def with_head_options(head: HeadConfig, options: dict[str, str], prefix: str = "") -> HeadConfig:
    """``head`` with ``options`` (strings, parsed to each field's type) set; the config's own checks run again.
    A dotted key sets a field of a nested config (``moh.horizons=[5,10]``)."""
    flat, nested = {}, {}
    for key, value in options.items():
        first, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(first, {})[rest] = value
        else:
            flat[key] = value
    names = {f.name for f in dataclasses.fields(head)}
    unknown = sorted((set(flat) | set(nested)) - names)
    if unknown:
        what = f"the {head.type} head" if not prefix else f"{prefix.rstrip('.')}"
        raise ValueError(f"--head-option {prefix}{unknown[0]}: {what} has no such option; it has {sorted(names)}")
    hints = typing.get_type_hints(type(head))
    # YAML first, as a recipe would spell the value: "[5,10]" is a list, "true" a bool, "diffusion" a string
    changes = {k: draccus.decode(hints[k], yaml.safe_load(v)) for k, v in flat.items()}
    for key, sub in nested.items():
        if not dataclasses.is_dataclass(getattr(head, key)):
            raise ValueError(f"--head-option {prefix}{key}.{next(iter(sub))}: {prefix}{key} is not a nested config")
        changes[key] = with_head_options(getattr(head, key), sub, f"{prefix}{key}.")
    return dataclasses.replace(head, **changes)


def build_policy(cfg: ModelBenchConfig, device: torch.device) -> Policy:
    """The scale's policy with random weights, or ``cfg.weights``; the benchmark's robot follows the policy."""
    dtype = resolve_dtype(cfg.dtype, device)
    with torch.device(device):  # built straight on the device: minutes faster than CPU-then-move at 3B
        if cfg.weights and (Path(cfg.weights) / "stats.json").is_file():
            policy = Policy.load(cfg.weights, device=device)
        elif cfg.weights:
            from vla.interop.lerobot_import import policy_from_lerobot

            policy, _ = policy_from_lerobot(cfg.weights, cfg.processor or synthetic_processor(cfg.weights))
        else:
            policy = Policy(scale_config(cfg, dtype))
    pc = policy.config
    cfg.cameras, cfg.state_dim, cfg.action_dim, cfg.chunk = len(pc.cameras), pc.state_dim, pc.action_dim, pc.chunk_size
    fit_tokenizer_on_benchmark_chunks(policy, cfg)
    cfg.image_size = policy.backbone.image_size
    policy = policy.to(device=device, dtype=dtype)
    if cfg.quantize:  # after the cast, so the quantized layers compute in the benchmark's dtype
        from vla.models.quantize import QuantizeConfig, quantize_policy, scheme

        quantize_policy(policy, QuantizeConfig(scheme=scheme(cfg.quantize)))
    return policy


def fit_tokenizer_on_benchmark_chunks(policy: Policy, cfg: ModelBenchConfig) -> None:
    """FAST and VQ learn their vocabulary from data, which a random-weight benchmark has none of: fit it on
    chunks drawn like the timed batches' actions (``synthetic_batch``), so the token counts timed are the ones
    those batches produce. A checkpoint's own tokenizer is left alone."""
    tokenizer = getattr(policy.head, "tokenizer", None)
    if tokenizer is None or tokenizer.is_fitted:
        return
    g = torch.Generator().manual_seed(0)
    chunks = torch.randn(256, cfg.chunk, cfg.action_dim, generator=g).numpy()
    policy.head.fit_tokenizer(chunks, normalization=policy.config.action_norm)


def synthetic_processor(lerobot_checkpoint: str) -> str:
    """A PaliGemma processor folder for a LeRobot pi0/pi0.5 checkpoint when none is given: the shipped
    tokenizer (the benchmark's token ids are not the ones a real tokenizer would give, their count is)."""
    import json
    import tempfile

    from vla.models.backbones.paligemma import paligemma_processor

    lr = json.loads((Path(lerobot_checkpoint) / "config.json").read_text())
    if lr.get("type") == "smolvla":
        raise ValueError("--weights with a SmolVLA checkpoint needs --processor (its VLM's folder)")
    side = lr.get("image_resolution", [224, 224])[0]
    out = tempfile.mkdtemp(prefix="vla-bench-processor-")
    paligemma_processor(side, 14).save_pretrained(out)  # So400m's 14 px patches
    return out


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def synthetic_batch(cfg: ModelBenchConfig, batch: int, device: torch.device, with_actions: bool) -> dict:
    words = "pick up the black bowl between the plate and the ramekin and place it on the plate".split()
    text = " ".join((words * 8)[: cfg.text_tokens])  # long enough to fill the token budget
    out = {
        "images": torch.rand(batch, cfg.cameras, 3, cfg.image_size, cfg.image_size, device=device),
        "image_mask": torch.ones(batch, cfg.cameras, dtype=torch.bool, device=device),
        "state": torch.randn(batch, cfg.state_dim, device=device),
        "instruction": [text] * batch,
    }
    if with_actions:
        out["actions"] = torch.randn(batch, cfg.chunk, cfg.action_dim, device=device)
        out["action_pad"] = torch.zeros(batch, cfg.chunk, dtype=torch.bool, device=device)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(cfg: ModelBenchConfig) -> list[dict]:
    """Samples/s of forward + backward + fused AdamW, and peak memory, per batch size."""
    if cfg.quantize:
        raise ValueError("--quantize is for `vla bench infer`: quantized weights are not trained")
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    policy = build_policy(cfg, device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in policy.parameters())
    if cfg.compile:
        compile_regions(policy, training=True)
    results = []
    for bs in cfg.batch_sizes:
        policy.train()
        opt = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
        )
        batch = synthetic_batch(cfg, bs, device, with_actions=True)
        row = {
            "what": "train_step",
            "scale": cfg.scale,
            "head": policy.config.head.type,
            "weights": cfg.weights or "random",
            "batch": bs,
            "params_b": round(params / 1e9, 3),
            "dtype": str(resolve_dtype(cfg.dtype, device)),
            "device": _device_name(device),
            "build_s": round(build_s, 1),
            "grad_ckpt": cfg.gradient_checkpointing,
            "compile": cfg.compile,
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            t_first = time.perf_counter()
            for i in range(cfg.warmup + cfg.steps):
                if i == cfg.warmup:
                    _sync(device)
                    t_start = time.perf_counter()
                loss, _ = policy.compute_loss(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(device)
            dt = (time.perf_counter() - t_start) / cfg.steps
            row.update(step_s=round(dt, 4), samples_per_s=round(bs / dt, 2))
            row["warmup_s"] = round(t_start - t_first, 1)  # includes compilation with --compile
            if device.type == "cuda":
                row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                from vla.train.metrics import estimate_flops_per_sample

                row["mfu"] = round(estimate_flops_per_sample(policy, batch) * bs / dt / 989e12, 4)
        except torch.OutOfMemoryError:
            row["oom"] = True
        results.append(row)
        del opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def bench_infer(cfg: ModelBenchConfig) -> dict:
    """Latency of one chunk at batch 1 (p50/p90), the first call (compilation) reported apart."""
    device = resolve_device(cfg.device)
    policy = build_policy(cfg, device).eval()
    batch = synthetic_batch(cfg, 1, device, with_actions=False)
    t0 = time.perf_counter()
    if cfg.compile:
        compile_for_inference(policy)  # compiles, then records the CUDA graphs on a second call
    policy.predict_chunk(batch)
    _sync(device)
    first = time.perf_counter() - t0
    lat = []
    for _ in range(cfg.infer_iters):
        _sync(device)
        t = time.perf_counter()
        policy.predict_chunk(batch)
        _sync(device)
        lat.append(time.perf_counter() - t)
    lat.sort()
    return {
        "what": "infer_chunk_b1",
        "scale": cfg.scale,
        "head": policy.config.head.type,
        "head_options": cfg.head_options,
        "weights": cfg.weights or "random",
        "quantize": _quantization(policy, cfg),
        "model_mb": round(model_bytes(policy) / 2**20, 2),  # in memory; quantized layers: int8 data + scales
        "inference_steps": cfg.inference_steps,
        "chunk": cfg.chunk,
        "device": _device_name(device),
        "dtype": str(resolve_dtype(cfg.dtype, device)),
        "compile": cfg.compile,
        "first_call_s": round(first, 3),  # with --compile: compilation and CUDA-graph recording included
        "p50_ms": round(1000 * statistics.median(lat), 2),
        "p90_ms": round(1000 * lat[min(len(lat) - 1, int(0.9 * len(lat)))], 2),
    }


def _quantization(policy: Policy, cfg: ModelBenchConfig) -> str | None:
    """The scheme the benchmarked policy runs: --quantize, or the one its --weights checkpoint was quantized with."""
    from vla.models.quantize import read_quantization

    saved = read_quantization(cfg.weights) if cfg.weights else None
    return cfg.quantize or (saved[0].scheme.type if saved else None)


RUNTIMES = ("eager", "compiled", "onnx")


def bench_infer_runtimes(cfg: ModelBenchConfig, runtimes: list[str]) -> list[dict]:
    """``bench_infer`` once per runtime, one row each, side by side: PyTorch eager, torch.compile'd, and the
    policy exported to ONNX (``vla export --format onnx``) run by onnxruntime's CPU provider in fp32."""
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"--runtimes {unknown[0]!r}: known runtimes are {', '.join(RUNTIMES)}")
    rows = []
    for runtime in runtimes:
        if runtime == "onnx":
            rows.append(bench_infer_onnx(cfg))
        else:
            row = bench_infer(dataclasses.replace(cfg, compile=runtime == "compiled"))
            rows.append({"runtime": runtime, **row})
    return rows


def bench_infer_onnx(cfg: ModelBenchConfig) -> dict:
    """Latency of one chunk at batch 1 through the ONNX runner (onnxruntime, CPU, fp32, torch's thread count)."""
    import tempfile

    from vla.interop.onnx_export import export_policy
    from vla.serve.onnx_runner import OnnxPolicy

    if cfg.quantize:
        raise ValueError("--runtimes onnx exports the fp32 policy: run it without --quantize")
    device = torch.device("cpu")
    cfg = dataclasses.replace(cfg, dtype="fp32", device="cpu")
    policy = build_policy(cfg, device).eval()  # fills cfg's robot (cameras, image size) from the policy
    batch = synthetic_batch(cfg, 1, device, with_actions=False)
    obs = {"images": batch["images"].numpy(), "state": batch["state"].numpy(), "instruction": batch["instruction"]}
    with tempfile.TemporaryDirectory(prefix="vla-bench-onnx-") as tmp:
        t0 = time.perf_counter()
        export_policy(policy, Path(tmp) / "onnx", cfg.inference_steps, verify=False)
        export_s = time.perf_counter() - t0
        runner = OnnxPolicy(Path(tmp) / "onnx", threads=torch.get_num_threads())
        t0 = time.perf_counter()
        runner.predict_chunk(obs, seed=0)
        first = time.perf_counter() - t0
        lat = []
        for i in range(cfg.infer_iters):
            t = time.perf_counter()
            runner.predict_chunk(obs, seed=i)
            lat.append(time.perf_counter() - t)
    lat.sort()
    return {
        "runtime": "onnx",
        "what": "infer_chunk_b1",
        "scale": cfg.scale,
        "head": policy.config.head.type,
        "head_options": cfg.head_options,
        "weights": cfg.weights or "random",
        "inference_steps": cfg.inference_steps,
        "chunk": cfg.chunk,
        "device": "cpu (onnxruntime CPUExecutionProvider)",
        "dtype": "torch.float32",
        "export_s": round(export_s, 1),
        "first_call_s": round(first, 3),
        "p50_ms": round(1000 * statistics.median(lat), 2),
        "p90_ms": round(1000 * lat[min(len(lat) - 1, int(0.9 * len(lat)))], 2),
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
