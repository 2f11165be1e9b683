"""The prediction log: issues an opaque id for every row an adapter serves and writes what
was served to the store's predictions table in batches, off the request path.

Predict calls `issue` (no I/O: random ids and an append to a bounded in-memory queue); a
background task flushes the queue every `flush_s` (sooner once `batch_rows` are pending)
in one transaction on a worker thread, so a Predict never waits for the database. Which
adapters keep their inputs (the store_inputs setting, off by default) is read at flush time
and cached for `settings_ttl_s`, so inputs of other adapters never reach the store; a
setting changed on another replica applies here within that time.

Any replica can look an id up once its batch is written (at most `flush_s` plus one write
after the Predict); on the replica that served it, `flush()` makes it visible at once
(SubmitFeedback calls it before answering NOT_FOUND). Pending rows are bounded
(`max_pending`; an adapter known not to store inputs queues none, so a row is a few
numbers; otherwise at most max_text_chars of input and output each): past it the oldest are dropped and counted
(tuneserve_prediction_log_dropped_total); a failed write drops its batch the same way. A
sweep every `sweep_every_s` forgets rows older than `retention_s` and the oldest of any
tenant holding more than `max_per_tenant`."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from tuneserve_server.domain.feedback import ServedPrediction
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.observability.metrics import (
    PREDICTION_LOG_DROPPED,
    PREDICTION_LOG_PENDING,
    PREDICTION_LOG_WRITTEN,
)
from tuneserve_server.storage.feedback_store import FeedbackStore

log = structlog.get_logger("tuneserve.services")


@dataclass(frozen=True)
class PredictionLogSettings:
    enabled: bool = True
    flush_s: float = 0.2
    batch_rows: int = 512
    max_pending: int = 20_000
    retention_s: float = 30 * 24 * 3600.0
    max_per_tenant: int = 1_000_000
    sweep_every_s: float = 300.0
    settings_ttl_s: float = 2.0


def new_prediction_id() -> str:
    """96 random bits: unguessable, so knowing one id tells nothing of another."""
    return "pr-" + secrets.token_hex(12)


class PredictionLog:
    def __init__(
        self, store: FeedbackStore, settings: PredictionLogSettings = PredictionLogSettings()
    ) -> None:
        self.store = store
        self.settings = settings
        self._pending: deque[ServedPrediction] = deque()
        self._wake: asyncio.Event | None = None
        self._flush_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._store_inputs: dict[tuple[str, str], tuple[float, bool]] = {}
        self._last_sweep = time.monotonic()

    # ------------------------------------------------------------------ hot path
    def issue(
        self,
        namespace: str,
        adapter_name: str,
        adapter_version: int,
        task: TaskType,
        rows: Sequence[tuple[str, float, str, str | None]],
    ) -> list[str]:
        """Ids for served rows (label, score, input, generated text or None), queued to be
        written. Empty ids when the log is off."""
        if not self.settings.enabled:
            return [""] * len(rows)
        ids = [new_prediction_id() for _ in rows]
        pending = self._pending
        # Inputs of an adapter known not to keep them are not even queued (the default): the
        # queue then holds a few numbers per row. Unknown or on: decided again at the flush.
        known = self._store_inputs.get((namespace, adapter_name))
        drop = known is not None and not known[1]
        for pid, (label, score, text, output) in zip(ids, rows, strict=True):
            if drop:
                text, output = None, None
            pending.append(
                ServedPrediction(
                    pid, namespace, adapter_name, adapter_version, task, label, score, text, output
                )
            )
        over = len(pending) - self.settings.max_pending
        if over > 0:
            for _ in range(over):
                pending.popleft()
            PREDICTION_LOG_DROPPED.inc(over)
        PREDICTION_LOG_PENDING.set(len(pending))
        if len(pending) >= self.settings.batch_rows and self._wake is not None:
            self._wake.set()
        return ids

    # ------------------------------------------------------------------ background
    def start(self) -> None:
        if not self.settings.enabled or self._task is not None:
            return
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is pending, then stop the background task."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        await self.flush()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() - self._last_sweep >= self.settings.sweep_every_s:
                    self._last_sweep = time.monotonic()
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: the batch is counted as dropped; go on
                log.exception("prediction log flush failed")

    async def flush(self) -> int:
        """Write every pending row now; returns how many were written. It waits for a flush
        already writing, so once it returns every id issued before the call is stored."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:
            batch: list[ServedPrediction] = []
            while self._pending:
                batch.append(self._pending.popleft())
            PREDICTION_LOG_PENDING.set(len(self._pending))
            if not batch:
                return 0
            try:
                return await asyncio.to_thread(self._write, batch)
            except Exception:
                PREDICTION_LOG_DROPPED.inc(len(batch))
                raise

    def _write(self, batch: list[ServedPrediction]) -> int:
        keep = self._keeps_inputs({(p.namespace, p.adapter_name) for p in batch})
        rows = [
            p
            if keep[(p.namespace, p.adapter_name)]
            else ServedPrediction(
                p.id, p.namespace, p.adapter_name, p.adapter_version, p.task, p.label, p.score, None, None
            )
            for p in batch
        ]
        written = self.store.insert_predictions(rows)
        PREDICTION_LOG_WRITTEN.inc(written)
        return written

    def _keeps_inputs(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        now = time.monotonic()
        cached = self._store_inputs
        stale = [k for k in keys if k not in cached or now - cached[k][0] > self.settings.settings_ttl_s]
        if stale:
            for key, value in self.store.store_inputs_of(stale).items():
                cached[key] = (now, value)
            if len(cached) > 10_000:  # bounded: forget the oldest half
                for key in sorted(cached, key=lambda k: cached[k][0])[: len(cached) // 2]:
                    del cached[key]
        return {k: cached[k][1] for k in keys}

    def forget_setting(self, namespace: str, adapter_name: str) -> None:
        """This replica's SetFeedbackSettings applies from the next flush."""
        self._store_inputs.pop((namespace, adapter_name), None)

    async def sweep(self) -> int:
        s = self.settings
        gone = await asyncio.to_thread(self.store.sweep_predictions, s.retention_s, s.max_per_tenant)
        if gone:
            log.info("predictions swept", count=gone)
        return gone
