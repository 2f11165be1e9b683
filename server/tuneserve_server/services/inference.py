"""Prediction: the input checks (once, for Predict and PredictStream), the choice between
classification and generation (the served base model decides), then the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest
from tuneserve_server.domain.jobs import ChatTurn, TaskType
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.domain.uncertainty import NONE as NO_UNCERTAINTY
from tuneserve_server.domain.uncertainty import UncertaintyRequest
from tuneserve_server.engine.generation import GenerationResult, Prompt, RowStream, SamplingParams
from tuneserve_server.engine.inference import ClassifyResult, InferenceEngine

log = structlog.get_logger("tuneserve.services")

CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PredictLimits:
    max_inputs: int
    max_text_chars: int
    max_new_tokens_default: int  # for the caller's conversion of generation parameters
    max_new_tokens_limit: int
    log_payloads: bool = False


@dataclass(frozen=True)
class Generated:
    adapter: AdapterVersionRecord | None
    results: list[GenerationResult]


class PredictionService:
    def __init__(self, engine: InferenceEngine, limits: PredictLimits) -> None:
        self.engine = engine
        self.limits = limits

    def _check_text(self, text: str, field: str) -> None:
        if not text.strip():
            raise InvalidRequest.field(field, "must not be empty")
        if len(text) > self.limits.max_text_chars:
            raise InvalidRequest.field(field, f"longer than {self.limits.max_text_chars} characters")

    def _check_inputs(self, inputs: list[str]) -> None:
        if not inputs:
            raise InvalidRequest.field("inputs", "must hold at least one text")
        if len(inputs) > self.limits.max_inputs:
            raise InvalidRequest.field("inputs", f"at most {self.limits.max_inputs} texts per call")
        for i, text in enumerate(inputs):
            self._check_text(text, f"inputs[{i}]")

    def _check_messages(self, messages: tuple[ChatTurn, ...], field: str = "messages") -> None:
        if len(messages) > self.limits.max_inputs:
            raise InvalidRequest.field(field, f"at most {self.limits.max_inputs} messages per call")
        for i, m in enumerate(messages):
            if m.role not in CHAT_ROLES:
                raise InvalidRequest.field(f"{field}[{i}].role", f"must be one of {', '.join(CHAT_ROLES)}")
            self._check_text(m.content, f"{field}[{i}].content")

    def _prompts(
        self, inputs: list[str], messages: tuple[ChatTurn, ...], params: SamplingParams | None
    ) -> list[Prompt]:
        """The prompts of a generation: the inputs, or the one conversation."""
        if not messages:
            return list(inputs)
        if params is not None and params.raw_prompt:
            raise InvalidRequest.field(
                "generation.raw_prompt", "does not apply to messages (they go through the chat template)"
            )
        if not self.engine.served_model().chat_template:
            raise FailedPrecondition(
                f"the base model {self.engine.source.model_id} has no chat template, so it cannot take "
                "chat messages; send plain inputs (with raw_prompt to format them yourself)"
            )
        return [messages]

    def _generates(self, asked: bool) -> bool:
        """Whether a call is a generation: the served base model decides; sampling settings
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

    async def predict(
        self,
        ref: AdapterRef | None,
        inputs: list[str],
        *,
        generation_asked: bool,
        sampling: Callable[[], SamplingParams],
        uncertainty: UncertaintyRequest = NO_UNCERTAINTY,
        messages: tuple[ChatTurn, ...] = (),
    ) -> ClassifyResult | Generated:
        """Classify or generate, as the served model does. `sampling` converts the request's
        generation parameters; it is called only once the call is known to generate, so an
        encoder server refuses generation settings (FAILED_PRECONDITION) before judging them.
        `uncertainty`: prediction sets / abstention, classification only. `messages`: one
        conversation instead of `inputs` (causal LM; exactly one of the two)."""
        if messages:
            if inputs:
                raise InvalidRequest.field("messages", "send either inputs or messages, not both")
            self._check_messages(messages)
            self._generates(True)
        else:
            self._check_inputs(inputs)
        if self.limits.log_payloads:
            log.info("predict inputs", inputs=inputs or [m.content for m in messages])
        if self._generates(generation_asked):
            if uncertainty.wanted:
                raise FailedPrecondition(
                    "confidence_level and return_uncertainty are classification outputs; "
                    f"this server serves {self.engine.source.model_id}, a causal-LM model"
                )
            params = sampling()
            record, results = await self.engine.generate(ref, self._prompts(inputs, messages, params), params)
            return Generated(record, results)
        return await self.engine.classify(ref, inputs, uncertainty)

    async def open_stream(
        self,
        ref: AdapterRef | None,
        prompt: str,
        sampling: Callable[[], SamplingParams],
        messages: tuple[ChatTurn, ...] = (),
        input_field: str = "input",
    ) -> tuple[AdapterVersionRecord | None, RowStream]:
        """A generation streamed as it decodes (causal LM servers only): of `prompt`, or of
        the conversation in `messages` (exactly one of the two)."""
        if messages:
            if prompt:
                raise InvalidRequest.field("messages", f"send either {input_field} or messages, not both")
            self._check_messages(messages)
        else:
            self._check_text(prompt, input_field)
        self._generates(True)
        params = sampling()
        (one,) = self._prompts([prompt], messages, params)
        if self.limits.log_payloads:
            log.info("predict inputs", inputs=[prompt] if not messages else [m.content for m in messages])
        return await self.engine.open_stream(ref, one, params)
