"""Every bad request gets the right status code and names the bad field; nothing is queued."""

from __future__ import annotations

import time

import grpc
import pytest
from conftest import auth_channel, banking77

from tuneserve.v1 import common_pb2, training_pb2, training_pb2_grpc
from tuneserve_client import FailedPrecondition, InvalidArgument, NotFound

GOOD = [
    ("my card has not arrived", "card_arrival"),
    ("where is my card", "card_arrival"),
    ("card stolen", "lost_or_stolen_card"),
    ("I lost my card", "lost_or_stolen_card"),
] * 3


def fields_of(exc) -> set[str]:
    return {f for f, _ in exc.field_violations}


@pytest.mark.parametrize(
    ("examples", "kwargs", "field"),
    [
        ([], {}, "training_examples"),
        ([("", "card_arrival"), *GOOD], {}, "training_examples[0].classification.text"),
        ([*GOOD, ("some text", " ")], {}, f"training_examples[{len(GOOD)}].classification.label"),
        ([("a", "x"), ("b", "x"), ("c", "x"), ("d", "x")], {}, "training_examples"),
        (GOOD, {"lora_rank": 0}, "hyperparameters.lora.rank"),
        (GOOD, {"lora_rank": 4096}, "hyperparameters.lora.rank"),
        (GOOD, {"lora_dropout": 1.0}, "hyperparameters.lora.dropout"),
        (GOOD, {"target_modules": ["nonexistent"]}, "hyperparameters.lora.target_modules"),
        (GOOD, {"learning_rate": 0.0}, "hyperparameters.optimizer.learning_rate"),
        (GOOD, {"learning_rate": 5.0}, "hyperparameters.optimizer.learning_rate"),
        (GOOD, {"batch_size": 0}, "hyperparameters.optimizer.batch_size"),
        (GOOD, {"epochs": 1000}, "hyperparameters.optimizer.epochs"),
        (GOOD, {"max_seq_length": 100000}, "hyperparameters.optimizer.max_seq_length"),
        (GOOD, {"validation_fraction": 0.9}, "validation_fraction"),
        (GOOD, {"validation": [("x", "card_arrival")], "validation_fraction": 0.2}, "validation_fraction"),
        (GOOD, {"validation": [("x", "never_trained_label")]}, "validation_examples"),
    ],
)
def test_bad_train_requests_are_invalid_argument(cluster, examples, kwargs, field):
    with cluster.client() as client:
        before = len(list(client.list_jobs()))
        with pytest.raises(InvalidArgument) as err:
            client.train("bad-input", examples, **kwargs)
        assert field in fields_of(err.value), err.value
        assert len(list(client.list_jobs())) == before  # nothing was queued


def test_bad_adapter_name_is_invalid_argument(cluster):
    with cluster.client() as client, pytest.raises(InvalidArgument) as err:
        client.train("Bad Name!", GOOD)
    assert "adapter_name" in fields_of(err.value)


def _raw_train(cluster, **fields) -> grpc.RpcError:
    with auth_channel(cluster.api) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        request = training_pb2.TrainRequest(
            adapter_name="raw",
            request_id=f"raw-{time.monotonic_ns()}",
            training_examples=[
                common_pb2.Example(classification=common_pb2.ClassificationExample(text=t, label=y))
                for t, y in GOOD
            ],
            **fields,
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Train(request, timeout=30)
    return err.value


def test_missing_and_unknown_task(cluster):
    assert _raw_train(cluster).code() == grpc.StatusCode.INVALID_ARGUMENT  # task unset
    err = _raw_train(cluster, task=99)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "task" in err.details()


def test_task_the_served_base_cannot_do_is_failed_precondition(cluster):
    err = _raw_train(cluster, task=common_pb2.TASK_TYPE_CAUSAL_LM)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "all-MiniLM-L6-v2" in err.details()


def test_missing_request_id_is_invalid_argument(cluster):
    with auth_channel(cluster.api) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Train(
                training_pb2.TrainRequest(adapter_name="x", task=common_pb2.TASK_TYPE_CLASSIFICATION),
                timeout=30,
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in err.value.details()


def test_predict_errors(cluster, trained):
    with cluster.client() as client:
        with pytest.raises(NotFound):
            client.predict("no-such-adapter", ["hello"])
        with pytest.raises(NotFound):
            client.predict("intents@999", ["hello"])
        with pytest.raises(InvalidArgument) as err:
            client.predict("intents", [])
        assert "inputs" in fields_of(err.value)
        with pytest.raises(InvalidArgument) as err:
            client.predict("intents", ["fine", "   "])
        assert "inputs[1]" in fields_of(err.value)
        with pytest.raises(InvalidArgument) as err:
            client.predict("intents@0", ["x"])
        assert "adapter" in fields_of(err.value)
        with pytest.raises(FailedPrecondition):
            client.predict(None, ["the base model has no labels"])


def test_job_errors(cluster, trained):
    with cluster.client() as client:
        with pytest.raises(NotFound):
            client.get_job("job-does-not-exist")
        with pytest.raises(FailedPrecondition):
            client.cancel_job(trained.id)  # already SUCCEEDED
        assert client.get_job(trained.id).state == "SUCCEEDED"
        with pytest.raises(NotFound):
            client.delete_adapter("no-such-adapter")


def test_cancel_running_job_stops_it(cluster, trained):
    with cluster.client() as client:
        job = client.train("to-cancel", banking77("train", per_label=40), epochs=50)
        deadline = time.monotonic() + 120
        while client.get_job(job.id).state == "QUEUED" and time.monotonic() < deadline:
            time.sleep(0.2)
        client.cancel_job(job.id)
        cancelled_at = time.monotonic()
        job = client.wait(job, timeout=60, poll_interval=0.2)
        assert job.state == "CANCELLED"
        assert time.monotonic() - cancelled_at < 15
        assert job.step < job.total_steps
        with pytest.raises(NotFound):
            client.get_adapter("to-cancel")
