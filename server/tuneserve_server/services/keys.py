"""API keys: making them, hashing their secrets, verifying a presented token, and the admin
flows (create / list / revoke) with their audit events.

A token reads `tsk_<key_id>_<secret>`: the key id (public: logs, audit, `keys list`) finds
the stored record; the secret is checked against the record's salted scrypt hash in constant
time. The secret itself is printed once at creation and never stored or logged."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.naming import namespace_of
from tuneserve_server.domain.tenancy import ApiKeyRecord, Role
from tuneserve_server.observability.audit import audit
from tuneserve_server.storage.job_store import JobStore

PREFIX = "tsk_"
_KEY_ID = re.compile(r"[a-z0-9]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32)
_TOKEN = re.compile(r"tsk_([a-z0-9]{16})_([A-Za-z0-9_-]{43})")
# scrypt with n=2^14, r=8 (16 MiB, ~30 ms here): the secret has 256 random bits, so the KDF
# guards a leaked table rather than a guessable password; verified keys are cached
# (auth_cache_s), so this is paid once per key per replica per cache period.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def parse_token(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def key_id_of(token: str) -> str:
    """The key id a malformed token seems to name (for the audit log), or ""."""
    parts = token.split("_")
    return parts[1] if len(parts) >= 3 and parts[0] == "tsk" and _KEY_ID.fullmatch(parts[1]) else ""


def verify_secret(record: ApiKeyRecord, secret: str) -> bool:
    return hmac.compare_digest(hash_secret(secret, record.salt), record.secret_hash)


def new_key(tenant: str, roles: Iterable[Role], description: str = "") -> tuple[ApiKeyRecord, str]:
    """A fresh record (its hash) and the token to hand to the caller once."""
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(16))
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        roles=frozenset(roles),
        salt=salt,
        secret_hash=hash_secret(secret, salt),
        description=description,
    )
    return record, f"{PREFIX}{key_id}_{secret}"


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    roles = set()
    for name in names:
        try:
            roles.add(Role(name.strip().lower()))
        except ValueError:
            valid = ", ".join(r.value for r in Role)
            raise InvalidRequest.field("role", f"{name!r} is not a role (one of: {valid})") from None
    if not roles:
        raise InvalidRequest.field("role", "at least one role is required")
    return frozenset(roles)


class KeyService:
    """The admin flows over the job store's api_keys table."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def create(self, tenant: str, roles: Iterable[str], description: str = "") -> tuple[ApiKeyRecord, str]:
        if not tenant:
            raise InvalidRequest.field("tenant", "is required")
        tenant = namespace_of(tenant, "tenant")  # a tenant is a namespace: the same naming rules
        record, token = new_key(tenant, parse_roles(roles), description)
        stored = self.store.insert_api_key(record)
        audit(
            "key.create",
            tenant=stored.tenant,
            key_id=stored.key_id,
            roles=sorted(r.value for r in stored.roles),
        )
        return stored, token

    def list(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return self.store.list_api_keys(tenant or None)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        record = self.store.revoke_api_key(key_id)
        audit("key.revoke", tenant=record.tenant, key_id=record.key_id)
        return record
