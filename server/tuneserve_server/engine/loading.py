"""Cold adapter loads off the torch thread.

Opening a version in the adapter store (a download for a remote store, the SHA-256 checks of
its manifest) and reading its tensors take tens to hundreds of milliseconds. They run here on
a small pool of loader threads (`max_concurrent_loads`), so the torch thread keeps running
batches for resident adapters meanwhile; only the cheap install into a slot (copying the
factors into the LoRA bank) runs on the torch thread. Concurrent requests for one cold
adapter share a single load (single flight), and a caller that gives up (deadline, cancel)
does not cancel the load the others wait for."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor

from tuneserve_server.engine.registry import (
    AdapterKey,
    AdapterRegistry,
    PreparedAdapter,
    ResidentAdapter,
)
from tuneserve_server.observability.metrics import ADAPTER_LOAD_FAILURES
from tuneserve_server.storage.adapter_store import AdapterStore


class AdapterLoader:
    def __init__(
        self,
        registry: AdapterRegistry,
        adapter_store: AdapterStore,
        torch_executor: Executor,
        *,
        max_concurrent: int,
    ) -> None:
        self.registry = registry
        self.adapter_store = adapter_store
        self.torch_executor = torch_executor
        self.pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="adapter-load")
        self._inflight: dict[AdapterKey, asyncio.Task[ResidentAdapter]] = {}
        self.loads_started = 0  # loads this loader ran (not calls: shared loads count once)

    def is_resident(self, key: AdapterKey) -> bool:
        # A dict lookup from the event loop while the torch thread may change the dict:
        # atomic under the GIL, and a stale answer only means one extra load attempt or one
        # on-demand load in the batch.
        return self.registry.get(key) is not None

    async def ensure(self, key: AdapterKey) -> ResidentAdapter:
        """Make `key` resident (or mark it used if it is); returns its entry. One load per key
        at a time."""
        loop = asyncio.get_running_loop()
        if self.is_resident(key) and key not in self._inflight:
            try:  # the LRU touch changes the registry: on the torch thread
                return await loop.run_in_executor(self.torch_executor, self.registry.ensure, key, None)
            except ValueError:  # evicted since we looked: load it
                pass
        task = self._inflight.get(key)
        if task is None:
            task = loop.create_task(self._load(key), name=f"load {key}")
            self._inflight[key] = task
            self.loads_started += 1
            task.add_done_callback(lambda t, k=key: self._done(k, t))
        # shield: one caller's cancellation must not cancel the load the others share
        return await asyncio.shield(task)

    def _done(self, key: AdapterKey, task: asyncio.Task[ResidentAdapter]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning if every caller left

    def _prepare(self, key: AdapterKey) -> PreparedAdapter:
        """Loader thread: open (download, verify) and read the adapter."""
        try:
            directory = self.adapter_store.open(key.namespace, key.name, key.version)
            return self.registry.prepare(key, directory)
        except Exception:
            ADAPTER_LOAD_FAILURES.inc()
            raise

    async def _load(self, key: AdapterKey) -> ResidentAdapter:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.pool, self._prepare, key)
        return await loop.run_in_executor(self.torch_executor, self.registry.install, prepared)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
