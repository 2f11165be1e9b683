"""Feedback against every JobStore (SQLite and PostgreSQL): served predictions stored in a
batch, found only in their namespace, swept by age and by the per-namespace cap; feedback
one row per prediction (replaced on resubmission), listed newest first with paging, capped
per namespace; per-version statistics; the store_inputs setting."""

from __future__ import annotations

import time

import pytest

from tuneserve_server.domain.errors import NotFound, QuotaExceeded
from tuneserve_server.domain.feedback import FeedbackRecord, ServedPrediction
from tuneserve_server.domain.jobs import TaskType


def _served(pid: str, ns: str = "teama", version: int = 1, label: str = "a", **kw) -> ServedPrediction:
    return ServedPrediction(pid, ns, "intents", version, TaskType.CLASSIFICATION, label, 0.75, **kw)


def _feedback(p: ServedPrediction, label: str = "", **kw) -> FeedbackRecord:
    values = dict(
        id="",
        namespace=p.namespace,
        prediction_id=p.id,
        adapter_name=p.adapter_name,
        adapter_version=p.adapter_version,
        task=p.task,
        served_label=p.label,
        served_score=p.score,
        label=label,
        rating=None,
        corrected_text="",
        input_text=p.input_text or "",
        served_text="",
        comment="",
        predicted_at=p.created_at,
    )
    values.update(kw)
    return FeedbackRecord(**values)


def test_predictions_round_trip_per_namespace(store):
    rows = [_served("pr-1", input_text="my card\x00 is lost"), _served("pr-2", ns="teamb", label="b")]
    assert store.insert_predictions(rows) == 2
    got = store.get_prediction("teama", "pr-1")
    assert (got.adapter_name, got.adapter_version, got.label, got.score) == ("intents", 1, "a", 0.75)
    assert got.input_text == "my card is lost"  # NUL dropped on both databases
    assert got.output_text is None and got.created_at is not None
    with pytest.raises(NotFound):
        store.get_prediction("teamb", "pr-1")  # another namespace's id: not found
    with pytest.raises(NotFound):
        store.get_prediction("teama", "pr-404")
    assert store.get_prediction("teamb", "pr-2").input_text is None


def test_sweep_by_age_and_cap(store):
    store.insert_predictions([_served(f"old-{i}") for i in range(3)])
    time.sleep(1.1)
    store.insert_predictions([_served(f"new-{i}") for i in range(5)] + [_served("b-1", ns="teamb")])
    # nothing is older than an hour; teama holds 8 > 6: its 2 oldest go
    assert store.sweep_predictions(3600, 6) == 2
    assert store.count_predictions("teama") == 6 and store.count_predictions("teamb") == 1
    # retention 1 s: the three old ones are past it (one already went by the cap)
    assert store.sweep_predictions(1.0, 100) == 1
    assert store.count_predictions("teama") == 5
    for i in range(5):
        store.get_prediction("teama", f"new-{i}")


def test_feedback_upsert_list_and_cap(store):
    store.insert_predictions(
        [_served(f"pr-{i}", label="a") for i in range(4)] + [_served("pr-b", ns="teamb")]
    )
    p = [store.get_prediction("teama", f"pr-{i}") for i in range(4)]
    first, created = store.upsert_feedback(_feedback(p[0], "b"), max_per_namespace=3)
    assert created and first.id.startswith("fb-") and first.label == "b" and not first.correct
    again, created = store.upsert_feedback(_feedback(p[0], "a", comment="oops"), max_per_namespace=3)
    assert not created and again.id == first.id and again.correct and again.comment == "oops"
    store.upsert_feedback(_feedback(p[1], "a"), max_per_namespace=3)
    store.upsert_feedback(_feedback(p[2], rating=4), max_per_namespace=3)
    with pytest.raises(QuotaExceeded) as exc:
        store.upsert_feedback(_feedback(p[3], "a"), max_per_namespace=3)
    assert (exc.value.quota, exc.value.limit, exc.value.used) == ("feedback", 3, 3)
    # replacing is always allowed at the cap
    store.upsert_feedback(_feedback(p[1], "b"), max_per_namespace=3)
    other = store.get_prediction("teamb", "pr-b")
    store.upsert_feedback(_feedback(other, "a"), max_per_namespace=3)  # teamb has its own cap

    page, token = store.list_feedback("teama", page_size=2)
    assert [f.prediction_id for f in page] == ["pr-2", "pr-1"] and token
    rest, token = store.list_feedback("teama", page_size=2, page_token=token)
    assert [f.prediction_id for f in rest] == ["pr-0"] and token == ""
    assert [f.prediction_id for f in store.list_feedback("teamb")[0]] == ["pr-b"]
    assert store.list_feedback("teama", adapter_name="intents", version=2) == ([], "")
    assert [f.prediction_id for f in store.feedback_of("teama", "intents")] == ["pr-0", "pr-1", "pr-2"]


def test_stats_per_version(store):
    rows = [_served("v1-a", label="a"), _served("v1-b", label="a"), _served("v2-a", version=2, label="b")]
    rows.append(_served("v2-r", version=2))
    store.insert_predictions(rows)
    get = lambda pid: store.get_prediction("teama", pid)  # noqa: E731
    store.upsert_feedback(_feedback(get("v1-a"), "a"), max_per_namespace=10)  # correct
    store.upsert_feedback(_feedback(get("v1-b"), "b", rating=2), max_per_namespace=10)  # wrong
    store.upsert_feedback(_feedback(get("v2-a"), "b", rating=5), max_per_namespace=10)  # correct
    store.upsert_feedback(_feedback(get("v2-r"), rating=3, corrected_text="x"), max_per_namespace=10)
    stats = store.feedback_stats("teama", "intents")
    assert set(stats) == {1, 2}
    assert (stats[1].answered, stats[1].correct, stats[1].accuracy) == (2, 1, 0.5)
    assert (stats[1].rated, stats[1].mean_rating) == (1, 2.0)
    assert (stats[2].answered, stats[2].correct, stats[2].rated, stats[2].mean_rating) == (1, 1, 2, 4.0)
    assert stats[2].corrected == 1
    assert store.feedback_stats("teamb", "intents") == {}


def test_store_inputs_setting(store):
    assert store.feedback_settings("teama", "intents").store_inputs is False
    assert store.feedback_settings("teama", "intents").updated_at is None
    on = store.set_feedback_settings("teama", "intents", True)
    assert on.store_inputs and on.updated_at is not None
    assert store.store_inputs_of([("teama", "intents"), ("teamb", "intents"), ("teama", "x")]) == {
        ("teama", "intents"): True,
        ("teamb", "intents"): False,
        ("teama", "x"): False,
    }
    assert store.set_feedback_settings("teama", "intents", False).store_inputs is False
