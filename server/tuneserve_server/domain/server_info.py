"""What a server tells its callers about itself (GetServerInfo): the model it serves, its
limits, how callers authenticate, the optional features on."""

from __future__ import annotations

from dataclasses import dataclass

from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.tenancy import Quotas


@dataclass(frozen=True)
class ServedModel:
    """The loaded base model, as the engine knows it once it is ready."""

    base_model: str
    task: TaskType
    max_positions: int  # tokens in one sequence
    classify_max_tokens: int  # classification: tokens of each Predict input that are read
    chat_template: bool  # causal LM: prompts go through the model's chat template


@dataclass(frozen=True)
class RequestLimits:
    """The configured bounds on one request (Settings' max_* values)."""

    max_predict_inputs: int
    max_text_chars: int
    max_train_examples: int
    max_lora_rank: int
    max_dataset_bytes: int
    max_request_bytes: int
    max_new_tokens_default: int
    max_new_tokens_limit: int


@dataclass(frozen=True)
class AuthSummary:
    mode: str  # "api_key" or "none", as Settings.auth
    jwt: bool
    client_certificates: bool
    reflection_requires_auth: bool


@dataclass(frozen=True)
class Features:
    probabilities: bool = False
    calibration: bool = False
    prediction_sets: bool = False
    uncertainty: bool = False
    generation: bool = False
    streaming_generation: bool = False
    chat_template: bool = False

    @classmethod
    def of(cls, model: ServedModel) -> Features:
        if model.task is TaskType.CAUSAL_LM:
            return cls(generation=True, streaming_generation=True, chat_template=model.chat_template)
        return cls(probabilities=True, calibration=True, prediction_sets=True, uncertainty=True)


@dataclass(frozen=True)
class ServerInfo:
    version: str
    model: ServedModel
    limits: RequestLimits
    auth: AuthSummary
    features: Features
    quotas: Quotas
