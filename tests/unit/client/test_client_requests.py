"""What Client sends over a real channel, and how it reacts to the peer's answers."""

from __future__ import annotations

import pytest

from tuneserve.v1 import common_pb2, training_pb2
from tuneserve_client import Client, Job, NotFound, Unavailable


def _job(job_id: str, state: int, step: int = 0) -> training_pb2.Job:
    return training_pb2.Job(
        id=job_id, state=state, progress=training_pb2.JobProgress(step=step, total_steps=10)
    )


def test_train_sends_namespace_request_id_examples_and_only_given_options(client, training_service):
    job = client.train(
        "intents",
        [("hello", "greet"), {"text": "bye", "label": "leave"}],
        validation=[("hi", "greet")],
        lora_rank=8,
        epochs=2,
        learning_rate=0.001,
        seed=0,
    )

    (request,) = training_service.train_requests
    assert request.namespace == "team-a"
    assert request.adapter_name == "intents"
    assert request.task == common_pb2.TASK_TYPE_CLASSIFICATION
    assert len(request.request_id) == 32  # a uuid4 hex
    assert [(e.classification.text, e.classification.label) for e in request.training_examples] == [
        ("hello", "greet"),
        ("bye", "leave"),
    ]
    assert [e.classification.text for e in request.validation_examples] == ["hi"]
    assert not request.HasField("validation_fraction")

    lora = request.hyperparameters.lora
    assert lora.HasField("rank") and lora.rank == 8
    assert not lora.HasField("alpha") and not lora.HasField("dropout")
    assert list(lora.target_modules) == []
    opt = request.hyperparameters.optimizer
    assert opt.epochs == 2 and opt.learning_rate == pytest.approx(0.001)
    assert opt.HasField("seed") and opt.seed == 0  # zero is given, so it is sent
    for name in ("batch_size", "max_steps", "warmup_ratio", "weight_decay", "max_seq_length"):
        assert not opt.HasField(name), name

    assert isinstance(job, Job)
    assert job.id == "job-1" and job.state == "QUEUED" and job.namespace == "team-a"
    assert job.request_id == request.request_id
    assert job.created_at is not None and job.created_at.tzinfo is not None


def test_train_without_options_leaves_hyperparameters_unset(client, training_service):
    client.train("intents", [("a", "x"), ("b", "y")], validation_fraction=0.25, request_id="mine")

    (request,) = training_service.train_requests
    assert request.request_id == "mine"
    assert not request.HasField("hyperparameters")
    assert request.HasField("validation_fraction")
    assert request.validation_fraction == pytest.approx(0.25)


def test_every_call_has_a_deadline_and_metadata(server_target, training_service):
    with Client(server_target, timeout=7.0, metadata={"authorization": "Bearer t"}) as c:
        c.train("intents", [("a", "x")])
        c.train("intents", [("a", "x")], timeout=2.0)

    first, second = training_service.deadlines
    assert first is not None and 5.0 < first <= 7.5  # gRPC rounds deadlines a little
    assert second is not None and 1.0 < second <= 2.5
    assert training_service.metadata[0]["authorization"] == "Bearer t"
    # No namespace given: the server takes the credential's tenant (auth none: "default").
    assert training_service.train_requests[0].namespace == ""


def test_train_retries_unavailable_with_the_same_request_id(client, training_service):
    training_service.unavailable_first = 1

    job = client.train("intents", [("a", "x")])

    first, second = training_service.train_requests
    assert first.request_id == second.request_id == job.request_id
    assert first == second


def test_train_gives_up_after_three_retries(client, training_service):
    training_service.unavailable_first = 10

    with pytest.raises(Unavailable) as info:
        client.train("intents", [("a", "x")])

    assert len(training_service.train_requests) == 4
    assert info.value.message == "draining"


def test_bad_examples_are_rejected_before_sending(client, training_service):
    with pytest.raises(ValueError, match=r"examples\[1\]"):
        client.train("intents", [("a", "x"), ("lonely",)])
    with pytest.raises(TypeError, match="label must be a str"):
        client.train("intents", [("a", None)])
    assert training_service.train_requests == []


