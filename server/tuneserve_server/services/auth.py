"""Authentication: a call's metadata (and TLS peer) -> the Principal it proves.

* API keys (`authorization: Bearer tsk_<key_id>_<secret>`) are checked against the job
  store. A verified key is trusted for `auth_cache_s` seconds without reading the store
  again; after that the next call re-reads its record, so a key revoked on any replica stops
  working on every replica within auth_cache_s (5 s by default).
* A token refused for its secret is remembered (bounded, by digest): a key's secret never
  changes, so the same wrong token sent again (a client with a stale secret retrying in a
  loop) is refused without running the KDF again (~40 ms of CPU each on 2 cores;
  bench/auth_overhead.py).
* Other bearer tokens (JWTs) and TLS peer identities (mTLS) go through pluggable verifiers:
  `token_verifiers` are `(token) -> Principal | None` (None: not mine), `peer_verifiers` are
  `(peer identity: the gRPC auth context) -> Principal | None`. services/jwt_auth.py's
  JwtVerifier and the mTLS mapper plug in there; this module verifies API keys only.
* `auth = "none"`: every call is an admin of the default tenant (via="none"); the namespace
  a request names is taken as is (resolve_namespace). Logged as a warning at start.

A missing, malformed, unknown, or revoked credential is Unauthenticated, and audited
(`auth.failed`, with the key id when the token names one; never the secret)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog

from tuneserve_server.domain.errors import NotFound, PermissionDenied, Unauthenticated
from tuneserve_server.domain.naming import DEFAULT_NAMESPACE, check_name
from tuneserve_server.domain.tenancy import Principal, Role
from tuneserve_server.observability.audit import audit
from tuneserve_server.services.keys import PREFIX, key_id_of, parse_token, verify_secret
from tuneserve_server.storage.job_store import JobStore

log = structlog.get_logger("tuneserve.auth")

TokenVerifier = Callable[[str], Principal | None]
PeerVerifier = Callable[[Mapping[str, Sequence[bytes]]], Principal | None]

ALL_ROLES = frozenset(Role)
_CACHE_MAX = 10_000  # verified tokens held per replica (oldest dropped first)


class _Entry:
    __slots__ = ("checked", "principal")

    def __init__(self, principal: Principal, checked: float) -> None:
        self.principal = principal
        self.checked = checked


class Authenticator:
    def __init__(
        self,
        settings: Any,
        store: JobStore,
        *,
        token_verifiers: Iterable[TokenVerifier] = (),
        peer_verifiers: Iterable[PeerVerifier] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = settings.auth
        self.cache_s = float(settings.auth_cache_s)
        self.store = store
        self.token_verifiers = list(token_verifiers)
        self.peer_verifiers = list(peer_verifiers)
        self._clock = clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._refused: OrderedDict[bytes, None] = OrderedDict()  # wrong-secret token digests
        self._lock = threading.Lock()
        if self.mode == "none":
            log.warning(
                "authentication is OFF (auth = none): every caller acts as an admin of any "
                "namespace; use only for development"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    # ------------------------------------------------------------------ the entry points
    def authenticate(
        self, metadata: Iterable[tuple[str, Any]] | None, peer: Mapping[str, Sequence[bytes]] | None = None
    ) -> Principal:
        """The principal the call's credential proves (may read the store: blocking)."""
        if not self.enabled:
            return Principal(DEFAULT_NAMESPACE, ALL_ROLES, via="none")
        token = bearer_token(metadata)
        try:
            if token is None:
                for verify in self.peer_verifiers:
                    principal = verify(peer or {})
                    if principal is not None:
                        return principal
            elif not token.startswith(PREFIX):
                for verify_token in self.token_verifiers:
                    principal = verify_token(token)
                    if principal is not None:
                        return principal
        except Unauthenticated as exc:  # a JWT or client certificate refused: audited too
            audit("auth.failed", outcome="denied", reason=str(exc), key_id="")
            raise
        if token is None:
            self._fail("no credential", "")
        if token.startswith(PREFIX):
            return self._api_key(token)
        self._fail("malformed credential", "")

    async def authenticate_async(
        self, metadata: Iterable[tuple[str, Any]] | None, peer: Mapping[str, Sequence[bytes]] | None = None
    ) -> Principal:
        """`authenticate` for the event loop: a cached API key answers at once; anything
        that needs the store or a KDF runs in a thread."""
        if not self.enabled:
            return Principal(DEFAULT_NAMESPACE, ALL_ROLES, via="none")
        token = bearer_token(metadata)
        if token is not None and token.startswith(PREFIX):
            entry = self._fresh(_digest(token))
            if entry is not None:
                return entry.principal
        return await asyncio.to_thread(self.authenticate, metadata, peer)

    # ------------------------------------------------------------------ API keys
    def _api_key(self, token: str) -> Principal:
        digest = _digest(token)
        entry = self._fresh(digest)
        if entry is not None:
            return entry.principal
        parsed = parse_token(token)
        if parsed is None:
            self._fail("malformed API key", key_id_of(token))
        key_id, secret = parsed
        try:
            record = self.store.api_key(key_id)
        except NotFound:
            self._forget(digest)
            self._fail("unknown API key", key_id)
        if record.revoked_at is not None:
            self._forget(digest)
            self._fail("revoked API key", key_id)
        with self._lock:
            known = self._cache.get(digest)
            refused_before = digest in self._refused
        # A token verified before (its entry only stale) needs no KDF again: the digest
        # matched, and the record was just re-read for revocation. Nor does one refused before.
        if known is None and (refused_before or not verify_secret(record, secret)):
            with self._lock:
                self._refused[digest] = None
                self._refused.move_to_end(digest)
                while len(self._refused) > _CACHE_MAX:
                    self._refused.popitem(last=False)
            self._fail("wrong API key secret", key_id)
        principal = Principal(record.tenant, frozenset(record.roles), key_id=record.key_id, via="api_key")
        with self._lock:
            self._cache[digest] = _Entry(principal, self._clock())
            self._cache.move_to_end(digest)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return principal

    def _fresh(self, digest: bytes) -> _Entry | None:
        with self._lock:
            entry = self._cache.get(digest)
        if entry is not None and self._clock() - entry.checked < self.cache_s:
            return entry
        return None

    def _forget(self, digest: bytes) -> None:
        with self._lock:
            self._cache.pop(digest, None)

    @staticmethod
    def _fail(reason: str, key_id: str) -> None:
        audit("auth.failed", outcome="denied", reason=reason, key_id=key_id)
        raise Unauthenticated(f"authentication failed: {reason}")


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The `authorization: Bearer <token>` value; None when absent. Another scheme or an
    empty token raises Unauthenticated."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = str(value).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            audit("auth.failed", outcome="denied", reason="not a bearer credential", key_id="")
            raise Unauthenticated("authentication failed: authorization must be 'Bearer <token>'")
        return token.strip()
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def resolve_namespace(principal: Principal, requested: str, field: str = "namespace") -> str:
    """The namespace a call acts in: the credential's tenant, never the request's.

    Empty -> the principal's tenant; the tenant itself -> ok; another namespace ->
    PermissionDenied unless the principal is an admin (then audited as admin.cross_tenant).
    With auth none the request's namespace (or the default) is taken as it is."""
    if principal.via == "none":
        return check_name(requested, field) if requested else DEFAULT_NAMESPACE
    if not requested or requested == principal.tenant:
        return principal.tenant
    check_name(requested, field)
    if Role.ADMIN not in principal.roles:
        raise PermissionDenied(
            f"{field}: {requested!r} is not this credential's tenant ({principal.tenant!r})"
        )
    audit("admin.cross_tenant", tenant=principal.tenant, namespace=requested, key_id=principal.key_id)
    return requested


def require_role(principal: Principal, role: Role, method: str) -> None:
    if not principal.has(role):
        raise PermissionDenied(f"{method} needs the {role.value!r} role")
