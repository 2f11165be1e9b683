"""Datasets, data reports and job events through a real server and worker: upload in chunks
(and resume a broken upload), train from the dataset's id, watch the job's events and
reconnect from a sequence number, and see every data problem reported or refused before a
job is queued."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import grpc
import pytest
from conftest import auth_channel, banking77

from tuneserve.v1 import common_pb2, datasets_pb2, datasets_pb2_grpc
from tuneserve_client import InvalidArgument, NotFound


def _csv(rows: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return out.getvalue().encode()


def test_upload_in_chunks_train_from_it_and_watch_every_event(cluster):
    data = _csv(banking77("train", per_label=24))
    with cluster.client(timeout=120) as client:
        dataset = client.upload_dataset(data, format="csv", display_name="b77-small", chunk_size=1000)
        assert dataset.id.startswith("ds-") and dataset.size_bytes == len(data)
        assert dataset.sha256 == hashlib.sha256(data).hexdigest()
        assert dataset.rows == dataset.usable_rows == 96
        assert dataset.report is not None and dataset.report.ok
        assert client.get_dataset(dataset.id) == dataset
        assert dataset.id in [d.id for d in client.list_datasets()]

        # One hold-out run (auto would cross-validate 96 rows): its step total never changes.
        job = client.train(
            "from-dataset",
            dataset=dataset,
            epochs=2,
            batch_size=16,
            eval_every_steps=5,
            validation_scheme="holdout",
        )
        assert job.dataset_id == dataset.id
        assert (
            job.data_report is not None and job.data_report.train_rows + job.data_report.validation_rows == 96
        )

        events = list(client.watch_job(job, timeout=600))
        final = client.get_job(job.id)
    assert final.state == "SUCCEEDED", final.error
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.state for e in events if e.type == "STATE"]
    assert states == ["QUEUED", "RUNNING", "SUCCEEDED"]
    progress = [e for e in events if e.type == "PROGRESS"]
    assert progress and all(e.total_steps == final.total_steps for e in progress)
    assert any(e.examples_per_second and e.learning_rate is not None for e in progress)
    evaluations = [e for e in events if e.type == "EVALUATION"]
    assert len(evaluations) >= 2 and all("accuracy" in e.metrics for e in evaluations)
    assert events[-1].state == "SUCCEEDED" and "from-dataset@1" in events[-1].message

    # Reconnecting from any sequence number gives exactly the later events, then ends.
    with cluster.client() as client:
        middle = len(events) // 2
        again = list(client.watch_job(job.id, after_sequence=events[middle - 1].sequence))
        assert again == events[middle:]
        assert list(client.watch_job(job.id, after_sequence=events[-1].sequence)) == []


def _stub(cluster):
    channel = auth_channel(cluster.api)
    return channel, datasets_pb2_grpc.DatasetServiceStub(channel)


def _header(data: bytes, upload_id: str, **changes) -> datasets_pb2.DatasetUploadHeader:
    fields = dict(
        namespace="default",
        display_name="partial",
        task=common_pb2.TASK_TYPE_CLASSIFICATION,
        format=datasets_pb2.DATASET_FORMAT_JSONL,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        upload_id=upload_id,
    )
    fields.update(changes)
    return datasets_pb2.DatasetUploadHeader(**fields)


def _send(stub, header, chunks):
    def messages():
        yield datasets_pb2.UploadDatasetRequest(header=header)
        for offset, piece in chunks:
            yield datasets_pb2.UploadDatasetRequest(
                chunk=datasets_pb2.DatasetChunk(offset=offset, data=piece)
            )

    return stub.UploadDataset(messages(), timeout=30)


def test_a_broken_upload_resumes_by_sending_again(cluster):
    rows = banking77("train", per_label=10)
    data = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows).encode()
    channel, stub = _stub(cluster)
    with channel:
        # The connection "drops" after the first 1,000 bytes: the server keeps them.
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data, "resume-me"), [(0, data[:1000])])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "send the rest from offset 1000" in err.value.details()
        # A gap is refused, naming where to continue.
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data, "resume-me"), [(1500, data[1500:])])
        assert "send from offset 1000" in err.value.details()
        # The same upload_id for another file is refused.
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data + b"\n", "resume-me"), [])
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with cluster.client() as client:
        # The client simply sends the whole file again; held bytes are checked and skipped.
        dataset = client.upload_dataset(data, format="jsonl", upload_id="resume-me")
        assert dataset.usable_rows == len(rows)
        assert client.upload_dataset(data, format="jsonl", upload_id="resume-me") == dataset


def test_upload_refusals_name_the_field(cluster):
    data = b'{"text": "a", "label": "b"}\n'
    channel, stub = _stub(cluster)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data, "bad-sha", sha256="0" * 64), [(0, data)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "header.sha256" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data, "too-big", size_bytes=10**12), [])
        assert "header.size_bytes" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data, "no-format", format=0), [])
        assert "header.format" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, _header(data, "lm", task=common_pb2.TASK_TYPE_CAUSAL_LM), [])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with cluster.client() as client, pytest.raises(InvalidArgument) as err:
        client.upload_dataset(b"text,category\n", format="csv")
    assert err.value.field_violations


def test_every_data_problem_is_reported(cluster):
    rows = banking77("train", per_label=12)
    bad = [("", "card_arrival"), ("no label at all", ""), ("x" * 5000, "card_arrival")]
    dup = [rows[0], (rows[1][0].upper() + "!!", rows[1][1])]  # exact and near duplicates
    conflict = [(rows[2][0], "exchange_rate" if rows[2][1] != "exchange_rate" else "top_up_failed")]
    data = _csv(rows + bad + dup + conflict) + b"\xff\xfe broken bytes,card_arrival\n"
    with cluster.client() as client:
        dataset = client.upload_dataset(data, format="csv")
        report = client.validate_dataset(dataset)
    assert report.ok  # all soft
    assert report.dropped == {"empty_text": 1, "missing_label": 1, "over_length": 1, "bad_utf8": 1}
    assert report.exact_duplicates >= 1 and report.near_duplicates >= 1
    assert report.conflicting_texts == 1
    codes = {i.code for i in report.warnings}
    assert {"rows_dropped", "conflicting_labels"} <= codes
    assert {label for label, _, _ in report.labels} == {
        "card_arrival",
        "lost_or_stolen_card",
        "exchange_rate",
        "top_up_failed",
    }


def test_hard_data_errors_refuse_the_job_with_the_report(cluster):
    rows = banking77("train", per_label=12)
    with cluster.client() as client:
        jobs_before = len(list(client.list_jobs()))
        # Validation rows copied from training: leakage over the limit.
        with pytest.raises(InvalidArgument) as err:
            client.train("leaky", rows, validation=rows[:10])
        assert err.value.data_report is not None and not err.value.data_report.ok
        assert err.value.data_report.leaked_validation_rows == 10
        assert "validation_examples" in {f for f, _ in err.value.field_violations}
        # A label with a single example.
        with pytest.raises(InvalidArgument) as err:
            client.train("rare", [*rows, ("a lonely query", "rare_label")], validation_fraction=0.2)
        assert any(i.code == "label_too_rare" for i in err.value.data_report.errors)
        # The same checks without a job.
        report = client.validate_dataset(None, rows, validation=rows[:10])
        assert not report.ok and any(i.code == "leakage" for i in report.errors)
        with pytest.raises(NotFound) as missing:
            client.train("ghost", dataset="ds-does-not-exist")
        assert "dataset_id" in missing.value.message
        with pytest.raises(InvalidArgument):
            client.train("both", rows, dataset="ds-does-not-exist")
        assert len(list(client.list_jobs())) == jobs_before  # nothing was queued


def test_datasets_are_per_namespace_and_deletable(cluster):
    with cluster.client(namespace="team-x") as team_x, cluster.client(namespace="team-y") as team_y:
        dataset = team_x.upload_dataset(_csv(banking77("train", per_label=3)), format="csv")
        with pytest.raises(NotFound):
            team_y.get_dataset(dataset.id)
        with pytest.raises(NotFound):
            team_y.train("steal", dataset=dataset.id)
        team_x.delete_dataset(dataset.id)
        with pytest.raises(NotFound):
            team_x.get_dataset(dataset.id)


def test_cli_upload_validate_train_and_watch(cluster, tmp_path, capsys):
    from tuneserve_client.cli import main

    path = tmp_path / "tickets.csv"
    path.write_bytes(_csv(banking77("train", per_label=10)))
    base = ["--target", cluster.api.target, "--api-key", cluster.api.api_key, "--namespace", "cli-team"]
    assert main([*base, "datasets", "upload", str(path)]) == 0
    captured = capsys.readouterr()
    dataset_id = captured.out.strip()
    assert dataset_id.startswith("ds-") and "verdict:     ok" in captured.err
    assert main([*base, "datasets", "validate", dataset_id]) == 0
    # 40 rows: auto validation is 5-fold cross-validation, so no row is set aside.
    assert "40 usable of 40 rows (40 train, 0 validation)" in capsys.readouterr().out
    assert main([*base, "datasets", "list"]) == 0
    assert dataset_id in capsys.readouterr().out

    rc = main(
        [
            *base,
            "train",
            "--adapter",
            "cli-intents",
            "--dataset",
            dataset_id,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--watch",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0, out
    job_id = out[0]
    assert any("QUEUED" in line for line in out) and "SUCCEEDED" in out[-1]
    assert any(line.startswith("[") and "ex/s" in line for line in out)  # progress, not a tty
    # Resume the watch after the first event: the rest, each once, in order.
    assert main([*base, "jobs", "watch", job_id, "--after", "1"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert not any(" #1 " in line for line in again) and " #2 " in again[0] and "SUCCEEDED" in again[-1]
