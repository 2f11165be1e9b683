"""Job-store rows to domain records, shared by the SQLite and PostgreSQL stores (same column
names; each store passes its own timestamp converter)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from tuneserve_server.storage.records import AdapterVersionRecord
from tuneserve_server.training.jobs import Hyperparameters, Job, JobProgress, JobState, TaskType

Timestamp = Callable[[Any], datetime | None]


def job_from_row(row: Mapping[str, Any], ts: Timestamp) -> Job:
    return Job(
        id=row["id"],
        namespace=row["namespace"],
        adapter_name=row["adapter_name"],
        task=TaskType(row["task"]),
        state=JobState(row["state"]),
        request_id=row["request_id"],
        hyperparameters=Hyperparameters.from_dict(json.loads(row["hyperparameters_json"])),
        train_examples=row["train_examples"],
        validation_examples=row["validation_examples"],
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
        started_at=ts(row["started_at"]),
        finished_at=ts(row["finished_at"]),
        progress=JobProgress(row["step"], row["total_steps"], row["epoch"], row["train_loss"]),
        metrics=json.loads(row["metrics_json"]),
        error=row["error"],
        adapter_version=row["adapter_version"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def adapter_from_row(row: Mapping[str, Any], ts: Timestamp) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        namespace=row["namespace"],
        name=row["name"],
        version=row["version"],
        job_id=row["job_id"],
        task=TaskType(row["task"]),
        base_model=row["base_model"],
        labels=tuple(json.loads(row["labels_json"])),
        metrics=json.loads(row["metrics_json"]),
        lora_rank=row["lora_rank"],
        size_bytes=row["size_bytes"],
        created_at=ts(row["created_at"]),
        deleted=bool(row["deleted"]),
        seq=row["seq"],
    )
