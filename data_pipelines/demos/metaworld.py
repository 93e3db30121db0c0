"""Scripted MetaWorld demonstrations written as a LeRobot v3 dataset.

MetaWorld ships a hand-written expert for each of its 50 tasks
(``metaworld.policies.ENV_POLICY_MAP``). We roll them out through the evaluation
suite's own envs (``eval/suites/metaworld.py``), so cameras, image size, renderer
settings, state layout and instructions are exactly those the policy meets at
evaluation time. What is recorded per step t (the observation *before* action t):

* ``observation.images.<cam>``: (H, W, 3) uint8, upright, one per camera;
* ``observation.state``: (4,) hand xyz + gripper opening;
* ``observation.environment_state``: (39,) MetaWorld's full observation (privileged);
* ``action``: (4,) the expert's action clipped to [-1, 1] (the env clips it anyway);
* the task's instruction as the LeRobot ``task``.

Choices, and why:

* **Initial states** come from :func:`eval.suites.metaworld.demo_seed` seeds, which
  never equal an evaluation seed; each drawn state is also checked against the
  stored evaluation states, so no demo starts where an evaluation episode does.
* **Short episodes.** A rollout stops ``steps_after_success`` (default 10) steps
  after the first success, so the data end shortly after the goal is reached
  (and show the robot holding it) instead of idling to the step limit.
* **Failures** (no success within the suite's step limit) are dropped unless
  ``keep_failures``; the success rate of the expert is reported either way.
* **Speed.** Rendering is nearly all of the cost: only recorded observations are
  rendered (not the one after the last action), shadows/reflections are off
  (shared renderer settings), and episodes run in ``workers`` processes (spawn;
  each owns its envs and GL contexts) while the parent encodes and writes.
* **Atomic output.** ``DatasetWriter`` builds the dataset in a temporary sibling
  directory and renames it into place at the end: an interrupted run leaves no
  dataset that looks complete.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import util as mp_util
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_pipelines.writer import DatasetWriter, make_features

ENV_STATE_KEY = "observation.environment_state"
METAWORLD_FPS = 80  # MetaWorld's control rate: frame_skip 5 x 2.5 ms


@dataclass(frozen=True)
class _Job:
    task_index: int
    episode: int
    seed: int  # demo seed of this episode


@dataclass
class _Episode:
    task_index: int
    episode: int
    success: bool
    frames: dict[str, np.ndarray]  # key -> (T, ...)


# One suite and a cache of envs per worker process (each owns its simulator and GL context).
_WORKER: dict = {}


def _init_worker(suite, steps_after_success: int) -> None:
    _WORKER.update(suite=suite, envs={}, steps_after_success=steps_after_success)
    # Runs when the worker exits normally (pool shutdown): close envs and GL contexts.
    mp_util.Finalize(None, _close_worker_envs, exitpriority=10)


def _close_worker_envs() -> None:
    for env in _WORKER.get("envs", {}).values():
        env.close()
    _WORKER["envs"] = {}


def _eval_rand_vecs(env_name: str) -> np.ndarray:
    from eval.suites.metaworld import load_init_states

    return np.array([s["rand_vec"] for s in load_init_states("mw50")[env_name]])  # (50, R)


def _rollout(job: _Job) -> _Episode:
    """Run the scripted expert for one episode and return its recorded frames."""
    from metaworld.policies import ENV_POLICY_MAP

    suite, envs = _WORKER["suite"], _WORKER["envs"]
    task = suite.tasks[job.task_index]
    if job.task_index not in envs:
        _close_worker_envs()  # jobs arrive grouped by task: keep one env alive per worker
        envs[job.task_index] = suite.make_env(job.task_index)
    env = envs[job.task_index]
    rand_vec = env.sample_init_state(job.seed)
    if np.any(np.all(np.isclose(_eval_rand_vecs(task.env_name), rand_vec, rtol=0, atol=1e-9), axis=1)):
        raise RuntimeError(f"{task.env_name}: demo seed {job.seed} drew an evaluation init state; change `seed`")
    expert = ENV_POLICY_MAP[task.env_name]()
    obs = env.reset_to(rand_vec)
    rec: dict[str, list] = {k: [] for k in ("state", "env_state", "action", *suite.cameras)}
    success_at, extra = None, _WORKER["steps_after_success"]
    while env.steps < task.max_steps:
        action = np.clip(expert.get_action(obs["env_state"].astype(np.float64)), -1.0, 1.0).astype(np.float32)
        for cam in suite.cameras:
            rec[cam].append(obs["images"][cam])
        rec["state"].append(obs["state"])
        rec["env_state"].append(obs["env_state"])
        rec["action"].append(action)
        # The observation after the final action is never recorded: skip rendering it.
        last = env.steps + 1 >= task.max_steps or (success_at is not None and env.steps + 1 >= success_at + extra)
        result = env.step(action, render=not last)
        if result.success and success_at is None:
            success_at = env.steps
        if last or (success_at is not None and env.steps >= success_at + extra):
            break
        obs = result.obs
    frames = {f"observation.images.{cam}": np.stack(rec[cam]) for cam in suite.cameras}  # (T, H, W, 3)
    frames["observation.state"] = np.stack(rec["state"])  # (T, 4)
    frames[ENV_STATE_KEY] = np.stack(rec["env_state"])  # (T, 39)
    frames["action"] = np.stack(rec["action"])  # (T, 4)
    return _Episode(job.task_index, job.episode, success_at is not None, frames)


def generate(
    suite: str,
    episodes_per_task: int,
    out: Path,
    cameras: tuple[str, ...] = ("image", "wrist"),
    image_size: int = 128,
    workers: int | None = None,
    seed: int = 0,
    keep_failures: bool = False,
    fps: int = METAWORLD_FPS,
    steps_after_success: int = 10,
    use_videos: bool = True,
    overwrite: bool = False,
    max_steps: int | None = None,
) -> dict:
    """Record ``episodes_per_task`` scripted episodes of every task of ``suite`` into ``out``.

    ``max_steps`` overrides the suite's step limit (episodes without success by then fail).
    Returns (and prints) the expert's success rate per task and overall, the number
    of episodes written and the generation rate (attempted episodes per minute,
    writing included).
    """
    from eval.suites import SuiteConfig
    from eval.suites.metaworld import MetaWorldSuiteConfig, demo_seed
    from vla.registry import lookup

    config_cls = lookup(SuiteConfig, suite, "suite")
    if not issubclass(config_cls, MetaWorldSuiteConfig):
        raise ValueError(f"suite {suite!r} is not a MetaWorld suite; scripted experts exist only for MetaWorld")
    mw = config_cls(cameras=tuple(cameras), image_size=image_size, max_steps=max_steps).build()

    jobs = [
        _Job(ti, ep, demo_seed(seed, t.env_name, ep))
        for ti, t in enumerate(mw.tasks)
        for ep in range(episodes_per_task)
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    features = make_features(
        cameras={c: (image_size, image_size) for c in cameras},
        state_dim=mw.state_dim,
        action_dim=mw.action_dim,
        extra={ENV_STATE_KEY: (mw.env_state_dim,)},
        use_videos=use_videos,
    )
    attempted = {t.name: 0 for t in mw.tasks}
    succeeded = {t.name: 0 for t in mw.tasks}
    lengths: dict[str, list[int]] = {t.name: [] for t in mw.tasks}
    written = 0
    start = time.perf_counter()
    ctx = mp.get_context("spawn")  # fresh interpreters: no GL context or MuJoCo state inherited
    init = (mw, steps_after_success)
    with (
        DatasetWriter(
            out, fps=fps, features=features, robot_type="sawyer", use_videos=use_videos, overwrite=overwrite
        ) as writer,
        tqdm(total=len(jobs), desc=f"{suite} demos", unit="ep") as bar,
    ):
        # A ProcessPoolExecutor (unlike multiprocessing.Pool) raises BrokenProcessPool when a
        # worker dies, instead of waiting forever for its episode.
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init)
        try:
            # map keeps job order, so the dataset's episode order is deterministic.
            for ep in pool.map(_rollout, jobs):
                task = mw.tasks[ep.task_index]
                attempted[task.name] += 1
                succeeded[task.name] += ep.success
                if ep.success or keep_failures:
                    writer.add_episode(ep.frames, task=task.instruction)
                    lengths[task.name].append(len(ep.frames["action"]))
                    written += 1
                bar.update(1)
                bar.set_postfix(kept=written)
        finally:
            # On an error or Ctrl-C, drop queued episodes instead of finishing them all.
            pool.shutdown(wait=True, cancel_futures=True)
        if written == 0:
            raise RuntimeError(f"no successful {suite} episode out of {len(jobs)}; nothing written to {out}")
    seconds = time.perf_counter() - start
    per_task = {
        name: {
            "attempted": attempted[name],
            "succeeded": succeeded[name],
            "success_rate": succeeded[name] / max(attempted[name], 1),
            "mean_length": float(np.mean(lengths[name])) if lengths[name] else 0.0,
        }
        for name in attempted
    }
    report = {
        "suite": suite,
        "out": str(out),
        "episodes_attempted": len(jobs),
        "episodes_written": written,
        "success_rate": sum(succeeded.values()) / len(jobs),
        "per_task": per_task,
        "seconds": seconds,
        "episodes_per_minute": 60.0 * len(jobs) / seconds,
        "workers": workers,
    }
    _print_report(report)
    return report


def _print_report(report: dict) -> None:
    print(f"scripted experts on {report['suite']}: {report['episodes_written']} episodes written to {report['out']}")
    for name, r in report["per_task"].items():
        print(
            f"  {name:32s} success {r['succeeded']:4d}/{r['attempted']:<4d} ({100 * r['success_rate']:5.1f}%)"
            f"  mean length {r['mean_length']:6.1f}"
        )
    print(
        f"  overall success {100 * report['success_rate']:.1f}%; {report['episodes_per_minute']:.1f} episodes/min "
        f"({report['seconds']:.1f} s, {report['workers']} workers)"
    )
