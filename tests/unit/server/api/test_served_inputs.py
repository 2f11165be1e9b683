"""What a prediction record keeps as each served row's input (api/inference_servicer.py):
Predict's texts, PredictStream's one input, or a chat request's turns as JSON."""

from __future__ import annotations

import json

from tuneserve.v1 import common_pb2, inference_pb2
from tuneserve_server.api.inference_servicer import _served_inputs


def test_predict_keeps_each_text() -> None:
    request = inference_pb2.PredictRequest(adapter="a", inputs=["one", "two"])
    assert _served_inputs(request.inputs, request.messages) == ["one", "two"]


def test_predict_stream_keeps_its_one_input() -> None:
    request = inference_pb2.PredictStreamRequest(adapter="a", input="a prompt")
    assert _served_inputs([request.input], request.messages) == ["a prompt"]


def test_a_chat_request_keeps_its_turns_as_json_in_one_row() -> None:
    turns = [
        common_pb2.ChatMessage(role="system", content="be brief"),
        common_pb2.ChatMessage(role="user", content="hi"),
    ]
    predict = inference_pb2.PredictRequest(adapter="a", messages=turns)
    stream = inference_pb2.PredictStreamRequest(adapter="a", messages=turns)
    want = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    for texts, messages in ((predict.inputs, predict.messages), ([stream.input], stream.messages)):
        (kept,) = _served_inputs(texts, messages)
        assert json.loads(kept) == want
