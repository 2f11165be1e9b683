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

class FeedbackExportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_EXPORT_KIND_UNSPECIFIED: _ClassVar[FeedbackExportKind]
    FEEDBACK_EXPORT_KIND_LABELS: _ClassVar[FeedbackExportKind]
    FEEDBACK_EXPORT_KIND_COMPLETIONS: _ClassVar[FeedbackExportKind]
    FEEDBACK_EXPORT_KIND_PREFERENCE_PAIRS: _ClassVar[FeedbackExportKind]
FEEDBACK_EXPORT_KIND_UNSPECIFIED: FeedbackExportKind
FEEDBACK_EXPORT_KIND_LABELS: FeedbackExportKind
FEEDBACK_EXPORT_KIND_COMPLETIONS: FeedbackExportKind
FEEDBACK_EXPORT_KIND_PREFERENCE_PAIRS: FeedbackExportKind

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("namespace", "prediction_id", "label", "correct", "rating", "corrected_text", "input", "served_text", "comment")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SERVED_TEXT_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    prediction_id: str
    label: str
    correct: bool
    rating: int
    corrected_text: str
    input: str
    served_text: str
    comment: str
    def __init__(self, namespace: _Optional[str] = ..., prediction_id: _Optional[str] = ..., label: _Optional[str] = ..., correct: _Optional[bool] = ..., rating: _Optional[int] = ..., corrected_text: _Optional[str] = ..., input: _Optional[str] = ..., served_text: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("id", "namespace", "prediction_id", "adapter_name", "adapter_version", "task", "served_label", "served_score", "label", "correct", "rating", "corrected_text", "input", "served_text", "comment", "predicted_at", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SERVED_LABEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SERVED_TEXT_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    prediction_id: str
    adapter_name: str
    adapter_version: int
    task: _common_pb2.TaskType
    served_label: str
    served_score: float
    label: str
    correct: bool
    rating: int
    corrected_text: str
    input: str
    served_text: str
    comment: str
    predicted_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., prediction_id: _Optional[str] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., served_label: _Optional[str] = ..., served_score: _Optional[float] = ..., label: _Optional[str] = ..., correct: _Optional[bool] = ..., rating: _Optional[int] = ..., corrected_text: _Optional[str] = ..., input: _Optional[str] = ..., served_text: _Optional[str] = ..., comment: _Optional[str] = ..., predicted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("feedback", "created")
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    created: bool
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListFeedbackRequest(_message.Message):
    __slots__ = ("namespace", "adapter", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., adapter: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFeedbackResponse(_message.Message):
    __slots__ = ("feedback", "next_page_token")
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    feedback: _containers.RepeatedCompositeFieldContainer[Feedback]
    next_page_token: str
    def __init__(self, feedback: _Optional[_Iterable[_Union[Feedback, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportFeedbackRequest(_message.Message):
    __slots__ = ("namespace", "adapter", "kind", "display_name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter: str
    kind: FeedbackExportKind
    display_name: str
    def __init__(self, namespace: _Optional[str] = ..., adapter: _Optional[str] = ..., kind: _Optional[_Union[FeedbackExportKind, str]] = ..., display_name: _Optional[str] = ...) -> None: ...

class FeedbackConflict(_message.Message):
    __slots__ = ("text", "feedback_label", "training_label", "adapter_version")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_LABEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LABEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    feedback_label: str
    training_label: str
    adapter_version: int
    def __init__(self, text: _Optional[str] = ..., feedback_label: _Optional[str] = ..., training_label: _Optional[str] = ..., adapter_version: _Optional[int] = ...) -> None: ...

class ExportFeedbackResponse(_message.Message):
    __slots__ = ("dataset", "jsonl", "rows", "skipped", "conflicts_with_training", "conflicts")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    JSONL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_WITH_TRAINING_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    dataset: _datasets_pb2.Dataset
    jsonl: bytes
    rows: int
    skipped: int
    conflicts_with_training: int
    conflicts: _containers.RepeatedCompositeFieldContainer[FeedbackConflict]
    def __init__(self, dataset: _Optional[_Union[_datasets_pb2.Dataset, _Mapping]] = ..., jsonl: _Optional[bytes] = ..., rows: _Optional[int] = ..., skipped: _Optional[int] = ..., conflicts_with_training: _Optional[int] = ..., conflicts: _Optional[_Iterable[_Union[FeedbackConflict, _Mapping]]] = ...) -> None: ...

class FeedbackStats(_message.Message):
    __slots__ = ("answered", "correct", "accuracy", "rated", "mean_rating", "corrected")
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    RATED_FIELD_NUMBER: _ClassVar[int]
    MEAN_RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_FIELD_NUMBER: _ClassVar[int]
    answered: int
    correct: int
    accuracy: float
    rated: int
    mean_rating: float
    corrected: int
    def __init__(self, answered: _Optional[int] = ..., correct: _Optional[int] = ..., accuracy: _Optional[float] = ..., rated: _Optional[int] = ..., mean_rating: _Optional[float] = ..., corrected: _Optional[int] = ...) -> None: ...

class FeedbackSettings(_message.Message):
    __slots__ = ("namespace", "adapter_name", "store_inputs", "update_time")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    STORE_INPUTS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter_name: str
    store_inputs: bool
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, namespace: _Optional[str] = ..., adapter_name: _Optional[str] = ..., store_inputs: _Optional[bool] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetFeedbackSettingsRequest(_message.Message):
    __slots__ = ("namespace", "adapter_name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter_name: str
    def __init__(self, namespace: _Optional[str] = ..., adapter_name: _Optional[str] = ...) -> None: ...

class GetFeedbackSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: FeedbackSettings
    def __init__(self, settings: _Optional[_Union[FeedbackSettings, _Mapping]] = ...) -> None: ...

class SetFeedbackSettingsRequest(_message.Message):
    __slots__ = ("namespace", "adapter_name", "store_inputs")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    STORE_INPUTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    adapter_name: str
    store_inputs: bool
    def __init__(self, namespace: _Optional[str] = ..., adapter_name: _Optional[str] = ..., store_inputs: _Optional[bool] = ...) -> None: ...

class SetFeedbackSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: FeedbackSettings
    def __init__(self, settings: _Optional[_Union[FeedbackSettings, _Mapping]] = ...) -> None: ...
