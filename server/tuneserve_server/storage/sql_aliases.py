"""Adapter aliases in the SQL job store: named pointers at versions, moved atomically (one
transaction: the alias row, its history entry, the registry seq replicas poll), with a
bounded history per adapter.

Lock order as everywhere in the registry: jobs row -> registry_clock -> registry rows. Every
alias write takes the clock's row lock first, so it serialises against version deletes (a
version cannot be deleted while an alias move to it commits, and the other way round)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from tuneserve_server.domain.aliases import AliasMove, AliasRecord
from tuneserve_server.domain.errors import CapacityExceeded, FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.naming import DEFAULT_ALIAS
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import _ts
from tuneserve_server.storage.sql import Dialect, Tx, has_nul, strip_nul, valid_page_size
from tuneserve_server.storage.sql_statements import Statements

AV = schema.adapter_versions
AA = schema.adapter_aliases
AH = schema.alias_history

# Alias history entries kept per adapter (older ones are dropped as new ones arrive).
HISTORY_KEEP = 1000


def _move_from_row(row: dict[str, Any]) -> AliasMove:
    return AliasMove(
        namespace=row["namespace"],
        name=row["name"],
        alias=row["alias"],
        from_version=int(row["from_version"]),
        to_version=int(row["to_version"]),
        actor=row["actor"],
        tenant=row["tenant"],
        reason=row["reason"],
        time=_ts(row["time"]),
        sequence=int(row["seq"]),
    )


def alias_from_row(row: dict[str, Any]) -> AliasRecord:
    return AliasRecord(
        row["namespace"],
        row["name"],
        row["alias"],
        int(row["version"]),
        int(row["seq"]),
        _ts(row["updated_at"]),
    )


class AliasesMixin:
    """The alias half of SqlStore's registry (it supplies transactions, dialect, the clock)."""

    _d: Dialect
    _q: Statements
    alias_history_keep: int = HISTORY_KEEP

    def _write(self) -> AbstractContextManager[Tx]: ...  # provided by SqlStore

    def _autocommit(self) -> AbstractContextManager[Tx]: ...

    def _tick(self, tx: Tx) -> int: ...  # RegistryMixin

    def _notify(self, tx: Tx, seq: int) -> None: ...  # RegistryMixin

    # ------------------------------------------------------------------ inside a transaction
    def _lock_clock(self, tx: Tx) -> None:
        clock = schema.registry_clock
        tx.execute(sa.select(clock.c.seq).where(clock.c.id == 1).with_for_update())

    def _live_aliases(self, tx: Tx, namespace: str, name: str) -> dict[str, int]:
        rows = tx.rows(
            sa.select(AA.c.alias, AA.c.version).where(
                AA.c.namespace == namespace, AA.c.name == name, AA.c.version > 0
            )
        )
        return {r["alias"]: int(r["version"]) for r in rows}

    def _live_versions(self, tx: Tx, namespace: str, name: str) -> set[int]:
        return set(
            tx.scalars(
                sa.select(AV.c.version).where(
                    AV.c.namespace == namespace, AV.c.name == name, sa.not_(AV.c.deleted)
                )
            )
        )

    def _move_alias(
        self,
        tx: Tx,
        namespace: str,
        name: str,
        alias: str,
        to_version: int,
        *,
        actor: str,
        tenant: str,
        reason: str,
        from_version: int,
    ) -> AliasMove:
        """Point `alias` at `to_version` (0: remove it) and record the move. The caller holds
        the clock's lock and has read `from_version` under it."""
        seq = self._tick(tx)
        values = {"version": to_version, "updated_at": self._d.now, "seq": seq}
        tx.execute(
            self._d.insert(AA)
            .values(namespace=namespace, name=name, alias=alias, **values)
            .on_conflict_do_update(index_elements=[AA.c.namespace, AA.c.name, AA.c.alias], set_=values)
        )
        row = tx.row(
            sa.insert(AH)
            .values(
                namespace=namespace,
                name=name,
                alias=alias,
                from_version=from_version,
                to_version=to_version,
                actor=strip_nul(actor),
                tenant=strip_nul(tenant),
                reason=strip_nul(reason),
                time=self._d.now,
                seq=seq,
            )
            .returning(*AH.c)
        )
        assert row is not None
        keep = self.alias_history_keep
        oldest_kept = (
            sa.select(AH.c.id)
            .where(AH.c.namespace == namespace, AH.c.name == name)
            .order_by(AH.c.id.desc())
            .offset(keep - 1)
            .limit(1)
            .scalar_subquery()
        )
        tx.execute(sa.delete(AH).where(AH.c.namespace == namespace, AH.c.name == name, AH.c.id < oldest_kept))
        return _move_from_row(row)

    def _promote_in(
        self, tx: Tx, namespace: str, name: str, version: int, *, promote: bool, actor: str, reason: str
    ) -> AliasMove | None:
        """complete_job / register_adapter_version: move `default` to a just-published version
        when `promote` and it is newer than what `default` points at (policy always: the
        newest version), or when the adapter has no `default` yet (its first version, whatever
        the policy). The caller holds the clock lock (it published under it)."""
        current = self._live_aliases(tx, namespace, name).get(DEFAULT_ALIAS, 0)
        if current and not (promote and version > current):
            return None
        why = reason if current else f"{reason}; the adapter's first version" if reason else "first version"
        return self._move_alias(
            tx,
            namespace,
            name,
            DEFAULT_ALIAS,
            version,
            actor=actor,
            tenant=namespace,
            reason=why,
            from_version=current,
        )

    # ------------------------------------------------------------------ public
    def set_alias(
        self,
        namespace: str,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        tenant: str,
        reason: str,
        max_aliases: int,
    ) -> AliasMove:
        """Point `alias` at `version` (a live version). NotFound for an unknown adapter or
        version; CapacityExceeded past `max_aliases` per adapter. Pointing it where it already
        points records nothing (the move returned has sequence 0)."""
        if has_nul(namespace, name, alias):
            raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")
        with self._write() as tx:
            self._lock_clock(tx)
            versions = self._live_versions(tx, namespace, name)
            if not versions:
                raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")
            if version not in versions:
                raise NotFound(
                    f"adapter {name!r} has no version {version} (versions: {', '.join(map(str, sorted(versions)))})"
                )
            aliases = self._live_aliases(tx, namespace, name)
            current = aliases.get(alias, 0)
            if current == version:
                return AliasMove(namespace, name, alias, current, version, actor, tenant, "unchanged")
            if not current and max_aliases and len(aliases) >= max_aliases:
                raise CapacityExceeded(
                    f"adapter {name!r} has {len(aliases)} aliases, the most one adapter may have "
                    f"({max_aliases}); remove one first"
                )
            move = self._move_alias(
                tx,
                namespace,
                name,
                alias,
                version,
                actor=actor,
                tenant=tenant,
                reason=reason,
                from_version=current,
            )
            self._notify(tx, move.sequence)
        return move

    def remove_alias(
        self, namespace: str, name: str, alias: str, *, actor: str, tenant: str, reason: str
    ) -> AliasMove:
        if alias == DEFAULT_ALIAS:
            raise FailedPrecondition(
                "the alias 'default' is what the bare adapter name serves: move it (PromoteVersion), do not remove it"
            )
        with self._write() as tx:
            self._lock_clock(tx)
            current = (
                self._live_aliases(tx, namespace, name).get(alias, 0) if not has_nul(namespace, name) else 0
            )
            if not current:
                raise NotFound(f"adapter {name!r} has no alias {alias!r} in namespace {namespace!r}")
            move = self._move_alias(
                tx, namespace, name, alias, 0, actor=actor, tenant=tenant, reason=reason, from_version=current
            )
            self._notify(tx, move.sequence)
        return move

    def rollback_alias(
        self, namespace: str, name: str, alias: str, *, actor: str, tenant: str, reason: str
    ) -> AliasMove:
        """Move `alias` back to the version it pointed at before its last move (so two
        rollbacks in a row return to where they started, as `helm rollback` does).
        FailedPrecondition when there is no previous version or it was deleted."""
        if has_nul(namespace, name):
            raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")
        with self._write() as tx:
            self._lock_clock(tx)
            current = self._live_aliases(tx, namespace, name).get(alias, 0)
            if not current:
                if not self._live_versions(tx, namespace, name):
                    raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")
                raise NotFound(f"adapter {name!r} has no alias {alias!r}")
            last = tx.row(
                sa.select(AH)
                .where(
                    AH.c.namespace == namespace,
                    AH.c.name == name,
                    AH.c.alias == alias,
                    AH.c.to_version == current,
                )
                .order_by(AH.c.id.desc())
                .limit(1)
            )
            previous = int(last["from_version"]) if last else 0
            if not previous:
                raise FailedPrecondition(
                    f"{name}@{alias} has pointed at version {current} only: there is nothing to roll back to"
                )
            if previous not in self._live_versions(tx, namespace, name):
                raise FailedPrecondition(
                    f"{name}@{alias} pointed at version {previous} before {current}, but that version was deleted"
                )
            move = self._move_alias(
                tx,
                namespace,
                name,
                alias,
                previous,
                actor=actor,
                tenant=tenant,
                reason=reason,
                from_version=current,
            )
            self._notify(tx, move.sequence)
        return move

    def adapter_aliases(self, namespace: str, name: str | None = None) -> list[AliasRecord]:
        """The live aliases of an adapter (or of every adapter in the namespace), by name, alias."""
        if has_nul(namespace, name):
            return []
        query = sa.select(AA).where(AA.c.namespace == namespace, AA.c.version > 0)
        if name is not None:
            query = query.where(AA.c.name == name)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(AA.c.name, AA.c.alias))
        return [alias_from_row(r) for r in rows]

    def alias_history(
        self, namespace: str, name: str, *, alias: str = "", page_size: int = 50, page_token: str = ""
    ) -> tuple[list[AliasMove], str]:
        """An adapter's alias moves, newest first (of one alias, when given)."""
        size = valid_page_size(page_size)
        before = None
        if page_token:
            if not (page_token.isascii() and page_token.isdigit()) or len(page_token) > 18:
                raise InvalidRequest.field("page_token", "is not a token this server returned")
            before = int(page_token)
        if has_nul(namespace, name, alias):
            return [], ""
        query = sa.select(AH).where(AH.c.namespace == namespace, AH.c.name == name)
        if alias:
            query = query.where(AH.c.alias == alias)
        if before is not None:
            query = query.where(AH.c.id < before)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(AH.c.id.desc()).limit(size + 1))
        token = str(rows[size - 1]["id"]) if len(rows) > size else ""
        return [_move_from_row(r) for r in rows[:size]], token

    def alias_changes(self, after_seq: int, limit: int = 1000) -> list[AliasRecord]:
        """Alias rows (moved or removed) changed after `after_seq`, by seq: the alias half of
        the registry change feed (seqs come from the same clock as adapter_changes)."""
        with self._autocommit() as tx:
            rows = tx.rows(self._q.alias_changes, after=after_seq, limit=limit)
        return [alias_from_row(r) for r in rows]
