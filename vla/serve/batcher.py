"""Dynamic batching: gather concurrent requests into one forward pass within a time window.

Each connection handler ``await``s ``DynamicBatcher.submit(item)``. One asyncio task
takes the oldest pending request, waits until ``max_batch`` compatible requests are
pending or ``max_wait_ms`` has passed since that request arrived, and runs the batch in
a single worker thread, so the event loop never blocks on inference and keeps accepting
(and gathering) requests meanwhile. One worker, because one model serves every batch.

Compatibility is a key per item: items with equal keys may share a forward pass (for
the server: the same image sizes), and an item whose key is ``None`` always runs alone
(the server uses this for seeded requests, whose noise must not depend on the batch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class BatchInfo:
    """What a request learns about the forward pass that served it (goes into server_timing)."""

    batch_size: int
    queue_ms: float  # arrival -> batch start
    infer_ms: float  # the forward pass of the whole batch


@dataclass
class BatchStats:
    """Running statistics of forward-pass sizes; reported in metadata, /healthz and /stats."""

    sizes: Counter = field(default_factory=Counter)  # batch size -> number of forward passes
    requests: int = 0
    errors: int = 0  # requests whose forward pass failed, run alone (a failed batch's requests are retried alone)
    bad_requests: int = 0  # requests refused before batching (counted by the server)
    infer_ms_total: float = 0.0

    def record(self, size: int, infer_ms: float) -> None:
        self.sizes[size] += 1
        self.requests += size
        self.infer_ms_total += infer_ms

    def as_dict(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        return {
            "batches": batches,
            "requests": self.requests,
            "errors": self.errors,
            "bad_requests": self.bad_requests,
            "mean_batch_size": self.requests / batches if batches else 0.0,
            "max_batch_size": max(self.sizes, default=0),
            "batch_size_histogram": {str(k): v for k, v in sorted(self.sizes.items())},
            "mean_infer_ms": self.infer_ms_total / batches if batches else 0.0,
        }


@dataclass
class _Pending[T]:
    item: T
    key: Hashable | None
    arrived: float  # time.perf_counter()
    future: asyncio.Future


class DynamicBatcher[T, R]:
    """``await submit(item) -> (result, BatchInfo)``; ``run_batch(items) -> results`` runs in a worker thread."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        key: Callable[[T], Hashable | None] = lambda item: 0,
        worker_init: Callable[[], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.key = key
        self.stats = BatchStats()
        self._pending: list[_Pending[T]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="vla-infer", initializer=worker_init
        )

    def start(self) -> None:
        """Start the gathering task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="vla-batcher")

    async def stop(self) -> None:
        """Finish the batch in flight, fail what is still pending, stop the worker."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(RuntimeError("server shutting down"))
        self._pending.clear()
        self._worker.shutdown(wait=True)

    async def submit(self, item: T) -> tuple[R, BatchInfo]:
        if self._task is None or self._task.done():
            raise RuntimeError("batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, self.key(item), time.perf_counter(), fut))
        self._wakeup.set()
        return await fut

    def _compatible(self, first: _Pending[T]) -> list[_Pending[T]]:
        if first.key is None:
            return [first]
        same = [p for p in self._pending if p.key is not None and p.key == first.key]
        return same[: self.max_batch]

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._pending = [p for p in self._pending if not p.future.done()]  # drop clients that left
            if not self._pending:
                continue
            first = self._pending[0]
            deadline = first.arrived + self.max_wait_s
            # Gather: wait for more compatible requests until the batch is full or the oldest has waited enough.
            while first.key is not None and len(self._compatible(first)) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
                except TimeoutError:
                    break
            batch = self._compatible(first)
            taken = {id(p) for p in batch}
            self._pending = [p for p in self._pending if id(p) not in taken]
            try:
                await self._run(batch)
            except Exception as e:  # noqa: BLE001  the server keeps serving
                if len(batch) == 1:
                    self._fail(batch[0], e)
                    continue
                # One request's fault must not fail the others (a prompt that breaks the model, say): each
                # runs alone, and only the ones that fail alone get an error.
                log.warning("batch of %d failed; running its requests one at a time", len(batch), exc_info=e)
                for p in batch:
                    if p.future.done():  # its client has gone: no forward pass for it
                        continue
                    try:
                        await self._run([p])
                    except Exception as alone:  # noqa: BLE001
                        self._fail(p, alone)

    def _fail(self, pending: _Pending[T], error: Exception) -> None:
        self.stats.errors += 1
        log.error("request failed", exc_info=error)  # the traceback stays here; the waiter gets the error itself
        if not pending.future.done():
            pending.future.set_exception(error)

    async def _run(self, batch: list[_Pending[T]]) -> None:
        """One forward pass in the worker thread; each waiter gets its own result. Raises what run_batch raised."""
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(
            self._worker, self.run_batch, [p.item for p in batch]
        )
        if len(results) != len(batch):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
        infer_ms = (time.perf_counter() - start) * 1000.0
        self.stats.record(len(batch), infer_ms)
        for p, r in zip(batch, results, strict=True):
            if not p.future.done():  # the client may have gone away
                p.future.set_result((r, BatchInfo(len(batch), (start - p.arrived) * 1000.0, infer_ms)))