def test_get_job_not_found_carries_request_id(client, training_service):
    with pytest.raises(NotFound) as info:
        client.get_job("nope")
    assert info.value.request_id == "srv-42"
    assert str(info.value) == "NOT_FOUND: job nope not found"
    assert training_service.get_requests[0].namespace == "team-a"


def test_list_jobs_follows_pages_and_sends_filters(client, training_service):
    for i in range(5):
        training_service.jobs[f"j{i}"] = [_job(f"j{i}", training_pb2.JOB_STATE_RUNNING)]

    jobs = list(client.list_jobs(states=["running", "QUEUED"], adapter="intents", page_size=2))

    assert [j.id for j in jobs] == ["j0", "j1", "j2", "j3", "j4"]
    assert [r.page_token for r in training_service.list_requests] == ["", "2", "4"]
    first = training_service.list_requests[0]
    assert list(first.states) == [training_pb2.JOB_STATE_RUNNING, training_pb2.JOB_STATE_QUEUED]
    assert first.adapter_name == "intents" and first.page_size == 2 and first.namespace == "team-a"


def test_wait_reports_changes_and_returns_the_terminal_job(client, training_service):
    running = training_pb2.JOB_STATE_RUNNING
    training_service.jobs["j"] = [
        _job("j", training_pb2.JOB_STATE_QUEUED),
        _job("j", running, 0),
        _job("j", running, 0),
        _job("j", running, 5),
        _job("j", training_pb2.JOB_STATE_FAILED, 5),
    ]
    updates: list[tuple[str, int]] = []

    job = client.wait("j", poll_interval=0.001, on_update=lambda j: updates.append((j.state, j.step)))

    assert job.state == "FAILED" and job.done
    assert updates == [("QUEUED", 0), ("RUNNING", 0), ("RUNNING", 5), ("FAILED", 5)]


def test_wait_times_out(client, training_service):
    training_service.jobs["j"] = [_job("j", training_pb2.JOB_STATE_RUNNING, 3)]

    with pytest.raises(TimeoutError, match="still RUNNING"):
        client.wait(
            Job(id="j", namespace="", adapter_name="", task="", state="QUEUED"),
            timeout=0.05,
            poll_interval=0.01,
        )


def test_list_adapters_follows_pages(client, adapter_service):
    adapters = list(client.list_adapters(page_size=1))

    assert [a.name for a in adapters] == ["a", "b", "c"]
    assert [a.versions[0].job_id for a in adapters] == ["job-0", "job-1", "job-2"]
    assert [r.page_token for r in adapter_service.requests] == ["", "1", "2"]
    assert all(r.namespace == "team-a" and r.page_size == 1 for r in adapter_service.requests)


def test_delete_adapter_and_predict(client, adapter_service, inference_service):
    assert client.delete_adapter("intents@2") == [1, 2]
    assert adapter_service.requests[0].adapter == "intents@2"

    (result,) = client.predict(None, "just one")
    assert result.label == "pos" and result.probabilities == []
    request = inference_service.requests[0]
    assert list(request.inputs) == ["just one"] and request.adapter == ""
    assert request.namespace == "team-a" and not request.return_probabilities


def test_server_info_is_a_frozen_value_of_every_field(client):
    import dataclasses

    from tuneserve_client import ServerInfo, ServerLimits

    info = client.server_info()
    assert isinstance(info, ServerInfo) and isinstance(info.limits, ServerLimits)
    assert (info.base_model, info.task, info.version) == ("org/lm", "causal_lm", "1.2.3")
    assert info.limits.max_text_chars == 99 and info.limits.max_input_tokens == 0
    assert info.quotas.active_jobs == 3 and info.quotas.upload_bytes == 0
    assert (info.auth_mode, info.auth_jwt, info.auth_client_certificates) == ("api_key", True, False)
    assert info.features == ("generation", "streaming_generation")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.version = "x"  # type: ignore[misc]
