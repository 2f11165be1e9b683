"""The adapter registry as callers see it: the job store's version rows, the adapter
store's files and this process's residency, kept in step. Deleting an adapter spans all
three: the rows are marked deleted, the files removed, the engine unloads the versions.

Aliases (`default`, `prod`, ...) point at versions and move atomically with history
(storage/sql_aliases.py); the bare name means `default`. Moves go through here: SetAlias,
PromoteVersion (= move `default`), Rollback (back to the previous version), history.

Pins are capped per namespace (quota_pinned_adapters: pinned versions in this process's
cache); the engine's registry also keeps a reserve of slots nobody may pin
(engine/registry.py)."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from tuneserve_server.domain.aliases import Actor, AliasMove, AliasRecord, check_reason
from tuneserve_server.domain.errors import InvalidRequest, NotFound, QuotaExceeded, Violations
from tuneserve_server.domain.naming import DEFAULT_ALIAS, LATEST_ALIAS, AdapterRef, check_alias
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.audit import audit
from tuneserve_server.services.quotas import quotas_of
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore


def resolve_version(store: JobStore, ref: AdapterRef) -> AdapterVersionRecord:
    """The live version `ref` names, read from the store (authoritative, whatever this
    replica's view): name@version, name@alias, name@latest, or the bare name (`default`).
    Blocking."""
    records = store.adapter_versions(ref.namespace, ref.name)
    if not records:
        raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
    by_version = {r.version: r for r in records}
    version = ref.version
    if version is None:
        if ref.alias == LATEST_ALIAS:
            return records[-1]
        alias = ref.alias or DEFAULT_ALIAS
        aliases = {a.alias: a.version for a in store.adapter_aliases(ref.namespace, ref.name)}
        if alias not in aliases:
            if alias == DEFAULT_ALIAS:
                return records[-1]  # written before aliases existed
            raise NotFound(
                f"adapter {ref.name!r} has no alias {alias!r} (aliases: {', '.join(sorted(aliases)) or 'none'})"
            )
        version = aliases[alias]
    if version not in by_version:
        raise NotFound(
            f"adapter {ref.name!r} has no version {version} (versions: {', '.join(map(str, sorted(by_version)))})"
        )
    return by_version[version]


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
        self.max_aliases = engine.settings.max_aliases_per_adapter
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

    async def get(self, namespace: str, name: str) -> tuple[list[AdapterVersionRecord], Residency]:
        records = await asyncio.to_thread(self.store.adapter_versions, namespace, name)
        if not records:
            raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")
        return records, await self.residency()

    async def delete(self, ref: AdapterRef, actor: Actor | None = None) -> list[int]:
        """Delete `name` (every version, and its aliases) or `name@version` (`name@alias`:
        the version it points at, which an alias does, so that is always refused): registry
        rows first (so no replica resolves them any more), then the files, then this process
        unloads them (other replicas unload on their next registry poll). A version an alias
        points at is FailedPrecondition naming the aliases. Returns the versions deleted."""
        if ref.alias is not None:
            ref = await self.pinned_ref(ref)
        deleted = await asyncio.to_thread(
            functools.partial(
                self.store.delete_adapter_versions,
                ref.namespace,
                ref.name,
                ref.version,
                actor=str(actor) if actor else "",
            )
        )
        for rec in deleted:
            await asyncio.to_thread(self.adapter_store.delete, rec.namespace, rec.name, rec.version)
        await self.engine.refresh()
        audit(
            "adapter.delete", namespace=ref.namespace, adapter=ref.name, versions=[r.version for r in deleted]
        )
        return [r.version for r in deleted]

    async def pinned_ref(self, ref: AdapterRef) -> AdapterRef:
        """`name@alias` as `name@version`, read from the store (authoritative, not this
        replica's view); other refs unchanged."""
        if ref.alias is None:
            return ref
        if ref.alias == LATEST_ALIAS:
            records = await asyncio.to_thread(self.store.adapter_versions, ref.namespace, ref.name)
            if not records:
                raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
            return AdapterRef(ref.namespace, ref.name, records[-1].version)
        aliases = {
            a.alias: a.version
            for a in await asyncio.to_thread(self.store.adapter_aliases, ref.namespace, ref.name)
        }
        if ref.alias not in aliases:
            if not aliases:
                raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
            raise NotFound(
                f"adapter {ref.name!r} has no alias {ref.alias!r} (aliases: {', '.join(sorted(aliases))})"
            )
        return AdapterRef(ref.namespace, ref.name, aliases[ref.alias])

    # ------------------------------------------------------------------ aliases
    async def aliases(self, namespace: str, name: str | None = None) -> list[AliasRecord]:
        return await asyncio.to_thread(self.store.adapter_aliases, namespace, name)

    async def set_alias(self, ref: AdapterRef, alias: str, actor: Actor, reason: str) -> AliasMove:
        """Point `alias` at the version `ref` names (name@version, or name@other-alias: the
        version that alias points at now). Atomic, recorded in the history, seen by every
        replica on its next registry poll (this one at once)."""
        check_alias(alias, "alias", settable=True)
        v = Violations()
        check_reason(reason, "reason", v)
        v.raise_if_any("invalid alias move")
        if ref.bare:
            raise InvalidRequest.field("adapter", "name the version: name@version (or name@alias)")
        target = await self.pinned_ref(ref)
        assert target.version is not None
        move = await asyncio.to_thread(
            functools.partial(
                self.store.set_alias,
                ref.namespace,
                ref.name,
                alias,
                target.version,
                actor=str(actor),
                tenant=actor.tenant,
                reason=reason,
                max_aliases=self.max_aliases,
            )
        )
        return await self._moved(move)

    async def remove_alias(
        self, namespace: str, name: str, alias: str, actor: Actor, reason: str
    ) -> AliasMove:
        check_alias(alias, "alias", settable=True)
        v = Violations()
        check_reason(reason, "reason", v)
        v.raise_if_any("invalid alias removal")
        move = await asyncio.to_thread(
            functools.partial(
                self.store.remove_alias,
                namespace,
                name,
                alias,
                actor=str(actor),
                tenant=actor.tenant,
                reason=reason,
            )
        )
        return await self._moved(move)

    async def promote(self, ref: AdapterRef, actor: Actor, reason: str) -> AliasMove:
        """Move `default` (what the bare name serves) to the version `ref` names."""
        return await self.set_alias(ref, DEFAULT_ALIAS, actor, reason)

    async def rollback(
        self, namespace: str, name: str, actor: Actor, reason: str, alias: str = DEFAULT_ALIAS
    ) -> AliasMove:
        """Move `alias` (default: `default`) back to the version it pointed at before."""
        check_alias(alias, "alias", settable=True)
        v = Violations()
        check_reason(reason, "reason", v)
        v.raise_if_any("invalid rollback")
        move = await asyncio.to_thread(
            functools.partial(
                self.store.rollback_alias,
                namespace,
                name,
                alias,
                actor=str(actor),
                tenant=actor.tenant,
                reason=reason,
            )
        )
        return await self._moved(move)

    async def history(
        self, namespace: str, name: str, *, alias: str, page_size: int, page_token: str
    ) -> tuple[list[AliasMove], str]:
        if alias:
            check_alias(alias, "alias")
        moves, token = await asyncio.to_thread(
            functools.partial(
                self.store.alias_history,
                namespace,
                name,
                alias=alias,
                page_size=page_size,
                page_token=page_token,
            )
        )
        if not moves and not page_token:
            await self.get(namespace, name)  # NotFound for an adapter that never was
        return moves, token

    async def _moved(self, move: AliasMove) -> AliasMove:
        if move.sequence:
            audit(
                "alias.move",
                namespace=move.namespace,
                adapter=move.name,
                alias=move.alias,
                from_version=move.from_version,
                to_version=move.to_version,
                reason=move.reason,
            )
            await self.engine.refresh()  # this replica at once; the others on their next poll
        return move

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
        return await self.engine.unload_adapter(await self.pinned_ref(ref))
