"""The action queue: which action a chunked policy plays at each control step.

One implementation, used by every place that turns action chunks into actions:
``Policy.select_action`` (in process), ``vla.serve.executor.ChunkExecutor`` (a robot
playing a served policy's chunks asynchronously) and the evaluation runner (one queue
per simulated env, started over with each episode).

Slots are indexed by absolute control step. A chunk observed at step ``t_request`` has
its action ``k`` meant for step ``t_request + k``; actions for steps already played are
overtaken by time and dropped. A chunk's action for a step that already has one either
replaces it (the fresher observation wins) or, with ``ensemble_coeff``, is averaged with
it as in ACT's temporal ensembling: the ``i``-th prediction received for a step weighs
``exp(-ensemble_coeff * i)`` (``i = 0`` for the oldest). With ``adaptive_alpha`` it is blended
as in CogACT's adaptive action ensembling instead: each prediction ``p_k`` for a step weighs
``exp(adaptive_alpha * cos(p_newest, p_k))``, so earlier chunks that agree with the freshest one
count more and those that disagree fade (alpha = 0: the plain average).

A chunk may come with the number of its leading actions to execute (``add_chunk(..., execute=K)``:
MoH's cross-horizon consensus, where the policy decides per chunk how far its prediction is
trustworthy): only those K are planned, anything planned after them is dropped, and the next
chunk is due once they are played, whatever ``replan_every`` says.

Chunks are ``(..., H, D)`` arrays (numpy or torch; the step axis is ``-2``), so one queue
serves a batch of streams that run in lock step (``Policy.select_action`` on a ``(B, H,
D)`` batch) as well as a single stream (``(H, D)``). Only indexing and arithmetic are
used, so a queue never copies tensors between devices; chunks must not be modified in
place after they are added.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class _Slot:
    """Every prediction received for one step, the oldest first (each (..., D))."""

    predictions: list


def _exp(x: Any) -> Any:
    return x.exp() if hasattr(x, "exp") else math.e**x  # torch tensors, numpy arrays and scalars alike


def _cosine(a: Any, b: Any) -> Any:
    """Cosine similarity over the last axis (..., D) -> (...); 0 for a zero vector."""
    return (a * b).sum(-1) / (((a * a).sum(-1) * (b * b).sum(-1)) ** 0.5 + 1e-12)


class ActionQueue:
    """Planned actions by absolute step; see the module docstring.

    ``ensemble_coeff``: ACT temporal ensembling of overlapping chunks (None: the newest chunk wins).
    ``adaptive_alpha``: CogACT adaptive ensembling instead (exclusive with ``ensemble_coeff``).
    ``actions_per_chunk``: keep only the first K actions of each chunk (None: all H).
    ``replan_every``: a new chunk is due every this many steps (``needs_chunk``); None leaves
    the timing to the caller (the executor requests ahead of time by its own threshold).
    """

    def __init__(
        self,
        ensemble_coeff: float | None = None,
        actions_per_chunk: int | None = None,
        replan_every: int | None = None,
        adaptive_alpha: float | None = None,
    ) -> None:
        if ensemble_coeff is not None and adaptive_alpha is not None:
            raise ValueError("ensemble_coeff (temporal) and adaptive_alpha (adaptive) ensembling exclude each other")
        for name, value in (("actions_per_chunk", actions_per_chunk), ("replan_every", replan_every)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.ensemble_coeff = ensemble_coeff
        self.adaptive_alpha = adaptive_alpha
        self.actions_per_chunk = actions_per_chunk
        self.replan_every = replan_every
        self.reset()

    def reset(self) -> None:
        """A new episode: step 0, nothing planned."""
        self._t = 0  # absolute index of the next step to play
        self._slots: deque[_Slot] = deque()  # slot i is for step self._t + i
        self._last_request: int | None = None  # t_request of the newest chunk added
        self._due: int | None = None  # step a new chunk is due at, when the newest chunk said how much to execute

    @property
    def ensembles(self) -> bool:
        """True when overlapping chunks are blended (temporal or adaptive), not replaced."""
        return self.ensemble_coeff is not None or self.adaptive_alpha is not None

    @property
    def t(self) -> int:
        """The step whose action ``pop`` returns next (= actions played since ``reset``)."""
        return self._t

    @property
    def queued(self) -> int:
        return len(self._slots)

    @property
    def needs_chunk(self) -> bool:
        """True when nothing is planned, or ``replan_every`` steps have passed since the newest chunk's observation."""
        if not self._slots or self._last_request is None:
            return True
        if self._due is not None:
            return self._t >= self._due
        return self.replan_every is not None and self._t - self._last_request >= self.replan_every

    def add_chunk(self, chunk: Any, t_request: int, execute: int | None = None) -> int:
        """Merge ``chunk`` (..., H, D), observed at step ``t_request``; returns how many of its actions were
        already overtaken by time (dropped). ``execute``: play only its first ``execute`` actions, then
        ask for a new chunk (planned actions past them are dropped); None: ``replan_every`` decides."""
        if len(chunk.shape) < 2:
            raise ValueError(f"actions: expected a chunk (..., H, D), got shape {tuple(chunk.shape)}")
        late = self._t - t_request
        if late < 0:
            raise ValueError(f"chunk requested at step {t_request} is from the future (now {self._t})")
        horizon = chunk.shape[-2] if self.actions_per_chunk is None else min(chunk.shape[-2], self.actions_per_chunk)
        self._last_request = t_request if self._last_request is None else max(self._last_request, t_request)
        self._due = None
        if execute is not None:
            if execute < 1:
                raise ValueError(f"execute must be >= 1 action, got {execute}")
            if self.ensembles:
                raise ValueError(
                    "a chunk's execute length and temporal ensembling (a new chunk every step) exclude each other"
                )
            horizon = min(horizon, execute)
            self._due = t_request + horizon
            while len(self._slots) > max(horizon - late, 0):  # an older chunk's tail must not play after these
                self._slots.pop()
        for i in range(horizon - late if horizon > late else 0):
            action = chunk[..., late + i, :]
            if i >= len(self._slots):
                self._slots.append(_Slot([action]))
            elif not self.ensembles:
                self._slots[i] = _Slot([action])  # fresher observation wins
            else:
                self._slots[i].predictions.append(action)
        return min(late, horizon)

    def _blend(self, slot: _Slot) -> Any:
        """The action a slot plays: its only prediction, or the ensemble of all of them."""
        preds = slot.predictions
        if len(preds) == 1:
            return preds[0]
        if self.adaptive_alpha is not None:
            newest = preds[-1]
            total = weight = 0.0
            for p in preds:
                w = _exp(self.adaptive_alpha * _cosine(newest, p))  # (...,)
                total, weight = total + w[..., None] * p, weight + w
            return total / weight[..., None]
        total, weight = preds[0], 1.0
        for i, p in enumerate(preds[1:], start=1):
            w = math.exp(-self.ensemble_coeff * i)  # the i-th prediction of a step weighs exp(-coeff * i)
            total, weight = total + w * p, weight + w
        return total / weight

    def pop(self) -> Any:
        """The action (..., D) for step ``t``; advances to the next step."""
        if not self._slots:
            raise RuntimeError(f"no action planned for step {self._t}: add a chunk first")
        self._t += 1
        return self._blend(self._slots.popleft())

    def planned(self) -> list:
        """The queued actions, the first one for step ``t`` (for plots and tests)."""
        return [self._blend(slot) for slot in self._slots]
