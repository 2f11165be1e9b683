"""status_for: the one table from domain errors to gRPC codes, rich details, no leaks."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from tuneserve_server.api.status_map import status_for
from tuneserve_server.domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    NotFound,
    NotReady,
)


@pytest.mark.parametrize(
    ("exc", "code", "rpc_code"),
    [
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
        (NotFound("no job"), grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
        (AlreadyExists("dup"), grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
        (FailedPrecondition("state"), grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
        (CapacityExceeded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
        (NotReady("loading"), grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    ],
)
def test_each_domain_error_maps_to_its_code_with_its_message(exc, code, rpc_code):
    got_code, status = status_for(exc)
    assert got_code is code
    assert status.code == rpc_code
    assert status.message == exc.message
    assert list(status.details) == []


def test_invalid_request_carries_bad_request_field_violations():
    exc = InvalidRequest(
        "invalid Train request",
        [FieldViolation("request_id", "is required"), FieldViolation("hyperparameters.lora.rank", "too big")],
    )
    code, status = status_for(exc)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    (detail,) = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("request_id", "is required"),
        ("hyperparameters.lora.rank", "too big"),
    ]

    _, single = status_for(InvalidRequest.field("inputs[2]", "must not be empty"))
    bad = error_details_pb2.BadRequest()
    single.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["inputs[2]"]


def test_unexpected_exception_is_internal_and_does_not_leak_its_text():
    secret = "password=hunter2 at /srv/secret/path"
    code, status = status_for(RuntimeError(secret))
    assert code is grpc.StatusCode.INTERNAL
    assert status.code == code_pb2.INTERNAL
    assert "hunter2" not in status.message and "secret" not in status.message
    assert "RuntimeError" not in status.message
    assert "internal error" in status.message
    assert list(status.details) == []
    # Each failure gets its own error id to find in the log.
    _, again = status_for(KeyError(secret))
    assert again.message != status.message and "hunter2" not in again.message


def test_a_data_rejection_carries_the_report_small_enough_for_a_trailer():
    from tuneserve.v1 import datasets_pb2
    from tuneserve_server.domain.errors import DataRejected, FieldViolation
    from tuneserve_server.domain.jobs import LabelledText, TaskType
    from tuneserve_server.training.data_report import build_report

    # An ID column picked as the label: 2,000 labels of one example each.
    rows = [(i + 1, LabelledText(f"text {i}", f"id-{i}")) for i in range(2000)]
    report = build_report(TaskType.CLASSIFICATION, rows, [], total_rows=2000, dropped={})
    exc = DataRejected("rejected", [FieldViolation("dataset_id", "too rare")], report.to_dict())
    code, status = status_for(exc)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    packed = [d for d in status.details if d.Is(datasets_pb2.DataReport.DESCRIPTOR)]
    assert len(packed) == 1
    sent = datasets_pb2.DataReport()
    packed[0].Unpack(sent)
    assert len(sent.labels) == 20 and not sent.ok
    assert [i.code for i in sent.issues] == [i.code for i in report.issues]
    assert len(status.SerializeToString()) < 8 * 1024  # gRPC's soft metadata limit
