"""Typed exceptions for failed RPCs, one class per gRPC status code the service uses."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tuneserve.v1 import datasets_pb2
from tuneserve_client.reports import data_report_from_pb

REQUEST_ID_METADATA_KEY = "x-request-id"


class TuneserveError(Exception):
    """A failed RPC: its status code, message, field violations and server request id."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
        request_id: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = list(field_violations or [])
        self.request_id = request_id
        # Train / ValidateDataset refusals carry the whole data report (reports.DataReport).
        self.data_report = None
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        violations = [f"{field}: {desc}" for field, desc in self.field_violations]
        # The server often words a single violation as the message itself; don't repeat it.
        if violations and violations != [self.message]:
            text += f" ({'; '.join(violations)})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"field_violations={self.field_violations!r}, request_id={self.request_id!r})"
        )

    def __reduce__(self):  # keep pickling (e.g. across processes) working with our __init__
        return (type(self), (self.code, self.message, self.field_violations, self.request_id))


class InvalidArgument(TuneserveError):
    """The request or its data is invalid; see `field_violations`."""


class NotFound(TuneserveError):
    """The job, adapter or version does not exist."""


class AlreadyExists(TuneserveError):
    """The resource exists already."""


class FailedPrecondition(TuneserveError):
    """The system is not in a state to honour the request (e.g. cancelling a finished job)."""


class ResourceExhausted(TuneserveError):
    """A queue or memory limit is reached; back off and retry."""


class Unavailable(TuneserveError):
    """The server is unreachable, starting or draining; retry later."""


class DeadlineExceeded(TuneserveError):
    """The call's deadline passed before the server answered."""


class Cancelled(TuneserveError):
    """The call was cancelled."""


class PermissionDenied(TuneserveError):
    """The caller may not do this."""


class Unauthenticated(TuneserveError):
    """The caller's credentials are missing or invalid."""


class Internal(TuneserveError):
    """A server bug or any status code without a class of its own (`code` tells which)."""


_CLASSES: dict[grpc.StatusCode, type[TuneserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def error_class(code: grpc.StatusCode) -> type[TuneserveError]:
    """The exception class for a status code (`Internal` for codes without their own)."""
    return _CLASSES.get(code, Internal)


def _call_attr(err: grpc.RpcError, name: str):
    method = getattr(err, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # a half-formed RpcError must not hide the original failure
        return None


def _metadata_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def from_rpc_error(err: grpc.RpcError) -> TuneserveError:
    """Convert a failed call into the matching `TuneserveError` subclass.

    Reads the rich `google.rpc.Status` from the trailers when present: `BadRequest` details
    become `field_violations`, `RequestInfo.request_id` is a fallback for `x-request-id`.
    """
    code = _call_attr(err, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = _call_attr(err, "details") or ""
    if not isinstance(message, str):
        message = str(message)
    if not message and not hasattr(err, "code"):
        message = str(err)

    violations: list[tuple[str, str]] = []
    request_id = _metadata_value(_call_attr(err, "trailing_metadata"), REQUEST_ID_METADATA_KEY)
    if request_id is None:
        request_id = _metadata_value(_call_attr(err, "initial_metadata"), REQUEST_ID_METADATA_KEY)

    status = None
    data_report = None
    if hasattr(err, "trailing_metadata") and hasattr(err, "code"):
        try:
            status = rpc_status.from_call(err)
        except Exception:  # inconsistent or undecodable details: fall back to code + message
            status = None
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
            elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR) and request_id is None:
                info = error_details_pb2.RequestInfo()
                detail.Unpack(info)
                request_id = info.request_id or None
            elif detail.Is(datasets_pb2.DataReport.DESCRIPTOR):
                report = datasets_pb2.DataReport()
                detail.Unpack(report)
                data_report = data_report_from_pb(report)

    error = error_class(code)(code, message, violations, request_id)
    error.data_report = data_report
    return error
