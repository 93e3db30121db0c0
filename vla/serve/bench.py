"""Serving benchmark: round-trip latency and throughput on loopback for 1 and N concurrent clients.

    from vla.serve.bench import bench_serve
    bench_serve("outputs/run/checkpoints/last", clients=(1, 8), requests=20)

Every client is a real ``PolicyClient`` in its own thread, sending full-size observations
(HWC uint8 images for every camera of the policy, the state, a prompt) and waiting for
each reply before sending the next, as a robot does. The figures therefore include
msgpack encoding, the websocket round trip, dynamic batching and the forward pass.
``vla bench serve`` prints the returned dict as JSON.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from vla.serve import protocol
from vla.serve.batcher import BatchStats
from vla.serve.client import PolicyClient
from vla.serve.server import PolicyServer, ServeConfig, ServerThread

log = logging.getLogger(__name__)


def _observation(policy, image_size: tuple[int, int], rng: np.random.Generator) -> dict:
    obs = {
        f"observation.images.{c}": rng.integers(0, 256, (*image_size, 3), dtype=np.uint8) for c in policy.config.cameras
    }
    obs["observation.state"] = rng.normal(size=policy.config.state_dim).astype(np.float32)
    obs["prompt"] = "pick up the red block and put it in the bowl"
    return obs


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def _run_clients(
    url: str, n: int, requests: int, obs: dict, warmup: int, stats: BatchStats
) -> tuple[list[float], float, Counter, float]:
    """n clients, each ``requests`` sequential round trips after ``warmup``.

    Returns latencies (ms), wall time (s), and the forward-pass sizes and total inference ms
    of the timed part only (the warmup round trips are sequential, batch size 1).
    """
    clients = [PolicyClient(url) for _ in range(n)]
    for c in clients:
        for _ in range(warmup):
            c.infer(obs)
    before_sizes, before_ms = Counter(stats.sizes), stats.infer_ms_total
    barrier = threading.Barrier(n + 1)
    latencies: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(requests):
                t0 = time.perf_counter()
                clients[i].infer(obs)
                latencies[i].append((time.perf_counter() - t0) * 1000.0)
        except BaseException as e:  # noqa: BLE001  re-raised in the caller
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"bench client failed: {errors[0]}") from errors[0]
    sizes = stats.sizes - before_sizes
    return [x for lat in latencies for x in lat], wall, sizes, stats.infer_ms_total - before_ms


def _in_process_ms(policy, obs: dict, repeats: int) -> dict[str, float]:
    """predict_chunk at batch 1 on the same observation: the floor under every round trip."""
    cams = [torch.from_numpy(obs[f"observation.images.{c}"]).permute(2, 0, 1) for c in policy.config.cameras]
    device = next(policy.parameters()).device
    batch = {
        "images": torch.stack(cams)[None].to(device),
        "state": torch.from_numpy(obs["observation.state"])[None].to(device),
        "instruction": [obs["prompt"]],
    }
    ms = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        policy.predict_chunk(batch).cpu()  # sync point: the timing must include the device work
        ms.append((time.perf_counter() - t0) * 1000.0)
    return _percentiles(ms[1:])


def bench_serve(
    policy_or_checkpoint,
    clients: tuple[int, ...] = (1, 8),
    requests: int = 20,
    warmup: int = 5,
    image_size: tuple[int, int] = (224, 224),
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Loopback latency (p50/p99 round trip per request) and throughput for each client count.

    ``policy_or_checkpoint``: a Policy or a checkpoint directory. ``requests``: per client.
    """
    if isinstance(policy_or_checkpoint, str | Path):
        from vla.models.policy import Policy

        policy = Policy.load(policy_or_checkpoint, device)
    else:
        policy = policy_or_checkpoint
    policy.eval()
    obs = _observation(policy, tuple(image_size), np.random.default_rng(seed))
    cfg = ServeConfig(host="127.0.0.1", port=0, max_batch=max_batch, max_wait_ms=max_wait_ms)
    server_log = logging.getLogger("vla.serve.server")
    level = server_log.level
    server_log.setLevel(logging.WARNING)  # one log line per request would time the logger too
    results = []
    try:
        with ServerThread(PolicyServer(policy, cfg)) as thread:
            for n in clients:
                stats = thread.server.batcher.stats
                latencies, wall, sizes, infer_ms = _run_clients(thread.url, n, requests, obs, warmup, stats)
                batches = sum(sizes.values())
                results.append(
                    {
                        "clients": n,
                        "requests": len(latencies),
                        **_percentiles(latencies),
                        "throughput_rps": len(latencies) / wall,
                        "mean_batch_size": sum(k * v for k, v in sizes.items()) / max(batches, 1),
                        "max_batch_size": max(sizes, default=0),
                        "server_infer_ms_mean": infer_ms / max(batches, 1),
                    }
                )
                log.info("serve bench: %s", results[-1])
    finally:
        server_log.setLevel(level)
    return {
        "device": str(next(policy.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "cameras": list(policy.config.cameras),
        "image_size": list(image_size),
        "chunk_size": policy.config.chunk_size,
        "action_dim": policy.config.action_dim,
        "request_bytes": len(protocol.pack(obs)),
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "in_process_batch1": _in_process_ms(policy, obs, repeats=max(3, warmup)),
        "results": results,
    }
