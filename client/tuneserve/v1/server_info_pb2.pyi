from tuneserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTH_MODE_UNSPECIFIED: _ClassVar[AuthMode]
    AUTH_MODE_NONE: _ClassVar[AuthMode]
    AUTH_MODE_API_KEY: _ClassVar[AuthMode]
AUTH_MODE_UNSPECIFIED: AuthMode
AUTH_MODE_NONE: AuthMode
AUTH_MODE_API_KEY: AuthMode

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("base_model", "task", "version", "limits", "auth", "features", "quotas")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    task: _common_pb2.TaskType
    version: str
    limits: ServerLimits
    auth: ServerAuth
    features: ServerFeatures
    quotas: TenantQuotas
    def __init__(self, base_model: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., version: _Optional[str] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., auth: _Optional[_Union[ServerAuth, _Mapping]] = ..., features: _Optional[_Union[ServerFeatures, _Mapping]] = ..., quotas: _Optional[_Union[TenantQuotas, _Mapping]] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_predict_inputs", "max_text_chars", "max_train_examples", "max_lora_rank", "max_dataset_bytes", "max_request_bytes", "max_sequence_tokens", "max_input_tokens", "max_new_tokens_default", "max_new_tokens_limit", "max_top_logprobs")
    MAX_PREDICT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    MAX_DATASET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    max_predict_inputs: int
    max_text_chars: int
    max_train_examples: int
    max_lora_rank: int
    max_dataset_bytes: int
    max_request_bytes: int
    max_sequence_tokens: int
    max_input_tokens: int
    max_new_tokens_default: int
    max_new_tokens_limit: int
    max_top_logprobs: int
    def __init__(self, max_predict_inputs: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_train_examples: _Optional[int] = ..., max_lora_rank: _Optional[int] = ..., max_dataset_bytes: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_sequence_tokens: _Optional[int] = ..., max_input_tokens: _Optional[int] = ..., max_new_tokens_default: _Optional[int] = ..., max_new_tokens_limit: _Optional[int] = ..., max_top_logprobs: _Optional[int] = ...) -> None: ...

class ServerAuth(_message.Message):
    __slots__ = ("mode", "jwt", "client_certificates", "reflection_requires_auth")
    MODE_FIELD_NUMBER: _ClassVar[int]
    JWT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    REFLECTION_REQUIRES_AUTH_FIELD_NUMBER: _ClassVar[int]
    mode: AuthMode
    jwt: bool
    client_certificates: bool
    reflection_requires_auth: bool
    def __init__(self, mode: _Optional[_Union[AuthMode, str]] = ..., jwt: _Optional[bool] = ..., client_certificates: _Optional[bool] = ..., reflection_requires_auth: _Optional[bool] = ...) -> None: ...

class ServerFeatures(_message.Message):
    __slots__ = ("probabilities", "calibration", "prediction_sets", "uncertainty", "generation", "streaming_generation", "chat_template")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SETS_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STREAMING_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    probabilities: bool
    calibration: bool
    prediction_sets: bool
    uncertainty: bool
    generation: bool
    streaming_generation: bool
    chat_template: bool
    def __init__(self, probabilities: _Optional[bool] = ..., calibration: _Optional[bool] = ..., prediction_sets: _Optional[bool] = ..., uncertainty: _Optional[bool] = ..., generation: _Optional[bool] = ..., streaming_generation: _Optional[bool] = ..., chat_template: _Optional[bool] = ...) -> None: ...

class TenantQuotas(_message.Message):
    __slots__ = ("active_jobs", "adapter_versions", "dataset_bytes", "upload_bytes", "pinned_adapters", "queued_predict_rows")
    ACTIVE_JOBS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATASET_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_PREDICT_ROWS_FIELD_NUMBER: _ClassVar[int]
    active_jobs: int
    adapter_versions: int
    dataset_bytes: int
    upload_bytes: int
    pinned_adapters: int
    queued_predict_rows: int
    def __init__(self, active_jobs: _Optional[int] = ..., adapter_versions: _Optional[int] = ..., dataset_bytes: _Optional[int] = ..., upload_bytes: _Optional[int] = ..., pinned_adapters: _Optional[int] = ..., queued_predict_rows: _Optional[int] = ...) -> None: ...
