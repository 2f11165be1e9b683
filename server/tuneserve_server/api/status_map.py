"""The one table from domain errors to gRPC status codes, and the abort helper.

An unexpected exception becomes INTERNAL with a generic message and an error id that is
also logged with the traceback; its own text never reaches the caller."""

from __future__ import annotations

import uuid

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tuneserve_server.domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    DataRejected,
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
MAX_STATUS_LABELS = 20

STATUS_OF: dict[type[TuneserveError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    CapacityExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The gRPC code and the google.rpc.Status (with details) that `exc` maps to."""
    if isinstance(exc, TuneserveError):
        code = next((c for cls, c in STATUS_OF.items() if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
        status = status_pb2.Status(code=code.value[0], message=exc.message)
        if isinstance(exc, InvalidRequest) and exc.violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in exc.violations
                    ]
                )
            )
            status.details.append(detail)
        if isinstance(exc, QuotaExceeded):  # which quota, and when trying again may help
            failure = any_pb2.Any()
            failure.Pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=exc.quota, description=f"{exc.used} of {exc.limit} used"
                        )
                    ]
                )
            )
            status.details.append(failure)
            if exc.retry_after_s > 0:
                retry = any_pb2.Any()
                retry.Pack(
                    error_details_pb2.RetryInfo(retry_delay={"seconds": max(1, round(exc.retry_after_s))})
                )
                status.details.append(retry)
        if isinstance(exc, DataRejected):  # the whole data report, so the caller sees every issue
            from tuneserve_server.api.convert import data_report_pb

            # Trailers are metadata (16 KiB hard limit): at most MAX_STATUS_LABELS label rows
            # travel with the error; ValidateDataset returns the report whole.
            trimmed = {**exc.report, "labels": list(exc.report.get("labels", []))[:MAX_STATUS_LABELS]}
            report = any_pb2.Any()
            report.Pack(data_report_pb(trimmed))
            status.details.append(report)
        return code, status
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error", error_id=error_id, exc_info=exc)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (id {error_id}); the server log has details"
    )
    return grpc.StatusCode.INTERNAL, status


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, status = status_for(exc)
    trailing = tuple(rpc_status.to_status(status).trailing_metadata)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:  # abort replaces the trailing metadata: keep the request id in it
        trailing += (("x-request-id", request_id),)
    await context.abort(code, status.message, trailing)
