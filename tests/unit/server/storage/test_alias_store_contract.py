"""Aliases in the job store, on SQLite and PostgreSQL: `default` follows policy always and
stays put under manual, moves are atomic with their history, rollback, refusals (deleting an
aliased version, too many aliases, unknown versions), the bounded history, and the registry
change feed carrying alias moves as one consistent cut with versions."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime

import pytest

from tuneserve_server.domain.errors import CapacityExceeded, FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.records import AdapterVersionRecord


def _record(spec, version: int, job_id: str) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        namespace=spec.namespace,
        name=spec.adapter_name,
        version=version,
        job_id=job_id,
        task=spec.task,
        base_model="tiny-bert",
        labels=("neg", "pos"),
        metrics={"accuracy": 0.75},
        lora_rank=4,
        size_bytes=1234,
        created_at=datetime.now(UTC),
        lineage={"init_from": "intents@1"} if version > 1 else {},
    )


def _train(store, make_spec, *, promote: bool = True, request_id: str | None = None, name: str = "intents"):
    spec = make_spec(request_id=request_id or f"r-{threading.get_ident()}-{id(object())}", adapter_name=name)
    job, _ = store.create_job(spec)
    claimed = store.claim_job("w", 60)
    assert claimed is not None and claimed[0].id == job.id
    version = store.reserve_adapter_version(spec.namespace, spec.adapter_name)
    done = store.complete_job(
        job.id,
        "w",
        {"accuracy": 0.75},
        _record(spec, version, job.id),
        {"promotion": {"policy": "always" if promote else "manual"}},
        promote=promote,
        promote_reason="promotion policy always" if promote else "promotion policy manual",
    )
    return version, done


def _aliases(store, name="intents", ns="default") -> dict[str, int]:
    return {a.alias: a.version for a in store.adapter_aliases(ns, name)}


def test_default_follows_always_and_stays_under_manual(store, make_spec):
    v1, job1 = _train(store, make_spec, promote=False, request_id="a")
    assert _aliases(store) == {"default": v1}  # a first version is default whatever the policy
    assert job1.promotion_result["promoted"] is True
    v2, job2 = _train(store, make_spec, promote=False, request_id="b")
    assert _aliases(store) == {"default": v1}
    assert job2.promotion_result == {"policy": "manual", "promoted": False}
    v3, job3 = _train(store, make_spec, promote=True, request_id="c")
    assert _aliases(store) == {"default": v3}
    assert job3.promotion_result["promoted"] is True and job3.promotion_result["from_version"] == v1
    history, _ = store.alias_history("default", "intents")
    assert [(m.from_version, m.to_version, m.actor) for m in history] == [
        (v1, v3, f"job:{job3.id}"),
        (0, v1, f"job:{job1.id}"),
    ]
    assert store.adapter_versions("default", "intents")[1].lineage == {"init_from": "intents@1"}
    assert v2 == 2


def test_set_promote_rollback_and_history(store, make_spec):
    for rid in ("a", "b", "c"):
        _train(store, make_spec, promote=False, request_id=rid)
    move = store.set_alias(
        "default", "intents", "default", 3, actor="key1", tenant="default", reason="ship", max_aliases=4
    )
    assert (move.from_version, move.to_version, move.actor, move.reason) == (1, 3, "key1", "ship")
    assert move.sequence > 0 and move.time is not None
    again = store.set_alias(
        "default", "intents", "default", 3, actor="key1", tenant="default", reason="x", max_aliases=4
    )
    assert again.sequence == 0  # nothing moved, nothing recorded
    store.set_alias(
        "default", "intents", "canary", 2, actor="key2", tenant="default", reason="", max_aliases=4
    )
    assert _aliases(store) == {"default": 3, "canary": 2}

    back = store.rollback_alias("default", "intents", "default", actor="key1", tenant="default", reason="bad")
    assert (back.from_version, back.to_version) == (3, 1)
    forth = store.rollback_alias("default", "intents", "default", actor="key1", tenant="default", reason="")
    assert (forth.from_version, forth.to_version) == (1, 3)  # two rollbacks: where it started

    moves, token = store.alias_history("default", "intents", alias="default", page_size=2)
    assert [(m.from_version, m.to_version) for m in moves] == [(1, 3), (3, 1)] and token
    rest, token2 = store.alias_history("default", "intents", alias="default", page_size=2, page_token=token)
    assert [(m.from_version, m.to_version) for m in rest] == [(1, 3), (0, 1)] and token2 == ""
    with pytest.raises(InvalidRequest):
        store.alias_history("default", "intents", page_token="nope")

    with pytest.raises(FailedPrecondition, match="only"):
        store.rollback_alias("default", "intents", "canary", actor="k", tenant="default", reason="")
    with pytest.raises(NotFound):
        store.set_alias(
            "default", "intents", "prod", 9, actor="k", tenant="default", reason="", max_aliases=4
        )
    with pytest.raises(NotFound):
        store.set_alias("default", "nope", "prod", 1, actor="k", tenant="default", reason="", max_aliases=4)
    with pytest.raises(NotFound):  # tenant-scoped: another namespace does not see it
        store.set_alias("other", "intents", "prod", 1, actor="k", tenant="other", reason="", max_aliases=4)


def test_aliased_versions_cannot_be_deleted_and_bounds(store, make_spec):
    for rid in ("a", "b", "c"):
        _train(store, make_spec, request_id=rid)
    store.set_alias("default", "intents", "prod", 3, actor="k", tenant="default", reason="", max_aliases=3)
    store.set_alias("default", "intents", "canary", 2, actor="k", tenant="default", reason="", max_aliases=3)
    with pytest.raises(CapacityExceeded, match="3"):
        store.set_alias(
            "default", "intents", "beta", 1, actor="k", tenant="default", reason="", max_aliases=3
        )
    # moving an existing alias is not a new one
    store.set_alias("default", "intents", "canary", 1, actor="k", tenant="default", reason="", max_aliases=3)
    with pytest.raises(FailedPrecondition, match="default, prod"):
        store.delete_adapter_versions("default", "intents", 3)
    with pytest.raises(FailedPrecondition, match="canary"):
        store.delete_adapter_versions("default", "intents", 1)
    assert [r.version for r in store.delete_adapter_versions("default", "intents", 2)] == [2]
    with pytest.raises(FailedPrecondition, match="default"):
        store.remove_alias("default", "intents", "default", actor="k", tenant="default", reason="")
    removed = store.remove_alias("default", "intents", "canary", actor="k", tenant="default", reason="done")
    assert (removed.from_version, removed.to_version) == (1, 0)
    assert _aliases(store) == {"default": 3, "prod": 3}

    # Deleting the whole adapter takes its aliases; the feed carries their removal.
    before = store.registry_changes(0)[1]
    seq = max(a.seq for a in before)
    store.delete_adapter_versions("default", "intents")
    assert _aliases(store) == {}
    _, gone = store.registry_changes(seq)
    assert sorted((a.alias, a.version) for a in gone) == [("default", 0), ("prod", 0)]


def test_rollback_to_a_deleted_version_is_refused(store, make_spec):
    _train(store, make_spec, request_id="a")
    _train(store, make_spec, request_id="b")
    store.delete_adapter_versions("default", "intents", 1)
    with pytest.raises(FailedPrecondition, match="deleted"):
        store.rollback_alias("default", "intents", "default", actor="k", tenant="default", reason="")


def test_history_is_bounded(open_store, make_spec):
    store = open_store()
    store.alias_history_keep = 5
    _train(store, make_spec, request_id="a")
    _train(store, make_spec, promote=False, request_id="b")
    for i in range(8):
        store.set_alias(
            "default",
            "intents",
            "default",
            1 + (i % 2 == 0),
            actor="k",
            tenant="default",
            reason=str(i),
            max_aliases=4,
        )
    moves, _ = store.alias_history("default", "intents", page_size=100)
    assert len(moves) == 5 and moves[0].reason == "7"


def test_change_feed_is_one_cut_with_versions(store, make_spec):
    for rid in ("a", "b", "c", "d"):
        _train(store, make_spec, promote=False, request_id=rid)
    store.set_alias("default", "intents", "default", 4, actor="k", tenant="default", reason="", max_aliases=4)
    versions, aliases = store.registry_changes(0)
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert [(a.alias, a.version) for a in aliases] == [("default", 4)]
    # In pages of 2: nothing is skipped, and every seq of a page is at most the page's cut.
    seen_v, seen_a, after = [], [], 0
    while True:
        vs, als = store.registry_changes(after, limit=2)
        if not vs and not als:
            break
        seen_v += [v.version for v in vs]
        seen_a += [(a.alias, a.version) for a in als]
        after = max(c.seq for c in [*vs, *als])
    assert seen_v == [1, 2, 3, 4] and seen_a == [("default", 4)]


def test_concurrent_moves_are_serialised(open_store, make_spec):
    store = open_store()
    for rid in ("a", "b"):
        _train(store, make_spec, promote=False, request_id=rid)
    stores = [open_store() for _ in range(4)]
    errors: list[BaseException] = []

    def move(s, i):
        try:
            for j in range(5):
                s.set_alias(
                    "default",
                    "intents",
                    "default",
                    1 + (i + j) % 2,
                    actor=f"k{i}",
                    tenant="default",
                    reason="",
                    max_aliases=4,
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    moves, _ = store.alias_history("default", "intents", alias="default", page_size=1000)
    moves.reverse()  # oldest first: each move starts where the previous one ended
    for prev, nxt in itertools.pairwise(moves):
        assert nxt.from_version == prev.to_version
    assert _aliases(store)["default"] == moves[-1].to_version
