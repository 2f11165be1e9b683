"""API keys in the SQL job store: insert, read, list and revoke. The store keeps what
services/keys.py hands it (a salted hash, never a secret) and knows nothing of verifying."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from tuneserve_server.domain.errors import AlreadyExists, InvalidRequest, NotFound
from tuneserve_server.domain.tenancy import ApiKeyRecord, Role
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import _ts
from tuneserve_server.storage.sql import Dialect, Tx, has_nul

K = schema.api_keys


def _key_from_row(row: dict[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        roles=frozenset(Role(r) for r in json.loads(row["roles_json"])),
        salt=bytes(row["salt"]),
        secret_hash=bytes(row["secret_hash"]),
        description=row["description"],
        created_at=_ts(row["created_at"]),
        revoked_at=_ts(row["revoked_at"]),
    )


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"API key {key_id!r} not found")


class KeysMixin:
    """The API-key half of SqlStore (it supplies the transactions and the dialect)."""

    _d: Dialect

    def _write(self) -> AbstractContextManager[Tx]: ...  # provided by SqlStore

    def _autocommit(self) -> AbstractContextManager[Tx]: ...

    def insert_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        if has_nul(record.key_id, record.tenant, record.description):
            raise InvalidRequest.field("key", "must not contain NUL characters")
        roles = json.dumps(sorted(r.value for r in record.roles))
        with self._write() as tx:
            if tx.row(sa.select(K.c.key_id).where(K.c.key_id == record.key_id)) is not None:
                raise AlreadyExists(f"API key {record.key_id!r} already exists")
            tx.execute(
                sa.insert(K).values(
                    key_id=record.key_id,
                    tenant=record.tenant,
                    roles_json=roles,
                    salt=record.salt,
                    secret_hash=record.secret_hash,
                    description=record.description,
                    created_at=self._d.now,
                )
            )
            row = tx.row(sa.select(K).where(K.c.key_id == record.key_id))
        assert row is not None
        return _key_from_row(row)

    def api_key(self, key_id: str) -> ApiKeyRecord:
        if has_nul(key_id):
            raise _not_found(key_id)
        with self._autocommit() as tx:
            row = tx.row(sa.select(K).where(K.c.key_id == key_id))
        if row is None:
            raise _not_found(key_id)
        return _key_from_row(row)

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        query = sa.select(K)
        if tenant is not None:
            if has_nul(tenant):
                return []
            query = query.where(K.c.tenant == tenant)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(K.c.tenant, K.c.created_at, K.c.key_id))
        return [_key_from_row(r) for r in rows]

    def revoke_api_key(self, key_id: str) -> ApiKeyRecord:
        """Mark the key revoked (idempotent: a revoked key keeps its first revocation time)."""
        if has_nul(key_id):
            raise _not_found(key_id)
        with self._write() as tx:
            tx.execute(
                sa.update(K)
                .where(K.c.key_id == key_id, K.c.revoked_at.is_(None))
                .values(revoked_at=self._d.now)
            )
            row = tx.row(sa.select(K).where(K.c.key_id == key_id))
        if row is None:
            raise _not_found(key_id)
        return _key_from_row(row)
