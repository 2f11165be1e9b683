"""AdapterRef.parse: `name`, `name@version` or `name@alias`; names checked, versions positive."""

from __future__ import annotations

import pytest

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.naming import AdapterRef, check_name, is_valid_name, namespace_of


def test_parse_name_and_name_at_version():
    assert AdapterRef.parse("team-a", "intents") == AdapterRef("team-a", "intents", None)
    assert AdapterRef.parse("team-a", "intents@3") == AdapterRef("team-a", "intents", 3)
    assert str(AdapterRef.parse("team-a", "intents@3")) == "team-a/intents@3"
    assert str(AdapterRef.parse("team-a", "v1.2_x-y")) == "team-a/v1.2_x-y"
    assert str(AdapterRef.parse("team-a", "intents@prod")) == "team-a/intents@prod"  # an alias


@pytest.mark.parametrize(
    "text",
    [
        "intents@0",
        "intents@-1",
        "intents@",
        "intents@X",  # an alias is lower-case
        "intents@_x",  # and starts with a letter
        "intents@1@2",
        "intents@²",
        "intents@" + "9" * 30,
        "Name",
        "@1",
        "",
        "-lead",
        "a b",
        "x" * 64,
    ],
)
def test_parse_refuses_bad_refs_with_invalid_request_on_the_field(text):
    with pytest.raises(InvalidRequest) as err:
        AdapterRef.parse("default", text, field="adapter")
    assert [v.field for v in err.value.violations] == ["adapter"]


def test_names_and_namespaces():
    assert is_valid_name("a") and is_valid_name("9-lives") and is_valid_name("x" * 63)
    assert not is_valid_name("A") and not is_valid_name("_x") and not is_valid_name("ns/x")
    assert namespace_of("") == "default"
    assert namespace_of("team-a") == "team-a"
    with pytest.raises(InvalidRequest) as err:
        namespace_of("Team A")
    assert err.value.violations[0].field == "namespace"
    assert check_name("ok", "f") == "ok"
