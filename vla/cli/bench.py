"""`vla bench <what>`: benchmarks with JSON output (and a markdown table for `all`).

    vla bench data  --root DIR[,DIR] [--chunks 10,50 --batch-size 16 --workers 2 --profile 320]
                                                                   our DataLoader vs LeRobot's, same run
    vla bench train [--scale tiny|pi0|smolvla --batch-sizes 8,16] training samples/s, memory, MFU
    vla bench infer [--scale ...]                                  one chunk at batch 1: p50/p90 latency
    vla bench infer --head bins --head-option decoding=diffusion [--inference-steps 12]   a head's options
    vla bench train|infer --scale pi0 --peer lerobot-pi0 [--same-weights]   LeRobot's pi0 beside ours (GPU)
    vla bench train|infer --weights CKPT                           ours from a checkpoint (ours, or LeRobot's)
    vla bench infer [--weights CKPT] --quantize int8-dynamic       quantized first (a `vla quantize` CKPT: as saved)
    vla bench infer --runtimes eager,compiled,onnx                 PyTorch eager, compiled, ONNX Runtime side by side
    vla bench eval  [--suite mw-easy --num-envs 2]                 runner vs naive loop, E envs vs 1
    vla bench serve [--checkpoint CKPT]                            round trip p50/p99, 1 and 8 clients
    vla bench all   --out DIR [--root DIR]                         everything above, one JSON + one table

Timings are measured here, never asserted in tests. On a GPU machine pass --scale pi0
for LeRobot's pi0 architecture at full size (PaliGemma-3B + the Gemma-300M expert, exactly:
configs/experiments/pi0_finetune.yaml; also pi05, smolvla), 2 cameras at 224 px, chunk 50,
bf16. With --peer lerobot-pi0 --same-weights, LeRobot builds its pi0 first and saves its
weights, and ours imports them: one model timed in two stacks. The peer runs in LeRobot's
side environment (.peers/lerobot from make install; --peer-pythonpath to use another).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from vla.cli.common import friendly_errors


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def run_data(a) -> dict | list[dict]:
    """Every dataset of --root (comma-separated) at every chunk of --chunks; one row each."""
    from data_pipelines.bench import bench_dataloader, profile_pieces

    roots = [r for r in (a.root or _demo_dataset(a)).split(",") if r]
    chunks = _ints(a.chunks) if a.chunks else [a.chunk]
    rows = []
    for root in roots:
        for chunk in chunks:
            row = bench_dataloader(
                root,
                batch_size=a.batch_size,
                workers=a.workers,
                steps=max(a.steps, 20),
                chunk=chunk,
                rounds=a.rounds,
                min_s=a.min_seconds,
            )
            if a.profile:
                row["profile_ms_per_sample"] = profile_pieces(root, chunk=chunk, samples=a.profile)
            if len(roots) * len(chunks) > 1:  # progress; all rows are printed together at the end
                print(json.dumps(row), flush=True)
            rows.append(row)
    return rows[0] if len(rows) == 1 else rows


def _head_options(pairs: list[str]) -> dict[str, str]:
    """``["decoding=diffusion", "diffusion_steps=12"]`` -> a dict (parsed to the field types by the benchmark)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--head-option takes KEY=VALUE (e.g. decoding=diffusion), got {pair!r}")
        out[key] = value
    return out


def _model_cfg(a):
    from vla.bench.model import ModelBenchConfig

    return ModelBenchConfig(
        scale=a.scale,
        head=a.head,
        head_options=_head_options(a.head_option),
        inference_steps=a.inference_steps,
        weights=a.weights,
        quantize=a.quantize,
        processor=a.processor,
        batch_sizes=_ints(a.batch_sizes),
        steps=a.steps,
        dtype=a.dtype,
        image_size=a.image_size,
        chunk=a.chunk,
        gradient_checkpointing=a.grad_ckpt,
        compile=a.compile,
        infer_iters=a.infer_iters,
        device=a.device,
    )


