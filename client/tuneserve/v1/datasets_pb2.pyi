import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuneserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_JSONL: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CSV: _ClassVar[DatasetFormat]

class IssueSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ISSUE_SEVERITY_UNSPECIFIED: _ClassVar[IssueSeverity]
    ISSUE_SEVERITY_WARNING: _ClassVar[IssueSeverity]
    ISSUE_SEVERITY_ERROR: _ClassVar[IssueSeverity]
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_JSONL: DatasetFormat
DATASET_FORMAT_CSV: DatasetFormat
ISSUE_SEVERITY_UNSPECIFIED: IssueSeverity
ISSUE_SEVERITY_WARNING: IssueSeverity
ISSUE_SEVERITY_ERROR: IssueSeverity

class DatasetUploadHeader(_message.Message):
    __slots__ = ("namespace", "display_name", "task", "format", "size_bytes", "sha256", "upload_id", "text_field", "label_field")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    display_name: str
    task: _common_pb2.TaskType
    format: DatasetFormat
    size_bytes: int
    sha256: str
    upload_id: str
    text_field: str
    label_field: str
    def __init__(self, namespace: _Optional[str] = ..., display_name: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., upload_id: _Optional[str] = ..., text_field: _Optional[str] = ..., label_field: _Optional[str] = ...) -> None: ...

class DatasetChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: DatasetUploadHeader
    chunk: DatasetChunk
    def __init__(self, header: _Optional[_Union[DatasetUploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[DatasetChunk, _Mapping]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "namespace", "display_name", "task", "format", "size_bytes", "sha256", "rows", "usable_rows", "created_at", "report")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    USABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    display_name: str
    task: _common_pb2.TaskType
    format: DatasetFormat
    size_bytes: int
    sha256: str
    rows: int
    usable_rows: int
    created_at: _timestamp_pb2.Timestamp
    report: DataReport
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., display_name: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., rows: _Optional[int] = ..., usable_rows: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., report: _Optional[_Union[DataReport, _Mapping]] = ...) -> None: ...

class UploadDatasetResponse(_message.Message):
    __slots__ = ("dataset", "created")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    created: bool
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("namespace", "dataset_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    dataset_id: str
    def __init__(self, namespace: _Optional[str] = ..., dataset_id: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("namespace", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("namespace", "dataset_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    dataset_id: str
    def __init__(self, namespace: _Optional[str] = ..., dataset_id: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Upload(_message.Message):
    __slots__ = ("upload_id", "display_name", "received_bytes", "size_bytes", "last_chunk_time", "expire_time")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_CHUNK_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    display_name: str
    received_bytes: int
    size_bytes: int
    last_chunk_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, upload_id: _Optional[str] = ..., display_name: _Optional[str] = ..., received_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., last_chunk_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListUploadsRequest(_message.Message):
    __slots__ = ("namespace", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUploadsResponse(_message.Message):
    __slots__ = ("uploads", "next_page_token")
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    uploads: _containers.RepeatedCompositeFieldContainer[Upload]
    next_page_token: str
    def __init__(self, uploads: _Optional[_Iterable[_Union[Upload, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteUploadRequest(_message.Message):
    __slots__ = ("namespace", "upload_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    upload_id: str
    def __init__(self, namespace: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class DeleteUploadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ValidateDatasetRequest(_message.Message):
    __slots__ = ("namespace", "task", "dataset_id", "training_examples", "validation_dataset_id", "validation_examples", "validation_fraction", "max_seq_length")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINING_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    task: _common_pb2.TaskType
    dataset_id: str
    training_examples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Example]
    validation_dataset_id: str
    validation_examples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Example]
    validation_fraction: float
    max_seq_length: int
    def __init__(self, namespace: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.TaskType, str]] = ..., dataset_id: _Optional[str] = ..., training_examples: _Optional[_Iterable[_Union[_common_pb2.Example, _Mapping]]] = ..., validation_dataset_id: _Optional[str] = ..., validation_examples: _Optional[_Iterable[_Union[_common_pb2.Example, _Mapping]]] = ..., validation_fraction: _Optional[float] = ..., max_seq_length: _Optional[int] = ...) -> None: ...

class ValidateDatasetResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: DataReport
    def __init__(self, report: _Optional[_Union[DataReport, _Mapping]] = ...) -> None: ...

class DataIssue(_message.Message):
    __slots__ = ("severity", "code", "message", "rows")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    severity: IssueSeverity
    code: str
    message: str
    rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, severity: _Optional[_Union[IssueSeverity, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., rows: _Optional[_Iterable[int]] = ...) -> None: ...

class LabelCount(_message.Message):
    __slots__ = ("label", "train", "validation")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    label: str
    train: int
    validation: int
    def __init__(self, label: _Optional[str] = ..., train: _Optional[int] = ..., validation: _Optional[int] = ...) -> None: ...

class DroppedRows(_message.Message):
    __slots__ = ("reason", "count", "rows")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ..., rows: _Optional[_Iterable[int]] = ...) -> None: ...

class DataReport(_message.Message):
    __slots__ = ("total_rows", "usable_rows", "train_rows", "validation_rows", "dropped", "labels", "imbalance_ratio", "exact_duplicates", "near_duplicates", "conflicting_texts", "leaked_validation_rows", "truncated_rows", "max_tokens", "mean_tokens", "issues", "ok")
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    USABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IMBALANCE_RATIO_FIELD_NUMBER: _ClassVar[int]
    EXACT_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_TEXTS_FIELD_NUMBER: _ClassVar[int]
    LEAKED_VALIDATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    total_rows: int
    usable_rows: int
    train_rows: int
    validation_rows: int
    dropped: _containers.RepeatedCompositeFieldContainer[DroppedRows]
    labels: _containers.RepeatedCompositeFieldContainer[LabelCount]
    imbalance_ratio: float
    exact_duplicates: int
    near_duplicates: int
    conflicting_texts: int
    leaked_validation_rows: int
    truncated_rows: int
    max_tokens: int
    mean_tokens: float
    issues: _containers.RepeatedCompositeFieldContainer[DataIssue]
    ok: bool
    def __init__(self, total_rows: _Optional[int] = ..., usable_rows: _Optional[int] = ..., train_rows: _Optional[int] = ..., validation_rows: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[DroppedRows, _Mapping]]] = ..., labels: _Optional[_Iterable[_Union[LabelCount, _Mapping]]] = ..., imbalance_ratio: _Optional[float] = ..., exact_duplicates: _Optional[int] = ..., near_duplicates: _Optional[int] = ..., conflicting_texts: _Optional[int] = ..., leaked_validation_rows: _Optional[int] = ..., truncated_rows: _Optional[int] = ..., max_tokens: _Optional[int] = ..., mean_tokens: _Optional[float] = ..., issues: _Optional[_Iterable[_Union[DataIssue, _Mapping]]] = ..., ok: _Optional[bool] = ...) -> None: ...
