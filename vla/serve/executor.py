"""Action-chunk executor: play actions at the control rate, fetch the next chunk ahead of time.

In the spirit of LeRobot's async inference and real-time chunking: the robot never waits
for the network or the model as long as one round trip is shorter than
``request_threshold`` control steps.

- Every control step pops one action from a queue indexed by absolute step number.
- When ``request_threshold`` or fewer actions remain (and no request is in flight), the
  current observation is sent to the policy from a background thread, tagged with the
  step ``t_req`` at which it was taken.
- When the chunk arrives at step ``t_now``, it is merged into the queue by
  ``vla.action_queue.ActionQueue`` (the same queue ``Policy.select_action`` and the
  evaluation runner play from): its action ``k`` is meant for step ``t_req + k``, the
  first ``t_now - t_req`` actions were overtaken by time and are dropped, the rest replace
  the queued actions for the same steps (fresher observation) or, with ``ensemble_coeff``
  set, are averaged with them using ACT's temporal-ensembling weights ``exp(-coeff * i)``
  (i = 0 for the oldest prediction of a step), or with ``adaptive_alpha`` set, CogACT's adaptive
  weights ``exp(alpha * cos(newest, p))``.
- With ``rtc`` (real-time chunking, vla/models/heads/rtc.py), each request also carries the unexecuted
  remainder of the planned actions, aligned with the chunk requested (its action 0 is for the step just
  played), as ``prev_chunk_left_over``, and the delay measured on the last chunk (arrival minus request
  step, at least 1) as ``inference_delay``: the server freezes those actions and blends the overlap.
- Only if the queue runs dry does ``step`` block until the chunk in flight arrives; each
  such wait is counted in ``stats.stalls``.

``infer`` is any callable ``obs -> (H, D) array`` or ``obs -> {"actions": (H, D), ...}``,
e.g. ``PolicyClient(url).infer``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vla.action_queue import ActionQueue
from vla.serve.protocol import INFERENCE_DELAY, PREV_CHUNK

log = logging.getLogger(__name__)


@dataclass
class ExecutorConfig:
    fps: float = 10.0  # control rate of ``run``
    request_threshold: int = 4  # request the next chunk when this many actions (or fewer) remain queued
    actions_per_chunk: int | None = None  # use only the first K actions of each chunk (None: all H)
    ensemble_coeff: float | None = None  # ACT temporal ensembling of overlapping chunks; None: newest chunk wins
    adaptive_alpha: float | None = None  # CogACT adaptive ensembling instead (exp(alpha * cos) weights)
    wait_timeout_s: float = 30.0  # longest ``step`` blocks on an empty queue before raising
    rtc: bool = False  # send the previous chunk's remainder and the measured delay (real-time chunking)

    def __post_init__(self):
        if self.fps <= 0:
            raise ValueError(f"executor.fps must be > 0, got {self.fps}")
        if self.request_threshold < 0:
            raise ValueError(f"executor.request_threshold must be >= 0, got {self.request_threshold}")
        if self.actions_per_chunk is not None and self.actions_per_chunk < 1:
            raise ValueError(f"executor.actions_per_chunk must be >= 1, got {self.actions_per_chunk}")


@dataclass
class ExecutorStats:
    steps: int = 0
    requests: int = 0
    chunks: int = 0
    stalls: int = 0  # steps that waited on an empty queue (the first step of an episode not counted)
    stall_s: float = 0.0
    dropped: int = 0  # actions already overtaken by time when their chunk arrived
    overruns: int = 0  # control periods of ``run`` that took longer than 1 / fps
    latency_steps: list[int] = field(default_factory=list)  # t_arrive - t_req per chunk


class ChunkExecutor:
    def __init__(self, infer: Callable[[dict], object], config: ExecutorConfig | None = None):
        self.infer = infer
        self.config = config or ExecutorConfig()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-chunk-request")
        self.reset()

    def reset(self) -> None:
        """Start a new episode: forget the queue (a request in flight is discarded when it lands)."""
        self._actions = ActionQueue(
            self.config.ensemble_coeff, self.config.actions_per_chunk, adaptive_alpha=self.config.adaptive_alpha
        )
        self._inflight: tuple[int, concurrent.futures.Future] | None = None
        self.stats = ExecutorStats()

    # ---- chunk bookkeeping (no threads; tested directly) --------------------------------------
    def add_chunk(self, chunk: np.ndarray, t_request: int) -> None:
        """Merge a chunk whose action 0 is for absolute step ``t_request``; drop what time has overtaken."""
        chunk = np.array(chunk, dtype=np.float32)  # a copy: the queue keeps views of it
        if chunk.ndim != 2:
            raise ValueError(f"actions: expected a chunk (H, D), got shape {chunk.shape}")
        dropped = self._actions.add_chunk(chunk, t_request)
        self.stats.chunks += 1
        self.stats.latency_steps.append(self._actions.t - t_request)
        self.stats.dropped += dropped

    @property
    def queued(self) -> int:
        return self._actions.queued

    def planned(self) -> np.ndarray:
        """The queued actions (Q, D), the first one for step ``t`` (for plots and tests)."""
        planned = self._actions.planned()
        return np.stack(planned) if planned else np.zeros((0, 0), np.float32)

    @property
    def t(self) -> int:
        return self._actions.t

    # ---- control loop ---------------------------------------------------------------------------
    def _request(self, obs: dict, t_obs: int) -> None:
        self.stats.requests += 1
        self._inflight = (t_obs, self._pool.submit(self._fetch, obs))

    def _fetch(self, obs: dict) -> np.ndarray:
        reply = self.infer(obs)
        return np.asarray(reply["actions"] if isinstance(reply, dict) else reply)

    def _collect(self, block: bool) -> None:
        if self._inflight is None:
            return
        t_req, fut = self._inflight
        if not block and not fut.done():
            return
        try:
            chunk = fut.result(timeout=self.config.wait_timeout_s)
        except concurrent.futures.TimeoutError as e:
            raise TimeoutError(
                f"no action chunk within {self.config.wait_timeout_s} s (requested at step {t_req}, now {self.t})"
            ) from e
        finally:
            if fut.done():
                self._inflight = None
        self.add_chunk(chunk, t_req)

    def step(self, obs: dict) -> np.ndarray:
        """The action (D,) for this control step; ``obs`` is the observation taken at this step."""
        self._collect(block=False)
        if not self.queued:
            if self._inflight is None:
                self._request(obs, self.t)
            waited = time.perf_counter()
            self._collect(block=True)
            if self.t > 0:
                self.stats.stalls += 1
                self.stats.stall_s += time.perf_counter() - waited
            if not self.queued:
                raise RuntimeError(
                    f"the chunk that arrived at step {self.t} was entirely overtaken by time; "
                    "raise actions_per_chunk or request_threshold"
                )
        t_obs = self.t
        action = self._actions.pop()
        self.stats.steps += 1
        if self._inflight is None and self.queued <= self.config.request_threshold:
            # obs belongs to step t_obs, already executed: the new chunk's action 0 is dropped on arrival.
            self._request(self._with_remainder(obs, action) if self.config.rtc else obs, t_obs)
        return action

    def _with_remainder(self, obs: dict, played: np.ndarray) -> dict:
        """``obs`` plus real-time chunking's keys: the action just played and the planned ones after it (the
        previous chunk's remainder, aligned with the chunk requested now), and the latest measured delay."""
        remainder = np.stack([np.asarray(played, np.float32), *self._actions.planned()])  # (K, D)
        measured = self.stats.latency_steps[-1] if self.stats.latency_steps else 1
        delay = min(max(measured, 1), len(remainder))  # action 0 is for the step just played: at least 1
        return {**obs, PREV_CHUNK: remainder, INFERENCE_DELAY: delay}

    def run(
        self, get_obs: Callable[[], dict], send_action: Callable[[np.ndarray], None], num_steps: int
    ) -> ExecutorStats:
        """Real-time loop at ``config.fps`` for ``num_steps`` steps; returns the statistics."""
        period = 1.0 / self.config.fps
        next_tick = time.perf_counter()
        for _ in range(num_steps):
            send_action(self.step(get_obs()))
            next_tick += period
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                self.stats.overruns += 1
                next_tick = time.perf_counter()
        return self.stats

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
