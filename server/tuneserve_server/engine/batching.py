"""The asyncio side of serving: queue Predict requests and form batches across adapters.

Requests wait in one queue; the batcher takes the first, then keeps taking until the batch
holds `max_batch_rows` rows or `max_wait_ms` has passed, and hands the batch to the torch
executor as one forward pass.

Callers that send their next request as soon as they get an answer (a closed loop, as most
services call) would otherwise split into two cohorts that alternate, each batch half full:
while one batch runs, the other cohort queues, and the batch that follows starts before the
answered cohort is back. So after a batch the batcher expects the callers it just answered
plus those queued then; it starts the next batch as soon as that many are queued, and while
fewer are, it waits for them until `regroup_fraction` of the last forward pass's time after
it answered them (longer than `max_wait_ms` when forwards are slow; the torch thread idles at
most that fraction, and after an idle spell nobody is expected any more). A caller whose deadline passes or who cancels is dropped from
the queue: its future is cancelled, its rows leave the queue bound at once (a done-callback),
and the batcher skips its entry. Past `max_queue_rows` queued rows, new requests fail at once
with CapacityExceeded instead of piling up."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tuneserve_server.domain.errors import CapacityExceeded
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.observability.metrics import (
    BATCH_ADAPTERS,
    BATCH_ROWS,
    FORWARD_SECONDS,
    PREDICT_DROPPED,
    PREDICT_QUEUE_ROWS,
    PREDICT_REJECTED,
    QUEUE_SECONDS,
    ROWS_BY_ADAPTER_COUNT,
    adapter_count_bucket,
)

# Rebuild the queue without dropped entries once they are this many and at least half of it.
_COMPACT_AT = 32


@dataclass(eq=False)  # identity equality: requests are distinct even with equal texts
class PendingRequest:
    key: AdapterKey | None  # None: the base model
    texts: Sequence[str]
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    # True while the request's rows count against max_queue_rows (queued, not yet taken/dropped).
    queued: bool = field(default=False, repr=False)

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
        regroup_fraction: float = 0.0,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.regroup_fraction = regroup_fraction
        self._last_forward = 0.0  # seconds the last forward pass took
        self._answered_at = 0.0  # loop time the last batch's callers got their answers
        self.max_queue_rows = max_queue_rows
        self._queue: deque[PendingRequest] = deque()
        self._queued_rows = 0
        self._dead = 0  # entries still in _queue whose request was dropped
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self._queued_requests = 0
        # Callers likely to be back soon: those the last batch answered plus those queued then.
        # A batch starts once this many are queued (or max_batch_rows rows, or max_wait_ms).
        self._expected = 0

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
            PREDICT_REJECTED.inc()
            raise CapacityExceeded(
                f"predict queue is full ({self._queued_rows} rows waiting); retry with backoff"
            )
        request = PendingRequest(key, texts, asyncio.get_running_loop().create_future())
        request.queued = True
        self._queued_requests += 1
        self._queue.append(request)
        self._set_queued_rows(self._queued_rows + request.rows)
        request.future.add_done_callback(functools.partial(self._settled, request))
        self._wakeup.set()
        # Awaiting the future directly: if this call is cancelled (deadline, disconnect),
        # the future is cancelled too, and _settled takes the request out of the queue bound.
        return await request.future

    def _set_queued_rows(self, rows: int) -> None:
        self._queued_rows = rows
        PREDICT_QUEUE_ROWS.set(rows)

    def _unqueue(self, request: PendingRequest) -> None:
        request.queued = False
        self._queued_requests -= 1
        self._set_queued_rows(self._queued_rows - request.rows)

    def _settled(self, request: PendingRequest, _future: asyncio.Future[Any]) -> None:
        """Done-callback of every request's future. Only a request cancelled while still
        queued is affected: its rows leave the bound now, and its entry is skipped later."""
        if not request.queued:  # taken by the batcher (or dropped by _take) already
            return
        self._unqueue(request)
        PREDICT_DROPPED.inc()
        self._dead += 1
        if self._dead >= _COMPACT_AT and 2 * self._dead >= len(self._queue):
            self._queue = deque(r for r in self._queue if r.queued)
            self._dead = 0

    def _take(self, limit: int) -> list[PendingRequest]:
        taken: list[PendingRequest] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            head = self._queue[0]
            if not head.queued:  # dropped earlier by _settled: its rows are already gone
                self._queue.popleft()
                self._dead -= 1
                continue
            if head.future.done():  # cancelled, its done-callback not run yet
                self._queue.popleft()
                self._unqueue(head)
                PREDICT_DROPPED.inc()
                continue
            if taken and rows + head.rows > limit:
                break
            self._queue.popleft()
            self._unqueue(head)
            QUEUE_SECONDS.observe(now - head.enqueued)
            taken.append(head)
            rows += head.rows
        return taken

    def _run(self, batch: list[PendingRequest]) -> list[Any]:
        """Runs on the executor: the forward pass, timed without the wait for the thread."""
        start = time.perf_counter()
        try:
            return self.run_batch(batch)
        finally:
            self._last_forward = time.perf_counter() - start
            FORWARD_SECONDS.observe(self._last_forward)

    @staticmethod
    def _observe(batch: list[PendingRequest]) -> None:
        rows = sum(r.rows for r in batch)
        adapters = len({r.key for r in batch})
        BATCH_ROWS.observe(rows)
        BATCH_ADAPTERS.observe(adapters)
        ROWS_BY_ADAPTER_COUNT.labels(adapter_count_bucket(adapters)).inc(rows)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Give concurrent callers a moment to join this batch.
            deadline = loop.time() + self.max_wait
            if self._expected > self._queued_requests:  # answered callers may be on their way back
                deadline = max(deadline, self._answered_at + self.regroup_fraction * self._last_forward)
            while (
                self._queued_rows < self.max_batch_rows
                and not (self._expected and self._queued_requests >= self._expected)
                and loop.time() < deadline
            ):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            batch = self._take(self.max_batch_rows)
            if not batch:
                continue
            self.batches += 1
            self._observe(batch)
            try:
                results = await loop.run_in_executor(self.executor, self._run, batch)
            except Exception as exc:  # the whole batch failed: every caller hears why
                results = [exc] * len(batch)
            self._expected = len(batch) + self._queued_requests
            self._answered_at = loop.time()
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)
