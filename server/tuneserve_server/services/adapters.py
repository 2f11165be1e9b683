"""The adapter registry as callers see it: the job store's version rows, the adapter
store's files and this process's residency, kept in step. Deleting an adapter spans all
three: the rows are marked deleted, the files removed, the engine unloads the versions.

Pins are capped per namespace (quota_pinned_adapters: pinned versions in this process's
cache); the engine's registry also keeps a reserve of slots nobody may pin
(engine/registry.py)."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from tuneserve_server.domain.errors import NotFound, QuotaExceeded
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.audit import audit
from tuneserve_server.services.quotas import quotas_of
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore

# (namespace, name, version) -> (pinned, last_used, size_bytes) of the versions resident here
Residency = dict[tuple[str, str, int], tuple[bool, float, int]]


@dataclass(frozen=True)
class AdapterPage:
    adapters: list[list[AdapterVersionRecord]]  # per name, its versions oldest first
    residency: Residency
    next_page_token: str


@dataclass(frozen=True)
class Loaded:
    record: AdapterVersionRecord
    pinned: bool
    size_bytes: int
    load_seconds: float  # 0 when it was resident already


class AdapterService:
    def __init__(self, store: JobStore, adapter_store: AdapterStore, engine: InferenceEngine) -> None:
        self.store = store
        self.adapter_store = adapter_store
        self.engine = engine
        self.max_pinned = quotas_of(engine.settings).pinned_adapters
        self._pin_lock = asyncio.Lock()  # a pin's count and the pin itself, one at a time

    async def residency(self) -> Residency:
        return {(k.namespace, k.name, k.version): v for k, v in (await self.engine.residency()).items()}

    async def list(self, namespace: str, *, page_size: int, page_token: str) -> AdapterPage:
        names, token = await asyncio.to_thread(
            functools.partial(self.store.adapter_names, namespace, page_size=page_size, page_token=page_token)
        )
        records = await asyncio.to_thread(self.store.adapter_versions, namespace)
        residency = await self.residency()
        wanted = set(names)
        by_name: dict[str, list[AdapterVersionRecord]] = {}
        for rec in records:
            if rec.name in wanted:
                by_name.setdefault(rec.name, []).append(rec)
        return AdapterPage([by_name[n] for n in names if n in by_name], residency, token)

    async def versions(self, namespace: str) -> list[AdapterVersionRecord]:
        """Every live version of every adapter in `namespace` (bounded by the
        adapter_versions quota), oldest first per name."""
        return await asyncio.to_thread(self.store.adapter_versions, namespace)

    async def get(self, namespace: str, name: str) -> tuple[list[AdapterVersionRecord], Residency]:
        records = await asyncio.to_thread(self.store.adapter_versions, namespace, name)
        if not records:
            raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")
        return records, await self.residency()

    async def delete(self, ref: AdapterRef) -> list[int]:
        """Delete `name` (every version) or `name@version`: registry rows first (so no
        replica resolves them any more), then the files, then this process unloads them
        (other replicas unload on their next registry poll). Returns the versions deleted."""
        deleted = await asyncio.to_thread(
            self.store.delete_adapter_versions, ref.namespace, ref.name, ref.version
        )
        for rec in deleted:
            await asyncio.to_thread(self.adapter_store.delete, rec.namespace, rec.name, rec.version)
        await self.engine.refresh()
        audit(
            "adapter.delete", namespace=ref.namespace, adapter=ref.name, versions=[r.version for r in deleted]
        )
        return [r.version for r in deleted]

    async def load(self, ref: AdapterRef, *, pin: bool) -> Loaded:
        if not pin or not self.max_pinned:
            return Loaded(*await self.engine.load_adapter(ref, pin=pin))
        async with self._pin_lock:
            record = await self.engine.resolve(ref)
            pinned = {
                (k.name, k.version)
                for k, (is_pinned, _, _) in (await self.engine.residency()).items()
                if is_pinned and k.namespace == ref.namespace
            }
            if (record.name, record.version) not in pinned and len(pinned) >= self.max_pinned:
                raise QuotaExceeded(
                    "pinned_adapters",
                    self.max_pinned,
                    len(pinned),
                    f"namespace {ref.namespace!r} is at its pinned_adapters quota: {len(pinned)} of "
                    f"{self.max_pinned} adapter versions pinned; unpin one (UnloadAdapter) first",
                )
            return Loaded(*await self.engine.load_adapter(ref, pin=pin))

    async def unload(self, ref: AdapterRef) -> list[int]:
        return await self.engine.unload_adapter(ref)
