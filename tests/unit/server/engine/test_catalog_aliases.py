"""AdapterCatalog with aliases: the bare name follows `default`, `name@alias` and the
reserved `latest` resolve, an alias move supersedes the version `default` left (unless
another alias still points at it), removals and unknown aliases."""

from __future__ import annotations

import pytest
from test_catalog import rec, ref

from tuneserve_server.domain.aliases import AliasRecord
from tuneserve_server.domain.errors import InvalidRequest, NotFound
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.engine.catalog import AdapterCatalog
from tuneserve_server.engine.registry import AdapterKey


def alias(name: str, alias_name: str, version: int, seq: int) -> AliasRecord:
    return AliasRecord("default", name, alias_name, version, seq)


def test_bare_name_follows_default_not_the_newest_version():
    cat = AdapterCatalog()
    deleted, superseded = cat.apply([rec("a", 1, 1), rec("a", 2, 3)], [alias("a", "default", 1, 2)])
    assert (deleted, superseded) == ([], [])  # v2 arrived under manual: v1 stays served
    assert cat.resolve(ref("a")).version == 1
    assert cat.resolve(ref("a@latest")).version == 2
    assert cat.resolve(ref("a@2")).version == 2
    _, superseded = cat.apply([], [alias("a", "default", 2, 4)])
    assert superseded == [AdapterKey("default", "a", 1)]
    assert cat.resolve(ref("a")).version == 2 and cat.seq == 4


def test_named_aliases_and_removal():
    cat = AdapterCatalog()
    cat.apply([rec("a", 1, 1), rec("a", 2, 2)], [alias("a", "default", 2, 3), alias("a", "prod", 1, 4)])
    assert cat.resolve(ref("a@prod")).version == 1
    assert cat.aliases("default", "a") == {"default": 2, "prod": 1}
    # default moves to 1: no alias points at 2 any more, so it is superseded.
    _, superseded = cat.apply([], [alias("a", "default", 1, 5)])
    assert superseded == [AdapterKey("default", "a", 2)]
    # prod still points at 1 when default leaves it: 1 stays resident.
    _, superseded = cat.apply([], [alias("a", "default", 2, 6)])
    assert superseded == []
    cat.apply([], [alias("a", "prod", 0, 7)])  # removed
    with pytest.raises(NotFound, match="no alias 'prod'"):
        cat.resolve(ref("a@prod"))
    with pytest.raises(NotFound, match="not found"):
        cat.resolve(ref("b@prod"))


def test_without_default_the_newest_version_serves_and_supersedes():
    """An adapter with no `default` row (written before aliases existed) keeps the old rule."""
    cat = AdapterCatalog()
    cat.apply([rec("a", 1, 1)])
    _, superseded = cat.apply([rec("a", 2, 2)])
    assert superseded == [AdapterKey("default", "a", 1)]
    assert cat.resolve(ref("a")).version == 2


def test_changes_apply_in_seq_order_whatever_list_they_come_in():
    cat = AdapterCatalog()
    cat.apply([rec("a", 1, 1), rec("a", 2, 3)], [alias("a", "default", 2, 4), alias("a", "default", 1, 2)])
    assert cat.resolve(ref("a")).version == 2


def test_alias_names_are_checked_where_refs_are_parsed():
    assert AdapterRef.parse("default", "a@prod").alias == "prod"
    assert AdapterRef.parse("default", "a@3").version == 3
    assert AdapterRef.parse("default", "a").bare
    for bad in ("a@Prod", "a@-x", "a@" + "x" * 33, "a@prod!", "a@"):
        with pytest.raises(InvalidRequest):
            AdapterRef.parse("default", bad)
