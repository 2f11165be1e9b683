"""Job-store rows (as the driver returns them) to domain records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tuneserve_server.domain.aliases import PromotionSettings
from tuneserve_server.domain.jobs import (
    EventType,
    Hyperparameters,
    Job,
    JobEvent,
    JobProgress,
    JobState,
    TaskType,
)
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord

# JobProgress fields beyond the four with columns of their own live in progress_json.
PROGRESS_EXTRAS = ("learning_rate", "examples_per_second", "eta_seconds")


def _ts(value: Any) -> datetime | None:
    """timestamptz (PostgreSQL) or epoch seconds (SQLite) -> an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _json(row: Mapping[str, Any], column: str) -> dict[str, Any]:
    return json.loads(row[column] or "{}")


def job_from_row(row: Mapping[str, Any]) -> Job:
    info = _json(row, "info_json")
    extras = _json(row, "progress_json")
    outputs = _json(row, "outputs_json")
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
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
        started_at=_ts(row["started_at"]),
        finished_at=_ts(row["finished_at"]),
        progress=JobProgress(
            row["step"],
            row["total_steps"],
            row["epoch"],
            row["train_loss"],
            **{k: extras.get(k) for k in PROGRESS_EXTRAS},
        ),
        metrics=json.loads(row["metrics_json"]),
        error=row["error"],
        adapter_version=row["adapter_version"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        dataset_id=info.get("dataset_id", ""),
        validation_dataset_id=info.get("validation_dataset_id", ""),
        data_report=info.get("data_report", {}),
        sample_generations=outputs.get("sample_generations", []),
        # Recorded in info_json; rows written before that kept it in progress_json.
        resumed_from_step=int(info.get("resumed_from_step", extras.get("resumed_from_step", 0))),
        promotion=PromotionSettings.from_dict(info.get("promotion")),
        promotion_result=outputs.get("promotion", {}),
        init_from=info.get("init_from", ""),
        init_from_requested=info.get("init_from_requested", ""),
    )


def event_body_json(event: JobEvent) -> str:
    p = event.progress
    return json.dumps(
        {
            "state": event.state.value if event.state else None,
            "progress": None
            if p is None
            else {
                "step": p.step,
                "total_steps": p.total_steps,
                "epoch": p.epoch,
                "train_loss": p.train_loss,
                **{k: getattr(p, k) for k in PROGRESS_EXTRAS},
            },
            "metrics": event.metrics,
            "message": event.message,
        }
    )


def event_from_row(row: Mapping[str, Any]) -> JobEvent:
    body = json.loads(row["body_json"])
    return JobEvent(
        job_id=row["job_id"],
        type=EventType(row["type"]),
        sequence=int(row["seq"]),
        time=_ts(row["time"]),
        state=JobState(body["state"]) if body.get("state") else None,
        progress=JobProgress(**body["progress"]) if body.get("progress") else None,
        metrics=body.get("metrics") or {},
        message=body.get("message", ""),
    )


def dataset_from_row(row: Mapping[str, Any]) -> DatasetRecord:
    return DatasetRecord(
        id=row["id"],
        namespace=row["namespace"],
        display_name=row["display_name"],
        task=TaskType(row["task"]),
        format=row["format"],
        size_bytes=int(row["size_bytes"]),
        sha256=row["sha256"],
        rows=int(row["rows"]),
        usable_rows=int(row["usable_rows"]),
        report=json.loads(row["report_json"]),
        text_field=row["text_field"],
        label_field=row["label_field"],
        upload_id=row["upload_id"],
        created_at=_ts(row["created_at"]),
    )


def adapter_from_row(row: Mapping[str, Any]) -> AdapterVersionRecord:
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
        created_at=_ts(row["created_at"]),
        deleted=bool(row["deleted"]),
        seq=row["seq"],
        lineage=json.loads(row.get("lineage_json") or "{}"),
    )
