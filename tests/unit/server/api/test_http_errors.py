"""The HTTP transport's error table (api/http_errors.py): every domain error class has its
HTTP code and OpenAI error type, the message is the exception's own, a field violation
becomes `param` under the HTTP body's name, a quota says which and when to retry, and an
unexpected exception never shows its text."""

from __future__ import annotations

import pytest

from tuneserve_server.api.http_errors import HTTP_STATUS_OF, http_error, http_param
from tuneserve_server.api.status_map import STATUS_OF
from tuneserve_server.domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    DataRejected,
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    NotFound,
    NotReady,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
)


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (DataRejected("bad data", [FieldViolation("x", "y")], {}), 400, "invalid_request_error"),
        (NotFound("no such adapter"), 404, "not_found_error"),
        (AlreadyExists("taken"), 409, "conflict_error"),
        (FailedPrecondition("a classifier"), 400, "invalid_request_error"),
        (CapacityExceeded("queue full"), 429, "rate_limit_error"),
        (QuotaExceeded("queued_predict_rows", 10, 10, "over quota", 2.4), 429, "rate_limit_error"),
        (NotReady("loading"), 503, "service_unavailable_error"),
        (Unauthenticated("authentication failed: no credential"), 401, "authentication_error"),
        (PermissionDenied("needs train"), 403, "permission_error"),
    ],
)
def test_each_domain_error_has_its_code_type_and_own_message(exc, status, kind) -> None:
    got, body, _ = http_error(exc)
    assert (got, body["error"]["type"]) == (status, kind)
    assert body["error"]["message"].endswith(exc.message.split(": ", 1)[-1])


def test_the_table_covers_every_class_the_grpc_table_maps() -> None:
    http_classes = {cls for cls, *_ in HTTP_STATUS_OF}
    assert set(STATUS_OF) <= http_classes


def test_field_violations_become_the_http_param() -> None:
    status, body, _ = http_error(InvalidRequest.field("generation.max_new_tokens", "too many"))
    assert status == 400 and body["error"]["param"] == "max_tokens"
    assert body["error"]["message"] == "max_tokens: too many"
    assert http_param("inputs[3]") == "prompt[3]" and http_param("input") == "prompt"
    assert http_param("generation.raw_prompt") == "raw_prompt" and http_param("adapter") == "model"
    assert http_param("messages[0].role") == "messages[0].role"


def test_a_quota_names_itself_and_when_to_retry() -> None:
    status, body, headers = http_error(QuotaExceeded("queued_predict_rows", 10, 10, "over", 2.4))
    assert status == 429 and body["error"]["code"] == "queued_predict_rows"
    assert headers == {"retry-after": "2"}
    assert http_error(QuotaExceeded("adapter_versions", 1, 1, "full"))[2] == {}


def test_an_unexpected_error_is_a_500_without_its_text() -> None:
    status, body, _ = http_error(RuntimeError("secret path /etc/x"))
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "secret" not in body["error"]["message"]
    assert "internal error (id " in body["error"]["message"]