def run_train(a) -> list[dict]:
    from vla.bench.model import bench_train

    ours, peer = _ours_and_peer(a, bench_train, infer_only=False, wanted="train_step")
    return ours + peer


def run_infer(a) -> dict | list[dict]:
    from vla.bench.model import bench_infer

    if a.runtimes:  # eager, compiled and ONNX Runtime side by side
        from vla.bench.model import bench_infer_runtimes

        return bench_infer_runtimes(_model_cfg(a), [r.strip() for r in a.runtimes.split(",") if r.strip()])
    ours, peer = _ours_and_peer(a, bench_infer, infer_only=True, wanted="infer_chunk_b1")
    return [ours, *peer] if peer else ours


def _ours_and_peer(a, bench, infer_only: bool, wanted: str):
    """Our measurement and, with --peer, the peer's. With --same-weights the peer runs first: it saves
    its freshly built policy, and ours starts from those weights."""
    if not a.same_weights:
        return bench(_model_cfg(a)), _peer_rows(a, infer_only, wanted)
    import tempfile

    a.weights = tempfile.mkdtemp(prefix="vla-bench-peer-weights-")
    peer = _peer_rows(a, infer_only, wanted, save_to=a.weights)
    return bench(_model_cfg(a)), peer


def _peer_rows(a, infer_only: bool, wanted: str, save_to: str | None = None) -> list[dict]:
    """With --peer: the same measurement from LeRobot's own policy, run in a child process."""
    if not a.peer:
        return []
    import gc

    import torch

    from vla.bench.peer import run_peer

    # Our benchmark's policy is gone, but the CUDA caching allocator still holds its memory; the
    # peer's pi0 needs 72 GB of an 80 GB card at batch 16, so hand it back first.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rows = run_peer(
        a.peer, batch_sizes=_ints(a.batch_sizes), infer_only=infer_only, pythonpath=a.peer_pythonpath, save_to=save_to
    )
    return [r for r in rows if r.get("what") == wanted]


def run_eval(a) -> dict:
    from eval.bench import bench_eval

    return bench_eval(
        a.suite,
        num_envs=a.num_envs,
        episodes_per_task=a.episodes_per_task,
        max_steps=a.max_steps,
        n_action_steps=a.n_action_steps,
    )


def run_serve(a) -> dict:
    from vla.serve.bench import bench_serve

    if a.checkpoint:
        target = a.checkpoint
    else:
        from vla.bench.model import ModelBenchConfig, build_policy
        from vla.utils.device import resolve_device

        cfg = ModelBenchConfig(scale=a.scale, head=a.head, dtype=a.dtype, chunk=a.chunk)
        target = build_policy(cfg, resolve_device(a.device)).eval()
    return bench_serve(
        target, clients=tuple(_ints(a.clients)), requests=a.requests, device=a.device if a.device != "auto" else "cpu"
    )


def _demo_dataset(a) -> str:
    """A small MetaWorld dataset for `bench data` when no --root is given (generated once)."""
    from data_pipelines.demos.metaworld import generate

    root = Path(a.out or "outputs/bench") / "mw-easy-bench-data"
    if not (root / "meta" / "info.json").exists():
        generate("mw-easy", 2, root, image_size=128)
    return str(root)


RUNNERS = {"data": run_data, "train": run_train, "infer": run_infer, "eval": run_eval, "serve": run_serve}


FIGURE_HINTS = ("per_s", "per_min", "_ms", "mem", "mfu", "speedup", "_over_", "oom", "step_s", "rps")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = round(v, 3) if isinstance(v, float) else v
    return out


