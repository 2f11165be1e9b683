"""Records the stores exchange with the rest of the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tuneserve_server.domain.jobs import TaskType


@dataclass(frozen=True)
class AdapterVersionRecord:
    """One published version of a named adapter, as the registry knows it."""

    namespace: str
    name: str
    version: int
    job_id: str
    task: TaskType
    base_model: str
    labels: tuple[str, ...]
    metrics: dict[str, float]
    lora_rank: int
    size_bytes: int
    created_at: datetime
    deleted: bool = False
    # Monotonic change counter across the registry: replicas poll for seq > last seen.
    seq: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    # Where the version came from: {"init_from": "name@3", "init_from_job": ...} (continued
    # training); {} for a version trained from scratch.
    lineage: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetRecord:
    """An uploaded training file, stored once, trained from by id."""

    id: str
    namespace: str
    display_name: str
    task: TaskType
    format: str  # "jsonl" | "csv"
    size_bytes: int
    sha256: str
    rows: int
    usable_rows: int
    report: dict[str, object]  # DataReport.to_dict() of the file on its own
    text_field: str
    label_field: str
    upload_id: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class UploadState:
    """An upload in progress: the header it started with and how many bytes have arrived."""

    namespace: str
    upload_id: str
    header: dict[str, object]
    received: int
    # Listing only (ListUploads); not part of what identifies the state.
    display_name: str = field(default="", compare=False)
    touched_at: datetime | None = field(default=None, compare=False)  # the last chunk's time
    expires_at: datetime | None = field(default=None, compare=False)  # forgotten after this

    @property
    def declared_bytes(self) -> int:
        return int(self.header.get("size_bytes", 0))  # type: ignore[call-overload]
