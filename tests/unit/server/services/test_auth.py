"""API keys and the Authenticator over a real job store: tokens verify against salted hashes,
bad credentials are UNAUTHENTICATED and audited without the secret, a revocation is seen
within auth_cache_s (a fake clock: no timing), and namespaces come from the credential."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import InvalidRequest, PermissionDenied, Unauthenticated
from tuneserve_server.domain.tenancy import Principal, Role
from tuneserve_server.services.auth import Authenticator, resolve_namespace
from tuneserve_server.services.keys import KeyService, hash_secret, parse_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def keys(store) -> KeyService:
    return KeyService(store)


def test_created_key_authenticates_and_only_a_hash_is_stored(store, keys):
    with capture_logs() as logs:
        record, token = keys.create("teama", ["train"], "ci")
    key_id, secret = parse_token(token)
    assert key_id == record.key_id and token.startswith("tsk_")
    stored = store.api_key(key_id)
    assert (
        stored.secret_hash == hash_secret(secret, stored.salt) and secret.encode() not in stored.secret_hash
    )
    assert [e["audit_action"] for e in logs] == ["key.create"]
    assert secret not in repr(logs)

    principal = Authenticator(Settings(), store).authenticate(_bearer(token))
    assert principal == Principal("teama", frozenset({Role.TRAIN}), key_id=key_id, via="api_key")


@pytest.mark.parametrize(
    ("metadata", "names_key"),
    [
        ([], False),
        ([("authorization", "Basic dXNlcjpwdw==")], False),
        (_bearer("not-a-token"), False),
        (_bearer("tsk_short_x"), False),
        (_bearer("tsk_aaaaaaaaaaaaaaaa_" + "A" * 43), True),  # well formed, never issued
    ],
)
def test_missing_or_malformed_or_unknown_credentials_are_unauthenticated(store, metadata, names_key):
    auth = Authenticator(Settings(), store)
    with capture_logs() as logs, pytest.raises(Unauthenticated):
        auth.authenticate(metadata)
    [event] = [e for e in logs if e.get("audit_action") == "auth.failed"]
    assert event["outcome"] == "denied"
    assert event["key_id"] == ("aaaaaaaaaaaaaaaa" if names_key else "")


def test_wrong_secret_is_unauthenticated_and_audited_with_the_key_id(store, keys):
    record, token = keys.create("teama", ["predict"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with capture_logs() as logs, pytest.raises(Unauthenticated):
        Authenticator(Settings(), store).authenticate(_bearer(forged))
    assert [(e["audit_action"], e["key_id"]) for e in logs] == [("auth.failed", record.key_id)]
    assert forged.split("_", 2)[2] not in repr(logs)


def test_a_wrong_secret_sent_again_is_refused_without_the_kdf(store, keys, monkeypatch):
    """The KDF is the expensive part of a refusal; a token whose secret was wrong once is wrong
    for good (a key's secret never changes), so a retry loop with a stale secret costs no KDF.
    The right secret of the same key still verifies, and a different wrong one is checked."""
    import tuneserve_server.services.auth as auth_module

    record, token = keys.create("teama", ["predict"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    other = token[:-4] + ("CCCC" if not token.endswith("CCCC") else "DDDD")
    kdf_runs = []
    real = auth_module.verify_secret
    monkeypatch.setattr(auth_module, "verify_secret", lambda r, s: kdf_runs.append(s) or real(r, s))
    auth = Authenticator(Settings(), store)
    with capture_logs() as logs:
        for _ in range(5):
            with pytest.raises(Unauthenticated, match="wrong API key secret"):
                auth.authenticate(_bearer(forged))
    assert len(kdf_runs) == 1
    assert [e["audit_action"] for e in logs] == ["auth.failed"] * 5  # every refusal still audited
    with pytest.raises(Unauthenticated):
        auth.authenticate(_bearer(other))
    assert len(kdf_runs) == 2
    assert auth.authenticate(_bearer(token)).key_id == record.key_id
    assert len(kdf_runs) == 3


def test_revocation_is_seen_within_auth_cache_s_by_every_replica(open_store):
    store_a, store_b = open_store(), open_store()
    record, token = KeyService(store_a).create("teama", ["train"])
    clock = Clock()
    replica_a = Authenticator(Settings(auth_cache_s=5.0), store_a, clock=clock)
    replica_b = Authenticator(Settings(auth_cache_s=5.0), store_b, clock=clock)
    assert replica_a.authenticate(_bearer(token)).key_id == record.key_id
    KeyService(store_b).revoke(record.key_id)
    # Replica A trusted the key just now: its cache may answer until auth_cache_s passes.
    clock.now += 4.9
    assert replica_a.authenticate(_bearer(token)).tenant == "teama"
    clock.now += 0.2
    with pytest.raises(Unauthenticated, match="revoked"):
        replica_a.authenticate(_bearer(token))
    # Replica B had not cached it: refused at once; and it stays refused.
    with pytest.raises(Unauthenticated, match="revoked"):
        replica_b.authenticate(_bearer(token))
    with pytest.raises(Unauthenticated):
        replica_a.authenticate(_bearer(token))


def test_async_path_answers_from_the_cache_and_from_the_store(store, keys):
    _, token = keys.create("teamb", ["admin"])
    auth = Authenticator(Settings(), store)

    async def twice() -> tuple[Principal, Principal]:
        return await auth.authenticate_async(_bearer(token)), await auth.authenticate_async(_bearer(token))

    first, second = asyncio.run(twice())
    assert first == second and first.has(Role.TRAIN) and first.tenant == "teamb"


def test_extra_token_and_peer_verifiers_plug_in(store):
    jwt_like = Principal("teamj", frozenset({Role.PREDICT}), via="jwt")
    peer = Principal("teamm", frozenset({Role.TRAIN}), via="mtls")
    auth = Authenticator(
        Settings(),
        store,
        token_verifiers=[lambda token: jwt_like if token == "eyJ.good" else None],
        peer_verifiers=[lambda ctx: peer if ctx.get("x509_common_name") == [b"teamm"] else None],
    )
    assert auth.authenticate(_bearer("eyJ.good")) is jwt_like
    with pytest.raises(Unauthenticated):
        auth.authenticate(_bearer("eyJ.bad"))
    assert auth.authenticate([], {"x509_common_name": [b"teamm"]}) is peer
    with pytest.raises(Unauthenticated):
        auth.authenticate([], {"x509_common_name": [b"stranger"]})


def test_auth_none_warns_and_admits_every_call(store):
    with capture_logs() as logs:
        auth = Authenticator(Settings(auth="none"), store)
    assert any(e["log_level"] == "warning" and "OFF" in e["event"] for e in logs)
    principal = auth.authenticate([])
    assert principal.via == "none" and principal.has(Role.ADMIN)
    assert resolve_namespace(principal, "") == "default"
    assert resolve_namespace(principal, "teamz") == "teamz"


def test_namespaces_come_from_the_credential():
    teama = Principal("teama", frozenset({Role.TRAIN}), key_id="k1")
    assert resolve_namespace(teama, "") == "teama"
    assert resolve_namespace(teama, "teama") == "teama"
    with pytest.raises(PermissionDenied, match="teamb"):
        resolve_namespace(teama, "teamb")
    admin = Principal("ops", frozenset({Role.ADMIN}), key_id="k2")
    with capture_logs() as logs:
        assert resolve_namespace(admin, "teamb") == "teamb"
    assert [(e["audit_action"], e["namespace"], e["key_id"]) for e in logs] == [
        ("admin.cross_tenant", "teamb", "k2")
    ]
    with pytest.raises(InvalidRequest):
        resolve_namespace(admin, "Not A Name!")


def test_roles_are_checked_by_name(keys):
    with pytest.raises(InvalidRequest, match="role"):
        keys.create("teama", ["superuser"])
    with pytest.raises(InvalidRequest, match="tenant"):
        keys.create("", ["train"])
