"""Environments vectorized across worker processes, stepped one action chunk at a time.

Why chunks and not steps: the policy takes a new observation once per
``n_action_steps``, so a worker receives a whole ``(K, D)`` chunk, steps it without
rendering and renders once at the end. That is one pipe round-trip and one render
per chunk instead of per step (rendering is ~95 % of a step on CPU). Episodes being
recorded on video render every step; their frames are written to mp4 by the worker
itself, so frames never cross the pipe.

An :class:`EnvWorker` owns at most one simulator at a time and rebuilds it only when
the next episode belongs to another task (LIBERO envs take seconds to build). The
same class runs in-process (:class:`SerialVectorEnv`, one env, no process start-up)
and in ``spawn`` workers (:class:`ProcessVectorEnv`): each worker builds its own
simulator and GL context, which neither ``fork`` nor threads allow safely.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.reference_policies import ReferencePolicy
from eval.suites.base import Observation, Suite, SuiteEnv


@dataclass(frozen=True)
class EpisodeSpec:
    task_index: int  # index into Suite.tasks
    episode_index: int  # fixed init state Task.init_states[episode_index]
    seed: int  # seeds the policy's sampling for this episode (see runner.episode_seed)
    record: bool = False  # write an mp4 of this episode


@dataclass(frozen=True)
class EpisodeResult:
    task_index: int
    episode_index: int
    seed: int
    success: bool
    length: int  # steps taken
    video: str | None = None  # file name under the video dir


@dataclass(frozen=True)
class NeedsChunk:
    """A worker's reply when its episode needs a new action chunk from the policy."""

    spec: EpisodeSpec
    obs: Observation
    step: int  # steps taken so far in the episode

    @property
    def seed(self) -> int:
        """Seeds the policy's sampling for this chunk: one per (episode seed, step), so a chunk does not depend
        on which envs share its batch (``--num-envs``)."""
        return int(np.random.SeedSequence([self.spec.seed, self.step]).generate_state(1)[0])


Reply = NeedsChunk | EpisodeResult


def video_name(task_name: str, episode_index: int, success: bool) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", task_name)
    return f"{safe}_ep{episode_index:03d}_{'success' if success else 'failure'}.mp4"


def compose_frame(obs: Observation) -> np.ndarray:
    """All cameras side by side: (Hi, N * Wi, 3) uint8."""
    return np.concatenate(list(obs["images"].values()), axis=1)


class EnvWorker:
    """Runs episodes of one suite; see the module docstring."""

    def __init__(
        self, suite: Suite, reference: ReferencePolicy | None, video_dir: str | None, video_fps: int = 20
    ) -> None:
        self.suite, self.reference = suite, reference
        self.video_dir, self.video_fps = video_dir, video_fps
        self.env: SuiteEnv | None = None
        self._task_index = -1
        self._spec: EpisodeSpec | None = None
        self._frames: list[np.ndarray] = []

    def start(self, spec: EpisodeSpec) -> Reply:
        if self._task_index != spec.task_index:
            self.close()
            self.env = self.suite.make_env(spec.task_index)
            self._task_index = spec.task_index
        self._spec, self._frames = spec, []
        obs = self.env.reset(spec.episode_index)
        if spec.record:
            self._frames.append(compose_frame(obs))
        if self.reference is None:
            return NeedsChunk(spec, obs, 0)
        act = self.reference.actor(self.env, spec.seed, self.suite.action_dim)
        while True:  # reference policies act every step, in this process, without rendering
            res = self.env.step(act(), render=spec.record)
            if spec.record:
                self._frames.append(compose_frame(res.obs))
            if res.done:
                return self._finish(res.success)

    def act(self, actions: np.ndarray) -> Reply:
        """Step a ``(K, D)`` chunk; render its last step (every step when recording).

        The last step renders as it runs, not afterwards: a suite may take its images inside the step
        (LIBERO samples them with its proprioception, as robosuite does)."""
        spec, env = self._spec, self.env
        if spec is None or env is None:
            raise RuntimeError("EnvWorker.act called with no episode running; call start first")
        if len(actions) == 0:
            raise ValueError("EnvWorker.act got an empty chunk; it needs at least one action")
        for k, a in enumerate(actions):
            res = env.step(a, render=spec.record or k == len(actions) - 1)
            if spec.record:
                self._frames.append(compose_frame(res.obs))
            if res.done:
                return self._finish(res.success)
        return NeedsChunk(spec, res.obs, env.steps)

    def _finish(self, success: bool) -> EpisodeResult:
        spec = self._spec
        video = None
        if spec.record and self.video_dir:
            from eval.report import write_video

            video = video_name(self.suite.tasks[spec.task_index].name, spec.episode_index, success)
            write_video(Path(self.video_dir) / video, self._frames, self.video_fps)
        self._spec, self._frames = None, []
        return EpisodeResult(spec.task_index, spec.episode_index, spec.seed, bool(success), self.env.steps, video)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env, self._task_index = None, -1


