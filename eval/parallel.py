"""``vla eval ... --gpus 0,1,...`` (or ``--devices cuda:0,cpu,...``): one machine's devices, one shard each.

The run is cut into as many shards as devices (the same contiguous, balanced shares as ``--shard K/N``),
each shard runs as its own ``vla eval --shard K/N --device D`` process with its policy replica on its
device and its environment workers rendering there too (``MUJOCO_EGL_DEVICE_ID`` for a GPU), and the
shards are merged into ``--out`` exactly as ``vla eval merge`` does, so the result equals the unsharded
run's. Rerunning the same command resumes every shard from its episode log. Each shard's output goes to
``OUT/logs/shard_K.log``; one progress bar counts the episodes of all shards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from eval import report
from eval.runner import merge_dirs, shard_dir

DEVICE_FLAGS = ("--gpus", "--devices")


def split_device_flag(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """argv without ``--gpus LIST`` / ``--devices LIST`` (or ``=LIST``), and the devices they name (None: absent).

    ``--gpus 0,1`` means ``cuda:0,cuda:1``; ``--devices`` takes torch device strings (``cpu`` included, which
    runs several CPU shards at once)."""
    out, devices, args = [], None, iter(argv)
    for a in args:
        flag = next((f for f in DEVICE_FLAGS if a == f or a.startswith(f + "=")), None)
        if flag is None:
            out.append(a)
            continue
        if devices is not None:
            raise ValueError("give one of --gpus and --devices, once")
        value = a.partition("=")[2] if "=" in a else next(args, "")
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names:
            raise ValueError(
                f"{flag} needs a comma-separated list, e.g. {flag} {'0,1' if flag == '--gpus' else 'cuda:0,cuda:1'}"
            )
        if flag == "--gpus":
            if not all(n.isdigit() for n in names):
                raise ValueError(f"--gpus {value!r}: expected GPU indices such as 0,1,2,3")
            names = [f"cuda:{n}" for n in names]
        devices = names
    return out, devices


def check_devices(devices: list[str]) -> None:
    """Refuse devices this machine does not have, before any process starts."""
    import torch

    for d in devices:
        dev = torch.device(d)
        if dev.type == "cuda":
            count = torch.cuda.device_count()
            if (dev.index or 0) >= count:
                raise ValueError(f"device {d}: this machine has {count} CUDA device(s)")
        elif dev.type != "cpu":
            raise ValueError(f"device {d}: only cpu and cuda:K are supported for parallel evaluation")


def _value_of(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.partition("=")[2]
    return None


def shard_command(argv: list[str], k: int, n: int, device: str) -> list[str]:
    return [sys.executable, "-m", "vla", "eval", *argv, f"--shard={k}/{n}", f"--device={device}", "--progress=false"]


def shard_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    if device.startswith("cuda"):  # environment workers render with EGL on the shard's GPU
        env["MUJOCO_EGL_DEVICE_ID"] = device.partition(":")[2] or "0"
    return env


def _episodes_done(out: Path, n: int) -> int:
    total = 0
    for k in range(n):
        log = shard_dir(out, k) / report.EPISODES_FILE
        if log.exists():
            total += sum(1 for line in log.read_text().splitlines() if line.strip())
    return total


def run_on_devices(argv: list[str], devices: list[str], total_episodes: int | None, progress: bool = True) -> dict:
    """Run ``vla eval argv`` as one shard per device, wait for all, merge into ``--out``; returns the results."""
    if any(a == "--shard" or a.startswith(("--shard=", "--shard-index", "--num-shards")) for a in argv):
        raise ValueError("--gpus/--devices shards the run itself: drop --shard")
    if any(a == "--device" or a.startswith("--device=") for a in argv):
        raise ValueError("--gpus/--devices places every shard on its device: drop --device")
    out = Path(_value_of(argv, "--out") or "outputs/eval")
    check_devices(devices)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = len(devices)
    procs = []
    for k, device in enumerate(devices):
        log = open(logs / f"shard_{k}.log", "w")  # noqa: SIM115 (closed below, after the process ends)
        procs.append(
            (
                subprocess.Popen(
                    shard_command(argv, k, n, device), stdout=log, stderr=subprocess.STDOUT, env=shard_env(device)
                ),
                log,
            )
        )
    bar = tqdm(total=total_episodes, desc=f"eval on {n} devices", unit="ep", disable=not progress)
    try:
        while any(p.poll() is None for p, _ in procs):
            bar.n = _episodes_done(out, n)
            bar.refresh()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p, _ in procs:
            p.terminate()
        raise
    finally:
        for _, log in procs:
            log.close()
    bar.n = _episodes_done(out, n)
    bar.close()
    failed = [(k, p.returncode) for k, (p, _) in enumerate(procs) if p.returncode != 0]
    if failed:
        where = ", ".join(f"shard {k} on {devices[k]} (exit {rc}, log {logs / f'shard_{k}.log'})" for k, rc in failed)
        raise RuntimeError(f"{len(failed)} of {n} shards failed: {where}; rerun the same command to resume")
    return merge_dirs([shard_dir(out, k) for k in range(n)], out)
