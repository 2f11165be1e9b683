"""Client certificates as identities (issue #12): the `mtls_tenants` setting maps a verified
client certificate's subject common name (CN) to a tenant and roles.

    mtls_tenants = "billing-svc=billing:train+predict, ops-robot=default:admin"

Each comma-separated entry is `<CN>=<tenant>:<role>[+<role>...]`; roles are predict, train,
admin. A CN is only trusted because the TLS handshake verified the certificate against
tls_client_ca_file (which makes client certificates required): without it no client
certificate is asked for, and `principal_from_peer` finds no CN. A CN therefore cannot hold a
comma; a CN that is not listed proves nothing (None: the caller needs another credential).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneserve_server.domain.naming import is_valid_name
from tuneserve_server.domain.tenancy import Principal, Role

SETTING = "mtls_tenants"
CN_PROPERTY = "x509_common_name"  # grpc's auth_context() key for the verified peer's CN
_ROLE_NAMES = {r.value: r for r in Role}

MtlsMapping = dict[str, tuple[str, frozenset[Role]]]


def _bad(entry: str, why: str) -> ValueError:
    # config.ConfigError is a ValueError; services may not import config's validation, so
    # the message names the setting the way ConfigError's do.
    return ValueError(f"setting {SETTING} (TUNESERVE_{SETTING.upper()}): entry {entry!r}: {why}")


def parse_mtls_tenants(text: str) -> MtlsMapping:
    """`<CN>=<tenant>:<role>+<role>,...` -> {CN: (tenant, roles)}. ValueError names the
    setting and the entry for a malformed entry, an invalid tenant, an unknown role or a CN
    listed twice."""
    mapping: MtlsMapping = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        cn, eq, rest = entry.partition("=")
        cn = cn.strip()
        if not eq or not cn:
            raise _bad(entry, "expected <common name>=<tenant>:<role>[+<role>...]")
        tenant, colon, roles_text = rest.strip().partition(":")
        tenant = tenant.strip()
        if not colon:
            raise _bad(entry, "expected <common name>=<tenant>:<role>[+<role>...] (no ':' before the roles)")
        if not is_valid_name(tenant):
            raise _bad(entry, f"tenant {tenant!r} is not a valid namespace name")
        names = [n.strip() for n in roles_text.split("+")]
        if not any(names):
            raise _bad(entry, "names no role (predict, train, admin)")
        unknown = [n for n in names if n not in _ROLE_NAMES]
        if unknown:
            raise _bad(entry, f"unknown role {unknown[0]!r} (roles: {', '.join(_ROLE_NAMES)})")
        if cn in mapping:
            raise _bad(entry, f"common name {cn!r} is listed twice")
        mapping[cn] = (tenant, frozenset(_ROLE_NAMES[n] for n in names))
    return mapping


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def principal_from_peer(
    auth_context: Mapping[str, Sequence[Any]], mapping: Mapping[str, tuple[str, frozenset[Role]]]
) -> Principal | None:
    """The Principal of a verified client certificate whose CN `mapping` lists, else None.
    `auth_context` is grpc's `context.auth_context()` ({property: [bytes, ...]})."""
    if not mapping:
        return None
    for value in auth_context.get(CN_PROPERTY) or ():
        cn = _text(value)
        if cn is not None and cn in mapping:
            tenant, roles = mapping[cn]
            return Principal(tenant=tenant, roles=roles, key_id=f"CN={cn}", via="mtls")
    return None
