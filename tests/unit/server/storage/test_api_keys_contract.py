"""API keys against every JobStore (SQLite and PostgreSQL): stored as given (hash and salt,
never a secret), one per key id, listed per tenant, revoked once."""

from __future__ import annotations

import pytest

from tuneserve_server.domain.errors import AlreadyExists, NotFound
from tuneserve_server.domain.tenancy import ApiKeyRecord, Role


def _key(key_id: str, tenant: str = "teama", roles=(Role.TRAIN,)) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        roles=frozenset(roles),
        salt=b"\x00salt" + key_id.encode(),
        secret_hash=b"\xffhash\x00" + key_id.encode(),
        description=f"key {key_id}",
    )


def test_insert_and_read_back(store):
    stored = store.insert_api_key(_key("k1", roles=(Role.PREDICT, Role.ADMIN)))
    assert stored.created_at is not None and stored.created_at.tzinfo is not None
    assert stored.revoked_at is None
    again = store.api_key("k1")
    assert again == stored
    assert again.roles == frozenset({Role.PREDICT, Role.ADMIN})
    assert again.salt == b"\x00saltk1" and again.secret_hash == b"\xffhash\x00k1"
    assert again.description == "key k1" and again.tenant == "teama"


def test_key_ids_are_unique(store):
    store.insert_api_key(_key("k1"))
    with pytest.raises(AlreadyExists):
        store.insert_api_key(_key("k1", tenant="teamb"))
    assert store.api_key("k1").tenant == "teama"


def test_unknown_key_is_not_found(store):
    with pytest.raises(NotFound):
        store.api_key("missing")
    with pytest.raises(NotFound):
        store.api_key("nul\x00id")
    with pytest.raises(NotFound):
        store.revoke_api_key("missing")


def test_list_all_or_per_tenant(store):
    store.insert_api_key(_key("a1", "teama"))
    store.insert_api_key(_key("b1", "teamb"))
    store.insert_api_key(_key("a2", "teama"))
    assert sorted(k.key_id for k in store.list_api_keys()) == ["a1", "a2", "b1"]
    assert sorted(k.key_id for k in store.list_api_keys("teama")) == ["a1", "a2"]
    assert [k.key_id for k in store.list_api_keys("teamb")] == ["b1"]
    assert store.list_api_keys("nobody") == []


def test_revoke_is_seen_by_another_store_instance_and_keeps_its_first_time(open_store):
    one, two = open_store(), open_store()
    one.insert_api_key(_key("k1"))
    assert two.api_key("k1").revoked_at is None
    first = two.revoke_api_key("k1")
    assert first.revoked_at is not None
    assert one.api_key("k1").revoked_at == first.revoked_at
    assert one.revoke_api_key("k1").revoked_at == first.revoked_at
    assert [k.revoked_at for k in one.list_api_keys("teama")] == [first.revoked_at]
