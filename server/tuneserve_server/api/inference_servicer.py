"""InferenceService: Predict (classification or generation, by the served base model) and
PredictStream (generation, streamed as text deltas)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import structlog

from tuneserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import namespace
from tuneserve_server.api.rpc import rpc, rpc_stream
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.engine.generation import GenerationResult, SamplingParams
from tuneserve_server.services.inference import Generated, PredictionService
from tuneserve_server.services.prediction_log import PredictionLog


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, prediction: PredictionService, prediction_log: PredictionLog | None = None) -> None:
        self.prediction = prediction
        # Issues each served row's prediction id (feedback.proto); None: no ids.
        self.prediction_log = prediction_log

    def _sampling(self, gp: inference_pb2.GenerationParams) -> functools.partial[SamplingParams]:
        limits = self.prediction.limits
        return functools.partial(
            convert.sampling_params,
            gp,
            default_max_new_tokens=limits.max_new_tokens_default,
            max_new_tokens_limit=limits.max_new_tokens_limit,
        )

    @rpc
    async def Predict(self, request, context):
        ns = namespace(request.namespace)
        structlog.contextvars.bind_contextvars(adapter=request.adapter or "__base__")
        ref = AdapterRef.parse(ns, request.adapter) if request.adapter else None
        result = await self.prediction.predict(
            ref,
            list(request.inputs),
            generation_asked=request.HasField("generation"),
            sampling=self._sampling(request.generation),
            uncertainty=convert.uncertainty_request(request),
            messages=convert.chat_turns(request.messages),
        )
        mode = None
        if isinstance(result, Generated):
            predictions = [
                inference_pb2.Prediction(generation=convert.generation_pb(r)) for r in result.results
            ]
        else:
            predictions = [convert.classification_pb(s, request.return_probabilities) for s in result.scores]
            mode = result.scores[0].conformal_mode if result.scores else None
        if self.prediction_log is not None and result.adapter is not None:
            self._issue_ids(ns, result, _served_inputs(request.inputs, request.messages), predictions)
        return inference_pb2.PredictResponse(
            predictions=predictions,
            adapter_name=result.adapter.name if result.adapter else "",
            adapter_version=result.adapter.version if result.adapter else 0,
            conformal_mode=convert.CONFORMAL_MODE_TO_PB.get(mode, 0),
        )

    def _issue_ids(self, ns: str, result, inputs, predictions: list[inference_pb2.Prediction]) -> None:
        """Each served row's prediction id, its record queued for the store (no I/O here)."""
        assert self.prediction_log is not None
        record = result.adapter
        if isinstance(result, Generated):
            rows = [("", 0.0, text, r.text) for text, r in zip(inputs, result.results, strict=True)]
        else:
            rows = [(*s.top(), text, None) for text, s in zip(inputs, result.scores, strict=True)]
        ids = self.prediction_log.issue(ns, record.name, record.version, record.task, rows)
        for p, pid in zip(predictions, ids, strict=True):
            p.prediction_id = pid

    @rpc_stream
    async def PredictStream(self, request, context):
        ns = namespace(request.namespace)
        structlog.contextvars.bind_contextvars(adapter=request.adapter or "__base__")
        ref = AdapterRef.parse(ns, request.adapter) if request.adapter else None
        record, stream = await self.prediction.open_stream(
            ref, request.input, self._sampling(request.generation), convert.chat_turns(request.messages)
        )
        first = True
        # Leaving this loop early (client cancel or disconnect: CancelledError / GeneratorExit)
        # runs the stream's cleanup, which cancels the row: it leaves the batch at its next step.
        try:
            async for event in stream.events():
                out = inference_pb2.PredictStreamResponse()
                if first:
                    out.adapter_name = record.name if record else ""
                    out.adapter_version = record.version if record else 0
                    first = False
                if isinstance(event, GenerationResult):  # each delta carried its own logprobs
                    out.final.CopyFrom(convert.generation_pb(event, with_logprobs=False))
                    if self.prediction_log is not None and record is not None:
                        out.prediction_id = self.prediction_log.issue(
                            ns,
                            record.name,
                            record.version,
                            record.task,
                            [("", 0.0, _served_inputs([request.input], request.messages)[0], event.text)],
                        )[0]
                else:
                    out.delta = event.text
                    out.logprobs.extend(convert.token_logprob_pb(lp) for lp in event.logprobs)
                yield out
        finally:
            if stream.result is None:
                stream.cancel()


def _served_inputs(texts: Sequence[str], messages: Sequence[common_pb2.ChatMessage]) -> list[str]:
    """What a prediction record keeps as the served input of each row: the texts (Predict's
    `inputs`, PredictStream's one `input`), or for a chat request (one row) its turns as JSON,
    so feedback on a chat answer has its prompt."""
    if messages:
        return [json.dumps([{"role": m.role, "content": m.content} for m in messages])]
    return list(texts)
