"""POST /v1/classifications on a classification (MiniLM) server: a second API process on the
session cluster's stores with the OpenAI-compatible port on gives the trained adapter's
labels and probabilities exactly as gRPC Predict does; the generation endpoints there are
refused with an OpenAI-style 400; auth is the gRPC API keys."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import banking77, free_port, wait_serving

TEXTS = [t for t, _ in banking77("test", per_label=2)]


def post(port: int, path: str, body: dict, key: str | None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/{path}", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_classifications_equal_grpc_predict_and_generation_is_refused(cluster, trained) -> None:
    port = free_port()
    api = cluster.start("api", port=free_port(), openai_port=port)
    try:
        wait_serving(api.target)
        with cluster.client() as client:
            want = client.predict("intents", TEXTS, probabilities=True)
            served = client.get_adapter("intents").default_version  # other tests publish versions
        status, got = post(port, "classifications", {"model": "intents", "input": TEXTS}, api.api_key)
        assert status == 200, got
        assert got["model"] == f"intents@{served}"
        assert [d["label"] for d in got["data"]] == [w.label for w in want]
        for d, w in zip(got["data"], want, strict=True):
            assert d["score"] == pytest.approx(w.score, abs=1e-6)
            assert d["probabilities"] == pytest.approx({p.label: p.score for p in w.probabilities}, abs=1e-6)

        status, err = post(port, "classifications", {"model": "intents", "input": TEXTS}, "tsk_x_y")
        assert status == 401 and err["error"]["type"] == "authentication_error"
        status, err = post(port, "classifications", {"model": "intents", "input": []}, api.api_key)
        assert status == 400 and err["error"]["param"] == "input", err
        status, err = post(port, "classifications", {"model": "nope", "input": ["x"]}, api.api_key)
        assert status == 404 and err["error"]["code"] == "model_not_found"
        chat = {"model": "intents", "messages": [{"role": "user", "content": "hi"}]}
        status, err = post(port, "chat/completions", chat, api.api_key)
        assert status == 400 and err["error"]["code"] == "failed_precondition", err
        assert "classification model" in err["error"]["message"]
    finally:
        api.stop()
