import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuneserve.v1 import common_pb2 as _common_pb2
from tuneserve.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("namespace", "versions", "include_base", "examples", "dataset_id", "request_id", "bootstrap_resamples", "seed", "sample_generations")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BASE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    include_base: bool
    examples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Example]
    dataset_id: str
    request_id: str
    bootstrap_resamples: int
    seed: int
    sample_generations: int
    def __init__(self, namespace: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., include_base: _Optional[bool] = ..., examples: _Optional[_Iterable[_Union[_common_pb2.Example, _Mapping]]] = ..., dataset_id: _Optional[str] = ..., request_id: _Optional[str] = ..., bootstrap_resamples: _Optional[int] = ..., seed: _Optional[int] = ..., sample_generations: _Optional[int] = ...) -> None: ...

class CreateEvaluationResponse(_message.Message):
    __slots__ = ("evaluation", "created")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    created: bool
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class LabelMetrics(_message.Message):
    __slots__ = ("label", "precision", "recall", "f1", "support")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, label: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class ConfusionMatrix(_message.Message):
    __slots__ = ("labels", "counts")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ReliabilityBin(_message.Message):
    __slots__ = ("lower", "upper", "count", "accuracy", "confidence")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    count: int
    accuracy: float
    confidence: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., count: _Optional[int] = ..., accuracy: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...

class EvaluationTargetResult(_message.Message):
    __slots__ = ("target", "metrics", "per_label", "confusion", "reliability", "samples")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PER_LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    RELIABILITY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    target: str
    metrics: _containers.ScalarMap[str, float]
    per_label: _containers.RepeatedCompositeFieldContainer[LabelMetrics]
    confusion: ConfusionMatrix
    reliability: _containers.RepeatedCompositeFieldContainer[ReliabilityBin]
    samples: _containers.RepeatedCompositeFieldContainer[_training_pb2.SampleGeneration]
    def __init__(self, target: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., per_label: _Optional[_Iterable[_Union[LabelMetrics, _Mapping]]] = ..., confusion: _Optional[_Union[ConfusionMatrix, _Mapping]] = ..., reliability: _Optional[_Iterable[_Union[ReliabilityBin, _Mapping]]] = ..., samples: _Optional[_Iterable[_Union[_training_pb2.SampleGeneration, _Mapping]]] = ...) -> None: ...

class McNemarTest(_message.Message):
    __slots__ = ("metric", "a", "b", "difference", "only_a_correct", "only_b_correct", "statistic", "p_value", "method")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    ONLY_A_CORRECT_FIELD_NUMBER: _ClassVar[int]
    ONLY_B_CORRECT_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    metric: str
    a: float
    b: float
    difference: float
    only_a_correct: int
    only_b_correct: int
    statistic: float
    p_value: float
    method: str
    def __init__(self, metric: _Optional[str] = ..., a: _Optional[float] = ..., b: _Optional[float] = ..., difference: _Optional[float] = ..., only_a_correct: _Optional[int] = ..., only_b_correct: _Optional[int] = ..., statistic: _Optional[float] = ..., p_value: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class BootstrapInterval(_message.Message):
    __slots__ = ("metric", "a", "b", "difference", "ci_low", "ci_high", "confidence", "p_value", "resamples", "seed")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    metric: str
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    resamples: int
    seed: int
    def __init__(self, metric: _Optional[str] = ..., a: _Optional[float] = ..., b: _Optional[float] = ..., difference: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., confidence: _Optional[float] = ..., p_value: _Optional[float] = ..., resamples: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class EvaluationComparison(_message.Message):
    __slots__ = ("a", "b", "rows", "mcnemar", "bootstrap")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MCNEMAR_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    rows: int
    mcnemar: McNemarTest
    bootstrap: _containers.RepeatedCompositeFieldContainer[BootstrapInterval]
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., rows: _Optional[int] = ..., mcnemar: _Optional[_Union[McNemarTest, _Mapping]] = ..., bootstrap: _Optional[_Iterable[_Union[BootstrapInterval, _Mapping]]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "namespace", "task", "state", "request_id", "targets", "requested", "rows", "dataset_id", "created_at", "updated_at", "started_at", "finished_at", "progress", "error", "attempts", "bootstrap_resamples", "seed", "results", "comparisons", "seconds", "rows_per_second")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    task: _common_pb2.TaskType
    state: _training_pb2.JobState
    request_id: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    requested: _containers.RepeatedScalarFieldContainer[str]
    rows: int
    dataset_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    progress: _training_pb2.JobProgress
    error: str
    attempts: int
    bootstrap_resamples: int
    seed: int
    results: _containers.RepeatedCompositeFieldContainer[EvaluationTargetResult]
    comparisons: _containers.RepeatedCompositeFieldContainer[EvaluationComparison]
    seconds: float
    rows_per_second: float
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., state: _Optional[_Union[_training_pb2.JobState, str]] = ..., request_id: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., requested: _Optional[_Iterable[str]] = ..., rows: _Optional[int] = ..., dataset_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_training_pb2.JobProgress, _Mapping]] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., bootstrap_resamples: _Optional[int] = ..., seed: _Optional[int] = ..., results: _Optional[_Iterable[_Union[EvaluationTargetResult, _Mapping]]] = ..., comparisons: _Optional[_Iterable[_Union[EvaluationComparison, _Mapping]]] = ..., seconds: _Optional[float] = ..., rows_per_second: _Optional[float] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("namespace", "evaluation_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    evaluation_id: str
    def __init__(self, namespace: _Optional[str] = ..., evaluation_id: _Optional[str] = ...) -> None: ...

class GetEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("namespace", "states", "adapter_name", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    states: _containers.RepeatedScalarFieldContainer[_training_pb2.JobState]
    adapter_name: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_training_pb2.JobState, str]]] = ..., adapter_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "next_page_token")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    next_page_token: str
    def __init__(self, evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("namespace", "evaluation_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    evaluation_id: str
    def __init__(self, namespace: _Optional[str] = ..., evaluation_id: _Optional[str] = ...) -> None: ...

class CancelEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: Evaluation
    def __init__(self, evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...

class WatchEvaluationRequest(_message.Message):
    __slots__ = ("namespace", "evaluation_id", "after_sequence")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    evaluation_id: str
    after_sequence: int
    def __init__(self, namespace: _Optional[str] = ..., evaluation_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchEvaluationResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _training_pb2.JobEvent
    def __init__(self, event: _Optional[_Union[_training_pb2.JobEvent, _Mapping]] = ...) -> None: ...
