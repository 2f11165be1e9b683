"""This server's view of the adapter registry: which versions exist, and which is latest.

Kept current by polling the job store for registry rows changed since the last seen
sequence number (every `registry_poll_s`). Polling, not push, because it works the same on
SQLite and PostgreSQL, survives a missed message, and costs one indexed query per interval;
a restarted server replays from seq 0 and knows every adapter without a load call."""

from __future__ import annotations

from collections.abc import Iterable

from tuneserve_server.domain.errors import NotFound
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.engine.registry import AdapterKey


class AdapterCatalog:
    def __init__(self) -> None:
        self.seq = 0
        self._versions: dict[tuple[str, str], dict[int, AdapterVersionRecord]] = {}

    def apply(self, records: Iterable[AdapterVersionRecord]) -> tuple[list[AdapterKey], list[AdapterKey]]:
        """Fold registry changes in. Returns (deleted keys, keys superseded by a newer version)."""
        deleted: list[AdapterKey] = []
        superseded: list[AdapterKey] = []
        for rec in records:
            self.seq = max(self.seq, rec.seq)
            versions = self._versions.setdefault((rec.namespace, rec.name), {})
            key = AdapterKey(rec.namespace, rec.name, rec.version)
            if rec.deleted:
                versions.pop(rec.version, None)
                deleted.append(key)
            else:
                superseded += [AdapterKey(rec.namespace, rec.name, v) for v in versions if v < rec.version]
                versions[rec.version] = rec
            if not versions:
                del self._versions[(rec.namespace, rec.name)]
        return deleted, superseded

    def resolve(self, ref: AdapterRef) -> AdapterVersionRecord:
        versions = self._versions.get((ref.namespace, ref.name))
        if not versions:
            raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
        if ref.version is None:
            return versions[max(versions)]
        rec = versions.get(ref.version)
        if rec is None:
            raise NotFound(
                f"adapter {ref.name!r} has no version {ref.version} "
                f"(versions: {', '.join(map(str, sorted(versions)))})"
            )
        return rec

    def latest(self, namespace: str, name: str) -> int:
        versions = self._versions.get((namespace, name))
        return max(versions) if versions else 0
