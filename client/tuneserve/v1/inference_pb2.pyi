from tuneserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConformalScore(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFORMAL_SCORE_UNSPECIFIED: _ClassVar[ConformalScore]
    CONFORMAL_SCORE_LAC: _ClassVar[ConformalScore]
    CONFORMAL_SCORE_APS: _ClassVar[ConformalScore]

class ConformalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFORMAL_MODE_UNSPECIFIED: _ClassVar[ConformalMode]
    CONFORMAL_MODE_MARGINAL: _ClassVar[ConformalMode]
    CONFORMAL_MODE_MONDRIAN: _ClassVar[ConformalMode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
CONFORMAL_SCORE_UNSPECIFIED: ConformalScore
CONFORMAL_SCORE_LAC: ConformalScore
CONFORMAL_SCORE_APS: ConformalScore
CONFORMAL_MODE_UNSPECIFIED: ConformalMode
CONFORMAL_MODE_MARGINAL: ConformalMode
CONFORMAL_MODE_MONDRIAN: ConformalMode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_EOS: FinishReason

class GenerationParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed", "raw_prompt", "logprobs", "top_logprobs")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RAW_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    raw_prompt: bool
    logprobs: bool
    top_logprobs: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., raw_prompt: _Optional[bool] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token_id", "token", "logprob", "top_logprobs")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ..., top_logprobs: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token_id", "token", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("namespace", "adapter", "inputs", "return_probabilities", "generation", "confidence_level", "conformal_score", "conformal_mode", "return_uncertainty", "messages")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CONFORMAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFORMAL_MODE_FIELD_NUMBER: _ClassVar[int]
    RETURN_UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    return_probabilities: bool
    generation: GenerationParams
    confidence_level: float
    conformal_score: ConformalScore
    conformal_mode: ConformalMode
    return_uncertainty: bool
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    def __init__(self, namespace: _Optional[str] = ..., adapter: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., return_probabilities: _Optional[bool] = ..., generation: _Optional[_Union[GenerationParams, _Mapping]] = ..., confidence_level: _Optional[float] = ..., conformal_score: _Optional[_Union[ConformalScore, str]] = ..., conformal_mode: _Optional[_Union[ConformalMode, str]] = ..., return_uncertainty: _Optional[bool] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("label", "score", "probabilities", "prediction_set", "abstain", "abstain_reason", "out_of_domain", "ood_score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SET_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    OOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    probabilities: _containers.RepeatedCompositeFieldContainer[LabelScore]
    prediction_set: _containers.RepeatedScalarFieldContainer[str]
    abstain: bool
    abstain_reason: str
    out_of_domain: bool
    ood_score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., probabilities: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., prediction_set: _Optional[_Iterable[str]] = ..., abstain: _Optional[bool] = ..., abstain_reason: _Optional[str] = ..., out_of_domain: _Optional[bool] = ..., ood_score: _Optional[float] = ...) -> None: ...

class Generation(_message.Message):
    __slots__ = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("classification", "generation", "prediction_id")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    generation: Generation
    prediction_id: str
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., generation: _Optional[_Union[Generation, _Mapping]] = ..., prediction_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions", "adapter_name", "adapter_version", "conformal_mode")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFORMAL_MODE_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    adapter_name: str
    adapter_version: int
    conformal_mode: ConformalMode
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., conformal_mode: _Optional[_Union[ConformalMode, str]] = ...) -> None: ...

class PredictStreamRequest(_message.Message):
    __slots__ = ("namespace", "adapter", "input", "generation", "messages")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter: str
    input: str
    generation: GenerationParams
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    def __init__(self, namespace: _Optional[str] = ..., adapter: _Optional[str] = ..., input: _Optional[str] = ..., generation: _Optional[_Union[GenerationParams, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class PredictStreamResponse(_message.Message):
    __slots__ = ("delta", "final", "adapter_name", "adapter_version", "prediction_id", "logprobs")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    delta: str
    final: Generation
    adapter_name: str
    adapter_version: int
    prediction_id: str
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, delta: _Optional[str] = ..., final: _Optional[_Union[Generation, _Mapping]] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., prediction_id: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...
