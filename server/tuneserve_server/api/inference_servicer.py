"""InferenceService: Predict."""

from __future__ import annotations

import structlog

from tuneserve.v1 import inference_pb2, inference_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.rpc import rpc
from tuneserve_server.config import Settings
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.errors import InvalidRequest
from tuneserve_server.naming import AdapterRef, namespace_of

log = structlog.get_logger("tuneserve.api")


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, settings: Settings, engine: InferenceEngine) -> None:
        self.settings = settings
        self.engine = engine

    def _inputs(self, request: inference_pb2.PredictRequest) -> list[str]:
        if not request.inputs:
            raise InvalidRequest.field("inputs", "must hold at least one text")
        if len(request.inputs) > self.settings.max_predict_inputs:
            raise InvalidRequest.field(
                "inputs", f"at most {self.settings.max_predict_inputs} texts per call"
            )
        for i, text in enumerate(request.inputs):
            if not text.strip():
                raise InvalidRequest.field(f"inputs[{i}]", "must not be empty")
            if len(text) > self.settings.max_text_chars:
                raise InvalidRequest.field(
                    f"inputs[{i}]", f"longer than {self.settings.max_text_chars} characters"
                )
        return list(request.inputs)

    @rpc
    async def Predict(self, request, context):  # noqa: N802, ANN001, ANN201
        namespace = namespace_of(request.namespace)
        structlog.contextvars.bind_contextvars(adapter=request.adapter or "__base__")
        ref = AdapterRef.parse(namespace, request.adapter) if request.adapter else None
        inputs = self._inputs(request)
        if self.settings.log_payloads:
            log.info("predict inputs", inputs=inputs)
        result = await self.engine.classify(ref, inputs)
        return inference_pb2.PredictResponse(
            predictions=[
                convert.classification_pb(s, request.return_probabilities) for s in result.scores
            ],
            adapter_name=result.adapter.name if result.adapter else "",
            adapter_version=result.adapter.version if result.adapter else 0,
        )
