"""Conversion of protobuf messages into the client's dataclasses."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from tuneserve.v1 import adapters_pb2, common_pb2, inference_pb2, training_pb2
from tuneserve_client.types import (
    Job,
    LabelScore,
    adapter_from_pb,
    classification_from_pb,
    job_from_pb,
    prediction_from_pb,
    state_to_pb,
    task_to_pb,
)


def test_job_with_unset_timestamps_and_train_loss():
    pb = training_pb2.Job(
        id="j1",
        namespace="default",
        adapter_name="intents",
        task=common_pb2.TASK_TYPE_CLASSIFICATION,
        state=training_pb2.JOB_STATE_QUEUED,
        request_id="r1",
        train_examples=90,
        validation_examples=10,
    )
    pb.created_at.FromSeconds(1_700_000_000)

    job = job_from_pb(pb)

    assert job.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert job.created_at.tzinfo is not None
    assert (job.started_at, job.finished_at, job.updated_at) == (None, None, None)
    assert job.train_loss is None
    assert (job.step, job.total_steps, job.epoch) == (0, 0, 0)
    assert job.task == "classification"
    assert job.state == "QUEUED"
    assert not job.done
    assert (job.train_examples, job.validation_examples, job.request_id) == (90, 10, "r1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.state = "RUNNING"  # type: ignore[misc]


def test_job_with_zero_train_loss_and_metrics_is_done():
    pb = training_pb2.Job(
        id="j2",
        task=common_pb2.TASK_TYPE_CAUSAL_LM,
        state=training_pb2.JOB_STATE_SUCCEEDED,
        progress=training_pb2.JobProgress(step=30, total_steps=30, epoch=3, train_loss=0.0),
        metrics={"accuracy": 0.5},
        adapter_version=2,
        attempts=1,
    )
    pb.finished_at.FromMilliseconds(1_700_000_000_500)

    job = job_from_pb(pb)

    assert job.train_loss == 0.0  # set-but-zero is not None
    assert job.done and job.state == "SUCCEEDED"
    assert job.task == "causal_lm"
    assert job.metrics == {"accuracy": 0.5}
    assert job.finished_at == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert (job.step, job.total_steps, job.epoch, job.adapter_version) == (30, 30, 3, 2)


def test_unknown_enum_values_do_not_crash():
    job = job_from_pb(training_pb2.Job(id="x", state=99, task=42))
    assert job.state == "JOB_STATE_99"
    assert not job.done
    assert isinstance(job, Job)


def test_classification_and_prediction():
    pb = inference_pb2.Classification(
        label="a", score=0.75, probabilities=[inference_pb2.LabelScore(label="a", score=0.75)]
    )
    result = classification_from_pb(pb)
    assert result.label == "a"
    assert result.score == pytest.approx(0.75)
    assert result.probabilities == [LabelScore("a", 0.75)]
    assert prediction_from_pb(inference_pb2.Prediction(classification=pb)) == result
    with pytest.raises(ValueError):
        prediction_from_pb(inference_pb2.Prediction())


def test_adapter_with_versions():
    with_rank = adapters_pb2.AdapterVersion(
        version=1,
        job_id="j1",
        labels=["a", "b"],
        metrics={"accuracy": 1.0},
        lora=common_pb2.LoraConfig(rank=8),
        size_bytes=1234,
        resident=True,
    )
    without_rank = adapters_pb2.AdapterVersion(version=2, job_id="j2")
    adapter = adapter_from_pb(
        adapters_pb2.Adapter(
            namespace="ns",
            name="intents",
            task=common_pb2.TASK_TYPE_CLASSIFICATION,
            base_model="minilm",
            versions=[with_rank, without_rank],
            latest_version=2,
        )
    )
    assert adapter.name == "intents" and adapter.task == "classification"
    assert [v.version for v in adapter.versions] == [1, 2]
    assert adapter.versions[0].lora_rank == 8
    assert adapter.versions[0].labels == ["a", "b"]
    assert adapter.versions[0].resident is True
    assert adapter.versions[1].lora_rank is None
    assert adapter.versions[1].created_at is None


def test_enum_parsing():
    assert task_to_pb("Classification") == common_pb2.TASK_TYPE_CLASSIFICATION
    assert state_to_pb("running") == training_pb2.JOB_STATE_RUNNING
    assert state_to_pb("JOB_STATE_FAILED") == training_pb2.JOB_STATE_FAILED
    with pytest.raises(ValueError, match="unknown task"):
        task_to_pb("regression")
    with pytest.raises(ValueError, match="unknown job state"):
        state_to_pb("UNSPECIFIED")
