"""FeedbackService's flows: feedback on served predictions (checked field by field against
what was served), listing, live per-version statistics (GetAdapter, metrics), the
per-adapter store_inputs setting, and the export to training data (services/feedback_export.py).
No gRPC here."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import structlog

from tuneserve_server.domain.errors import InvalidRequest, NotFound, Violations
from tuneserve_server.domain.feedback import (
    MAX_COMMENT_CHARS,
    RATING_MAX,
    RATING_MIN,
    FeedbackRecord,
    FeedbackSettings,
    FeedbackStats,
    ServedPrediction,
)
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.audit import audit
from tuneserve_server.observability.metrics import (
    FEEDBACK_GAUGES,
    FEEDBACK_LABELS,
    FEEDBACK_SUBMITTED,
    adapter_label_name,
)
from tuneserve_server.services.feedback_export import ExportKind, ExportResult, FeedbackExporter
from tuneserve_server.services.prediction_log import PredictionLog
from tuneserve_server.storage.job_store import JobStore

log = structlog.get_logger("tuneserve.services")

MAX_PREDICTION_ID_CHARS = 64
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class FeedbackInput:
    namespace: str
    prediction_id: str
    label: str = ""
    correct: bool = False
    rating: int | None = None
    corrected_text: str = ""
    input: str = ""
    served_text: str = ""
    comment: str = ""
    key_id: str = ""


class FeedbackService:
    def __init__(
        self,
        store: JobStore,
        engine: InferenceEngine,
        prediction_log: PredictionLog,
        *,
        max_text_chars: int,
        max_feedback_per_tenant: int,
        max_dataset_bytes: int,
        quotas: Quotas,
    ) -> None:
        self.store = store
        self.engine = engine
        self.log = prediction_log
        self.max_text_chars = max_text_chars
        self.max_feedback_per_tenant = max_feedback_per_tenant
        self.exporter = FeedbackExporter(
            store, engine, max_text_chars=max_text_chars, max_dataset_bytes=max_dataset_bytes, quotas=quotas
        )

    # ------------------------------------------------------------------ submit
    def _check_fields(self, req: FeedbackInput) -> None:
        v = Violations()
        if not req.prediction_id:
            v.add("prediction_id", "is required: the id Predict returned for the row")
        elif len(req.prediction_id) > MAX_PREDICTION_ID_CHARS or "\x00" in req.prediction_id:
            v.add("prediction_id", "is not an id this server returned")
        if len(req.label) > MAX_LABEL_CHARS:
            v.add("label", f"longer than {MAX_LABEL_CHARS} characters")
        if req.label and req.correct:
            v.add("correct", "give either a label or correct=true, not both")
        if req.rating is not None and not RATING_MIN <= req.rating <= RATING_MAX:
            v.add("rating", f"must be {RATING_MIN}..{RATING_MAX}")
        for name in ("corrected_text", "input", "served_text"):
            value = getattr(req, name)
            if len(value) > self.max_text_chars:
                v.add(name, f"longer than {self.max_text_chars} characters")
            elif value and not value.strip():
                v.add(name, "must not be blank")
        if len(req.comment) > MAX_COMMENT_CHARS:
            v.add("comment", f"longer than {MAX_COMMENT_CHARS} characters")
        if not (req.label or req.correct or req.rating is not None or req.corrected_text):
            v.add("label", "feedback needs a label, correct=true, a rating or a corrected_text")
        v.raise_if_any("invalid feedback")

    async def _prediction(self, namespace: str, prediction_id: str) -> ServedPrediction:
        get = functools.partial(self.store.get_prediction, namespace, prediction_id)
        try:
            return await asyncio.to_thread(get)
        except NotFound:
            # Served here moments ago: still in the queue, or in the batch the background
            # task is writing right now (then this flush writes nothing, but returns only
            # once that batch is stored). Either way, look again.
            await self.log.flush()
            return await asyncio.to_thread(get)

    def _labels_of(self, served: ServedPrediction) -> tuple[str, ...]:
        for record in self.store.adapter_versions(served.namespace, served.adapter_name):
            if record.version == served.adapter_version:
                return record.labels
        raise NotFound(
            f"prediction {served.id!r} was served by {served.adapter_name}@{served.adapter_version}, "
            "which has been deleted"
        )

    def _record(
        self, req: FeedbackInput, served: ServedPrediction, labels: tuple[str, ...]
    ) -> FeedbackRecord:
        v = Violations()
        generation = served.task is TaskType.CAUSAL_LM
        label = served.label if req.correct else req.label
        if generation and (req.label or req.correct):
            v.add("label" if req.label else "correct", "a generation takes a rating and/or a corrected_text")
        if not generation and req.corrected_text:
            v.add("corrected_text", "a classification takes a label or correct=true")
        if req.label and not generation and req.label not in labels:
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            v.add(
                "label",
                f"{req.label!r} is not a label of {served.adapter_name}@{served.adapter_version} ({shown})",
            )
        text = served.input_text if served.input_text is not None else req.input
        served_text = served.output_text if served.output_text is not None else req.served_text
        becomes_data = bool(label or req.corrected_text)
        if becomes_data and not text:
            v.add(
                "input",
                f"adapter {served.adapter_name!r} does not store served inputs (its store_inputs "
                "setting is off): feedback with a label, correct or a corrected_text must carry "
                "the input as sent to Predict",
            )
        if generation and req.corrected_text and not served_text:
            v.add("served_text", "the served text is not stored: send it with the corrected_text")
        v.raise_if_any("invalid feedback")
        return FeedbackRecord(
            id="",
            namespace=served.namespace,
            prediction_id=served.id,
            adapter_name=served.adapter_name,
            adapter_version=served.adapter_version,
            task=served.task,
            served_label=served.label,
            served_score=served.score,
            label="" if generation else label,
            rating=req.rating,
            corrected_text=req.corrected_text,
            input_text=text or "",
            served_text=served_text or "",
            comment=req.comment,
            key_id=req.key_id,
            predicted_at=served.created_at,
        )

    async def submit(self, req: FeedbackInput) -> tuple[FeedbackRecord, bool]:
        self._check_fields(req)
        served = await self._prediction(req.namespace, req.prediction_id)
        labels = await asyncio.to_thread(self._labels_of, served)
        record = self._record(req, served, labels)
        stored, created = await asyncio.to_thread(
            functools.partial(
                self.store.upsert_feedback, record, max_per_namespace=self.max_feedback_per_tenant
            )
        )
        label = FEEDBACK_LABELS.label(adapter_label_name(served.namespace, served.adapter_name))
        FEEDBACK_SUBMITTED.labels(label).inc()
        if stored.task is TaskType.CLASSIFICATION:
            stats = (await self.stats(served.namespace, served.adapter_name)).get(served.adapter_version)
            if stats is not None:
                FEEDBACK_GAUGES.set(label, served.adapter_version, stats.answered, stats.accuracy)
        return stored, created

    # ------------------------------------------------------------------ read
    async def list(
        self, namespace: str, adapter: str, *, page_size: int, page_token: str
    ) -> tuple[list[FeedbackRecord], str]:
        ref = AdapterRef.parse(namespace, adapter) if adapter else None
        return await asyncio.to_thread(
            functools.partial(
                self.store.list_feedback,
                namespace,
                adapter_name=ref.name if ref else "",
                version=ref.version if ref else None,
                page_size=page_size,
                page_token=page_token,
            )
        )

    async def stats(self, namespace: str, adapter_name: str) -> dict[int, FeedbackStats]:
        return await asyncio.to_thread(self.store.feedback_stats, namespace, adapter_name)

    async def export(self, namespace: str, adapter: str, kind: ExportKind, display_name: str) -> ExportResult:
        if not adapter:
            raise InvalidRequest.field("adapter", "is required: name or name@version")
        ref = AdapterRef.parse(namespace, adapter)
        result = await asyncio.to_thread(self.exporter.export, ref, kind, display_name)
        audit("feedback.export", namespace=namespace, adapter=str(ref), rows=result.rows)
        return result

    # ------------------------------------------------------------------ settings
    def _existing(self, namespace: str, name: str) -> None:
        AdapterRef.parse(namespace, name, "adapter_name")
        if not self.store.adapter_versions(namespace, name):
            raise NotFound(f"adapter {name!r} not found in namespace {namespace!r}")

    async def settings(self, namespace: str, name: str) -> FeedbackSettings:
        await asyncio.to_thread(self._existing, namespace, name)
        return await asyncio.to_thread(self.store.feedback_settings, namespace, name)

    async def set_settings(self, namespace: str, name: str, store_inputs: bool) -> FeedbackSettings:
        await asyncio.to_thread(self._existing, namespace, name)
        out = await asyncio.to_thread(self.store.set_feedback_settings, namespace, name, store_inputs)
        self.log.forget_setting(namespace, name)
        audit("feedback.settings", namespace=namespace, adapter=name, store_inputs=store_inputs)
        return out
