"""Prediction sets, abstention and out-of-domain flags through the real API and worker: a job
fits them on its validation split; Predict returns what the published calibration file says
for the served probabilities and embeddings; levels the split cannot guarantee, adapters
without a calibration and bad options are refused with the right status and field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import banking77

from tuneserve_client import TuneserveError
from tuneserve_server.config import Settings
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.uncertainty import UncertaintyModel, text_uniforms

ADAPTER = "unsure"
OUT_OF_DOMAIN = [
    "What is the tallest mountain in South America?",
    "Can you recommend a good recipe for vegetable lasagna?",
    "Who wrote the novel War and Peace?",
    "The migration of monarch butterflies spans thousands of kilometres.",
    "How many players are on a football team?",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "What time does the museum open on Sundays?",
    "My cat keeps knocking plants off the windowsill.",
]


@pytest.fixture(scope="module")
def unsure(cluster):
    """4 intents, 60 rows each, 40% held out: 24 validation rows per label (enough for
    per-label sets at 0.9, not at 0.99)."""
    with cluster.client(timeout=60) as client:
        job = client.train(
            ADAPTER,
            banking77("train", per_label=60),
            validation_fraction=0.4,
            epochs=3,
            learning_rate=2e-3,
            request_id="unsure-v1",
        )
        job = client.wait(job, timeout=900, poll_interval=0.3)
    assert job.state == "SUCCEEDED", job.error
    directory = LocalAdapterStore(Settings(data_dir=cluster.data_dir).adapter_path).open(
        "default", ADAPTER, job.adapter_version
    )
    model = UncertaintyModel.load(directory)
    assert model is not None
    return job, model


def code_and_message(call) -> tuple[str, str]:
    with pytest.raises(TuneserveError) as info:
        call()
    return info.value.code.name, str(info.value)


def test_the_job_fits_and_publishes_the_calibration(cluster, unsure):
    job, model = unsure
    m = job.metrics
    assert m["uncertainty_validation_rows"] == 96 == model.calibration.rows
    assert m["conformal_min_label_rows"] == 24
    assert {"abstain_threshold", "ood_threshold", "aurc"} <= m.keys()
    assert m["conformal_aps_randomized"] == 1.0 and model.calibration.aps_randomized
    with cluster.client() as client:
        [version] = [v for v in client.get_adapter(ADAPTER).versions if v.version == job.adapter_version]
    assert version.metrics["abstain_threshold"] == pytest.approx(m["abstain_threshold"])


def test_prediction_sets_are_the_published_calibrations(cluster, unsure):
    _, model = unsure
    texts = [t for t, _ in banking77("test", per_label=10)]
    with cluster.client(timeout=60) as client:
        for score, mode, expected_mode in [
            ("lac", "auto", "mondrian"),
            ("aps", "auto", "mondrian"),
            ("lac", "marginal", "marginal"),
        ]:
            preds = client.predict(
                ADAPTER, texts, probabilities=True, confidence=0.9, conformal_score=score, conformal_mode=mode
            )
            labels = [p.label for p in preds[0].probabilities]
            probs = torch.tensor(
                [
                    [{s.label: s.score for s in p.probabilities}[lab] for lab in job_labels(model)]
                    for p in preds
                ],
                dtype=torch.float64,
            )
            sets = model.prediction_sets(
                probs, 0.9, score, mode, text_uniforms(texts)
            )  # APS: u from the text
            assert sets.mode == expected_mode
            for pred, members in zip(preds, sets.members.tolist(), strict=True):
                assert pred.conformal_mode == expected_mode
                assert set(pred.prediction_set) == {lab for lab, on in zip(job_labels(model), members) if on}
                ranked = [lab for lab in labels if lab in pred.prediction_set]
                assert pred.prediction_set == [s.label for s in pred.probabilities if s.label in ranked]
        plain = client.predict(ADAPTER, texts[:2])
        assert plain[0].prediction_set is None and plain[0].abstain is None


def job_labels(model: UncertaintyModel) -> list[str]:
    assert model.calibration.label_names is not None
    return list(model.calibration.label_names)


def test_abstention_and_out_of_domain(cluster, unsure):
    _, model = unsure
    in_domain = [t for t, _ in banking77("test", per_label=10)]
    with cluster.client(timeout=60) as client:
        inside = client.predict(ADAPTER, in_domain, uncertainty=True)
        outside = client.predict(ADAPTER, OUT_OF_DOMAIN, uncertainty=True)
    for p in inside + outside:
        assert p.abstain == bool(p.abstain_reason)
        assert ("out_of_domain" in p.abstain_reason) == p.out_of_domain
        assert ("low_confidence" in p.abstain_reason) == (p.score < model.abstention.threshold)
    mean_in = sum(p.ood_score for p in inside) / len(inside)
    mean_out = sum(p.ood_score for p in outside) / len(outside)
    assert mean_out > mean_in
    assert sum(p.out_of_domain for p in outside) > sum(p.out_of_domain for p in inside) * len(outside) / len(
        inside
    )
    metrics = cluster.api.metrics()
    asked = metrics['tuneserve_uncertainty_rows_total{adapter="default/unsure"}']
    abstained = metrics['tuneserve_abstained_rows_total{adapter="default/unsure"}']
    assert asked >= len(inside) + len(outside)
    assert abstained >= sum(p.abstain for p in inside + outside)


def test_refusals_name_what_is_wrong(cluster, unsure, trained):
    with cluster.client(timeout=60) as client:
        code, message = code_and_message(lambda: client.predict(ADAPTER, ["hi"], confidence=0.99))
        assert code == "FAILED_PRECONDITION" and "99" in message and "96" in message, message
        code, message = code_and_message(
            lambda: client.predict(ADAPTER, ["hi"], confidence=0.99, conformal_mode="mondrian")
        )
        assert code == "FAILED_PRECONDITION" and "24" in message, message
        code, message = code_and_message(lambda: client.predict(ADAPTER, ["hi"], confidence=1.0))
        assert code == "INVALID_ARGUMENT" and "confidence_level" in message, message
        # The session's `intents@1` held out 12 validation rows: too few, not fitted (later
        # versions other tests publish may be cross-validated and calibrated on every row).
        code, message = code_and_message(lambda: client.predict("intents@1", ["hi"], uncertainty=True))
        assert code == "FAILED_PRECONDITION" and "no uncertainty calibration" in message, message
        # A refused option fails only its own call: the same adapter still answers.
        assert client.predict("intents", ["my card has not arrived"])[0].label


def test_the_cli_prints_sets_and_abstention(cluster, unsure):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNESERVE_API_KEY": cluster.api.api_key}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneserve_client.cli",
            "--target",
            cluster.api.target,
            "predict",
            "--adapter",
            ADAPTER,
            "--confidence",
            "0.9",
            "--uncertainty",
            "my new card still has not arrived",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    columns = done.stdout.strip().split("\t")
    assert columns[2].startswith("{") and columns[2].endswith("}")
    assert columns[3] == "answer" or columns[3].startswith("abstain:")
    assert columns[4].startswith("ood:")
