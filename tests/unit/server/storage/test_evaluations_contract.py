"""Evaluations in the job store (SQLite and PostgreSQL): job rows of kind "evaluation" that
share the queue, the lease, cancel and the event log with training jobs, but are listed,
read and counted against quotas apart from them."""

from __future__ import annotations

import pytest

from tuneserve_server.domain.errors import AlreadyExists, FailedPrecondition, LeaseLost, NotFound
from tuneserve_server.domain.evaluations import EvaluationSpec
from tuneserve_server.domain.jobs import EventType, JobProgress, JobSpec, JobState, LabelledText, TaskType


def _spec(namespace: str = "team-a", request_id: str = "e1", rows: int = 3) -> EvaluationSpec:
    return EvaluationSpec(
        namespace=namespace,
        request_id=request_id,
        task=TaskType.CLASSIFICATION,
        targets=("intents@1", "intents@2"),
        requested=("intents@1", "intents"),
        rows=tuple(LabelledText(f"t{i}", "pos") for i in range(rows)),
        resamples=50,
        seed=7,
    )


def test_create_is_idempotent_and_apart_from_jobs(store, make_spec):
    ev, created = store.create_evaluation(_spec())
    again, created_again = store.create_evaluation(_spec())
    assert created and not created_again and again.id == ev.id
    assert ev.state is JobState.QUEUED and ev.rows == 3 and ev.targets == ("intents@1", "intents@2")
    assert ev.requested == ("intents@1", "intents") and (ev.resamples, ev.seed) == (50, 7)
    with pytest.raises(AlreadyExists):
        store.create_evaluation(_spec(rows=4))  # same request id, other request
    job, _ = store.create_job(make_spec(namespace="team-a", request_id="j1"))
    with pytest.raises(AlreadyExists):
        store.create_evaluation(_spec(request_id="j1"))  # a request id names one thing
    assert [e.id for e in store.list_evaluations("team-a")[0]] == [ev.id]
    assert [j.id for j in store.list_jobs("team-a")[0]] == [job.id]
    assert store.list_evaluations("team-b")[0] == []
    with pytest.raises(NotFound):
        store.get_job("team-a", ev.id)
    with pytest.raises(NotFound):
        store.get_evaluation("team-a", job.id)
    with pytest.raises(NotFound):
        store.get_evaluation("team-b", ev.id)
    with pytest.raises(NotFound):
        store.cancel_job("team-a", ev.id)
    usage = store.namespace_usage("team-a")
    assert (usage["active_jobs"], usage["active_evaluations"]) == (1, 1)
    assert [e.type for e in store.list_events("team-a", ev.id)] == [EventType.STATE]


def test_claim_run_and_complete(store, make_spec):
    ev, _ = store.create_evaluation(_spec())
    job, _ = store.create_job(make_spec(namespace="team-a", request_id="j1"))
    first = store.claim_job("w1", 60)
    assert first is not None and first[0].id == ev.id and isinstance(first[1], EvaluationSpec)
    assert first[1] == _spec()
    second = store.claim_job("w2", 60)
    assert second is not None and second[0].id == job.id and isinstance(second[1], JobSpec)
    assert store.heartbeat(ev.id, "w1", 60, JobProgress(step=2, total_steps=6)) is False
    store.append_events(ev.id, [_progress(ev.id)], worker_id="w1")
    assert store.get_evaluation("team-a", ev.id).progress.step == 2
    with pytest.raises(LeaseLost):
        store.complete_evaluation(ev.id, "w2", {}, {})
    results = {"task": "classification", "targets": [{"target": "intents@1", "metrics": {"accuracy": 0.5}}]}
    done = store.complete_evaluation(ev.id, "w1", {"intents@1.accuracy": 0.5}, results)
    assert done.state is JobState.SUCCEEDED and done.results == results
    assert store.get_evaluation("team-a", ev.id).results == results
    assert store.list_evaluations("team-a", states=[JobState.SUCCEEDED])[0][0].id == ev.id
    assert store.namespace_usage("team-a")["active_evaluations"] == 0
    types = [e.type for e in store.list_events("team-a", ev.id)]
    assert types == [EventType.STATE, EventType.STATE, EventType.PROGRESS, EventType.STATE]


def _progress(job_id: str):
    from tuneserve_server.domain.jobs import JobEvent

    return JobEvent(job_id, EventType.PROGRESS, progress=JobProgress(step=2, total_steps=6))


def test_cancel(store):
    queued, _ = store.create_evaluation(_spec(request_id="q"))
    assert store.cancel_evaluation("team-a", queued.id).state is JobState.CANCELLED
    with pytest.raises(FailedPrecondition):
        store.cancel_evaluation("team-a", queued.id)
    running, _ = store.create_evaluation(_spec(request_id="r"))
    assert store.claim_job("w", 60)[0].id == running.id
    assert store.cancel_evaluation("team-a", running.id).cancel_requested
    assert store.heartbeat(running.id, "w", 60, JobProgress()) is True
    assert (
        store.finish_job(running.id, "w", JobState.CANCELLED, "cancelled by request").state
        is JobState.CANCELLED
    )
    with pytest.raises(NotFound):
        store.cancel_evaluation("team-b", running.id)
