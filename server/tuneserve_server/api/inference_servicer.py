"""InferenceService: Predict (classification or generation, by the served base model) and
PredictStream (generation, streamed as text deltas)."""

from __future__ import annotations

import structlog
from tuneserve.v1 import inference_pb2, inference_pb2_grpc

from tuneserve_server.api import convert
from tuneserve_server.api.rpc import rpc, rpc_stream
from tuneserve_server.config import Settings
from tuneserve_server.engine.generation import GenerationResult, SamplingParams
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest
from tuneserve_server.domain.naming import AdapterRef, namespace_of
from tuneserve_server.domain.jobs import TaskType

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
        if self._generates(request.HasField("generation")):
            return await self._generate(ref, inputs, request.generation)
        result = await self.engine.classify(ref, inputs)
        return inference_pb2.PredictResponse(
            predictions=[
                convert.classification_pb(s, request.return_probabilities) for s in result.scores
            ],
            adapter_name=result.adapter.name if result.adapter else "",
            adapter_version=result.adapter.version if result.adapter else 0,
        )

    # ------------------------------------------------------------------ generation
    def _generates(self, asked: bool) -> bool:
        """Whether a Predict is a generation: the served base model decides; sampling settings
        sent to an encoder server are refused rather than ignored."""
        served = getattr(self.engine, "task", None)
        if served is TaskType.CAUSAL_LM:
            return True
        if asked and served is not None:
            raise FailedPrecondition(
                f"this server serves {self.engine.source.model_id}, a {served.value} model; "
                "it does not generate text (generation parameters were given)"
            )
        return False

    def _params(self, gp: inference_pb2.GenerationParams) -> SamplingParams:
        return convert.sampling_params(
            gp,
            default_max_new_tokens=self.settings.max_new_tokens_default,
            max_new_tokens_limit=self.settings.max_new_tokens_limit,
        )

    async def _generate(self, ref: AdapterRef | None, inputs: list[str], gp) -> inference_pb2.PredictResponse:  # noqa: ANN001
        params = self._params(gp)
        record, results = await self.engine.generate(ref, inputs, params)
        return inference_pb2.PredictResponse(
            predictions=[inference_pb2.Prediction(generation=convert.generation_pb(r)) for r in results],
            adapter_name=record.name if record else "",
            adapter_version=record.version if record else 0,
        )

    @rpc_stream
    async def PredictStream(self, request, context):  # noqa: N802, ANN001, ANN201
        namespace = namespace_of(request.namespace)
        structlog.contextvars.bind_contextvars(adapter=request.adapter or "__base__")
        ref = AdapterRef.parse(namespace, request.adapter) if request.adapter else None
        prompt = request.input
        if not prompt.strip():
            raise InvalidRequest.field("input", "must not be empty")
        if len(prompt) > self.settings.max_text_chars:
            raise InvalidRequest.field("input", f"longer than {self.settings.max_text_chars} characters")
        self._generates(True)
        params = self._params(request.generation)
        if self.settings.log_payloads:
            log.info("predict inputs", inputs=[prompt])
        record, stream = await self.engine.open_stream(ref, prompt, params)
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
                if isinstance(event, GenerationResult):
                    out.final.CopyFrom(convert.generation_pb(event))
                else:
                    out.delta = event.text
                yield out
        finally:
            if stream.result is None:
                stream.cancel()
