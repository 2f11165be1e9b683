"""Feedback end to end through the real server and client (MiniLM, the session's trained
`intents` adapter): Predict returns prediction ids, feedback with the right label or
"correct" is stored per version, listed, counted in GetAdapter and /metrics, and exported as
a dataset whose data report shows a feedback label that contradicts the training label;
training on that dataset works. Inputs are not stored by default (feedback carries them);
with store_inputs on, they are. Bad feedback is INVALID_ARGUMENT naming the field; another
tenant's prediction is NOT_FOUND."""

from __future__ import annotations

import pytest
from conftest import LABELS, banking77

from tuneserve_client import Client
from tuneserve_client.errors import FailedPrecondition, InvalidArgument, NotFound

TWO = ("card_arrival", "exchange_rate")


def _fields(exc: pytest.ExceptionInfo) -> list[str]:
    return [f for f, _ in exc.value.field_violations]


def test_prediction_ids_feedback_stats_metrics_export_and_training(cluster, trained):
    train_rows = banking77("train", per_label=30)
    # a training text of lost_or_stolen_card: feedback will give it another label
    conflict_text, conflict_training_label = next(r for r in train_rows if r[1] == "lost_or_stolen_card")
    test_rows = banking77("test", labels=TWO, per_label=10)
    answered = [r for r in test_rows if r[1] == TWO[0]][:6] + [r for r in test_rows if r[1] == TWO[1]][:6]
    validation = [r for r in test_rows if r not in answered]
    with cluster.client(timeout=120) as client:
        adapter = f"intents@{trained.adapter_version}"  # the version trained on train_rows
        served = client.predict(adapter, [t for t, _ in answered] + [conflict_text])
        ids = [p.prediction_id for p in served]
        assert all(i.startswith("pr-") for i in ids) and len(set(ids)) == len(ids)
        assert client.feedback_settings("intents").store_inputs is False  # the default

        right = 0
        for (text, truth), p in zip(answered, served, strict=False):
            if p.label == truth:
                f = client.submit_feedback(p.prediction_id, correct=True, input=text)
                right += 1
            else:
                f = client.submit_feedback(p.prediction_id, label=truth, input=text)
            assert f.label == truth and f.correct == (p.label == truth) and f.input == text
            assert (f.adapter_name, f.adapter_version) == ("intents", trained.adapter_version)
        conflict_label = TWO[0] if served[-1].label != TWO[0] else TWO[1]
        first = client.submit_feedback(ids[-1], label=TWO[1], input=conflict_text, comment="first try")
        again = client.submit_feedback(ids[-1], label=conflict_label, input=conflict_text)
        assert again.id == first.id and again.label == conflict_label and again.comment == ""

        listed = list(client.list_feedback("intents", page_size=5))  # paged
        assert [f.prediction_id for f in listed] == ids[::-1]
        assert list(client.list_feedback(f"intents@{trained.adapter_version + 1}")) == []

        version = next(
            v for v in client.get_adapter("intents").versions if v.version == trained.adapter_version
        )
        correct = right + (served[-1].label == conflict_label)
        assert version.feedback is not None
        assert (version.feedback.answered, version.feedback.correct) == (13, correct)
        assert version.feedback.accuracy == pytest.approx(correct / 13)
        metrics = cluster.api.metrics()
        labels = f'adapter="default/intents",version="{trained.adapter_version}"'
        assert metrics[f"tuneserve_feedback_accuracy{{{labels}}}"] == pytest.approx(correct / 13)
        assert metrics[f"tuneserve_feedback_answered{{{labels}}}"] == 13
        assert metrics['tuneserve_feedback_total{adapter="default/intents"}'] >= 14

        export = client.export_feedback(adapter, display_name="intents feedback")
        assert (export.rows, export.skipped, export.conflicts_with_training) == (13, 0, 1)
        [c] = export.conflicts
        assert (c.text, c.feedback_label, c.training_label) == (
            conflict_text,
            conflict_label,
            conflict_training_label,
        )
        dataset = client.get_dataset(export.dataset.id)  # stored like an upload
        assert (dataset.task, dataset.format, dataset.usable_rows) == ("classification", "jsonl", 13)
        codes = {i.code for i in dataset.report.issues}
        assert "feedback_conflicts_training" in codes
        issue = next(i for i in dataset.report.issues if i.code == "feedback_conflicts_training")
        assert (
            issue.severity == "WARNING" and issue.rows == (13,) and conflict_training_label in issue.message
        )

        job = client.train(
            "intents-fb", dataset=dataset.id, validation=validation, epochs=1, request_id="fb-train"
        )
        job = client.wait(job, timeout=600, poll_interval=0.3)
        assert job.state == "SUCCEEDED", job.error
        assert sorted(client.get_adapter("intents-fb").versions[-1].labels) == sorted(TWO)
        with pytest.raises(FailedPrecondition, match="no feedback"):  # nothing to export yet
            client.export_feedback("intents-fb")


