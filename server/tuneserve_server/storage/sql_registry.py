"""The adapter registry in the SQL job store: version numbers, published versions, deletion,
and the change feed replicas poll (seq order is commit order: see sql_store)."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager

import sqlalchemy as sa

from tuneserve_server.domain.aliases import AliasRecord
from tuneserve_server.domain.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import adapter_from_row
from tuneserve_server.storage.sql import Dialect, Tx, has_nul, valid_page_size
from tuneserve_server.storage.sql_aliases import AliasesMixin, alias_from_row
from tuneserve_server.storage.sql_statements import Statements

AV = schema.adapter_versions


class RegistryMixin(AliasesMixin):
    """The registry half of SqlStore (it supplies the transactions and the dialect); the
    aliases are sql_aliases.AliasesMixin."""

    _d: Dialect
    _q: Statements

    def _write(self) -> AbstractContextManager[Tx]: ...  # provided by SqlStore

    def _autocommit(self) -> AbstractContextManager[Tx]: ...

    def reserve_adapter_version(self, namespace: str, name: str) -> int:
        with self._autocommit() as tx:  # one statement: its own transaction
            return int(tx.scalar(self._q.reserve_version, namespace=namespace, name=name))

    def register_adapter_version(self, adapter: AdapterVersionRecord, *, promote: bool = True) -> None:
        """Publish a version that no job of this store trained (ImportAdapter): the same
        registry row complete_job writes, without the job; `default` moves to it as under
        policy always (when `promote`; a first version always becomes `default`)."""
        with self._write() as tx:
            seq = self._publish_version(tx, adapter)
            move = self._promote_in(
                tx,
                adapter.namespace,
                adapter.name,
                adapter.version,
                promote=promote,
                actor=adapter.job_id or "import",
                reason="imported",
            )
            self._notify(tx, move.sequence if move else seq)

    def _publish_version(self, tx: Tx, adapter: AdapterVersionRecord) -> int:
        """Insert a published version's registry row (complete_job and
        register_adapter_version both come here); returns its seq. AlreadyExists rolls the
        caller's whole transaction back."""
        seq = self._tick(tx)
        published = tx.row(
            self._q.publish,
            namespace=adapter.namespace,
            name=adapter.name,
            version=adapter.version,
            job_id=adapter.job_id,
            task=adapter.task.value,
            base_model=adapter.base_model,
            labels_json=json.dumps(list(adapter.labels)),
            metrics_json=json.dumps(adapter.metrics),
            lora_rank=adapter.lora_rank,
            size_bytes=adapter.size_bytes,
            seq=seq,
            lineage_json=json.dumps(adapter.lineage),
        )
        if published is None:
            raise AlreadyExists(f"adapter {adapter.name}@{adapter.version} is already published")
        return seq

    def adapter_versions(
        self, namespace: str, name: str | None = None, *, include_deleted: bool = False
    ) -> list[AdapterVersionRecord]:
        if has_nul(namespace, name):
            return []
        query = sa.select(AV).where(AV.c.namespace == namespace)
        if name is not None:
            query = query.where(AV.c.name == name)
        if not include_deleted:
            query = query.where(sa.not_(AV.c.deleted))
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(AV.c.name, AV.c.version))
        return [adapter_from_row(r) for r in rows]

    def adapter_names(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[str], str]:
        size = valid_page_size(page_size)
        if has_nul(page_token):
            raise InvalidRequest.field("page_token", "is not a token this server returned")
        if has_nul(namespace):
            return [], ""
        with self._autocommit() as tx:
            names = tx.scalars(
                sa.select(AV.c.name)
                .distinct()
                .where(AV.c.namespace == namespace, sa.not_(AV.c.deleted), AV.c.name > page_token)
                .order_by(AV.c.name)
                .limit(size + 1)
            )
        return list(names[:size]), (names[size - 1] if len(names) > size else "")

    def delete_adapter_versions(
        self, namespace: str, name: str, version: int | None = None, *, actor: str = ""
    ) -> list[AdapterVersionRecord]:
        what = name if version is None else f"{name}@{version}"
        if has_nul(namespace, name):
            raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
        query = sa.select(AV).where(AV.c.namespace == namespace, AV.c.name == name, sa.not_(AV.c.deleted))
        if version is not None:
            query = query.where(AV.c.version == version)
        with self._write() as tx:
            # The clock first, then the rows: the lock order complete_job uses.
            self._lock_clock(tx)
            rows = tx.rows(query.order_by(AV.c.version).with_for_update())
            if not rows:
                raise NotFound(f"adapter {what!r} not found in namespace {namespace!r}")
            aliases = self._live_aliases(tx, namespace, name)
            if version is not None:
                pointing = sorted(a for a, v in aliases.items() if v == version)
                if pointing:
                    raise FailedPrecondition(
                        f"adapter {name}@{version} cannot be deleted: the alias"
                        f"{'es' if len(pointing) > 1 else ''} {', '.join(pointing)} point"
                        f"{'' if len(pointing) > 1 else 's'} at it; move "
                        f"{'them' if len(pointing) > 1 else 'it'} first (SetAlias / PromoteVersion)"
                    )
            else:  # the whole adapter goes: its aliases with it (the history stays)
                for alias, current in aliases.items():
                    self._move_alias(
                        tx,
                        namespace,
                        name,
                        alias,
                        0,
                        actor=actor,
                        tenant=namespace,
                        reason="adapter deleted",
                        from_version=current,
                    )
            for row in rows:
                seq = self._tick(tx)
                tx.execute(
                    sa.update(AV)
                    .where(AV.c.namespace == namespace, AV.c.name == name, AV.c.version == row["version"])
                    .values(deleted=True, seq=seq)
                )
            self._notify(tx, seq)
        return [adapter_from_row(r) for r in rows]

    def adapter_changes(self, after_seq: int, limit: int = 1000) -> list[AdapterVersionRecord]:
        # No in-flight filter needed: seqs are handed out in commit order (module docstring).
        with self._autocommit() as tx:
            rows = tx.rows(self._q.changes, after=after_seq, limit=limit)
        return [adapter_from_row(r) for r in rows]

    def registry_changes(
        self, after_seq: int, limit: int = 1000
    ) -> tuple[list[AdapterVersionRecord], list[AliasRecord]]:
        """Version rows and alias rows changed after `after_seq`, each by seq, as one
        consistent cut: both read up to the clock's committed value (a seq at or below it
        belongs to a committed transaction: the clock's row lock), and when either side is
        cut short by `limit`, both stop at the same seq, so a poller that moves to the
        highest seq it saw skips nothing."""
        clock = schema.registry_clock
        with self._autocommit() as tx:
            upto = int(tx.scalar(sa.select(clock.c.seq).where(clock.c.id == 1)))
            if upto <= after_seq:
                return [], []
            versions = [
                adapter_from_row(r)
                for r in tx.rows(self._q.changes_upto, after=after_seq, upto=upto, limit=limit)
            ]
            aliases = [
                alias_from_row(r)
                for r in tx.rows(self._q.alias_changes_upto, after=after_seq, upto=upto, limit=limit)
            ]
        cut = min([side[-1].seq for side in (versions, aliases) if len(side) == limit], default=None)
        if cut is not None:
            versions = [v for v in versions if v.seq <= cut]
            aliases = [a for a in aliases if a.seq <= cut]
        return versions, aliases

    def _notify(self, tx: Tx, seq: int) -> None:
        notice = self._d.after_registry_change(seq)
        if notice is not None:
            stmt, params = notice
            tx.execute(stmt, **params)

    def _tick(self, tx: Tx) -> int:
        """The next registry seq. The row lock taken here is held until the caller's
        transaction ends, which is what makes seq order commit order."""
        return int(tx.scalar(self._q.tick))
