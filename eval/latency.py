"""One episode's actions as a robot plays them when inference takes time: chunks arrive ``latency`` steps late.

``vla eval --latency-steps d``: a chunk requested from the observation of step t becomes available at step
t + d; meanwhile the env keeps playing what is already planned (the previous chunk), and when the chunk lands
its actions for steps already played are overtaken by time and dropped (``ActionQueue.add_chunk``). With
d = 0 this plays exactly what the queue plays without latency: the next observation is due every
``replan_every`` steps (or after a chunk's own ``execute`` length). The first chunk of an episode has nothing
to play before it: the robot waits for it (counted in ``stalls``), as a real one does at start-up.

Smoothness at chunk seams: the mean absolute action change (over action dims) between consecutive steps,
split into steps where a newly arrived chunk took over (seams) and the others (within chunks). Naive switching
jumps at seams; ensembling and real-time chunking should not.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vla.action_queue import ActionQueue


class DelayedPlay:
    """An episode's ActionQueue fed by chunks that arrive ``latency`` steps after their observation."""

    def __init__(self, queue: ActionQueue, latency: int = 0) -> None:
        if latency < 0:
            raise ValueError(f"latency_steps must be >= 0, got {latency}")
        if queue.replan_every is None:
            raise ValueError("DelayedPlay needs a queue with replan_every (when the next observation is due)")
        self.queue, self.latency = queue, latency
        self._pending: deque[tuple[int, np.ndarray, int | None]] = deque()  # (t_request, chunk, execute)
        self._last: np.ndarray | None = None
        self.stalls = 0
        self._sums = {"seam": 0.0, "within": 0.0}
        self._counts = {"seam": 0, "within": 0}

    def remainder(self) -> np.ndarray | None:
        """The planned actions (K, D) from the current step on (the previous chunk's unexecuted remainder, row k
        for step t + k), or None when nothing is planned."""
        planned = self.queue.planned()
        return np.stack(planned).astype(np.float32) if planned else None

    def play(self, chunk: np.ndarray, t_request: int, execute: int | None = None) -> np.ndarray:
        """Request ``chunk`` from the observation of step ``t_request`` (= the queue's step); return the actions
        (n, D) played until the next observation is due. ``execute``: the chunk's own execute length (MoH)."""
        if t_request != self.queue.t:
            raise ValueError(f"a chunk requested at step {t_request} while the episode is at step {self.queue.t}")
        self._pending.append((t_request, chunk, execute))
        due = t_request + (execute if execute is not None else self.queue.replan_every)
        actions = []
        while self.queue.t < due:
            arrived = self._release()
            if not self.queue.queued:  # nothing planned (the episode's first chunk): wait for the oldest in flight
                _, waited, k = self._pending.popleft()
                self.queue.add_chunk(waited, self.queue.t, k)
                self.stalls += 1
                arrived = True
            action = np.asarray(self.queue.pop())
            self._record(action, seam=arrived)
            actions.append(action)
        return np.stack(actions)

    def _release(self) -> bool:
        """Merge the chunks that have arrived by now; True when one did."""
        arrived = False
        while self._pending and self._pending[0][0] + self.latency <= self.queue.t:
            t_request, chunk, execute = self._pending.popleft()
            self.queue.add_chunk(chunk, t_request, execute)
            arrived = True
        return arrived

    def _record(self, action: np.ndarray, seam: bool) -> None:
        if self._last is not None:
            kind = "seam" if seam else "within"
            self._sums[kind] += float(np.abs(action - self._last).mean())
            self._counts[kind] += 1
        self._last = action

    def smoothness(self) -> dict:
        """This episode's sums and counts of action changes at seams and within chunks (summed over episodes by
        ``smoothness_summary``)."""
        return {
            "seam_change_sum": self._sums["seam"],
            "seams": self._counts["seam"],
            "within_change_sum": self._sums["within"],
            "within_steps": self._counts["within"],
        }


def smoothness_summary(records: list[dict]) -> dict | None:
    """Mean absolute action change at chunk seams and within chunks over the episodes that recorded it."""
    rows = [r["smoothness"] for r in records if r.get("smoothness")]
    if not rows:
        return None
    seams, within = sum(r["seams"] for r in rows), sum(r["within_steps"] for r in rows)
    return {
        "seam_mean_abs_change": sum(r["seam_change_sum"] for r in rows) / seams if seams else None,
        "within_mean_abs_change": sum(r["within_change_sum"] for r in rows) / within if within else None,
        "seams": seams,
        "within_steps": within,
        "episodes": len(rows),
    }
