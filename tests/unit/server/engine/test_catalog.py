"""AdapterCatalog: folds registry changes in; resolves name -> latest and name@version."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tuneserve_server.domain.errors import NotFound
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.engine.catalog import AdapterCatalog
from tuneserve_server.engine.registry import AdapterKey


def rec(name: str, version: int, seq: int, *, deleted: bool = False, ns: str = "default"):
    return AdapterVersionRecord(
        namespace=ns,
        name=name,
        version=version,
        job_id=f"job-{name}-{version}",
        task=TaskType.CLASSIFICATION,
        base_model="tiny-bert",
        labels=("a", "b"),
        metrics={},
        lora_rank=4,
        size_bytes=1,
        created_at=datetime.now(UTC),
        deleted=deleted,
        seq=seq,
    )


def ref(text: str, ns: str = "default") -> AdapterRef:
    return AdapterRef.parse(ns, text)


def test_apply_resolve_latest_and_superseded():
    cat = AdapterCatalog()
    assert cat.apply([rec("x", 1, 1)]) == ([], [])
    assert cat.resolve(ref("x")).version == 1
    assert cat.latest("default", "x") == 1

    deleted, superseded = cat.apply([rec("x", 2, 2), rec("y", 1, 3)])
    assert deleted == []
    assert superseded == [AdapterKey("default", "x", 1)]
    assert cat.seq == 3
    assert cat.resolve(ref("x")).version == 2
    assert cat.resolve(ref("x@1")).job_id == "job-x-1"  # older versions stay addressable
    assert cat.latest("default", "x") == 2
    assert cat.latest("default", "y") == 1

    deleted, superseded = cat.apply([rec("x", 3, 4)])
    assert set(superseded) == {AdapterKey("default", "x", 1), AdapterKey("default", "x", 2)}


def test_deletes_remove_versions_and_fall_back_to_the_previous_latest():
    cat = AdapterCatalog()
    cat.apply([rec("x", 1, 1), rec("x", 2, 2)])
    deleted, superseded = cat.apply([rec("x", 2, 3, deleted=True)])
    assert (deleted, superseded) == ([AdapterKey("default", "x", 2)], [])
    assert cat.resolve(ref("x")).version == 1
    assert cat.latest("default", "x") == 1
    with pytest.raises(NotFound, match="versions: 1"):
        cat.resolve(ref("x@2"))

    cat.apply([rec("x", 1, 4, deleted=True)])
    with pytest.raises(NotFound):
        cat.resolve(ref("x"))
    assert cat.latest("default", "x") == 0
    assert cat.seq == 4


def test_replay_from_zero_and_namespaces_are_separate():
    cat = AdapterCatalog()
    # A version published then deleted shows up once, as deleted (its seq moved on delete).
    cat.apply([rec("x", 2, 2), rec("x", 1, 3, deleted=True), rec("x", 1, 5, ns="other")])
    assert cat.resolve(ref("x")).version == 2
    with pytest.raises(NotFound):
        cat.resolve(ref("x@1"))
    assert cat.resolve(ref("x", ns="other")).version == 1
    with pytest.raises(NotFound):
        cat.resolve(ref("y"))
    with pytest.raises(NotFound):
        cat.resolve(ref("x", ns="third"))
    assert cat.seq == 5
