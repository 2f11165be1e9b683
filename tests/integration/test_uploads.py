"""Unfinished uploads and the request interceptor on streaming RPCs, through a real server:
an owner lists its unfinished uploads and discards one (client and CLI), another namespace
sees none of them; UploadDataset and WatchJob carry an x-request-id trailer (the caller's
own when it sends one), are counted in the RPC metrics by method and log an access line."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest
from conftest import auth_channel

from tuneserve.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc, training_pb2, training_pb2_grpc
from tuneserve_client import NotFound

DATA = "".join(json.dumps({"text": f"ticket {i}", "label": "ab"[i % 2]}) + "\n" for i in range(200)).encode()


def _header(upload_id: str, namespace: str) -> datasets_pb2.DatasetUploadHeader:
    return datasets_pb2.DatasetUploadHeader(
        namespace=namespace,
        display_name="half.jsonl",
        task=common_pb2.TASK_TYPE_CLASSIFICATION,
        format=datasets_pb2.DATASET_FORMAT_JSONL,
        size_bytes=len(DATA),
        sha256=hashlib.sha256(DATA).hexdigest(),
        upload_id=upload_id,
    )


def _messages(header, chunks):
    yield datasets_pb2.UploadDatasetRequest(header=header)
    for offset, data in chunks:
        yield datasets_pb2.UploadDatasetRequest(chunk=datasets_pb2.DatasetChunk(offset=offset, data=data))


def _trailer(call_or_error) -> str | None:
    return dict(call_or_error.trailing_metadata() or ()).get("x-request-id")


def test_an_owner_lists_and_discards_unfinished_uploads(cluster, capsys):
    from tuneserve_client.cli import main

    with auth_channel(cluster.api) as channel:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:  # the connection "drops" after 1,000 bytes
            stub.UploadDataset(_messages(_header("half-1", "uploads-a"), [(0, DATA[:1000])]), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with cluster.client(namespace="uploads-a") as client:
        (upload,) = list(client.list_uploads())
        assert (upload.upload_id, upload.display_name) == ("half-1", "half.jsonl")
        assert (upload.received_bytes, upload.size_bytes) == (1000, len(DATA))
        assert upload.last_chunk_at is not None and upload.expires_at > upload.last_chunk_at
    with cluster.client(namespace="uploads-b") as other:
        assert list(other.list_uploads()) == []
        with pytest.raises(NotFound):
            other.discard_upload("half-1")

    base = ["--target", cluster.api.target, "--namespace", "uploads-a", "--api-key", cluster.api.api_key]
    assert main([*base, "datasets", "uploads"]) == 0
    out = capsys.readouterr().out
    assert "half-1" in out and f"1000/{len(DATA)}" in out
    assert main([*base, "datasets", "discard", "half-1"]) == 0
    assert "discarded upload half-1" in capsys.readouterr().out
    assert main([*base, "datasets", "uploads"]) == 0
    assert "half-1" not in capsys.readouterr().out
    assert main([*base, "datasets", "discard", "half-1"]) != 0  # NOT_FOUND now
    with cluster.client(namespace="uploads-a") as client:
        # Sent again, the upload starts from nothing and finishes.
        dataset = client.upload_dataset(DATA, format="jsonl", upload_id="half-1")
        assert dataset.usable_rows == 200
        assert list(client.list_uploads()) == []


def _rpc_count(cluster, method: str, code: str) -> float:
    return cluster.api.metrics().get(f'tuneserve_rpc_requests_total{{code="{code}",method="{method}"}}', 0.0)


def test_streaming_rpcs_pass_the_request_interceptor(cluster):
    ok_before = _rpc_count(cluster, "UploadDataset", "OK")
    bad_before = _rpc_count(cluster, "UploadDataset", "INVALID_ARGUMENT")
    watch_before = _rpc_count(cluster, "WatchJob", "NOT_FOUND")
    with auth_channel(cluster.api) as channel:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        chunks = [(0, DATA[:2000]), (2000, DATA[2000:])]
        reply, call = stub.UploadDataset.with_call(
            _messages(_header("traced", "trace-ns"), chunks),
            timeout=30,
            metadata=(("x-request-id", "upload-req-42"),),
        )
        assert reply.created and _trailer(call) == "upload-req-42"
        # Without an id of its own the caller still gets one; a refusal carries it too.
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadDataset(iter([datasets_pb2.UploadDatasetRequest()]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        generated = _trailer(err.value)
        assert generated and len(generated) == 32
        # Server streaming: WatchJob on a job that does not exist.
        watch = training_pb2_grpc.TrainingServiceStub(channel).WatchJob(
            training_pb2.WatchJobRequest(namespace="trace-ns", job_id="job-missing"),
            timeout=30,
            metadata=(("x-request-id", "watch-req-7"),),
        )
        with pytest.raises(grpc.RpcError) as err:
            list(watch)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and _trailer(err.value) == "watch-req-7"
    assert _rpc_count(cluster, "UploadDataset", "OK") == ok_before + 1
    assert _rpc_count(cluster, "UploadDataset", "INVALID_ARGUMENT") == bad_before + 1
    assert _rpc_count(cluster, "WatchJob", "NOT_FOUND") == watch_before + 1
    log = cluster.api.log()
    access = [line for line in log.splitlines() if "upload-req-42" in line and "rpc" in line]
    assert any("UploadDataset" in line and "code=OK" in line for line in access), access
    assert any("watch-req-7" in line and "NOT_FOUND" in line for line in log.splitlines())
