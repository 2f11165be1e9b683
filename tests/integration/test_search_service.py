"""A hyperparameter search inside one job through the real service (issue #17): each trial is an
EVALUATION event, the published adapter carries the best trial's settings (GetAdapter's metrics
and LoRA rank, the adapter's stored metadata), the job's metrics record the search, and a bad
`search` is INVALID_ARGUMENT naming its field."""

from __future__ import annotations

import pytest
from conftest import banking77

from tuneserve_client import InvalidArgument

ADAPTER = "searched"


@pytest.fixture(scope="module")
def search_job(cluster):
    rows = banking77("train", per_label=16)
    train = [r for i, r in enumerate(rows) if i % 4]  # 12 per label
    validation = [r for i, r in enumerate(rows) if not i % 4]  # 4 per label
    with cluster.client(timeout=60) as client:
        job = client.train(
            ADAPTER,
            train,
            validation=validation,
            epochs=2,
            batch_size=8,
            lora_rank=8,
            search_trials=3,
            search_parameters=["learning_rate", "steps", "lora_rank"],
            search_budget=300.0,
            fit_uncertainty=False,
            request_id="search-1",
        )
        done = client.wait(job, timeout=600, poll_interval=0.3)
        events = list(client.watch_job(job.id))
    assert done.state == "SUCCEEDED", done.error
    return done, events


def test_each_trial_is_an_event_and_the_best_is_published(cluster, search_job):
    job, events = search_job
    trials = [e.metrics for e in events if e.type == "EVALUATION" and "trial" in e.metrics]
    assert [t["trial"] for t in trials] == [1.0, 2.0, 3.0]
    assert (trials[0]["learning_rate"], trials[0]["epochs"], trials[0]["lora_rank"]) == pytest.approx(
        (2e-3, 2, 8)  # the first trial: the job's own settings
    )
    scored = [t for t in trials if not t["pruned"] and "score" in t]
    top = max(t["score"] for t in scored)
    best = next(t for t in scored if t["score"] == top)  # macro_f1, ties: the earlier trial
    m = job.metrics
    assert m["search_trials"] == 3.0 and m["search_best_trial"] == best["trial"]
    assert m["search_best_score"] == pytest.approx(best["score"]) == pytest.approx(m["macro_f1"])
    with cluster.client() as client:
        version = next(v for v in client.get_adapter(ADAPTER).versions if v.version == job.adapter_version)
    # The published adapter's recorded settings are the best trial's.
    assert version.lora_rank == best["lora_rank"]
    for name in ("learning_rate", "epochs", "max_steps", "lora_rank"):
        assert version.metrics[f"search_best_{name}"] == pytest.approx(best[name]), name
    assert version.metrics["best_step"] == best["best_step"]
    assert "temperature" in version.metrics and "baseline_macro_f1" in version.metrics
    steps = [e.step for e in events if e.type == "PROGRESS"]
    assert steps == sorted(steps) and job.step == m["total_steps"]
    assert any(e.message.startswith("trial 3/3") for e in events if e.type == "PROGRESS")


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"search_trials": 1000}, "hyperparameters.search.trials", "max_search_trials"),
        ({"search_trials": 2, "search_parameters": ["rank"]}, "hyperparameters.search.parameters", "unknown"),
        ({"search_trials": 2, "search_budget": -5.0}, "hyperparameters.search.budget_seconds", "must be in"),
    ],
)
def test_a_bad_search_is_invalid_argument_naming_the_field(cluster, kwargs, field, text):
    with cluster.client(timeout=60) as client, pytest.raises(InvalidArgument) as err:
        client.train("bad-search", banking77("train", per_label=6), epochs=1, **kwargs)
    fields = dict(err.value.field_violations)
    assert text in fields.get(field, ""), fields
