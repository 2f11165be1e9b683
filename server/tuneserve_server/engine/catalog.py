"""This server's view of the adapter registry: which versions exist, where each alias points,
and so what a bare name (`default`), `name@alias` or `name@latest` resolves to.

Kept current by polling the job store for registry rows (versions and aliases) changed since
the last seen sequence number (every `registry_poll_s`). Polling, not push, because it works
the same on SQLite and PostgreSQL, survives a missed message, and costs one indexed query per
interval; a restarted server replays from seq 0 and knows every adapter without a load call.
An alias move reaches a replica exactly as a new version does: same clock, same poll."""

from __future__ import annotations

from collections.abc import Iterable

from tuneserve_server.domain.aliases import AliasRecord
from tuneserve_server.domain.errors import NotFound
from tuneserve_server.domain.naming import DEFAULT_ALIAS, LATEST_ALIAS, AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.engine.registry import AdapterKey


class AdapterCatalog:
    def __init__(self) -> None:
        self.seq = 0
        self._versions: dict[tuple[str, str], dict[int, AdapterVersionRecord]] = {}
        self._aliases: dict[tuple[str, str], dict[str, int]] = {}

    def apply(
        self, records: Iterable[AdapterVersionRecord], aliases: Iterable[AliasRecord] = ()
    ) -> tuple[list[AdapterKey], list[AdapterKey]]:
        """Fold registry changes in, in seq order. Returns (deleted keys, keys superseded: the
        version `default` moved away from, unless another alias still points at it; for an
        adapter without a `default` alias, every older version when a newer one arrives)."""
        deleted: list[AdapterKey] = []
        superseded: list[AdapterKey] = []
        changes: list[AdapterVersionRecord | AliasRecord] = [*records, *aliases]
        changes.sort(key=lambda c: c.seq)
        for change in changes:
            self.seq = max(self.seq, change.seq)
            pair = (change.namespace, change.name)
            if isinstance(change, AliasRecord):
                named = self._aliases.setdefault(pair, {})
                old = named.pop(change.alias, 0)
                if change.version:
                    named[change.alias] = change.version
                if (
                    change.alias == DEFAULT_ALIAS
                    and old
                    and old != change.version
                    and old not in named.values()
                ):
                    superseded.append(AdapterKey(*pair, old))
                if not named:
                    del self._aliases[pair]
                continue
            rec = change
            versions = self._versions.setdefault(pair, {})
            key = AdapterKey(rec.namespace, rec.name, rec.version)
            if rec.deleted:
                versions.pop(rec.version, None)
                deleted.append(key)
            else:
                if DEFAULT_ALIAS not in self._aliases.get(pair, {}):
                    superseded += [AdapterKey(*pair, v) for v in versions if v < rec.version]
                versions[rec.version] = rec
            if not versions:
                del self._versions[pair]
        return deleted, superseded

    def resolve(self, ref: AdapterRef) -> AdapterVersionRecord:
        versions = self._versions.get((ref.namespace, ref.name))
        if not versions:
            raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
        version = ref.version
        if version is None:
            alias = ref.alias or DEFAULT_ALIAS
            named = self._aliases.get((ref.namespace, ref.name), {})
            if alias == LATEST_ALIAS or (alias == DEFAULT_ALIAS and alias not in named):
                return versions[max(versions)]  # (no default: written before aliases existed)
            if alias not in named:
                raise NotFound(
                    f"adapter {ref.name!r} has no alias {alias!r} "
                    f"(aliases: {', '.join(sorted(named)) or 'none'}; 'latest' is the newest version)"
                )
            version = named[alias]
        rec = versions.get(version)
        if rec is None:
            raise NotFound(
                f"adapter {ref.name!r} has no version {version} "
                f"(versions: {', '.join(map(str, sorted(versions)))})"
            )
        return rec

    def aliases(self, namespace: str, name: str) -> dict[str, int]:
        return dict(self._aliases.get((namespace, name), {}))

    def latest(self, namespace: str, name: str) -> int:
        versions = self._versions.get((namespace, name))
        return max(versions) if versions else 0