class SerialVectorEnv:
    """One in-process worker: no process start-up (tests, ``--num-envs 1``, the trainer)."""

    def __init__(self, worker_args: tuple) -> None:
        self.num_envs = 1
        self._worker = EnvWorker(*worker_args)
        self._pending: tuple[str, Any] | None = None

    def send(self, i: int, method: str, arg: Any) -> None:
        self._pending = (method, arg)  # run lazily in recv: there is no parallelism to gain

    def recv(self, i: int) -> Reply:
        method, arg = self._pending
        self._pending = None
        return getattr(self._worker, method)(arg)

    def ready(self, indices: list[int], wait_for: list[int] = ()) -> list[int]:
        """The envs among ``indices`` whose reply can be received now: the one env, run on ``recv``."""
        return list(indices)

    def close(self) -> None:
        self._worker.close()


def _worker_main(conn, worker_args: tuple) -> None:
    worker = None
    try:
        worker = EnvWorker(*worker_args)
        while True:
            msg = conn.recv()
            if msg is None:
                break
            method, arg = msg
            try:
                conn.send(("ok", getattr(worker, method)(arg)))
            except Exception:  # noqa: BLE001  sent to the main process, which raises it
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if worker is not None:
            worker.close()
        conn.close()


class ProcessVectorEnv:
    """``num_envs`` spawn workers, one pipe each; ``send`` returns at once, ``recv`` blocks."""

    def __init__(self, worker_args: tuple, num_envs: int, start_method: str = "spawn") -> None:
        ctx = mp.get_context(start_method)
        self.num_envs = num_envs
        self._conns, self._procs = [], []
        for i in range(num_envs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, worker_args), name=f"eval-env-{i}", daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)

    def send(self, i: int, method: str, arg: Any) -> None:
        self._conns[i].send((method, arg))

    def ready(self, indices: list[int], wait_for: list[int] = ()) -> list[int]:
        """The envs among ``indices`` with a reply waiting, after every env of ``wait_for`` has one (or, with
        none to wait for, any env): the runner waits for the envs that are stepping, so they share one policy
        call, and takes the envs that are resetting (seconds on LIBERO) only once they are done, so a reset
        never holds the others' next chunk back."""
        by_conn = {self._conns[i]: i for i in indices}
        for i in wait_for:
            multiprocessing.connection.wait([self._conns[i]])
        if not wait_for:
            multiprocessing.connection.wait(list(by_conn))
        return sorted(by_conn[c] for c in multiprocessing.connection.wait(list(by_conn), timeout=0))

    def recv(self, i: int) -> Reply:
        try:
            status, payload = self._conns[i].recv()
        except (EOFError, ConnectionResetError):
            self._procs[i].join(timeout=5)
            code = self._procs[i].exitcode
            raise RuntimeError(f"eval env worker {i} died (exit code {code}); see its output above") from None
        if status == "error":
            raise RuntimeError(f"eval env worker {i} failed:\n{payload}")
        return payload

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for conn in self._conns:
            conn.close()


def make_vector_env(
    suite: Suite, num_envs: int, reference: ReferencePolicy | None, video_dir: str | None, video_fps: int = 20
) -> SerialVectorEnv | ProcessVectorEnv:
    args = (suite, reference, video_dir, video_fps)
    return SerialVectorEnv(args) if num_envs == 1 else ProcessVectorEnv(args, num_envs)
