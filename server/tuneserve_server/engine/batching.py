"""The asyncio side of serving: queue Predict requests and form batches across adapters.

Requests wait in one queue per namespace (a tenant). The batcher forms a batch round-robin
across the namespaces with rows waiting: one request from each in turn, oldest first within
a namespace, until the batch holds `max_batch_rows` rows. A namespace that was served moves
to the back of the turn order, one that had nothing waiting comes in at the front. So a tenant flooding the queue with 256-row requests takes at
most its turn of each batch, and another tenant's single row rides in the next batch (or
this one). A request is never split across batches; one larger than `max_batch_rows` is a
batch of its own. The batch waits up to `max_wait_ms` to fill and goes to the torch executor
as one forward pass.

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
with CapacityExceeded instead of piling up; past `namespace_queue_rows` rows queued by one
namespace (the tenant quota `queued_predict_rows`; 0: no per-namespace bound), that
namespace's new requests fail with QuotaExceeded while the others' are still taken."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tuneserve_server.domain.errors import CapacityExceeded, QuotaExceeded
from tuneserve_server.domain.uncertainty import NONE as NO_UNCERTAINTY
from tuneserve_server.domain.uncertainty import UncertaintyRequest
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
    namespace: str = ""  # the tenant whose turn this request takes
    uncertainty: UncertaintyRequest = NO_UNCERTAINTY  # classification: sets / abstention asked for
    arrival: int = 0  # submit order: a batch lists its requests in it
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
        namespace_queue_rows: int = 0,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.regroup_fraction = regroup_fraction
        self._last_forward = 0.0  # seconds the last forward pass took
        self._answered_at = 0.0  # loop time the last batch's callers got their answers
        self.max_queue_rows = max_queue_rows
        self.namespace_queue_rows = namespace_queue_rows
        # One FIFO per namespace with entries, in turn order (dicts keep insertion order; a
        # namespace that was served moves to the end). Empty ones are removed.
        self._queues: dict[str, deque[PendingRequest]] = {}
        self._queued_rows = 0
        self._namespace_rows: dict[str, int] = {}  # live queued rows per namespace (> 0 only)
        self._arrivals = 0
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

    def namespace_rows(self, namespace: str) -> int:
        """Rows `namespace` has waiting in the queue."""
        return self._namespace_rows.get(namespace, 0)

    async def submit(
        self,
        key: AdapterKey | None,
        texts: Sequence[str],
        namespace: str | None = None,
        uncertainty: UncertaintyRequest = NO_UNCERTAINTY,
    ) -> Any:
        """Queue `texts` and wait for their results. `namespace`: the tenant asking (default:
        the adapter's namespace; "" for the base model)."""
        ns = namespace if namespace is not None else (key.namespace if key is not None else "")
        mine = self._namespace_rows.get(ns, 0)
        if self.namespace_queue_rows and mine + len(texts) > self.namespace_queue_rows:
            PREDICT_REJECTED.inc()
            raise QuotaExceeded(
                "queued_predict_rows",
                self.namespace_queue_rows,
                mine,
                f"namespace {ns!r} is at its queued_predict_rows quota: {mine} of "
                f"{self.namespace_queue_rows} rows waiting, this request adds {len(texts)}; "
                "retry once its queued requests are answered",
                self._drain_estimate(mine),
            )
        if self._queued_rows + len(texts) > self.max_queue_rows:
            PREDICT_REJECTED.inc()
            raise CapacityExceeded(
                f"predict queue is full ({self._queued_rows} rows waiting); retry with backoff"
            )
        self._arrivals += 1
        request = PendingRequest(
            key,
            texts,
            asyncio.get_running_loop().create_future(),
            ns,
            uncertainty=uncertainty,
            arrival=self._arrivals,
        )
        request.queued = True
        self._queued_requests += 1
        if ns in self._queues:
            self._queues[ns].append(request)
        else:  # a namespace with nothing waiting takes the next turn
            self._queues = {ns: deque([request]), **self._queues}
        self._namespace_rows[ns] = mine + request.rows
        self._set_queued_rows(self._queued_rows + request.rows)
        request.future.add_done_callback(functools.partial(self._settled, request))
        self._wakeup.set()
        # Awaiting the future directly: if this call is cancelled (deadline, disconnect),
        # the future is cancelled too, and _settled takes the request out of the queue bound.
        return await request.future

    def _set_queued_rows(self, rows: int) -> None:
        self._queued_rows = rows
        PREDICT_QUEUE_ROWS.set(rows)

    def _drain_estimate(self, rows: int) -> float:
        """Seconds until `rows` of one namespace are likely answered: its turns of the coming
        batches at the last forward pass's pace (a hint for RetryInfo, at least 0.1 s)."""
        batches = rows / max(self.max_batch_rows, 1) + 1
        return round(max(0.1, batches * max(self._last_forward, self.max_wait)), 3)

    def _unqueue(self, request: PendingRequest) -> None:
        request.queued = False
        self._queued_requests -= 1
        left = self._namespace_rows[request.namespace] - request.rows
        if left:
            self._namespace_rows[request.namespace] = left
        else:
            del self._namespace_rows[request.namespace]
        self._set_queued_rows(self._queued_rows - request.rows)

    def _settled(self, request: PendingRequest, _future: asyncio.Future[Any]) -> None:
        """Done-callback of every request's future. Only a request cancelled while still
        queued is affected: its rows leave the bound now, and its entry is skipped later."""
        if not request.queued:  # taken by the batcher (or dropped by _take) already
            return
        self._unqueue(request)
        PREDICT_DROPPED.inc()
        self._dead += 1
        if self._dead >= _COMPACT_AT and 2 * self._dead >= sum(len(q) for q in self._queues.values()):
            queues = {ns: deque(r for r in q if r.queued) for ns, q in self._queues.items()}
            self._queues = {ns: q for ns, q in queues.items() if q}
            self._dead = 0

    def _head(self, ns: str) -> PendingRequest | None:
        """The oldest live request of `ns`, dropping dead entries before it; None (and the
        namespace's queue removed) when it has none."""
        queue = self._queues[ns]
        while queue:
            head = queue[0]
            if not head.queued:  # dropped earlier by _settled: its rows are already gone
                queue.popleft()
                self._dead -= 1
                continue
            if head.future.done():  # cancelled, its done-callback not run yet
                queue.popleft()
                self._unqueue(head)
                PREDICT_DROPPED.inc()
                continue
            return head
        del self._queues[ns]
        return None

    def _take(self, limit: int) -> list[PendingRequest]:
        """Round-robin over the namespaces in turn order: each gives its oldest request, and
        moves to the back of the turn order, until the next request would pass `limit` rows
        (that namespace then goes first in the next batch) or the queues are empty. The batch
        lists what it took in arrival order."""
        taken: list[PendingRequest] = []
        rows = 0
        now = time.monotonic()
        while self._queues:
            for ns in list(self._queues):
                head = self._head(ns)
                if head is None:
                    continue
                if taken and rows + head.rows > limit:
                    return sorted(taken, key=lambda r: r.arrival)
                queue = self._queues.pop(ns)
                queue.popleft()
                if queue:
                    self._queues[ns] = queue  # back of the turn order
                self._unqueue(head)
                QUEUE_SECONDS.observe(now - head.enqueued)
                taken.append(head)
                rows += head.rows
        return sorted(taken, key=lambda r: r.arrival)

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
            if not self._queues:
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
