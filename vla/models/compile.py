"""Regional ``torch.compile``: compile each repeated transformer block, not the whole policy.

Why regional: the policy's outer code (tokenization, masks, the transformers cache, the
diffusers scheduler, Python loops over denoising steps) is full of things that break a
whole-model graph, while the blocks that carry the FLOPs and the kernel launches are a
few identical classes repeated many times (the VLM's decoder layers, its vision encoder
layers, the action expert's blocks). Compiling each block compiles one graph per class
and reuses it for every layer, so compile time stays small, and the code around the
blocks stays eager and debuggable.

On a GPU, inference uses ``mode="reduce-overhead"`` (CUDA graphs): the action expert runs
once per denoising step, so at batch 1 its cost is kernel launches, not FLOPs, and a CUDA
graph replays a whole block in one launch. Training uses the default mode (CUDA graphs
would pin memory for every activation kept for backward).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def repeated_blocks(root: nn.Module) -> list[nn.Module]:
    """Members of every ``nn.ModuleList`` of 2+ blocks of one class that hold a Linear layer.

    That picks transformer layers (``lm.layers``, ``encoder.layers``, ``visual.blocks``,
    ``expert.blocks``) and skips lists of plain modules (a Linear is not a block) and
    lists mixing classes.
    """
    blocks: list[nn.Module] = []
    for module in root.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1 or isinstance(module[0], nn.Linear | nn.ModuleList):
            continue
        if any(isinstance(m, nn.Linear) for m in module[0].modules()):
            blocks.extend(module)
    return blocks


def blocks_of(roots: list[nn.Module]) -> list[nn.Module]:
    return [block for root in roots for block in repeated_blocks(root)]


def lm_mlps(lm: nn.Module) -> list[nn.Module]:
    """The MLP of every decoder layer: the part of a layer that never touches the KV cache.

    A whole decoder layer updates the cache with its own ``layer_idx``, so a compiled layer
    guards on its own cache slot and recompiles once per layer; the MLP (most of a layer's
    FLOPs, and the elementwise gating that fusion helps most) is a pure function.
    """
    missing = [i for i, layer in enumerate(lm.layers) if not isinstance(getattr(layer, "mlp", None), nn.Module)]
    if missing:
        raise TypeError(f"compile: decoder layers {missing[:4]} of {type(lm).__name__} have no .mlp module")
    return [layer.mlp for layer in lm.layers]


def default_modes(device: torch.device, training: bool) -> dict[str, str]:
    """Mode per region: CUDA graphs only for the head's blocks in GPU inference.

    The head runs once per denoising step (launch-bound at batch 1), the backbone once per
    chunk (compute-bound), and the backbone's outputs (the prefix K/V) must stay valid for
    every step, which CUDA-graph memory reuse would not guarantee.
    """
    head = "reduce-overhead" if device.type == "cuda" and not training else "default"
    return {"backbone": "default", "head": head}


def compile_regions(
    policy: nn.Module,
    *,
    training: bool,
    mode: str | None = None,
    backend: str = "inductor",
) -> int:
    """Compile the backbone's and the head's repeated blocks in place; return how many blocks.

    ``mode`` forces one mode on every region (default: :func:`default_modes`).
    ``backend="aot_eager"`` traces without generating kernels (what the CPU tests use to
    check that the blocks trace and give the same numbers).
    """
    device = next(policy.parameters()).device
    modes = {"backbone": mode, "head": mode} if mode else default_modes(device, training)
    bad = [m for m in modes.values() if m not in MODES]
    if bad:
        raise ValueError(f"compile mode {bad[0]!r}: expected one of {MODES}")
    regions = {
        "backbone": [*lm_mlps(policy.backbone.lm), *blocks_of(policy.backbone.vision_modules())],
        "head": blocks_of([policy.head]),
    }
    seen: set[int] = set()  # a block reachable from two roots is compiled once
    for region, blocks in regions.items():
        options = {"mode": modes[region]} if backend == "inductor" else {}
        for block in blocks:
            if id(block) not in seen:
                seen.add(id(block))
                block.compile(backend=backend, **options)
    log.info("compiled %d blocks (backend=%s, modes=%s)", len(seen), backend, modes)
    return len(seen)


def compile_for_inference(policy, batch_size: int = 1, backend: str = "inductor") -> float:
    """Compile the policy's blocks for inference and run it until compiled; return the seconds spent.

    Two calls: the first compiles, the second records the CUDA graphs (reduce-overhead mode
    records on the second use), so the first real request pays neither.
    """
    compile_regions(policy, training=False, backend=backend)
    t0 = time.perf_counter()
    for _ in range(2):
        policy.predict_chunk(synthetic_observation(policy, batch_size), seed=0)
    return time.perf_counter() - t0


def synthetic_observation(policy, batch_size: int) -> dict:
    """A valid observation for ``policy`` (gray images at the backbone's size, zero state)."""
    cfg = policy.config
    device = next(policy.parameters()).device
    size = policy.backbone.image_size
    return {
        "images": torch.full((batch_size, len(cfg.cameras), 3, size, size), 0.5, device=device),
        "state": torch.zeros(batch_size, cfg.state_dim, device=device),
        "instruction": ["warm up"] * batch_size,
    }


def mark_step() -> None:
    """Tell CUDA-graph trees that outputs of earlier replays are no longer read (a new step).

    Called before each denoising step, so replaying a block's graph may reuse the memory of
    the previous step's outputs. A no-op without CUDA graphs.
    """
    if torch.cuda.is_available():
        torch.compiler.cudagraph_mark_step_begin()


def share_cudagraphs_with_threads() -> Callable[[], None]:
    """An initializer that lets a worker thread replay the CUDA graphs this thread records.

    torch keeps its CUDA-graph trees in thread-local storage that only autograd's own threads
    inherit; a compiled block called from any other thread (the server's inference thread)
    fails with an assertion in ``cudagraph_trees.get_obj`` (pytorch#123177). Pointing the
    worker's thread-locals at this thread's trees makes the server's warm-up graphs, recorded
    at start-up, the ones its requests replay. Only one thread may run the policy at a time
    (the server's batcher has one worker).
    """
    from torch._inductor import cudagraph_trees as trees

    containers = trees.get_obj(trees.local, "tree_manager_containers")
    locks = trees.get_obj(trees.local, "tree_manager_locks")

    def adopt() -> None:
        trees.local.tree_manager_containers = containers
        trees.local.tree_manager_locks = locks

    return adopt
