"""Result types for datasets, data reports and job events, and their conversion from
protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tuneserve.v1 import common_pb2, datasets_pb2, training_pb2
from tuneserve_client._pb import enum_name, time_of


@dataclass(frozen=True)
class DataIssue:
    severity: str  # "WARNING" | "ERROR"
    code: str
    message: str
    rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class DataReport:
    """What the server found in training data before queueing a job (see the proto)."""

    total_rows: int = 0
    usable_rows: int = 0
    train_rows: int = 0
    validation_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    labels: tuple[tuple[str, int, int], ...] = ()  # (label, train, validation)
    imbalance_ratio: float = 0.0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    conflicting_texts: int = 0
    leaked_validation_rows: int = 0
    truncated_rows: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0
    issues: tuple[DataIssue, ...] = ()
    ok: bool = True

    @property
    def errors(self) -> list[DataIssue]:
        return [i for i in self.issues if i.severity == "ERROR"]

    @property
    def warnings(self) -> list[DataIssue]:
        return [i for i in self.issues if i.severity == "WARNING"]


def data_report_from_pb(pb: datasets_pb2.DataReport) -> DataReport:
    return DataReport(
        total_rows=pb.total_rows,
        usable_rows=pb.usable_rows,
        train_rows=pb.train_rows,
        validation_rows=pb.validation_rows,
        dropped={d.reason: d.count for d in pb.dropped},
        labels=tuple((c.label, c.train, c.validation) for c in pb.labels),
        imbalance_ratio=pb.imbalance_ratio,
        exact_duplicates=pb.exact_duplicates,
        near_duplicates=pb.near_duplicates,
        conflicting_texts=pb.conflicting_texts,
        leaked_validation_rows=pb.leaked_validation_rows,
        truncated_rows=pb.truncated_rows,
        max_tokens=pb.max_tokens,
        mean_tokens=pb.mean_tokens,
        issues=tuple(
            DataIssue(
                enum_name(datasets_pb2.IssueSeverity, i.severity, "ISSUE_SEVERITY_"),
                i.code,
                i.message,
                tuple(i.rows),
            )
            for i in pb.issues
        ),
        ok=pb.ok,
    )


@dataclass(frozen=True)
class Dataset:
    id: str
    namespace: str
    display_name: str
    task: str
    format: str  # "jsonl" | "csv"
    size_bytes: int
    sha256: str
    rows: int
    usable_rows: int
    created_at: datetime | None
    report: DataReport | None


def dataset_from_pb(pb: datasets_pb2.Dataset) -> Dataset:
    return Dataset(
        id=pb.id,
        namespace=pb.namespace,
        display_name=pb.display_name,
        task=enum_name(common_pb2.TaskType, pb.task, "TASK_TYPE_").lower(),
        format=enum_name(datasets_pb2.DatasetFormat, pb.format, "DATASET_FORMAT_").lower(),
        size_bytes=pb.size_bytes,
        sha256=pb.sha256,
        rows=pb.rows,
        usable_rows=pb.usable_rows,
        created_at=time_of(pb, "created_at"),
        report=data_report_from_pb(pb.report) if pb.HasField("report") else None,
    )


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log (WatchJob). `type`: STATE, PROGRESS, EVALUATION,
    CHECKPOINT, WARNING or ERROR."""

    sequence: int
    job_id: str
    time: datetime | None
    type: str
    state: str | None = None
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    train_loss: float | None = None
    learning_rate: float | None = None
    examples_per_second: float | None = None
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


def _optional(msg, name: str) -> float | None:
    return getattr(msg, name) if msg.HasField(name) else None


def job_event_from_pb(pb: training_pb2.JobEvent) -> JobEvent:
    p = pb.progress
    return JobEvent(
        sequence=pb.sequence,
        job_id=pb.job_id,
        time=time_of(pb, "time"),
        type=enum_name(training_pb2.JobEventType, pb.type, "JOB_EVENT_TYPE_"),
        state=enum_name(training_pb2.JobState, pb.state, "JOB_STATE_") if pb.state else None,
        step=p.step,
        total_steps=p.total_steps,
        epoch=p.epoch,
        train_loss=_optional(p, "train_loss"),
        learning_rate=_optional(p, "learning_rate"),
        examples_per_second=_optional(p, "examples_per_second"),
        eta_seconds=_optional(p, "eta_seconds"),
        metrics=dict(pb.metrics),
        message=pb.message,
    )


@dataclass(frozen=True)
class Upload:
    """An unfinished upload the server holds (ListUploads): resume it by sending the same
    file with its `upload_id`, or discard it."""

    upload_id: str
    display_name: str
    received_bytes: int
    size_bytes: int
    last_chunk_at: datetime | None
    expires_at: datetime | None


def upload_from_pb(pb: datasets_pb2.Upload) -> Upload:
    return Upload(
        upload_id=pb.upload_id,
        display_name=pb.display_name,
        received_bytes=pb.received_bytes,
        size_bytes=pb.size_bytes,
        last_chunk_at=time_of(pb, "last_chunk_time"),
        expires_at=time_of(pb, "expire_time"),
    )
