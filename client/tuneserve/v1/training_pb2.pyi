import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuneserve.v1 import common_pb2 as _common_pb2
from tuneserve.v1 import datasets_pb2 as _datasets_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class PromotionPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMOTION_POLICY_UNSPECIFIED: _ClassVar[PromotionPolicy]
    PROMOTION_POLICY_ALWAYS: _ClassVar[PromotionPolicy]
    PROMOTION_POLICY_MANUAL: _ClassVar[PromotionPolicy]
    PROMOTION_POLICY_IF_BETTER: _ClassVar[PromotionPolicy]

class JobEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_EVENT_TYPE_UNSPECIFIED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STATE: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_PROGRESS: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_EVALUATION: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_CHECKPOINT: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_WARNING: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_ERROR: _ClassVar[JobEventType]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
PROMOTION_POLICY_UNSPECIFIED: PromotionPolicy
PROMOTION_POLICY_ALWAYS: PromotionPolicy
PROMOTION_POLICY_MANUAL: PromotionPolicy
PROMOTION_POLICY_IF_BETTER: PromotionPolicy
JOB_EVENT_TYPE_UNSPECIFIED: JobEventType
JOB_EVENT_TYPE_STATE: JobEventType
JOB_EVENT_TYPE_PROGRESS: JobEventType
JOB_EVENT_TYPE_EVALUATION: JobEventType
JOB_EVENT_TYPE_CHECKPOINT: JobEventType
JOB_EVENT_TYPE_WARNING: JobEventType
JOB_EVENT_TYPE_ERROR: JobEventType

class TrainRequest(_message.Message):
    __slots__ = ("namespace", "adapter_name", "task", "training_examples", "validation_examples", "validation_fraction", "hyperparameters", "request_id", "dataset_id", "validation_dataset_id", "promotion", "init_from")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TRAINING_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    INIT_FROM_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter_name: str
    task: _common_pb2.TaskType
    training_examples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Example]
    validation_examples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Example]
    validation_fraction: float
    hyperparameters: _common_pb2.Hyperparameters
    request_id: str
    dataset_id: str
    validation_dataset_id: str
    promotion: Promotion
    init_from: str
    def __init__(self, namespace: _Optional[str] = ..., adapter_name: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., training_examples: _Optional[_Iterable[_Union[_common_pb2.Example, _Mapping]]] = ..., validation_examples: _Optional[_Iterable[_Union[_common_pb2.Example, _Mapping]]] = ..., validation_fraction: _Optional[float] = ..., hyperparameters: _Optional[_Union[_common_pb2.Hyperparameters, _Mapping]] = ..., request_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., validation_dataset_id: _Optional[str] = ..., promotion: _Optional[_Union[Promotion, _Mapping]] = ..., init_from: _Optional[str] = ...) -> None: ...

class Promotion(_message.Message):
    __slots__ = ("policy", "metric", "tolerance", "eval_dataset_id")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    policy: PromotionPolicy
    metric: str
    tolerance: float
    eval_dataset_id: str
    def __init__(self, policy: _Optional[_Union[PromotionPolicy, str]] = ..., metric: _Optional[str] = ..., tolerance: _Optional[float] = ..., eval_dataset_id: _Optional[str] = ...) -> None: ...

class PromotionResult(_message.Message):
    __slots__ = ("promoted", "reason", "metric", "new_score", "current_score", "compared_version", "from_version", "eval_dataset_id", "eval_examples")
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    NEW_SCORE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    COMPARED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    promoted: bool
    reason: str
    metric: str
    new_score: float
    current_score: float
    compared_version: int
    from_version: int
    eval_dataset_id: str
    eval_examples: int
    def __init__(self, promoted: _Optional[bool] = ..., reason: _Optional[str] = ..., metric: _Optional[str] = ..., new_score: _Optional[float] = ..., current_score: _Optional[float] = ..., compared_version: _Optional[int] = ..., from_version: _Optional[int] = ..., eval_dataset_id: _Optional[str] = ..., eval_examples: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("job", "created", "data_report")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    DATA_REPORT_FIELD_NUMBER: _ClassVar[int]
    job: Job
    created: bool
    data_report: _datasets_pb2.DataReport
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., created: _Optional[bool] = ..., data_report: _Optional[_Union[_datasets_pb2.DataReport, _Mapping]] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "train_loss", "learning_rate", "examples_per_second", "eta_seconds")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    learning_rate: float
    examples_per_second: float
    eta_seconds: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., examples_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class SampleGeneration(_message.Message):
    __slots__ = ("prompt", "reference", "generated")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    reference: str
    generated: str
    def __init__(self, prompt: _Optional[str] = ..., reference: _Optional[str] = ..., generated: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "namespace", "adapter_name", "task", "state", "created_at", "started_at", "finished_at", "progress", "metrics", "error", "adapter_version", "hyperparameters", "request_id", "train_examples", "validation_examples", "attempts", "updated_at", "data_report", "dataset_id", "validation_dataset_id", "sample_generations", "resumed_from_step", "promotion", "init_from", "init_from_requested", "promotion_result")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    DATA_REPORT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    INIT_FROM_FIELD_NUMBER: _ClassVar[int]
    INIT_FROM_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    adapter_name: str
    task: _common_pb2.TaskType
    state: JobState
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    progress: JobProgress
    metrics: _containers.ScalarMap[str, float]
    error: str
    adapter_version: int
    hyperparameters: _common_pb2.Hyperparameters
    request_id: str
    train_examples: int
    validation_examples: int
    attempts: int
    updated_at: _timestamp_pb2.Timestamp
    data_report: _datasets_pb2.DataReport
    dataset_id: str
    validation_dataset_id: str
    sample_generations: _containers.RepeatedCompositeFieldContainer[SampleGeneration]
    resumed_from_step: int
    promotion: Promotion
    init_from: str
    init_from_requested: str
    promotion_result: PromotionResult
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., adapter_name: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., adapter_version: _Optional[int] = ..., hyperparameters: _Optional[_Union[_common_pb2.Hyperparameters, _Mapping]] = ..., request_id: _Optional[str] = ..., train_examples: _Optional[int] = ..., validation_examples: _Optional[int] = ..., attempts: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data_report: _Optional[_Union[_datasets_pb2.DataReport, _Mapping]] = ..., dataset_id: _Optional[str] = ..., validation_dataset_id: _Optional[str] = ..., sample_generations: _Optional[_Iterable[_Union[SampleGeneration, _Mapping]]] = ..., resumed_from_step: _Optional[int] = ..., promotion: _Optional[_Union[Promotion, _Mapping]] = ..., init_from: _Optional[str] = ..., init_from_requested: _Optional[str] = ..., promotion_result: _Optional[_Union[PromotionResult, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("namespace", "job_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    job_id: str
    def __init__(self, namespace: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("namespace", "states", "adapter_name", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    adapter_name: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ..., adapter_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("namespace", "job_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    job_id: str
    def __init__(self, namespace: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("namespace", "job_id", "after_sequence")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    job_id: str
    after_sequence: int
    def __init__(self, namespace: _Optional[str] = ..., job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "job_id", "time", "type", "state", "progress", "metrics", "message")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    job_id: str
    time: _timestamp_pb2.Timestamp
    type: JobEventType
    state: JobState
    progress: JobProgress
    metrics: _containers.ScalarMap[str, float]
    message: str
    def __init__(self, sequence: _Optional[int] = ..., job_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[_Union[JobEventType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., message: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...
