"""Records the stores exchange with the rest of the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tuneserve_server.training.jobs import TaskType


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
