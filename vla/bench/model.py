"""Training throughput and inference latency of a policy configuration, on synthetic inputs.

The inputs match the peer benchmark (shared/peers/lerobot_bench.py): N cameras at
224 px, an 8-dim state, a 7-dim action, 50-step chunks, 48 language tokens, bf16.
``pi0`` names the pi0-scale configuration: the ``paligemma-3b`` scale preset with a flow
expert of about 300 M parameters (width 1024, as pi0's Gemma-300M expert).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

import vla.models.backbones  # noqa: F401
import vla.models.heads  # noqa: F401
from vla.models.backbones.base import BackboneConfig
from vla.models.compile import compile_for_inference, compile_regions
from vla.models.heads.base import HeadConfig
from vla.models.policy import Policy, PolicyConfig
from vla.utils.device import resolve_device

SCALES = {
    # name: (backbone preset, head type, head overrides)
    "tiny": ("tiny-smolvlm", "flow", {}),
    "pi0": ("paligemma-3b", "flow", {"expert_width": 1024}),
    "smolvla": ("smolvlm2-500m", "flow", {}),
}


@dataclass
class ModelBenchConfig:
    scale: str = "tiny"  # tiny | pi0 | smolvla
    head: str | None = None  # override the scale's head type
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


def build_policy(cfg: ModelBenchConfig, device: torch.device) -> Policy:
    preset, head, head_kw = SCALES[cfg.scale]
    dtype = resolve_dtype(cfg.dtype, device)
    head_cfg = HeadConfig.get_choice_class(cfg.head or head)(**(head_kw if not cfg.head else {}))
    pcfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(
            preset=preset,
            max_text_tokens=cfg.text_tokens,
            gradient_checkpointing=cfg.gradient_checkpointing,
            dtype=str(dtype).removeprefix("torch."),  # created in its dtype: no fp32 copy of 3B weights first
        ),
        head=head_cfg,
        chunk_size=cfg.chunk,
        n_action_steps=cfg.chunk,
        inference_steps=cfg.inference_steps,
        cameras=[f"cam{i}" for i in range(cfg.cameras)],
        state_dim=cfg.state_dim,
        action_dim=cfg.action_dim,
    )
    with torch.device(device):  # random init straight on the device: minutes faster than CPU-then-move at 3B
        policy = Policy(pcfg)
    return policy.to(device=device, dtype=dtype)


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
            "head": cfg.head or SCALES[cfg.scale][1],
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
        "head": cfg.head or SCALES[cfg.scale][1],
        "inference_steps": cfg.inference_steps,
        "chunk": cfg.chunk,
        "device": _device_name(device),
        "dtype": str(resolve_dtype(cfg.dtype, device)),
        "compile": cfg.compile,
        "first_call_s": round(first, 3),  # with --compile: compilation and CUDA-graph recording included
        "p50_ms": round(1000 * statistics.median(lat), 2),
        "p90_ms": round(1000 * lat[min(len(lat) - 1, int(0.9 * len(lat)))], 2),
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
