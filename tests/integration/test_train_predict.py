"""Train a real MiniLM adapter through the service, then classify with it."""

from __future__ import annotations

import subprocess
import sys

import grpc
from conftest import LABELS, banking77
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_job_reports_progress_metrics_and_publishes_version(cluster, trained):
    assert trained.adapter_version >= 1
    assert trained.step == trained.total_steps > 0
    assert trained.train_loss is not None
    assert set(trained.metrics) >= {"accuracy", "macro_f1", "eval_loss"}
    assert trained.validation_examples > 0 and trained.train_examples > 0
    assert trained.started_at and trained.finished_at and trained.finished_at >= trained.started_at
    with cluster.client() as client:
        adapter = client.get_adapter("intents")
    assert adapter.task == "classification"
    assert adapter.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    v1 = next(v for v in adapter.versions if v.version == trained.adapter_version)
    assert sorted(v1.labels) == sorted(LABELS)
    assert v1.size_bytes > 0 and v1.job_id == trained.id


def test_adapter_classifies_unseen_test_queries(cluster, trained):
    test = banking77("test", per_label=25)
    with cluster.client() as client:
        preds = client.predict(f"intents@{trained.adapter_version}", [t for t, _ in test], probabilities=True)
    assert len(preds) == len(test)
    accuracy = sum(p.label == y for p, (_, y) in zip(preds, test)) / len(test)
    assert accuracy >= 0.8, accuracy  # 4 intents, 30 examples each: a trained model, not chance (0.25)
    for p in preds:
        assert abs(sum(s.score for s in p.probabilities) - 1.0) < 1e-3
        assert p.probabilities[0].label == p.label and p.probabilities[0].score == p.score
        assert [s.score for s in p.probabilities] == sorted((s.score for s in p.probabilities), reverse=True)


def test_predict_without_probabilities_is_compact(cluster, trained):
    text = "I still have not received my new card"
    with cluster.client() as client:
        [p] = client.predict("intents", text)
        [full] = client.predict("intents", [text], probabilities=True)
    assert p.label in LABELS and p.probabilities == []
    assert (p.label, p.score) == (full.label, full.score)


def test_duplicate_request_id_returns_the_same_job(cluster, trained):
    with cluster.client() as client:
        again = client.train(
            "intents",
            banking77("train", per_label=30),
            epochs=3,
            learning_rate=2e-3,
            validation_scheme="holdout",  # as the fixture asked
            request_id="fixture-intents-v1",
        )
        assert again.id == trained.id
        ids = [j.id for j in client.list_jobs(adapter="intents")]
    assert ids.count(trained.id) == 1


def test_list_jobs_filters_and_pages(cluster, trained):
    with cluster.client() as client:
        succeeded = list(client.list_jobs(states=["SUCCEEDED"], page_size=1))
        assert trained.id in [j.id for j in succeeded]
        assert all(j.state == "SUCCEEDED" for j in succeeded)
        assert list(client.list_jobs(adapter="no-such-adapter")) == []


def test_tenants_do_not_see_each_other(cluster, trained):
    with cluster.client(namespace="other-team") as other:
        assert list(other.list_adapters()) == []
        assert list(other.list_jobs()) == []


def test_health_and_reflection(cluster):
    with grpc.insecure_channel(cluster.api.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "tuneserve.v1.TrainingService",
        "tuneserve.v1.InferenceService",
        "tuneserve.v1.AdapterService",
        "grpc.health.v1.Health",
    } <= names


def test_cli_predict_and_jobs(cluster, trained, tmp_path):
    cli = [sys.executable, "-m", "tuneserve_client.cli", "--target", cluster.api.target]
    cli += ["--api-key", cluster.api.api_key]
    text = "my card was stolen yesterday"
    out = subprocess.run(
        [*cli, "predict", "--adapter", "intents", text],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    with cluster.client() as client:
        [p] = client.predict("intents", [text])
    assert p.label in out.stdout and text in out.stdout
    out = subprocess.run([*cli, "jobs", "get", trained.id], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCEEDED" in out.stdout, out.stderr
    out = subprocess.run(
        [*cli, "predict", "--adapter", "nope", "x"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr
