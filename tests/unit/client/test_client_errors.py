"""from_rpc_error against statuses sent by a real gRPC server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tuneserve_client import errors
from tuneserve_client.errors import from_rpc_error

_METHOD = "/test.Errors/Fail"


@pytest.fixture
def failing_call() -> Iterator[Callable[..., grpc.RpcError]]:
    """Calls a real server method whose behaviour is the given function; returns the error."""
    behaviours: list[Callable[[grpc.ServicerContext], None]] = []

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        behaviours[-1](context)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Errors", {"Fail": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(behaviour: Callable[[grpc.ServicerContext], None], timeout: float = 5.0) -> grpc.RpcError:
        behaviours.append(behaviour)
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(_METHOD)(b"", timeout=timeout)
        return info.value

    try:
        yield call
    finally:
        channel.close()
        server.stop(grace=None)


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_bad_request_details_become_field_violations(failing_call):
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="training_examples", description="needs at least 2 distinct labels"
            )
        ]
    )
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="training data has one label",
        details=[_packed(bad_request)],
    )
    grpc_status = rpc_status.to_status(status)
    grpc_status = grpc_status._replace(
        trailing_metadata=(*grpc_status.trailing_metadata, ("x-request-id", "req-123"))
    )

    exc = from_rpc_error(failing_call(lambda ctx: ctx.abort_with_status(grpc_status)))

    assert type(exc) is errors.InvalidArgument
    assert isinstance(exc, errors.TuneserveError)
    assert exc.code is grpc.StatusCode.INVALID_ARGUMENT
    assert exc.message == "training data has one label"
    assert exc.field_violations == [("training_examples", "needs at least 2 distinct labels")]
    assert exc.request_id == "req-123"
    assert str(exc) == (
        "INVALID_ARGUMENT: training data has one label (training_examples: needs at least 2 distinct labels)"
    )


def test_request_info_detail_supplies_request_id_and_single_violation_is_not_repeated(failing_call):
    violation = error_details_pb2.BadRequest.FieldViolation(field="adapter", description="bad name")
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="adapter: bad name",
        details=[
            _packed(error_details_pb2.BadRequest(field_violations=[violation])),
            _packed(error_details_pb2.RequestInfo(request_id="from-detail")),
        ],
    )
    exc = from_rpc_error(failing_call(lambda ctx: ctx.abort_with_status(rpc_status.to_status(status))))

    assert exc.request_id == "from-detail"
    assert exc.field_violations == [("adapter", "bad name")]
    assert str(exc) == "INVALID_ARGUMENT: adapter: bad name"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.INTERNAL, errors.Internal),
        (grpc.StatusCode.DATA_LOSS, errors.Internal),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Internal),
    ],
)
def test_plain_status_codes_map_to_classes(failing_call, code, cls):
    exc = from_rpc_error(failing_call(lambda ctx: ctx.abort(code, "nope")))

    assert type(exc) is cls
    assert exc.code is code
    assert exc.message == "nope"
    assert exc.field_violations == []
    assert exc.request_id is None
    assert str(exc) == f"{code.name}: nope"


def test_deadline_exceeded_from_a_real_deadline(failing_call):
    exc = from_rpc_error(failing_call(lambda ctx: time.sleep(0.5), timeout=0.05))

    assert type(exc) is errors.DeadlineExceeded
    assert exc.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_error_without_call_information_is_internal():
    exc = from_rpc_error(grpc.RpcError("boom"))

    assert type(exc) is errors.Internal
    assert exc.code is grpc.StatusCode.UNKNOWN
    assert exc.message == "boom"