def test_bad_feedback_is_invalid_argument_naming_the_field(cluster, trained):
    with cluster.client(timeout=60) as client:
        [p] = client.predict("intents", ["I still have not received my new card"])
        cases = [
            (dict(), "label"),  # nothing to say
            (dict(label=LABELS[0], correct=True, input="x"), "correct"),
            (dict(rating=9), "rating"),
            (dict(label="no_such_intent", input="x"), "label"),
            (dict(label=LABELS[0]), "input"),  # inputs are not stored: feedback must carry it
            (dict(correct=True), "input"),
            (dict(corrected_text="text", input="x"), "corrected_text"),  # not a generation
            (dict(correct=True, input="x", comment="c" * 1001), "comment"),
        ]
        for kwargs, field in cases:
            with pytest.raises(InvalidArgument) as exc:
                client.submit_feedback(p.prediction_id, **kwargs)
            assert field in _fields(exc), (kwargs, exc.value)
        with pytest.raises(InvalidArgument) as exc:
            client.submit_feedback("", correct=True)
        assert "prediction_id" in _fields(exc)
        with pytest.raises(NotFound, match="prediction"):
            client.submit_feedback("pr-000000000000000000000000", correct=True, input="x")
        with pytest.raises(InvalidArgument) as exc:
            list(client.list_feedback(page_size=5000))
        assert "page_size" in _fields(exc)
        with pytest.raises(InvalidArgument) as exc:
            client.export_feedback("intents", kind="completions")
        assert "kind" in _fields(exc)
        with pytest.raises(NotFound):
            client.export_feedback("never-trained")
        with pytest.raises(NotFound):
            client.set_feedback_settings("never-trained", store_inputs=True)
        # a rating alone needs no input, and is not an answered classification
        rated = client.submit_feedback(p.prediction_id, rating=2)
        assert rated.rating == 2 and rated.label == "" and not rated.correct
        with pytest.raises(ValueError):
            client.export_feedback("intents", kind="everything")


def test_store_inputs_setting_keeps_inputs_and_feedback_needs_none(cluster, trained):
    with cluster.client(timeout=60) as client:
        try:
            on = client.set_feedback_settings("intents", store_inputs=True)
            assert on.store_inputs and on.update_time is not None
            text = "how long does a new card take to arrive"
            [p] = client.predict("intents", [text])
            f = client.submit_feedback(p.prediction_id, label="card_arrival")
            assert f.input == text  # the server kept it
            f = client.submit_feedback(p.prediction_id, label="card_arrival", input="something else")
            assert f.input == text  # the stored input wins over a given one
        finally:
            assert client.set_feedback_settings("intents", store_inputs=False).store_inputs is False
        [q] = client.predict("intents", [text])
        with pytest.raises(InvalidArgument) as exc:
            client.submit_feedback(q.prediction_id, label="card_arrival")
        assert _fields(exc) == ["input"]


def test_another_tenants_prediction_is_not_found_and_its_feedback_unseen(cluster, trained):
    token = cluster.api.create_key("feedback-other", "predict", "train", description="tenant B")
    with cluster.client(timeout=60) as ours, Client(cluster.api.target, timeout=60, api_key=token) as theirs:
        [p] = ours.predict("intents", ["my card got stolen"])
        with pytest.raises(NotFound) as exc:
            theirs.submit_feedback(p.prediction_id, correct=True, input="my card got stolen")
        assert p.prediction_id in str(exc.value)
        ours.submit_feedback(p.prediction_id, correct=True, input="my card got stolen")
        assert list(theirs.list_feedback()) == []
        with pytest.raises(NotFound):
            theirs.export_feedback("intents")
        with pytest.raises(InvalidArgument) as exc:  # preference pairs come from generations
            ours.export_feedback("intents", kind="preference_pairs")
        assert _fields(exc) == ["kind"]


def test_a_prediction_id_works_on_another_replica(cluster, trained):
    """Two API processes on one job store: an id served by one is answered on the other
    (once the serving replica's batch is written: polled, the bound is prediction_log_flush_s)."""
    import time

    replica = cluster.start_api()
    try:
        with (
            cluster.client(timeout=60) as one,
            Client(replica.target, timeout=60, api_key=cluster.api.api_key) as two,
        ):
            text = "I was charged a fee for my top up"
            [p] = one.predict("intents", [text])
            deadline = time.monotonic() + 30
            while True:
                try:
                    f = two.submit_feedback(p.prediction_id, correct=True, input=text)
                    break
                except NotFound:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert f.served_label == p.label and f.correct
            assert [x.id for x in one.list_feedback("intents", page_size=1)][:1] == [f.id]
    finally:
        replica.stop()


def test_cli_feedback_submit_list_settings_export(cluster, trained, capsys, tmp_path):
    import json

    from tuneserve_client.cli import main

    base = ["--target", cluster.api.target, "--api-key", cluster.api.api_key]
    text = "my new card still has not arrived"
    assert main([*base, "--json", "predict", "--adapter", "intents", text]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["prediction_id"].startswith("pr-")
    argv = [*base, "feedback", "submit", row["prediction_id"], "--label", "card_arrival", "--input", text]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "intents@" in out and ("correct" in out or "wrong (right: card_arrival)" in out)
    assert main([*base, "--json", "feedback", "list", "intents"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["prediction_id"] == row["prediction_id"] and listed[0]["label"] == "card_arrival"
    assert main([*base, "feedback", "settings", "intents"]) == 0
    assert "store_inputs=off" in capsys.readouterr().out
    assert main([*base, "feedback", "export", "intents", "--name", "from the cli"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset:     ds-") and "rows:" in out
    assert main([*base, "feedback", "submit", row["prediction_id"], "--rating", "9"]) != 0
    assert "rating" in capsys.readouterr().err
