"""The asyncio side of serving: queue Predict requests and form batches across adapters.

Requests wait in one queue; the batcher takes the first, then keeps taking until the batch
holds `max_batch_rows` rows or `max_wait_ms` has passed, and hands the batch to the torch
executor as one forward pass. A caller whose deadline passes or who cancels is dropped from
the queue (its future is cancelled; the batcher skips it). Past `max_queue_rows` queued rows,
new requests fail at once with CapacityExceeded instead of piling up."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.errors import CapacityExceeded


@dataclass
class PendingRequest:
    key: AdapterKey | None  # None: the base model
    texts: Sequence[str]
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.texts)


BatchFn = Callable[[list[PendingRequest]], list[Any]]


class Batcher:
    def __init__(
        self,
        run_batch: BatchFn,
        executor: Executor,
        *,
        max_batch_rows: int,
        max_wait_ms: float,
        max_queue_rows: int,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self._queue: deque[PendingRequest] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, key: AdapterKey | None, texts: Sequence[str]) -> Any:
        if self._queued_rows + len(texts) > self.max_queue_rows:
            raise CapacityExceeded(
                f"predict queue is full ({self._queued_rows} rows waiting); retry with backoff"
            )
        request = PendingRequest(key, texts, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_rows += request.rows
        self._wakeup.set()
        # Awaiting the future directly: if this call is cancelled (deadline, disconnect),
        # the future is cancelled too and the batcher drops the request.
        return await request.future

    def _take(self, limit: int) -> list[PendingRequest]:
        taken: list[PendingRequest] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while queued
                self._queue.popleft()
                self._queued_rows -= head.rows
                continue
            if taken and rows + head.rows > limit:
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            taken.append(head)
            rows += head.rows
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Give concurrent callers a moment to join this batch.
            deadline = loop.time() + self.max_wait
            while self._queued_rows < self.max_batch_rows and loop.time() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            batch = self._take(self.max_batch_rows)
            if not batch:
                continue
            self.batches += 1
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, batch)
            except Exception as exc:  # the whole batch failed: every caller hears why
                results = [exc] * len(batch)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)