def markdown_table(results: dict) -> str:
    """One row per measurement: its configuration, then its figures (nested results flattened)."""
    lines = ["| benchmark | configuration | figures |", "|---|---|---|"]
    for name, res in results.items():
        rows = res if isinstance(res, list) else res.get("results", [res]) if isinstance(res, dict) else []
        shared = {k: v for k, v in res.items() if k != "results"} if isinstance(res, dict) and "results" in res else {}
        for r in rows:
            flat = _flatten({**shared, **r})
            figures = {k: v for k, v in flat.items() if any(h in k for h in FIGURE_HINTS) and "max_wait" not in k}
            config = {k: v for k, v in flat.items() if k not in figures}
            lines.append(
                f"| {name} | {', '.join(f'{k}={v}' for k, v in config.items())} | "
                f"{', '.join(f'{k}={v}' for k, v in figures.items())} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vla bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=[*RUNNERS, "all"])
    p.add_argument("--out", default=None, help="directory for bench.json / bench.md (all) or the JSON (others)")
    p.add_argument(
        "--root", default=None, help="dataset(s) for `data`, comma-separated (default: a small generated mw-easy set)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--chunks", default=None, help="`data`: chunk lengths to measure, e.g. 10,50 (default: --chunk)")
    p.add_argument("--rounds", type=int, default=3, help="`data`: alternating rounds of ours and LeRobot's loader")
    p.add_argument("--min-seconds", type=float, default=3.0, help="`data`: each round times at least this long")
    p.add_argument(
        "--profile", type=int, default=0, help="`data`: also time the pieces of a sample over N samples, one process"
    )
    p.add_argument("--scale", default="tiny", choices=["tiny", "pi0", "pi05", "smolvla"])
    p.add_argument("--weights", default=None, help="`train`/`infer`: start from this checkpoint (ours or LeRobot's)")
    p.add_argument(
        "--quantize",
        default=None,
        help="`infer`: quantize the policy first, int8-weight|int8-dynamic|fp8 (vla quantize's default layers); "
        "a --weights checkpoint written by `vla quantize` runs quantized without it",
    )
    p.add_argument("--processor", default=None, help="with LeRobot --weights: the VLM's processor folder")
    p.add_argument(
        "--same-weights", action="store_true", help="with --peer: ours starts from the peer's own initial weights"
    )
    p.add_argument(
        "--head",
        default=None,
        help="override the scale's head (any registered head: bins, fast, vq, diffusion, flow, regression)",
    )
    p.add_argument(
        "--head-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a head config field, repeatable (e.g. --head bins --head-option decoding=diffusion)",
    )
    p.add_argument(
        "--inference-steps", type=int, default=10, help="`infer`: denoising steps / diffusion rounds (sample num_steps)"
    )
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--compile", action="store_true", help="regional torch.compile (CUDA graphs for the head on a GPU)")
    p.add_argument("--infer-iters", type=int, default=20, help="`infer`: timed chunks after the first call")
    p.add_argument(
        "--runtimes",
        default=None,
        help="`infer`: one row per runtime, side by side, e.g. eager,compiled,onnx (onnx: exported, onnxruntime CPU)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--peer", default=None, help="`train`/`infer`: also time LeRobot's policy (lerobot-pi0, lerobot-pi05)"
    )
    p.add_argument(
        "--peer-pythonpath", default=None, help="a directory with lerobot and transformers==5.5.4 for --peer"
    )
    p.add_argument("--suite", default="mw-easy")
    p.add_argument("--num-envs", type=int, default=2)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--n-action-steps", type=int, default=5, help="`eval`: the policy's replanning interval")
    p.add_argument("--checkpoint", default=None, help="`serve`: a policy checkpoint (default: a random-init one)")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--requests", type=int, default=20)
    a = p.parse_args(argv)
    if a.same_weights and not a.peer:
        p.error("--same-weights needs --peer")
    with friendly_errors("bench") as failures:
        failures.run_dir = a.out
        names = list(RUNNERS) if a.what == "all" else [a.what]
        results = {
            "host": {
                "machine": platform.node(),
                "python": platform.python_version(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        }
        for name in names:
            results[name] = RUNNERS[name](a)
            print(json.dumps({name: results[name]}), flush=True)
        if a.out:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench.json").write_text(json.dumps(results, indent=2))
            (out / "bench.md").write_text(markdown_table({k: v for k, v in results.items() if k != "host"}))
            print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0
