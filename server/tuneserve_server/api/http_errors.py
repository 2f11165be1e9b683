"""The HTTP transport's table from domain errors to status codes and OpenAI-style error
bodies (`{"error": {"message", "type", "param", "code"}}`): the same domain error classes
as the gRPC table in status_map.py, the same messages (the exception's own), one row per
class. An unexpected exception is a 500 with a generic message and a logged error id."""

from __future__ import annotations

import re
import uuid
from typing import Any

import structlog

from tuneserve_server.domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    NotReady,
    PermissionDenied,
    QuotaExceeded,
    TuneserveError,
    Unauthenticated,
)

log = structlog.get_logger("tuneserve.api")

# (HTTP status, OpenAI error type, code); the first matching row wins, so subclasses first.
HTTP_STATUS_OF: list[tuple[type[TuneserveError], int, str, str]] = [
    (QuotaExceeded, 429, "rate_limit_error", "quota_exceeded"),
    (InvalidRequest, 400, "invalid_request_error", "invalid_argument"),
    (NotFound, 404, "not_found_error", "not_found"),
    (AlreadyExists, 409, "conflict_error", "already_exists"),
    (FailedPrecondition, 400, "invalid_request_error", "failed_precondition"),
    (CapacityExceeded, 429, "rate_limit_error", "resource_exhausted"),
    (NotReady, 503, "service_unavailable_error", "unavailable"),
    (Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
]

# gRPC field paths the services name -> the HTTP body's own parameter names.
_PARAM_NAMES = [
    (re.compile(r"^generation\.max_new_tokens"), "max_tokens"),
    (re.compile(r"^generation\."), ""),
    (re.compile(r"^inputs?(?=\[|$)"), "prompt"),
    (re.compile(r"^adapter$"), "model"),
]


def http_param(field: str) -> str:
    for pattern, replacement in _PARAM_NAMES:
        if pattern.search(field):
            return pattern.sub(replacement, field, count=1)
    return field


def error_body(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, extra headers) for `exc`."""
    if isinstance(exc, TuneserveError):
        status, kind, code = next(
            ((s, k, c) for cls, s, k, c in HTTP_STATUS_OF if isinstance(exc, cls)),
            (500, "server_error", "internal"),
        )
        headers: dict[str, str] = {}
        param = None
        message = exc.message
        if isinstance(exc, InvalidRequest) and exc.violations:
            first = exc.violations[0]
            # an endpoint that named the field itself (http_param) keeps its name
            param = getattr(exc, "http_param", None) or http_param(first.field)
            if message.startswith(f"{first.field}:"):  # the message leads with the gRPC path
                message = f"{param}:{message[len(first.field) + 1 :]}"
        # A transport-level refinement (e.g. an unknown `model`: param model, model_not_found).
        param = getattr(exc, "http_param", param)
        code = getattr(exc, "http_code", code)
        if isinstance(exc, QuotaExceeded):
            code = exc.quota
            if exc.retry_after_s > 0:
                headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
        return status, error_body(status, message, kind, code, param), headers
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error", error_id=error_id, exc_info=exc)
    message = f"internal error (id {error_id}); the server log has details"
    return 500, error_body(500, message, "server_error", "internal"), {}
