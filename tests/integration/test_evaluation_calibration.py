"""A job with evaluation every step, early stopping and calibration, through the real API
and worker processes: the job's metrics say which step was kept, that it stopped early, and
the calibration it fitted; Predict's probabilities are softmax(logits / temperature)."""

from __future__ import annotations

import torch
from conftest import auth_channel, banking77

from tuneserve.v1 import common_pb2, training_pb2, training_pb2_grpc
from tuneserve_server.modeling import (
    AdapterMeta,
    load_head,
    mean_pool,
    resolve_base_model,
)
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore

ADAPTER = "calibrated"


def submit(api) -> str:
    rows = banking77("train", per_label=40)
    with auth_channel(api) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        reply = stub.Train(
            training_pb2.TrainRequest(
                adapter_name=ADAPTER,
                task=common_pb2.TASK_TYPE_CLASSIFICATION,
                request_id="calibrated-1",
                training_examples=[
                    common_pb2.Example(classification=common_pb2.ClassificationExample(text=t, label=y))
                    for t, y in rows
                ],
                validation_fraction=0.25,
                hyperparameters=common_pb2.Hyperparameters(
                    optimizer=common_pb2.OptimizerConfig(
                        epochs=4, batch_size=8, gradient_accumulation_steps=2
                    ),
                    evaluation=common_pb2.EvaluationConfig(
                        eval_every_steps=2,
                        metric_for_best="accuracy",
                        early_stopping_patience=2,
                        calibrate=True,
                    ),
                ),
            ),
            timeout=60,
        )
    assert reply.job.hyperparameters.optimizer.gradient_accumulation_steps == 2
    assert reply.job.hyperparameters.evaluation.metric_for_best == "accuracy"
    return reply.job.id


def test_early_stopping_and_calibration_through_the_service(cluster):
    job_id = submit(cluster.api)
    with cluster.client(timeout=60) as client:
        job = client.wait(job_id, timeout=600, poll_interval=0.3)
        assert job.state == "SUCCEEDED", job.error
        m = job.metrics
        # 120 train rows, batch 8 x accumulation 2: 8 optimiser steps an epoch, 32 in all.
        assert job.total_steps == 32 and m["total_steps"] == 32
        # 4 intents reach their best validation accuracy long before 4 epochs are over.
        assert m["stopped_early"] == 1.0
        assert job.step == m["stopped_at_step"] == m["best_step"] + 2 * 2 < 32
        assert {"ece_before", "ece_after", "nll_before", "nll_after", "temperature"} <= m.keys()
        assert m["nll_after"] <= m["nll_before"] and m["temperature"] != 1.0
        assert m["validation_examples"] == 40

        texts = [t for t, _ in banking77("test", per_label=5)]
        preds = client.predict(f"{ADAPTER}@{job.adapter_version}", texts, probabilities=True)

    # The published files: the metadata carries the temperature, and Predict divides by it.
    from tuneserve_server.config import Settings

    directory = LocalAdapterStore(Settings(data_dir=cluster.data_dir).adapter_path).open(
        "default", ADAPTER, job.adapter_version
    )
    meta = AdapterMeta.read(directory)
    assert meta.temperature == m["temperature"]
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    source = resolve_base_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(source.path), str(directory)).eval()
    head = load_head(directory, "cpu")
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        logits = head(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]))
    calibrated = torch.softmax(logits / meta.temperature, -1)
    plain = torch.softmax(logits, -1)
    for row, pred in enumerate(preds):
        by_label = {s.label: s.score for s in pred.probabilities}
        served = torch.tensor([by_label[label] for label in meta.labels])
        assert torch.allclose(served, calibrated[row], atol=2e-3), (served, calibrated[row])
    top_served = torch.tensor([p.score for p in preds])
    assert not torch.allclose(top_served, plain.max(-1).values, atol=1e-2)  # not plain softmax
